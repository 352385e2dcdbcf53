"""``iiet reproduce`` end to end at toy size: every step runs, the report is complete, a rerun skips what is done."""

from __future__ import annotations

import json

import pytest
import yaml

from iiet.errors import IIETError
from iiet.study.reproduce import reproduce, run_study
from iiet.study.study import Study, StudyConfig

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
    assert {"iiet-r3-s0", "e-iiet", "lower-bound"} <= set(Study(config).evaluations)
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


def test_arms_are_named_models_with_the_papers_labels(tmp_path):
    from iiet.study.reproduce import train_config
    from iiet.study.study import Study, arm_label

    config = StudyConfig(output_dir=str(tmp_path), arms=["pcformer-fl", "iiet-r2", "trans-ws"], history="normalized",
                         explicit_first_layer=True)
    config.validate()
    study = Study(config)
    schemes = {arm: train_config(study, arm, 0).model.scheme for arm in config.arms}
    assert schemes["pcformer-fl"]["order_plan"] == [0, 2, 2, 2] and schemes["pcformer-fl"]["history"] == "normalized"
    assert schemes["iiet-r2"]["iteration_plan"] == [0, 2, 2, 2]  # explicit_first_layer: the IIET arms
    assert "history" not in schemes["trans-ws"]
    assert [arm_label(a) for a in ("iiet-r2", "pcformer-fl", "lower-bound", "distil-pcformer")] == [
        "IIET (r=2)", "PCformer, explicit first layer", "Lower Bound (IIAD)", "Distil PCformer"]


@pytest.mark.parametrize("settings, message", [
    ({"students": ["lower-bnd"]}, "unknown student"),
    ({"arms": ["transformer++"], "arm_tokens": {"iiet-r3": 1000}}, "not among the arms"),
])
def test_bad_study_settings_are_clear_errors_before_any_work(tmp_path, settings, message):
    with pytest.raises(IIETError, match=message):
        run_study(StudyConfig(output_dir=str(tmp_path / "study"), **settings))
    assert not (tmp_path / "study").exists()


def test_compute_matched_arms_results_json_and_held_out_corpora(tmp_path):
    """Transformer++ at IIET r=3's training FLOPs trains on proportionally more tokens; the deep one has its
    inference FLOPs; results.json records every run's costs; held-out corpora are scored per document."""
    from iiet.study.compute import RESULTS_FILE

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i}. " + TEXT}) + "\n" for i in range(300)))
    other_domain = tmp_path / "other"
    other_domain.mkdir()
    for i in range(3):
        (other_domain / f"doc{i}.txt").write_text(f"def function_{i}(x):\n    return x * {i} + 1\n" * 8)
    config = StudyConfig(
        output_dir=str(tmp_path / "study"), preset="tiny", sources=[str(corpus)], tokenizer_vocab_size=300,
        seq_len=32, train_tokens=1024, batch_tokens=256, micro_batch_size=8, seeds=1,
        arms=["transformer++", "iiet-r3"], compute_matched=True, eval_corpora=[str(other_domain)],
        influence_segments=4, distill_fraction=0.25, bench=False, device="cpu", explicit_first_layer=True,
    )
    report = run_study(config).read_text()
    results = json.loads((tmp_path / "study" / RESULTS_FILE).read_text())
    runs = {row["run"]: row for row in results["runs"]}
    iiet, euler = runs["iiet-r3-s0"], runs["transformer++-s0"]
    flops, deep = runs["transformer++-flops-s0"], runs["transformer++-deep-s0"]
    assert iiet["block_evaluations"] == 13 and euler["block_evaluations"] == 4
    assert euler["tokens"] == iiet["tokens"] == 1024
    # Equal training FLOPs, up to one optimizer step of tokens.
    assert abs(flops["training_flops"] - iiet["training_flops"]) <= 256 * flops["training_flops_per_token"]
    assert flops["tokens"] > 2 * euler["tokens"]
    # The deeper Transformer++ is as close to IIET's inference FLOPs as a whole number of layers gets.
    per_layer = (deep["inference_flops_per_token"] - euler["inference_flops_per_token"]) / (deep["num_hidden_layers"] - 4)
    assert abs(deep["inference_flops_per_token"] - iiet["inference_flops_per_token"]) <= per_layer / 2
    assert all(row["val_curve"] for row in runs.values())
    assert (tmp_path / "study" / "figures" / "loss_vs_training_flops.png").is_file()
    assert "Equal compute" in report and "at equal training FLOPs" in report
    assert flops["planned_tokens"] == flops["tokens"] and flops["train_seconds"] > 0
    assert f"| {flops['label']} | " in report and f"| {flops['tokens']:,} ({flops['tokens']:,}) |" in report
    scores = json.loads((tmp_path / "study" / "study.json").read_text())["eval"]["iiet-r3-s0"]["corpora"]
    assert scores[str(other_domain)]["documents"] == 3


def _small_study(tmp_path, name: str, **settings) -> StudyConfig:
    corpus = tmp_path / "corpus.jsonl"
    if not corpus.is_file():
        corpus.write_text("".join(json.dumps({"text": f"Document {i}. " + TEXT}) + "\n" for i in range(300)))
    values = dict(output_dir=str(tmp_path / name), preset="tiny", sources=[str(corpus)], tokenizer_vocab_size=300,
                  seq_len=32, train_tokens=1024, batch_tokens=256, micro_batch_size=8, seeds=1, bench=False,
                  device="cpu", explicit_first_layer=True)
    return StudyConfig(**{**values, **settings})


def _curves(study_dir) -> dict[str, list[float]]:
    rows = json.loads((study_dir / "results.json").read_text())["runs"]
    return {row["run"]: [point["val_loss"] for point in row["val_curve"]] for row in rows}


@pytest.mark.slow
def test_parallel_workers_train_the_same_runs_as_one_process(tmp_path):
    """``workers=2`` trains the runs in two processes (one thread each here) to the same models as one process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        arms = ["transformer++", "iiet-r1", "dlcl"]
        run_study(_small_study(tmp_path, "one", arms=arms))
        run_study(_small_study(tmp_path, "two", arms=arms, workers=2))
    finally:
        torch.set_num_threads(threads)
    one, two = _curves(tmp_path / "one"), _curves(tmp_path / "two")
    assert set(one) == set(two) == {"transformer++-s0", "iiet-r1-s0", "dlcl-s0"}
    for run in one:
        assert len(one[run]) == len(two[run]) > 1
        assert one[run] == pytest.approx(two[run], rel=1e-4), run  # thread counts differ: summation order only
    state = json.loads((tmp_path / "two" / "study.json").read_text())
    assert {"pretrain/transformer++-s0", "pretrain/iiet-r1-s0", "pretrain/dlcl-s0"} <= set(state["wall_s"])


def test_report_only_evaluates_the_finished_runs_and_trains_nothing(tmp_path):
    run_study(_small_study(tmp_path, "study", arms=["transformer++"], train_tokens=512))
    report = run_study(_small_study(tmp_path, "study", arms=["transformer++", "iiet-r3"], train_tokens=512,
                                    report_only=True)).read_text()
    assert not (tmp_path / "study" / "runs" / "iiet-r3-s0").exists()
    assert set(json.loads((tmp_path / "study" / "study.json").read_text())["eval"]) == {"transformer++-s0"}
    assert "Transformer++" in report and "has not finished: no equal-compute verdict yet" in report
    started = tmp_path / "study" / "runs" / "iiet-r3-s0"  # a run started a moment ago: nothing logged yet
    started.mkdir(parents=True)
    (started / "metrics.jsonl").write_text("")
    report = run_study(_small_study(tmp_path, "study", arms=["transformer++", "iiet-r3"], train_tokens=512,
                                    report_only=True)).read_text()
    assert "Transformer++" in report and "has not finished: no equal-compute verdict yet" in report


def test_an_arm_that_names_its_plan_keeps_it_beside_the_explicit_first_layer_arms(tmp_path):
    """``explicit_first_layer`` makes the IIET arms' layer 0 explicit, but ``e-iiet=3,3,3,3`` keeps its plan: the
    paper's IIET r=3 (the same model as ``iiet-r3`` in a study without the option) in the same study."""
    import torch

    from iiet import IIETForCausalLM
    from iiet.models.presets import build_config
    from iiet.study.reproduce import train_config
    from iiet.study.study import Study, arm_label

    study = Study(_small_study(tmp_path, "study", arms=["iiet-r3", "e-iiet=3,3,3,3"]))
    paper = Study(_small_study(tmp_path, "paper", arms=["iiet-r3"], explicit_first_layer=False))
    assert train_config(study, "iiet-r3", 0).model.scheme["iteration_plan"] == [0, 3, 3, 3]
    schemes = [train_config(study, "e-iiet=3,3,3,3", 0).model.scheme, train_config(paper, "iiet-r3", 0).model.scheme]
    assert schemes[0]["iteration_plan"] == [3, 3, 3, 3] and schemes[1]["iteration_plan"] is None
    ids = torch.randint(0, 512, (2, 16))
    logits = []
    for scheme in schemes:
        torch.manual_seed(0)
        logits.append(IIETForCausalLM(build_config("tiny", scheme)).eval()(ids).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert arm_label("e-iiet=3,3,3,3") == "IIET (r=3), every layer iterating"


def test_without_iiad_and_benchmark_every_seed_trains_in_one_pass(tmp_path):
    """``iiad=False, bench=False``: no step waits for seed 0, so both seeds train in one pretraining pass (the
    workers stay busy), and no influence, plan or distillation is made for the IIET r=3 teacher."""

    class Steps:
        started: list[str] = []

        def start(self, key):
            self.started.append(key)

        def finish(self, key):
            pass

    steps = Steps()
    config = _small_study(tmp_path, "study", arms=["transformer++", "iiet-r3"], train_tokens=512, seeds=2, iiad=False)
    report = run_study(config, observer=steps).read_text()
    assert steps.started.count("pretrain") == 1 and not any(key.startswith("iiad") for key in steps.started)
    runs = {row["run"] for row in json.loads((tmp_path / "study" / "results.json").read_text())["runs"]}
    assert runs == {"transformer++-s0", "transformer++-s1", "iiet-r3-s0", "iiet-r3-s1"}
    assert not (tmp_path / "study" / "iiad").exists() and "_IIAD not run (`--iiad false`)_" in report
    # With IIAD, seed 0 of every arm comes first (a study cut short has one pass through every step).
    steps.started.clear()
    run_study(_small_study(tmp_path, "phased", arms=["transformer++"], train_tokens=512, seeds=2), observer=steps)
    assert steps.started.count("pretrain") == 2


def test_a_study_merges_the_results_of_another_whose_checkpoints_are_gone(tmp_path):
    """``merge_results``: the runs of another study (trained elsewhere, its checkpoints since lost) join the tables,
    the equal-compute verdict and results.json, marked with where they came from; nothing is trained for them."""
    import shutil

    from iiet.study.compute import RESULTS_FILE

    run_study(_small_study(tmp_path, "first", arms=["transformer++"], train_tokens=512))
    kept = tmp_path / "kept.json"
    first = json.loads((tmp_path / "first" / RESULTS_FILE).read_text())
    under_way = {**first["runs"][0], "run": "iiet-r3-s0", "finished": False}  # not a result: trained here
    kept.write_text(json.dumps({**first, "runs": first["runs"] + [under_way]}))
    shutil.rmtree(tmp_path / "first" / "runs")  # the machine was reset: only the committed record is left
    assert first["settings"]["train_tokens"] == 512 and first["data"]["tokenizer_hash"]

    data = str(tmp_path / "first" / "data")
    report = run_study(_small_study(tmp_path, "second", arms=["transformer++", "iiet-r3"], train_tokens=512, data=data,
                                    merge_results=[str(kept)], students=[])).read_text()
    assert not (tmp_path / "second" / "runs" / "transformer++-s0").exists()  # merged, not trained again
    rows = {row["run"]: row for row in json.loads((tmp_path / "second" / RESULTS_FILE).read_text())["runs"]}
    assert set(rows) == {"transformer++-s0", "iiet-r3-s0"}
    assert rows["transformer++-s0"]["merged_from"] == str(kept) and "merged_from" not in rows["iiet-r3-s0"]
    assert rows["iiet-r3-s0"]["finished"] and rows["iiet-r3-s0"]["block_evaluations"] == 13
    euler = first["runs"][0]
    assert rows["transformer++-s0"]["val_loss"] == euler["val_loss"]
    assert f"{euler['val_loss']:.3f}, n=1) by" in report and "at equal tokens, IIET (r=3)" in report
    ppl = euler["evaluation"]["val"]["perplexity"]
    assert f"| Transformer++ | {ppl:.2f} |" in report  # the merged run's evaluation is in the tables
    assert f"Merged from `{kept}`" in report and f"from {kept} |" in report

    def refused(**changes):
        with pytest.raises(IIETError, match="--merge_results"):
            run_study(_small_study(tmp_path, "third", arms=["iiet-r3"], train_tokens=512, data=data, **changes))
        assert not (tmp_path / "third").exists()  # refused before anything is written

    refused(merge_results=[str(kept)], lr=3e-3)  # other training settings
    refused(merge_results=[str(tmp_path / "nowhere.json")])
    (tmp_path / "other.json").write_text(json.dumps({**first, "data": {**first["data"], "tokenizer_hash": "x"}}))
    refused(merge_results=[str(tmp_path / "other.json")])  # other data
    (tmp_path / "study.json").write_text(json.dumps({"wall_s": {}}))
    refused(merge_results=[str(tmp_path / "study.json")])  # not a results.json


@pytest.mark.slow
def test_iiad_teaches_with_the_first_seed_that_has_a_checkpoint_and_distils_a_plan_once(tmp_path):
    """On a machine that has only the record of seed 0 (merged) IIAD's teacher is seed 1, trained here; a student
    whose plan another student already has is not distilled again (E-IIET's plan can be the Lower Bound's)."""
    import shutil

    from iiet.study.compute import RESULTS_FILE

    run_study(_small_study(tmp_path, "first", arms=["iiet-r3"], train_tokens=512, iiad=False))
    kept = tmp_path / "kept.json"
    shutil.copy(tmp_path / "first" / RESULTS_FILE, kept)
    shutil.rmtree(tmp_path / "first" / "runs")
    settings = dict(arms=["iiet-r3"], train_tokens=512, seeds=2, data=str(tmp_path / "first" / "data"),
                    merge_results=[str(kept)], influence_segments=4, distill_fraction=0.25)
    report = run_study(_small_study(tmp_path, "second", students=["lower-bound"], **settings)).read_text()
    root = tmp_path / "second"
    assert not (root / "runs" / "iiet-r3-s0").exists() and (root / "runs" / "iiet-r3-s1" / "final").is_dir()
    plan = json.loads((root / "iiad" / "plan-lower-bound.json").read_text())
    assert plan["model"]["path"] == str(root / "runs" / "iiet-r3-s1" / "final")
    teacher = yaml.safe_load((root / "runs" / "lower-bound" / "train_config.yaml").read_text())["distill"]["teacher"]
    assert teacher == plan["model"]["path"]
    assert "measured on `iiet-r3-s1`" in report

    shutil.copy(root / "iiad" / "plan-lower-bound.json", root / "iiad" / "plan-e-iiet.json")  # E-IIET = Lower Bound
    report = run_study(_small_study(tmp_path, "second", students=["lower-bound", "e-iiet"], **settings)).read_text()
    assert not (root / "runs" / "e-iiet").exists()  # not distilled again
    state = json.loads((root / "study.json").read_text())
    assert state["same_student"] == {"e-iiet": "lower-bound"}
    assert "e-iiet" not in state["eval"]  # its evaluation is the student's it shares
    evaluations = Study(_small_study(tmp_path, "second", students=["lower-bound", "e-iiet"], **settings)).evaluations
    assert evaluations["e-iiet"] == evaluations["lower-bound"] and evaluations["e-iiet"]["val"]["loss"] > 0
    assert "the same plan as Lower Bound (IIAD): one student, distilled once" in report

    # A study merging that record, with a teacher of its own (seed 2): the merged student is not distilled again.
    third = dict(settings, seeds=3, merge_results=[str(root / RESULTS_FILE)], students=["lower-bound"])
    report = run_study(_small_study(tmp_path, "third", **third)).read_text()
    assert (tmp_path / "third" / "runs" / "iiet-r3-s2" / "final").is_dir()
    assert not (tmp_path / "third" / "runs" / "lower-bound").exists()
    assert not (tmp_path / "third" / "iiad" / "influence").exists()  # nothing to distil: nothing measured
    ppl = state["eval"]["lower-bound"]["val"]["perplexity"]
    assert f"| Lower Bound (IIAD) | {ppl:.2f} |" in report


def test_the_report_names_the_command_that_regenerates_it():
    from iiet.study.reproduce import regenerating_arguments

    argv = ["reproduce", "--output_dir", "s", "--report_only", "true", "--workers", "2", "--report_only=false"]
    assert regenerating_arguments(argv) == ["reproduce", "--output_dir", "s", "--workers", "2"]


def test_a_failing_parallel_run_stops_the_study_with_its_own_error(tmp_path):
    from iiet.train.lock import RunLock

    config = _small_study(tmp_path, "study", arms=["transformer++", "iiet-r1"], train_tokens=512, workers=2)
    busy = tmp_path / "study" / "runs" / "iiet-r1-s0"
    busy.mkdir(parents=True)
    lock = RunLock(busy)  # another writer holds this run
    try:
        with pytest.raises(IIETError, match="iiet-r1-s0"):
            run_study(config)
    finally:
        lock.release()
    assert not (busy / "final").exists()


@pytest.mark.slow
def test_pcformer_with_an_explicit_first_layer_goes_through_iiad(tmp_path):
    """PCformer (first layer explicit) is an arm, and IIAD treats it as it treats IIET: its influence, an E-IIET
    plan of predictor orders distilled into a student, and its Lower Bound (Distil PCformer, an Euler student)."""
    config = _small_study(tmp_path, "study", arms=["pcformer-fl"], train_tokens=1024, influence_segments=4,
                          distill_fraction=0.25, students=["e-iiet"])
    report = run_study(config).read_text()
    root = tmp_path / "study"
    plan = json.loads((root / "iiad" / "plan-pcformer-e-iiet.json").read_text())
    student = json.loads((root / "runs" / "pcformer-e-iiet" / "final" / "config.json").read_text())
    assert student["scheme"]["name"] == "pcformer" and student["scheme"]["order_plan"] == plan["iteration_plan"]
    assert plan["iteration_plan"][0] == 0  # the teacher's explicit first layer stays explicit
    euler = json.loads((root / "runs" / "distil-pcformer" / "final" / "config.json").read_text())
    assert euler["scheme"]["name"] == "euler"  # the Lower Bound of PCformer: one explicit step per layer
    assert (root / "iiad" / "influence-pcformer" / "iteration_influence.png").is_file()
    assert {"pcformer-fl-s0", "pcformer-e-iiet", "distil-pcformer"} <= set(
        json.loads((root / "study.json").read_text())["eval"])
    assert "PCformer, E-IIET plan (IIAD)" in report and "Distil PCformer" in report


def test_the_verdict_states_the_gap_along_the_way_at_equal_compute():
    """The verdict's range: the other arm interpolated (in log tokens or FLOPs) at each evaluation of IIET r=3
    that its curve spans; evaluations beyond its curve are left out."""
    from iiet.study.report import compute_verdict, curve_gaps

    def row(run, points, per_token):
        curve = [{"tokens": t, "training_flops": t * per_token, "val_loss": v} for t, v in points]
        return {"run": run, "finished": True, "val_loss": curve[-1]["val_loss"], "val_curve": curve}

    iiet = row("iiet-r3-s0", [(100, 3.0), (200, 2.5), (400, 2.0), (800, 1.8)], per_token=2.0)
    euler = row("transformer++-s0", [(100, 3.2), (400, 2.6)], per_token=1.0)
    flops = row("transformer++-flops-s0", [(200, 2.8), (800, 1.6)], per_token=1.0)
    assert curve_gaps(iiet["val_curve"], euler["val_curve"], "tokens") == pytest.approx([0.2, 0.4, 0.6])
    # On the FLOPs axis IIET's 100, 200, 400 tokens are 200, 400, 800 FLOPs: flops interpolates to 2.8, 2.2, 1.6.
    assert curve_gaps(iiet["val_curve"], flops["val_curve"], "training_flops") == pytest.approx([-0.2, -0.3, -0.4])
    verdict = compute_verdict([iiet, euler, flops])
    assert "beats Transformer++ (2.600, n=1) by 0.800 nats/token" in verdict
    assert "minus IIET (r=3) from +0.200 to +0.600 over 3 evaluations" in verdict
    assert "loses to Transformer++ at IIET r=3's training FLOPs (more tokens) (1.600, n=1) by 0.200" in verdict
    assert "from -0.400 to -0.200 over 3 evaluations" in verdict
