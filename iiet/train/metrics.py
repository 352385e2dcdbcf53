"""Run metrics: one JSON object per line in ``metrics.jsonl`` (the source of truth), mirrored to TensorBoard.

Records::

    {"step": 100, "tokens": 819200, "wall_time": 1764633600.0, "elapsed_s": 812.4,
     "loss": 5.21, "lr": 0.0003, "grad_norm": 0.8, "tokens_per_s": 3100.0, ...}
    {"step": 100, "tokens": 819200, "wall_time": 1764633604.2, "elapsed_s": 816.6, "val_loss": 5.30, "val_ppl": 200.3}

``loss`` (and any other training metric) is the mean over the optimizer steps since the previous record.
``wall_time`` is the Unix time the record was written (TensorBoard's wall time); ``elapsed_s`` the seconds this run
has spent training so far, evaluations and checkpoints included, summed over resumed sessions (the time between a
kill and its resume is not counted), which is what ``iiet plot --x_axis time`` draws.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from iiet.errors import IIETError

METRICS_FILE = "metrics.jsonl"
# A run whose ``loss`` is not the plain next-token cross-entropy (distillation: CE + alpha MSE + beta KL) logs its
# cross-entropy term under this name, so that plots compare cross-entropy with cross-entropy.
CROSS_ENTROPY = "ce"
# Record fields that are coordinates (x axes), not metrics: not written as TensorBoard scalars.
COORDINATES = ("step", "tokens", "wall_time", "elapsed_s")


class MetricsLogger:
    """Appends records to ``<output_dir>/metrics.jsonl`` and, when tensorboard is installed, to ``tensorboard/``.

    On resume from step ``resume_step``, records written after that step (by the interrupted run) are dropped first,
    so the file always describes one consistent trajectory; TensorBoard drops the same ones (events after
    ``resume_step``) and keeps the checkpoint step's own.
    """

    def __init__(self, output_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(output_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        elif resume_step is None:
            self.path.unlink(missing_ok=True)  # a fresh run in this directory starts a fresh trajectory
        self.file = open(self.path, "a", buffering=1)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step discards events at steps >= it: the checkpoint step's records belong to the trajectory.
                purge_step = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=purge_step)
            except ImportError:  # tensorboard is optional; metrics.jsonl has everything
                self.writer = None

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name not in COORDINATES and isinstance(value, (int, float)) and math.isfinite(value):
                    group = "val" if name.startswith("val_") else "train"
                    self.writer.add_scalar(f"{group}/{name.removeprefix('val_')}", value, record["step"],
                                           walltime=record.get("wall_time"))

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (or of ``<run dir>/metrics.jsonl``); a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise IIETError(f"{path} is not a metrics file (not text); give a run directory written by `iiet train`.") from None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-write leaves at most one partial line
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def has_loss_records(records: list[dict[str, Any]]) -> bool:
    """Whether a run's metrics (``read_metrics``) hold a training or validation loss: it has logged a step."""
    return any("loss" in r or "val_loss" in r for r in records)
