"""Run metrics: metrics.jsonl carries wall-clock time, TensorBoard keeps one consistent trajectory over a resume,
and ``iiet plot`` draws loss against wall time."""

from __future__ import annotations

import json
import time

import pytest

from iiet.train import Trainer
from iiet.train.checkpoint import read_checkpoint_state
from iiet.train.metrics import MetricsLogger, read_metrics

from .test_export import data_dir, fit, run_config  # noqa: F401  (data_dir is a fixture)


def tensorboard_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_tensorboard_keeps_the_checkpoint_step_when_a_run_resumes(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(1, 14):  # the interrupted run got past its last checkpoint (step 10) before it died
        logger.log({"step": step, "tokens": 8 * step, "loss": 1.0 / step})
    logger.close()
    # TensorBoard reads event files in name order: events.out.tfevents.<second>.<host>.<pid>.<writer number>. Two
    # writers of one process within one second sort by that number as text (".10" before ".9"), so the resumed
    # run's file could be read first; a real resume starts in a later second, and so does this one.
    time.sleep(1.01 - time.time() % 1)
    logger = MetricsLogger(tmp_path, resume_step=10)
    for step in range(11, 21):
        logger.log({"step": step, "tokens": 8 * step, "loss": 1.0 / step})
    logger.close()
    assert tensorboard_steps(tmp_path, "train/loss") == list(range(1, 21))
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 21))


def test_metrics_record_wall_time_that_continues_over_a_resume(data_dir, tmp_path):  # noqa: F811
    started = time.time()
    config = run_config(data_dir, tmp_path, steps=4)
    trainer = Trainer(config)
    trainer.fit(until_step=2)
    trainer.close()
    state = read_checkpoint_state(tmp_path / "checkpoints" / "step_00000002")
    time.sleep(0.5)  # a gap between the sessions: wall time, but not time spent training
    fit(config)
    finished = time.time()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(started <= r["wall_time"] <= finished for r in records)
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed) and 0 < elapsed[0]
    resumed = next(r for r in records if r["step"] == 3)
    assert resumed["elapsed_s"] >= state["elapsed_seconds"]  # carried on from the checkpoint, not restarted at 0
    assert elapsed[-1] < finished - started - 0.5  # the gap is not counted
    assert tensorboard_steps(tmp_path, "train/loss") == [1, 2, 3, 4]


def test_plot_against_wall_time(data_dir, tmp_path, capsys):  # noqa: F811
    from iiet.cli import main

    fit(run_config(data_dir, tmp_path / "a", steps=2))
    fit(run_config(data_dir, tmp_path / "b", steps=3))
    main(["plot", "--runs", f"[{tmp_path / 'a'},{tmp_path / 'b'}]", "--x_axis", "time",
          "--output", str(tmp_path / "time.png")])
    assert (tmp_path / "time.png").stat().st_size > 10_000
    capsys.readouterr()

    old = tmp_path / "old" / "metrics.jsonl"  # written before iiet recorded wall time
    old.parent.mkdir()
    old.write_text("".join(json.dumps({"step": s, "tokens": s, "loss": 1.0}) + "\n" for s in (1, 2)))
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--runs", f"[{old}]", "--x_axis", "time", "--output", str(tmp_path / "old.png")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("iiet: error: ") and "--x_axis tokens or step" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "old.png").exists()
