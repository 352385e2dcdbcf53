"""``iiet train`` and ``iiet plot``: the training commands of the CLI (docs/training.md; ``iiet demo`` is in iiet/study)."""

from __future__ import annotations

from typing import Any, Literal

from iiet.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from iiet.train.parallel import is_main_process
from iiet.train.plots import plot_loss_curves
from iiet.train.trainer import run_training


def train(
    model: ModelConfig = ModelConfig(),
    data: DataConfig = DataConfig(),
    optim: OptimConfig = OptimConfig(),
    run: RunConfig = RunConfig(),
) -> dict[str, Any]:
    """Pretrain a model from scratch (or resume a run): AdamW, warm-up + cosine, checkpoints, HF export.

    Recipes: ``iiet train --config configs/iiet-r3-55M.yaml --data.path DIR``. Multi-GPU:
    ``torchrun --nproc_per_node 8 -m iiet.cli train --config ... --run.parallel fsdp``.

    Args:
        model: which network (preset, scheme, overrides).
        data: prepared data directory, or the sources to prepare it from.
        optim: optimizer, schedule, batch size and run length.
        run: output directory, resume, parallelism, precision, logging/eval/checkpoint cadence.
    """
    summary = run_training(TrainConfig(model=model, data=data, optim=optim, run=run))
    if is_main_process():
        shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in summary.items()}
        print("  ".join(f"{k}={v}" for k, v in shown.items()))
    return summary


def plot(
    runs: list[str],
    output: str = "loss_curves.png",
    labels: list[str] | None = None,
    x_axis: Literal["tokens", "step", "time"] = "tokens",
) -> None:
    """Draw the training and validation loss of several runs side by side, from their metrics.jsonl.

    Args:
        runs: run directories (or metrics.jsonl files), e.g. ``--runs [runs/euler,runs/iiet]``.
        output: image file to write (PNG, PDF or SVG by its suffix).
        labels: legend names, one per run (default: the paper's name of each run's model, e.g. Transformer++ or
            IIET (r=3), with the directory name where names repeat; the directory name for a bare metrics.jsonl).
        x_axis: "tokens" seen, optimizer "step", or "time": the wall time each run spent training (from the
            elapsed_s field of metrics.jsonl; seconds, minutes or hours by the longest run).
    """
    print(f"wrote {plot_loss_curves(runs, output, labels, x_axis)}")
