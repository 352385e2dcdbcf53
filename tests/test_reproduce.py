"""``iiet reproduce`` end to end at toy size: every step runs, the report is complete, a rerun skips what is done."""

from __future__ import annotations

import json

import pytest

from iiet.errors import IIETError
from iiet.study.reproduce import reproduce, run_study
from iiet.study.study import StudyConfig

TEXT = (
    "The quick brown fox jumps over the lazy dog. Robert Boulter is an English film, television and theatre actor. "
    "Water boils at 100 degrees. Plants make sugar from light, water and carbon dioxide. "
)


@pytest.mark.slow
def test_reproduce_runs_every_step_and_resumes(tmp_path):
    corpus = tmp_path / "corpus.jsonl"  # many documents, so that whole documents can be held out
    corpus.write_text("".join(json.dumps({"text": f"Document {i}. " + TEXT * 2}) + "\n" for i in range(1000)))
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(TEXT * 5)
    config = StudyConfig(
        output_dir=str(tmp_path / "study"), preset="tiny", sources=[str(corpus)], tokenizer_vocab_size=300,
        seq_len=32, train_tokens=2048, batch_tokens=512, micro_batch_size=8, seeds=1, arms=["iiet-r3"],
        eval_texts=[str(held_out)], influence_segments=8, bench=False, device="cpu",
        model_overrides={"residual_init_scale": 0.5}, explicit_first_layer=True,
    )
    report = run_study(config)
    text = report.read_text()
    for section in ("Pretraining: perplexity", "Iterations r", "IIAD: plans and distillation", "Inference"):
        assert section in text
    state = json.loads((tmp_path / "study" / "study.json").read_text())
    assert {"iiet-r3-s0", "e-iiet", "lower-bound"} <= set(state["eval"])
    assert state["eval"]["iiet-r3-s0"]["texts"][str(held_out)]["bits_per_byte"] > 0
    assert (tmp_path / "study" / "figures" / "iteration_influence.png").is_file()
    assert "Lower Bound (IIAD)" in text and "plan `[0, 0, 0, 0]`" in text and "explicit first layer" in text
    assert "residual_init_scale" in text  # the overrides reach the report...
    trained = json.loads((tmp_path / "study" / "runs" / "iiet-r3-s0" / "final" / "config.json").read_text())
    assert trained["residual_init_scale"] == 0.5  # ...and the model
    assert trained["scheme"]["iteration_plan"] == [0, 3, 3, 3]

    pretrain_time = state["wall_s"]["pretrain"]
    run_study(config)  # everything is done: nothing is trained again
    assert json.loads((tmp_path / "study" / "study.json").read_text())["wall_s"]["pretrain"] - pretrain_time < 5


def test_unknown_arm_is_a_clear_error(tmp_path):
    with pytest.raises(IIETError, match="unknown arm"):
        reproduce(output_dir=str(tmp_path), arms=["resnet"])
