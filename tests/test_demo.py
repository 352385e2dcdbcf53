"""``iiet demo`` end to end at toy size, its budget planner, its progress forecast and its input errors."""

from __future__ import annotations

import json
import math
import re

import pytest

from iiet.errors import IIETError
from iiet.study.demo import BASELINE_ARM, DLCL_ARM, MARGIN, TEACHER_ARM, demo, plan_budget
from iiet.study.progress import Phase, Progress

TOY = dict(minutes=0.2, preset="tiny", model_overrides={}, documents=12, vocab_size=400, seq_len=64,
           batch_tokens=512, device="cpu")


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| model") and len(cells) == 7:
            rows[cells[0]] = cells[1:]
    return rows


def test_demo_runs_end_to_end_and_its_table_json_and_figure_agree(tmp_path, capsys):
    out = tmp_path / "demo"
    demo(output_dir=str(out), **TOY)
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {r["run"]: r for r in results["rows"]}
    assert set(rows) == {"transformer++-s0", "iiet-r3-s0", "iiet-r3-adaptive", "iiet-r3-s0+draft", "e-iiet"}
    for row in rows.values():
        assert set(results["columns"]) <= set(row)
        assert math.isfinite(row["val_loss"]) and row["bits_per_byte"] > 0 and row["decode_tokens_per_s"] > 0
        assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-3)
    base, iiet, adaptive, student, speculative = (rows[k] for k in (
        "transformer++-s0", "iiet-r3-s0", "iiet-r3-adaptive", "e-iiet", "iiet-r3-s0+draft"))
    # Equal tokens for the pretrained models; the student has seen its teacher's tokens plus its distillation.
    assert base["tokens_seen"] == iiet["tokens_seen"] == results["plan"]["tokens"][TEACHER_ARM]
    assert student["tokens_seen"] == iiet["tokens_seen"] + student["distillation_tokens"] > iiet["tokens_seen"]
    # The study's own records of the runs (in the same results.json) agree with the table.
    records = {r["run"]: r for r in results["runs"]}
    assert records["transformer++-s0"]["tokens"] == base["tokens_seen"]
    assert records["e-iiet"]["tokens"] == student["distillation_tokens"] and records["e-iiet"]["distilled"]
    # Block evaluations: 4 layers; IIET r=3 with an explicit first layer runs 1 + 3 x 4; the student its plan.
    assert iiet["scheme"]["iteration_plan"] == [0, 3, 3, 3]
    assert (base["block_evaluations_per_token"], iiet["block_evaluations_per_token"]) == (4, 13)
    assert student["block_evaluations_per_token"] == 4 + sum(student["scheme"]["iteration_plan"])
    assert 4 + 3 <= adaptive["block_evaluations_per_token"] <= 13  # at least one correction per iterating layer
    # Self-speculative decoding is exact: the teacher's quality, its greedy tokens; it verifies every drafted token.
    assert speculative["identical_tokens"] and speculative["val_loss"] == iiet["val_loss"]
    assert 1 <= speculative["tokens_per_verify"] <= 5 and speculative["block_evaluations_per_token"] > 13
    assert not results["missing"]
    # The Markdown table (printed and in demo.md) shows the same numbers as the JSON.
    table = _table_rows((out / "demo.md").read_text())
    assert table == _table_rows(printed)
    for row in results["rows"]:
        cells = table[row["model"]]
        assert float(cells[0]) == pytest.approx(row["block_evaluations_per_token"], abs=0.01)
        assert float(cells[2]) == pytest.approx(row["val_loss"], abs=6e-4)
        assert int(cells[1].replace(",", "")) == row["tokens_seen"]
        assert float(cells[5]) == pytest.approx(row["decode_tokens_per_s"], abs=0.6)
    # The reading follows the numbers, whichever way they fall.
    verdict = "beats" if iiet["val_loss"] < base["val_loss"] else "does not beat"
    assert f"{iiet['model']} {verdict} {base['model']}" in results["reading"][0]
    assert iiet["model"] == "IIET (r=3), explicit first layer" and base["model"] == "Transformer++"
    assert any("Caveat of the budget" in line for line in results["reading"])
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and results["figure"] == "demo.png"
    assert re.search(r"phase \d+/\d+ pretrain IIET \(r=3\): .*phase ETA \d+:\d\d · overall ETA \d+:\d\d", printed)

    demo(output_dir=str(out), **TOY)  # the same command again: everything is there, nothing is retrained
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    with pytest.raises(IIETError, match="other options"):
        demo(output_dir=str(out), **{**TOY, "lr": 1e-2})


SPEEDS = {BASELINE_ARM: {"train_step_s": 0.5, "forward_s": 0.15}, DLCL_ARM: {"train_step_s": 0.55, "forward_s": 0.17},
          TEACHER_ARM: {"train_step_s": 1.5, "forward_s": 0.5}}


def _request(**values):
    return {"minutes": 10.0, "budget": "tokens", "documents": 300, "batch_tokens": 2048, "seq_len": 128,
            "output_dir": "runs/demo", "preset": "cpu-small", "vocab_size": 4096, "lr": 2e-3, "model_overrides": {},
            "adaptive_tolerance": 1e-2, "draft": "lower-bound:k=4", "dlcl": False, "device": "cpu", **values}


def test_the_plan_fills_the_budget_with_equal_tokens_or_equal_time():
    plan = plan_budget(_request(), SPEEDS)
    assert plan["tokens"][BASELINE_ARM] == plan["tokens"][TEACHER_ARM] > 0
    assert plan["planned_s"] == pytest.approx(600 * (1 - MARGIN), rel=0.02)  # within a step's rounding
    assert plan["study"]["explicit_first_layer"] and plan["study"]["students"] == ["e-iiet"]
    longer = plan_budget(_request(minutes=20.0), SPEEDS)
    assert longer["tokens"][TEACHER_ARM] > 2 * plan["tokens"][TEACHER_ARM]  # fixed costs are paid once
    assert longer["study"]["held_out_tokens"] > plan["study"]["held_out_tokens"]  # every phase scales

    timed = plan_budget(_request(budget="time"), SPEEDS)
    ratio = timed["tokens"][BASELINE_ARM] / timed["tokens"][TEACHER_ARM]
    assert ratio == pytest.approx(3.0, rel=0.05)  # Transformer++ steps 3x faster: 3x the tokens in equal time
    training_s = [timed["tokens"][a] / 2048 * SPEEDS[a]["train_step_s"] for a in (BASELINE_ARM, TEACHER_ARM)]
    assert training_s[0] == pytest.approx(training_s[1], rel=0.05)  # validations aside, the same seconds
    assert timed["planned_s"] == pytest.approx(600 * (1 - MARGIN), rel=0.02)

    with_dlcl = plan_budget(_request(dlcl=True), SPEEDS)
    assert with_dlcl["study"]["arms"] == [BASELINE_ARM, DLCL_ARM, TEACHER_ARM]
    assert with_dlcl["tokens"][TEACHER_ARM] < plan["tokens"][TEACHER_ARM]


def test_progress_reads_the_training_runs_pace(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 25, "tokens": 100, "loss": 7.0}) + "\n")
    train = Phase("pretrain/x", "pretrain x", 100.0, run, steps=100)
    later = Phase("bench", "bench", 40.0)
    progress = Progress([train, later])
    progress.start("pretrain/x")
    train.started -= 30.0  # 30 s in, a quarter done: 90 s to go at this pace
    assert train.fraction() == 0.25
    assert progress.phase_eta_s(train) == pytest.approx(90.0, abs=1.0)
    assert progress.eta_s() == pytest.approx(130.0, abs=1.0)
    assert "phase 1/2 pretrain x: 25% phase ETA 1:30" in progress.line()
    progress.finish("pretrain/x")
    train.finished = train.started + 200.0  # it took twice its estimate: the rest is forecast twice as long
    assert progress.eta_s() == pytest.approx(80.0)


@pytest.mark.parametrize("arguments, message", [
    (["--minutes", "0"], "--minutes 0"),
    (["--batch_tokens", "1000"], "multiple of --seq_len"),
])
def test_bad_options_are_one_line_errors_before_any_work(tmp_path, capsys, arguments, message):
    from iiet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--output_dir", str(tmp_path / "demo"), *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iiet: error:") and message in err[0]
    assert not (tmp_path / "demo").exists()
