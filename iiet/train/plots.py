"""Loss curves of several runs side by side, read from their ``metrics.jsonl`` (``iiet plot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from iiet.errors import IIETError
from iiet.plotting import pyplot, save_figure
from iiet.train.metrics import METRICS_FILE, read_metrics

FEW_POINTS = 30  # curves with fewer points get markers: a lone point is invisible as a line


def plot_loss_curves(
    runs: list[str],
    output: str = "loss_curves.png",
    labels: list[str] | None = None,
    x_axis: Literal["tokens", "step"] = "tokens",
) -> Path:
    """Training (left) and validation (right) loss of ``runs`` (run directories or metrics.jsonl files)."""
    if labels is not None and len(labels) != len(runs):
        raise IIETError(f"got {len(labels)} labels for {len(runs)} runs; give one label per run or none.")
    metrics_files = [Path(run) / METRICS_FILE if Path(run).is_dir() else Path(run) for run in runs]
    for metrics_file in metrics_files:
        if not metrics_file.is_file():
            raise IIETError(f"{metrics_file} does not exist; give run directories that hold a {METRICS_FILE}.")
    plt = pyplot()
    figure, (train_axis, val_axis) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, metrics_file in enumerate(metrics_files):
        records = read_metrics(metrics_file)
        label = labels[i] if labels else metrics_file.parent.name
        for axis, key in ((train_axis, "loss"), (val_axis, "val_loss")):
            points = [(r[x_axis], r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points)
                few = key == "val_loss" or len(points) < FEW_POINTS
                axis.plot(xs, ys, label=label, color=f"C{i}", marker="o" if few else None, markersize=3)
    for axis, title in ((train_axis, "training loss"), (val_axis, "validation loss")):
        axis.set_title(title)
        axis.set_xlabel(x_axis)
        axis.grid(alpha=0.3)
        axis.legend()
    train_axis.set_ylabel("cross-entropy (nats/token)")
    return save_figure(figure, output)
