"""Loss curves of several runs side by side, read from their ``metrics.jsonl`` (``iiet plot``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from iiet.errors import IIETError
from iiet.models.names import label_of
from iiet.outputs import check_writable
from iiet.plotting import distinct_colors, pyplot, save_figure
from iiet.train.checkpoint import STATE_FILE, list_checkpoints
from iiet.train.metrics import CROSS_ENTROPY, METRICS_FILE, has_loss_records, read_metrics
from iiet.train.trainer import FINAL_DIR

FEW_POINTS = 30  # curves with fewer points get markers: a lone point is invisible as a line
SECONDS_PER = {"s": 1.0, "min": 60.0, "h": 3600.0}
# Wall-time axis unit: the largest in which the longest run spans at least this many units.
_MIN_SPAN_UNITS = 2.0
XAxis = Literal["tokens", "step", "time"]
X_LABELS = {"tokens": "tokens", "step": "optimizer step"}


def _time_unit(longest_seconds: float) -> str:
    fitting = [u for u, seconds in SECONDS_PER.items() if longest_seconds >= _MIN_SPAN_UNITS * seconds]
    return fitting[-1] if fitting else "s"


def plot_loss_curves(
    runs: list[str],
    output: str = "loss_curves.png",
    labels: list[str] | None = None,
    x_axis: XAxis = "tokens",
) -> Path:
    """Draw ``loss_curves_figure`` of ``runs`` into ``output`` (PNG, PDF or SVG by its suffix)."""
    check_writable(output, "--output", kind="file")  # before reading the runs
    return save_figure(loss_curves_figure(runs, labels, x_axis), output)


def loss_curves_figure(runs: list[str], labels: list[str] | None = None, x_axis: XAxis = "tokens"):
    """Training (left) and validation (right) cross-entropy of ``runs`` (run directories or metrics.jsonl files).

    Every run has its own colour. A run whose training loss is more than cross-entropy (distillation) is drawn by
    its cross-entropy term (``CROSS_ENTROPY``), marked "(CE term)" in the legend, so that both panels show what
    their axis says. ``x_axis``: tokens seen, optimizer step, or ``time``: the wall time each run has spent training
    (``elapsed_s`` of metrics.jsonl; resumed runs count only their sessions), in seconds, minutes or hours by the
    longest run.
    """
    if labels is not None and len(labels) != len(runs):
        raise IIETError(f"got {len(labels)} labels for {len(runs)} runs; give one label per run or none.")
    metrics_files = [Path(run) / METRICS_FILE if Path(run).is_dir() else Path(run) for run in runs]
    for metrics_file in metrics_files:
        if not metrics_file.is_file():
            raise IIETError(f"{metrics_file} does not exist; give run directories that hold a {METRICS_FILE}.")
    all_records = [read_metrics(metrics_file) for metrics_file in metrics_files]
    for metrics_file, records in zip(metrics_files, all_records):
        if not has_loss_records(records):
            raise IIETError(f"{metrics_file} holds no loss records yet; plot runs that have logged a step.")
    coordinate, scale, x_label = x_axis, 1.0, X_LABELS.get(x_axis)
    if x_axis == "time":
        coordinate = "elapsed_s"
        for metrics_file, records in zip(metrics_files, all_records):
            if not any(coordinate in r for r in records):
                raise IIETError(f"{metrics_file} has no wall-clock field ({coordinate}; written by an older iiet); "
                                "plot it with --x_axis tokens or step.")
        unit = _time_unit(max(r.get(coordinate, 0.0) for records in all_records for r in records))
        scale, x_label = 1.0 / SECONDS_PER[unit], f"wall time spent training ({unit})"
    labels = labels or run_labels(metrics_files)
    figure, (train_axis, val_axis) = pyplot().subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, records, color in zip(labels, all_records, distinct_colors(len(runs))):
        training = CROSS_ENTROPY if any(CROSS_ENTROPY in r for r in records) else "loss"
        for axis, key in ((train_axis, training), (val_axis, "val_loss")):
            points = [(r[coordinate] * scale, r[key]) for r in records if key in r and coordinate in r]
            if points:
                xs, ys = zip(*points)
                few = key == "val_loss" or len(points) < FEW_POINTS
                shown = f"{label} (CE term)" if key == CROSS_ENTROPY else label
                axis.plot(xs, ys, label=shown, color=color, marker="o" if few else None, markersize=3)
    for axis, title in ((train_axis, "training cross-entropy"), (val_axis, "validation cross-entropy")):
        axis.set_title(title)
        axis.set_xlabel(x_label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    train_axis.set_ylabel("cross-entropy (nats/token)")
    return figure


def run_labels(metrics_files: list[Path]) -> list[str]:
    """Legend names: the paper's name of the model each run trained, with the run's directory where names repeat
    (seeds of one model); the directory's name alone for a run that holds no model config."""
    names = [_model_label(f.parent) or f.parent.name for f in metrics_files]
    return [f"{name}: {f.parent.name}" if names.count(name) > 1 else name for name, f in zip(names, metrics_files)]


def _model_label(run_dir: Path) -> str | None:
    """The paper's name of the model a run directory trained (its final/ export, else its newest checkpoint)."""
    config_file, checkpoints = run_dir / FINAL_DIR / "config.json", list_checkpoints(run_dir)
    try:
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        elif checkpoints:
            config = json.loads((checkpoints[-1] / STATE_FILE).read_text())["model_config"]
        else:
            return None
        return label_of(config["scheme"], config["num_hidden_layers"])
    except (OSError, ValueError, KeyError):  # unreadable or not an iiet model: fall back to the directory name
        return None
