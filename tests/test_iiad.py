"""IIAD: influence (Eq. 12), iteration plans (§4.1), distillation losses and trainer (Eq. 13-15), commands."""

from __future__ import annotations

import itertools
import json
import math
import random
import types

import pytest
import torch
import torch.nn.functional as F

import iiet.cli
from iiet import IIETConfig, IIETForCausalLM
from iiet.errors import IIETError
from iiet.iiad.distill import (
    DistillConfig,
    DistillTrainConfig,
    DistillationTrainer,
    build_student,
    check_pair,
    distill,
    hidden_state_mse,
    iiad_loss,
    kl_divergence,
    student_config,
    student_scheme,
)
from iiet.iiad.identity import check_identity
from iiet.iiad.influence import Influence, InfluenceAccumulator, compute_influence
from iiet.iiad.plan import Plan, budget_plan, e_iiet_threshold, kept_influence, make_plan, threshold_plan
from iiet.iiad.segments import reservoir_sample, sample_segments
from iiet.train.config import DataConfig, OptimConfig, RunConfig
from iiet.train.trainer import Trainer

from .conftest import TINY, tiny_model

IIET_R2 = {"name": "iiet", "num_iterations": 2}
SEQ_LEN = 16
TEACHER_STEPS = 60
ALPHA = 100.0  # the per-element hidden-state MSE of a tiny model is ~0.01: weigh it like the CE and KL terms
WORDS = "the river flows past a quiet town where old bridges cross water and people walk to market".split()


# -- fixtures: a tokenizer, prepared data, saved tiny checkpoints ---------------------------------------------------


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "." for _ in range(120)]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def data_dir(text_file, tmp_path_factory):
    from iiet.data import prepare_data, train_tokenizer

    root = tmp_path_factory.mktemp("data")
    train_tokenizer([str(text_file)], root / "tokenizer", vocab_size=TINY["vocab_size"] + 199, min_frequency=1)
    # Several small documents so that both splits hold sequences.
    docs = root / "docs"
    docs.mkdir()
    for i, line in enumerate(text_file.read_text().splitlines()):
        (docs / f"{i:03d}.txt").write_text(line)
    prepare_data([str(docs)], str(root / "tokenizer"), root / "packed", seq_len=SEQ_LEN, val_fraction=0.2)
    return root


def _vocab(data_dir) -> int:
    return json.loads((data_dir / "packed" / "meta.json").read_text())["vocab_size"]


def _save(model, path, data_dir=None):
    model.save_pretrained(path)
    if data_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(data_dir / "tokenizer").save_pretrained(path)
    return str(path)




@pytest.fixture(scope="module")
def teacher_dir(data_dir, tmp_path_factory):
    """A tiny IIET (r = 2) trained briefly on the data, so that teacher and data agree as after pretraining."""
    from iiet.data import PackedDataset

    model = tiny_model(IIET_R2, seed=1, perturb=False, vocab_size=_vocab(data_dir)).train()
    data = PackedDataset(data_dir / "packed", "train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(TEACHER_STEPS):
        batch = torch.stack([data[int(i)] for i in torch.randint(len(data), (8,), generator=generator)])
        model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return _save(model.eval(), tmp_path_factory.mktemp("teacher"), data_dir)


def _run_config(tmp_path, data_dir, steps, lr=1e-3, **distill):
    return DistillTrainConfig(
        data=DataConfig(path=str(data_dir / "packed")),
        optim=OptimConfig(lr=lr, warmup_ratio=0.0, batch_tokens=4 * SEQ_LEN, micro_batch_size=4, max_steps=steps),
        run=RunConfig(output_dir=str(tmp_path / "run"), device="cpu", progress_bar=False, checkpoint_every=0,
                      eval_every=0, eval_batches=1, log_every=1),
        distill=DistillConfig(**distill),
    )


# -- influence ------------------------------------------------------------------------------------------------------


def test_influence_is_zero_when_every_block_update_is_zero():
    model = tiny_model({"name": "iiet", "num_iterations": 2}, perturb=False)
    with torch.no_grad():
        for layer in model.model.layers:  # F(x) = o_proj(...) + down_proj(...) = 0: every state equals its input
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    segments = [torch.randint(1, 100, (n,)) for n in (5, 9, 12)]
    result = compute_influence(model, segments, batch_size=2, progress=False)
    assert len(result.block) == 3 and [len(row) for row in result.iteration] == [3, 3, 3]
    assert max(abs(v) for v in result.block + sum(result.iteration, [])) < 1e-6


def test_accumulator_matches_a_hand_computation_and_skips_padding():
    # One layer, one correction; token 0: input (1, 0) -> iterate 0 (1, 1) -> iterate 1 (0, 1);
    # token 1: input (1, 0) -> (1, 0) -> (-1, 0); token 2 is padding with states that would change the result.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    y0 = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    y1 = torch.tensor([[[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
    accumulator = InfluenceAccumulator()
    accumulator.update((x, y1), [(x, y0, y1)], torch.tensor([[1, 1, 0]]))
    s = 1 / math.sqrt(2)
    assert accumulator.iteration_influence()[0] == pytest.approx([1 - (s + 1) / 2, 1 - (s - 1) / 2])
    assert accumulator.block_influence() == pytest.approx([1 - (0 - 1) / 2])
    assert accumulator.num_tokens == 2 and accumulator.num_segments == 1


def test_streaming_batched_influence_equals_per_segment_computation():
    model = tiny_model({"name": "iiet", "iteration_plan": [0, 3, 1]})
    torch.manual_seed(0)
    segments = [torch.randint(1, 100, (n,)) for n in (4, 11, 7, 16, 2)]
    result = compute_influence(model, segments, batch_size=2, progress=False)  # padded batches of 2
    block_sum, iteration_sum, tokens = torch.zeros(3), [torch.zeros(len(r)) for r in result.iteration], 0
    with torch.no_grad():
        for segment in segments:  # one unpadded segment at a time
            out = model(segment[None], output_hidden_states=True, output_iterations=True, use_cache=False)
            h = out.hidden_states
            block_sum += torch.stack([F.cosine_similarity(h[n], h[n + 1], dim=-1).sum() for n in range(3)])
            for n, states in enumerate(out.iterations):
                iteration_sum[n] += torch.stack(
                    [F.cosine_similarity(states[i - 1], states[i], dim=-1).sum() for i in range(1, len(states))])
            tokens += len(segment)
    assert result.block == pytest.approx((1 - block_sum / tokens).tolist(), abs=1e-5)
    for row, sums in zip(result.iteration, iteration_sum):
        assert row == pytest.approx((1 - sums / tokens).tolist(), abs=1e-5)
    assert result.data["num_tokens"] == tokens and result.data["num_segments"] == len(segments)


def test_influence_file_identifies_its_model(tmp_path):
    model = tiny_model(IIET_R2)
    result = compute_influence(model, [torch.randint(1, 100, (8,))], progress=False)
    loaded = Influence.load(result.save(tmp_path / "influence.json"))
    assert loaded == result
    check_identity(loaded.model, model, "influence")  # same model: fine
    with pytest.warns(UserWarning, match="other weights"):
        check_identity(loaded.model, tiny_model(IIET_R2, seed=5), "influence")
    with pytest.raises(IIETError, match="another model"):
        check_identity(loaded.model, tiny_model(IIET_R2, num_hidden_layers=4), "influence")


def test_segments_from_prepared_data_and_text(data_dir, text_file):
    packed, info = sample_segments(str(data_dir / "packed"), 5, 10, 10_000, split="train", seed=1)
    assert len(packed) == 5 and all(len(s) == 10 for s in packed) and info["kind"] == "prepared"
    again, _ = sample_segments(str(data_dir / "packed"), 5, 10, 10_000, split="train", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(packed, again))
    text, info = sample_segments(str(text_file), 1000, 8, 10_000, tokenizer=str(data_dir / "tokenizer"))
    assert info["kind"] == "text" and len(text) == info["available"] and max(len(s) for s in text) == 8
    with pytest.raises(IIETError, match="tokens but the model"):
        sample_segments(str(text_file), 4, 8, 50, tokenizer=str(data_dir / "tokenizer"))
    sample, seen = reservoir_sample(iter(range(100)), 10, seed=0)
    assert seen == 100 and len(set(sample)) == 10


# -- plans ----------------------------------------------------------------------------------------------------------

# Three layers x (initial compute + 3 corrections); the smallest initial-compute influence is 0.20.
TABLE = [[0.30, 0.05, 0.01, 0.20], [0.20, 0.10, 0.02, 0.01], [0.25, 0.21, 0.30, 0.02]]


def _influence(table, scheme=None, layers=None) -> Influence:
    config = IIETConfig(**{**TINY, "num_hidden_layers": layers or len(table)},
                        scheme=scheme or {"name": "iiet", "num_iterations": len(table[0]) - 1})
    from iiet.models.comparison import config_values

    return Influence(block=[0.1] * len(table), iteration=table,
                     model={"scheme": dict(config.scheme), "config": config_values(config)})


def test_e_iiet_rule_worked_example():
    assert e_iiet_threshold(TABLE) == 0.20
    assert threshold_plan(TABLE, 0.20, "count") == [1, 0, 2]  # 0.20 (>= is kept); none; 0.21 and 0.30
    assert threshold_plan(TABLE, 0.20, "leading") == [0, 0, 2]  # layer 0 stops at its first small step
    assert threshold_plan(TABLE, 0.20, "through-last") == [3, 0, 2]  # layer 0 runs up to its influential step 3
    plan = make_plan(_influence(TABLE), "e-iiet")
    assert plan.iteration_plan == [1, 0, 2] and plan.threshold == 0.20
    assert plan.corrections == {"before": 9, "after": 3}
    assert plan.block_evaluations == {"before": 12, "after": 6}
    assert plan.flops_per_token["after"] < plan.flops_per_token["before"]
    assert plan.scheme == {**_influence(TABLE).model["scheme"], "iteration_plan": [1, 0, 2]}
    assert make_plan(_influence(TABLE), "lower-bound").iteration_plan == [0, 0, 0]
    assert make_plan(_influence(TABLE), "threshold", threshold=0.04).iteration_plan == [2, 1, 2]


def test_budget_rule_worked_example_and_uneven_measured_plans():
    # 2 extra evaluations: layer 2's 0.21 + 0.30 = 0.51 beats any other pair (greedy by next step would also
    # take 0.21 first, then 0.30).
    assert make_plan(_influence(TABLE), "budget", budget_evaluations=5).iteration_plan == [0, 0, 2]
    # A large correction behind a small one: greedy-by-next-step would take 0.10 then 0.05; the best is 0.01 + 0.9.
    assert budget_plan([[0.3, 0.01, 0.9], [0.3, 0.10, 0.05]], 2) == [2, 0]
    assert budget_plan([[0.3], [0.3, 0.2, 0.1], [0.3, 0.4]], 10) == [0, 2, 1]  # all fits: the full measured plan


def test_budget_is_never_exceeded_and_optimal_on_random_tables():
    rng = random.Random(0)
    for _ in range(40):
        layers = rng.randint(1, 4)
        table = [[rng.random() for _ in range(1 + rng.randint(0, 3))] for _ in range(layers)]
        for budget in range(0, sum(len(r) - 1 for r in table) + 2):
            plan = budget_plan(table, budget)
            assert sum(plan) <= budget and all(0 <= k <= len(r) - 1 for k, r in zip(plan, table))
            best = max(kept_influence(table, list(p)) for p in itertools.product(*[range(len(r)) for r in table])
                       if sum(p) <= budget)
            assert kept_influence(table, plan) == pytest.approx(best)


def test_flops_budget_never_exceeds_its_fraction():
    rng = random.Random(1)
    for _ in range(10):
        table = [[rng.random() for _ in range(4)] for _ in range(3)]
        for fraction in (0.3, 0.45, 0.6, 0.8, 1.0):
            plan = make_plan(_influence(table), "budget", budget_flops_fraction=fraction, context=64)
            assert plan.flops_per_token["after"] <= fraction * plan.flops_per_token["before"]
    assert make_plan(_influence(TABLE), "budget", budget_flops_fraction=1.0).iteration_plan == [3, 3, 3]


def test_plan_rule_errors():
    with pytest.raises(IIETError, match="below the 3 initial computations"):
        make_plan(_influence(TABLE), "budget", budget_evaluations=2)
    with pytest.raises(IIETError, match="exactly one"):
        make_plan(_influence(TABLE), "budget", budget_evaluations=5, budget_flops_fraction=0.5)
    with pytest.raises(IIETError, match="threshold"):
        make_plan(_influence(TABLE), "e-iiet", threshold=0.1)
    with pytest.raises(IIETError, match="iiet models"):
        make_plan(_influence([[0.1]] * 3, scheme={"name": "euler"}), "e-iiet")


# -- distillation losses --------------------------------------------------------------------------------------------


def test_loss_terms_equal_their_formulas():
    torch.manual_seed(0)
    B, T, d, V, n = 2, 3, 4, 5, 3
    teacher = [torch.randn(B, T, d) for _ in range(n)]
    student = [torch.randn(B, T, d) for _ in range(n)]
    expected = sum(((t - s) ** 2).sum() / (B * T * d) for t, s in zip(teacher, student)) / n  # Eq. 13, / d
    assert hidden_state_mse(teacher, student) == pytest.approx(expected.item(), rel=1e-6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = sum(((t - s) ** 2)[mask.bool()].sum() / (3 * d) for t, s in zip(teacher, student)) / n
    assert hidden_state_mse(teacher, student, mask) == pytest.approx(expected.item(), rel=1e-6)

    zt, zs, tau = torch.randn(B, T, V), torch.randn(B, T, V), 2.0
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs / tau, -1)
    expected = (p * (p.log() - q.log())).sum() / (B * T)  # Eq. 14, no tau^2
    assert kl_divergence(zt, zs, tau) == pytest.approx(expected.item(), rel=1e-5)
    assert kl_divergence(zt, zt, tau).item() == pytest.approx(0.0, abs=1e-6)
    assert iiad_loss(torch.tensor(2.0), 3.0, 5.0, alpha=0.5, beta=0.1).item() == pytest.approx(2 + 1.5 + 0.5)
    with pytest.raises(IIETError, match="vocabulary"):
        kl_divergence(zt, torch.randn(B, T, V + 1))


# -- the student and the trainer ------------------------------------------------------------------------------------


def test_student_is_the_plan_on_a_copy_of_the_teacher_weights():
    teacher = tiny_model({"name": "iiet", "num_iterations": 2, "history": "normalized"})
    def student_of(model, plan=None, scheme=None):
        student, _ = build_student(model, student_config(model.config, student_scheme(model, plan, scheme)))
        return student

    student = student_of(teacher, Plan(iteration_plan=[0, 2, 1], scheme={}))
    assert student.config.scheme_config.corrections(3) == [0, 2, 1] and student.config.scheme["history"] == "normalized"
    assert all(torch.equal(p, teacher.state_dict()[k]) for k, p in student.state_dict().items())
    full = student_of(teacher, Plan(iteration_plan=[2, 2, 2], scheme={}))
    ids = torch.randint(1, 100, (1, 8))
    assert torch.allclose(full.eval()(ids).logits, teacher(ids).logits, atol=1e-5)  # the full plan is the teacher
    # Distil PCformer: an Euler student keeps every block weight; the PCformer's scheme parameters are dropped.
    pcformer = tiny_model({"name": "pcformer"})
    euler = student_of(pcformer, scheme="euler")
    assert all(torch.equal(p, pcformer.state_dict()[k]) for k, p in euler.state_dict().items())


def test_bad_plans_and_pairs_are_rejected(tmp_path):
    teacher = tiny_model(IIET_R2)
    with pytest.raises(IIETError, match="4 entries but the teacher has 3 layers"):
        student_scheme(teacher, Plan(iteration_plan=[0, 0, 0, 0], scheme={}))
    with pytest.raises(IIETError, match="more corrections than the teacher"):
        student_scheme(teacher, Plan(iteration_plan=[0, 3, 0], scheme={}))
    with pytest.raises(IIETError, match="exactly one"):
        student_scheme(teacher)
    other = compute_influence(tiny_model(IIET_R2, num_hidden_layers=4), [torch.randint(1, 100, (6,))], progress=False)
    foreign = make_plan(other, "e-iiet")
    foreign.iteration_plan = foreign.iteration_plan[:3]
    with pytest.raises(IIETError, match="another model"):
        student_scheme(teacher, Plan.load(foreign.save(tmp_path / "plan.json")))
    with pytest.raises(IIETError, match="vocabulary"):
        check_pair(teacher.config, tiny_model(IIET_R2, vocab_size=77).config, alpha=1.0)
    with pytest.raises(IIETError, match="layers"):
        check_pair(teacher.config, tiny_model("euler", num_hidden_layers=2).config, alpha=1.0)
    check_pair(teacher.config, tiny_model("euler", num_hidden_layers=2).config, alpha=0.0)  # logits only: fine


def test_distillation_with_zero_weights_is_continued_pretraining(tmp_path, data_dir, teacher_dir):
    config = _run_config(tmp_path, data_dir, steps=2, teacher=teacher_dir, student_scheme={"name": "iiet",
                         "iteration_plan": [0, 1, 0]}, alpha=0.0, beta=0.0)
    distilling = DistillationTrainer(config)
    config.run.output_dir = str(tmp_path / "plain")
    plain = DistillationTrainer(config)
    plain.compute_loss = types.MethodType(Trainer.compute_loss, plain)  # the pretraining step, same student
    plain.teacher = None  # and the teacher is never needed
    batch = torch.stack([distilling.train_data[i] for i in range(4)])
    assert distilling.compute_loss(distilling.model, batch)[0] == plain.compute_loss(plain.model, batch)[0]
    for _ in range(2):
        indices = distilling.data_order.take(distilling.batch_sequences)
        distilling.train_step(indices)
        plain.train_step(indices)
    for (name, a), b in zip(distilling.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(a, b), name
    distilling.close(), plain.close()


def test_tiny_distillation_brings_the_student_closer_to_its_teacher(tmp_path, data_dir, teacher_dir):
    config = _run_config(tmp_path, data_dir, steps=20, lr=3e-3, teacher=teacher_dir,
                         student_scheme={"name": "iiet", "iteration_plan": [0, 0, 0]}, alpha=ALPHA, beta=1.0)
    trainer = DistillationTrainer(config)
    batch = torch.stack([trainer.val_data[i] for i in range(min(4, len(trainer.val_data)))])

    def gap():
        with torch.no_grad():
            t = trainer.teacher(batch, output_hidden_states=True)
            s = trainer.model.eval()(batch, output_hidden_states=True)
        mse = hidden_state_mse(t.hidden_states[1:], s.hidden_states[1:])
        return kl_divergence(t.logits, s.logits).item(), mse.item()

    kl_before, mse_before = gap()
    summary = trainer.fit()
    trainer.close()
    kl_after, mse_after = gap()
    assert kl_after < 0.7 * kl_before and mse_after < 0.7 * mse_before
    assert summary["step"] == 20 and not any(p.requires_grad for p in trainer.teacher.parameters())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "mse", "kl", "loss"} <= set(records[0])
    exported = IIETForCausalLM.from_pretrained(summary["final"])
    assert exported.config.scheme_config.corrections(3) == [0, 0, 0]


def test_distillation_rejects_a_student_with_another_vocabulary(tmp_path, data_dir, teacher_dir):
    student_dir = _save(tiny_model(IIET_R2, vocab_size=_vocab(data_dir) + 3), tmp_path / "student")
    config = _run_config(tmp_path, data_dir, steps=1, teacher=teacher_dir, student=student_dir)
    with pytest.raises(IIETError, match="vocabulary"):
        DistillationTrainer(config)


def test_the_student_takes_the_special_tokens_of_the_data_not_of_an_older_teacher(tmp_path, data_dir, teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert (teacher.config.eos_token_id, teacher.config.pad_token_id) == (2, 0)  # LLaMA's eos, conftest's pad
    config = _run_config(tmp_path, data_dir, steps=1, teacher=teacher_dir, plan=None,
                         student_scheme={"name": "iiet", "iteration_plan": [0, 1, 0]}, alpha=0.0, beta=1.0)
    summary = distill(config)
    student = AutoModelForCausalLM.from_pretrained(summary["final"])
    tokenizer = AutoTokenizer.from_pretrained(summary["final"])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(student.config, key) == getattr(student.generation_config, key) == getattr(tokenizer, key)


# -- the commands ---------------------------------------------------------------------------------------------------


def test_influence_plan_distill_commands(tmp_path, data_dir, teacher_dir, capsys):
    out = tmp_path / "influence"
    iiet.cli.main(["influence", "--model", teacher_dir, "--data", str(data_dir / "packed"), "--num_segments", "6",
                   "--batch_size", "4", "--output_dir", str(out), "--split", "train", "--progress_bar", "false",
                   "--device", "cpu"])
    assert {p.name for p in out.iterdir()} == {"influence.json", "iteration_influence.png", "block_influence.png"}
    iiet.cli.main(["plan", "--influence", str(out / "influence.json"), "--rule", "budget",
                   "--budget_evaluations", "5", "--output", str(tmp_path / "plan.json")])
    text = capsys.readouterr().out
    assert "block evaluations per token: 9 -> 5" in text
    iiet.cli.main(["distill", "--distill.teacher", teacher_dir, "--distill.plan", str(tmp_path / "plan.json"),
                   "--data.path", str(data_dir / "packed"), "--optim.max_steps", "1", "--optim.batch_tokens",
                   str(2 * SEQ_LEN), "--optim.micro_batch_size", "2", "--run.output_dir", str(tmp_path / "run"),
                   "--run.device", "cpu", "--run.progress_bar", "false", "--run.eval_batches", "1"])
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    with pytest.raises(SystemExit):  # a plan longer than the model: one error line, exit status 2
        (tmp_path / "long.json").write_text(json.dumps({"iteration_plan": [0, 0, 0, 0, 0]}))
        iiet.cli.main(["distill", "--distill.teacher", teacher_dir, "--distill.plan", str(tmp_path / "long.json"),
                       "--data.path", str(data_dir / "packed"), "--optim.max_steps", "1",
                       "--run.output_dir", str(tmp_path / "run2")])
    assert "iiet: error: the plan has 5 entries" in capsys.readouterr().err


def test_pcformer_with_an_explicit_first_layer_goes_through_iiad_like_iiet():
    """Influence -> the Lower Bound and E-IIET plans -> a student on the teacher's weights. A layer's traced steps
    are its predictor and its corrector (order 0: no predictor, one explicit step); the threshold rules keep a layer's predictor
    where it is influential and make the layer one explicit step where it is not; the budget rule, which counts
    corrections, refuses with the reason."""
    teacher = tiny_model({"name": "pcformer", "order_plan": [0, 2, 2]})
    measured = compute_influence(teacher, [torch.randint(1, 100, (8,)) for _ in range(2)], progress=False)
    assert measured.row_labels() == ["predictor", "corrector"]
    assert measured.iteration[0][0] == pytest.approx(0.0, abs=1e-6)  # layer 0 has no predictor
    plan = make_plan(measured, "lower-bound")
    assert plan.iteration_plan == [0, 0, 0] and plan.scheme["order_plan"] == [0, 0, 0]
    assert plan.block_evaluations == {"before": 7, "after": 3}
    predictors = [row[0] for row in measured.iteration[1:]]
    for threshold in (0.0, min(predictors), max(predictors) + 1e-9):
        kept = make_plan(measured, "threshold", threshold=threshold)
        assert kept.scheme["order_plan"] == [0] + [2 if value >= threshold else 0 for value in predictors]
        assert kept.corrections["after"] == sum(value >= threshold for value in predictors)
    # E-IIET's threshold: the least influential step a layer always runs (its corrector; layer 0's one explicit step).
    e_iiet = make_plan(measured, "e-iiet")
    assert e_iiet.threshold == min(row[-1] for row in measured.iteration)
    assert e_iiet.scheme["order_plan"] == [0] + [2 if value >= e_iiet.threshold else 0 for value in predictors]
    with pytest.raises(IIETError, match="counts implicit-Euler corrections"):
        make_plan(measured, "budget", budget_evaluations=5)
    student, _ = build_student(teacher, student_config(teacher.config, student_scheme(teacher, plan)))
    assert student.config.passes_per_layer == [1, 1, 1]
    assert all(torch.equal(p, teacher.state_dict()[k]) for k, p in student.state_dict().items())
    with pytest.raises(IIETError, match="more corrections than the teacher"):
        student_scheme(teacher, Plan(iteration_plan=[2, 2, 2]))
