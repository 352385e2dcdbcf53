"""Pretraining: learning, exact resume, DDP/FSDP2 parity, recipes, bad input, CLI (tiny models, CPU, fp32)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iiet.errors import IIETError
from iiet.train import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, Trainer, load_config
from iiet.train.checkpoint import list_checkpoints
from iiet.train.config import warmup_cosine
from iiet.train.metrics import read_metrics
from iiet.train.trainer import DataOrder, build_model_config

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 64
SCHEMES = {"euler": {"name": "euler"}, "iiet": {"name": "iiet", "num_iterations": 2}}
TORCHRUN = Path(sys.executable).with_name("torchrun")
# fp32 on CPU; 1 vs 2 processes differ only in the order of floating-point sums (measured: ~5e-7).
PARITY_TOLERANCE = 1e-5




@pytest.fixture(scope="module")
def data_dir(corpus_file, tmp_path_factory) -> Path:
    """~100 KB of English-like text (conftest), 512-token BPE, 64-token sequences, 10% held out."""
    from iiet.data import prepare_data, train_tokenizer

    root = tmp_path_factory.mktemp("data")
    train_tokenizer([str(corpus_file)], root / "tokenizer", vocab_size=512)
    prepare_data([str(corpus_file)], str(root / "tokenizer"), root / "packed", seq_len=SEQ_LEN, val_fraction=0.1)
    return root / "packed"


def tiny_config(data_dir: Path, output_dir: Path, scheme: str = "euler", **changes) -> TrainConfig:
    """4 sequences x 64 tokens per step, micro-batches of 2 (so 2 accumulation steps in one process)."""
    config = TrainConfig(
        model=ModelConfig(preset="tiny", scheme=SCHEMES[scheme]),
        data=DataConfig(path=None if data_dir is None else str(data_dir)),
        optim=OptimConfig(lr=3e-3, warmup_ratio=0.1, batch_tokens=4 * SEQ_LEN, micro_batch_size=2, max_steps=8),
        run=RunConfig(output_dir=str(output_dir), device="cpu", log_every=1, eval_every=4, eval_batches=4,
                      checkpoint_every=4, progress_bar=False),
    )
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        setattr(getattr(config, section), name, value)
    return config


def fit(config: TrainConfig, until_step: int | None = None) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.fit(until_step)
    finally:
        trainer.close()


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}


# -- units ------------------------------------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_min():
    values = [warmup_cosine(s, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))
    assert warmup_cosine(100, 100, 0.1, 0.1) == pytest.approx(0.1)


def test_data_order_is_a_seeded_permutation_per_epoch_and_resumes():
    order = DataOrder(10, seed=3)
    first = order.take(6) + order.take(4)
    assert sorted(first) == list(range(10))
    second = order.take(10)
    assert sorted(second) == list(range(10)) and second != first
    resumed = DataOrder(10, seed=3)
    resumed.load_state_dict({"epoch": 0, "index": 6})
    assert resumed.take(7) == first[6:] + second[:3]
    assert DataOrder(10, seed=4).take(10) != first


def test_run_length_is_max_steps_or_max_tokens():
    config = TrainConfig(data=DataConfig(path="x"), optim=OptimConfig(batch_tokens=1024, max_tokens=10_240))
    config.validate()
    assert config.total_steps() == 10
    config.optim.max_steps = 5
    with pytest.raises(IIETError, match="exactly one of optim.max_steps and optim.max_tokens"):
        config.validate()
    config.optim.max_steps, config.optim.max_tokens = None, 100
    with pytest.raises(IIETError, match="the run has 0 steps"):
        config.validate()


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_validates(recipe):
    config = load_config(recipe)
    config.validate()
    seq_len = config.data.seq_len if config.data.sources else 2048  # Table-4 recipes: 2048-token data
    config.validate_batch(seq_len, world_size=1)
    model_config = build_model_config(config.model.preset, config.model.scheme, 32000, config.model.overrides)
    assert seq_len <= model_config.max_position_embeddings


def test_table4_recipes_match_the_paper():
    expected = {"55M": (4e-4, 128, 5000, 0.05), "340M": (3e-4, 256, 30000, 0.05), "740M": (3e-4, 512, 30000, 0.01)}
    for size, (lr, sequences, steps, warmup) in expected.items():
        for scheme in ("euler", "pcformer", "iiet-r3"):
            o = load_config(REPO / "configs" / f"{scheme}-{size}.yaml").optim
            assert (o.lr, o.batch_tokens, o.max_steps, o.warmup_ratio) == (lr, sequences * 2048, steps, warmup)
            assert (o.weight_decay, o.grad_clip, tuple(o.betas)) == (0.01, 1.0, (0.9, 0.95))


# -- training ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_loss_decreases_on_real_text(data_dir, tmp_path, scheme):
    summary = fit(tiny_config(data_dir, tmp_path, scheme, optim__max_steps=30, run__eval_every=0,
                              run__checkpoint_every=0))
    curve = losses(tmp_path)
    start, end = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (28, 29, 30)) / 3
    assert start == pytest.approx(math.log(512), abs=0.3)  # untrained: about uniform over the vocabulary
    assert end < start - 0.7
    assert summary["val_loss"] < start - 0.5
    assert summary["step"] == 30 and summary["tokens"] == 30 * 4 * SEQ_LEN


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_resume_continues_the_same_trajectory_exactly(data_dir, tmp_path, scheme):
    reference = fit(tiny_config(data_dir, tmp_path / "straight", scheme))
    config = tiny_config(data_dir, tmp_path / "resumed", scheme)
    fit(config, until_step=4)  # "killed" right after the step-4 checkpoint
    resumed = fit(config)  # a fresh Trainer, resume="auto"
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")  # bitwise: fp32 CPU is deterministic
    assert resumed["val_loss"] == reference["val_loss"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_gives_the_same_steps(data_dir, tmp_path):
    for checkpointing in (False, True):
        fit(tiny_config(data_dir, tmp_path / str(checkpointing), "iiet", optim__max_steps=3, run__eval_every=0,
                        run__activation_checkpointing=checkpointing))
    plain, recomputed = losses(tmp_path / "False"), losses(tmp_path / "True")
    assert all(abs(plain[s] - recomputed[s]) < 1e-6 for s in plain)


def test_checkpoints_are_pruned_and_export_loads_with_auto_classes(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = tiny_config(data_dir, tmp_path, "iiet", run__checkpoint_every=2, run__keep_last_k=2)
    trainer = Trainer(config)
    trainer.fit()
    trainer.close()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006", "step_00000008"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    batch = torch.tensor([tokenizer("The game was released in 2011.")["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, trainer.model(batch).logits)
    assert loaded.config.scheme == trainer.model.config.scheme
    assert load_config(tmp_path / "final" / "train_config.yaml").optim.max_steps == 8


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed next to this Python")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_on_the_same_global_batch(data_dir, tmp_path, parallel):
    """Each of 2 ranks runs 1 micro-batch of 2 where one process runs 2; losses and weights agree to 1e-5."""
    from safetensors.torch import load_file

    args = ["--model.scheme", json.dumps(SCHEMES["iiet"]), "--data.path", str(data_dir), "--optim.lr", "3e-3",
            "--optim.batch_tokens", str(4 * SEQ_LEN), "--optim.micro_batch_size", "2", "--optim.max_steps", "4",
            "--run.device", "cpu", "--run.log_every", "1", "--run.eval_every", "2", "--run.eval_batches", "5",
            "--run.checkpoint_every", "2", "--run.progress_bar", "false"]
    single = fit(tiny_config(data_dir, tmp_path / "single", "iiet", optim__max_steps=4, run__eval_every=2,
                             run__eval_batches=5, run__checkpoint_every=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets anyway
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "iiet.cli", "train", *args,
         "--run.parallel", parallel, "--run.output_dir", str(tmp_path / parallel)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("loss", "val_loss"):
        one, two = losses(tmp_path / "single", key), losses(tmp_path / parallel, key)
        assert one.keys() == two.keys()
        assert all(abs(one[s] - two[s]) < PARITY_TOLERANCE for s in one), (one, two)
    a = load_file(tmp_path / "single" / "final" / "model.safetensors")
    b = load_file(tmp_path / parallel / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < PARITY_TOLERANCE
    assert single["step"] == 4
    # Checkpoints hold the full state, so they change world size both ways: the 2-process step-2 checkpoint
    # resumes in one process, and the 1-process one in two, on the same trajectory.
    fit(tiny_config(data_dir, tmp_path / "continued", "iiet", optim__max_steps=4, run__eval_every=2,
                    run__eval_batches=5, run__checkpoint_every=2,
                    run__resume=str(tmp_path / parallel / "checkpoints" / "step_00000002")))
    one, continued = losses(tmp_path / "single"), losses(tmp_path / "continued")
    assert all(abs(one[s] - continued[s]) < PARITY_TOLERANCE for s in (3, 4)), (one, continued)
    shutil.copytree(tmp_path / "single", tmp_path / "widened")
    shutil.rmtree(tmp_path / "widened" / "final")
    shutil.rmtree(tmp_path / "widened" / "checkpoints" / "step_00000004")
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "iiet.cli", "train", *args,
         "--run.parallel", parallel, "--run.output_dir", str(tmp_path / "widened")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0 and "resumed from" in result.stdout, result.stderr[-3000:]
    widened = losses(tmp_path / "widened")
    assert all(abs(one[s] - widened[s]) < PARITY_TOLERANCE for s in (3, 4)), (one, widened)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(data_dir, tmp_path):
    args = lambda out: [sys.executable, "-m", "iiet.cli", "train", "--data.path", str(data_dir),  # noqa: E731
                        "--optim.batch_tokens", str(4 * SEQ_LEN), "--optim.micro_batch_size", "2",
                        "--optim.max_steps", "40", "--optim.lr", "3e-3", "--run.device", "cpu",
                        "--run.log_every", "1", "--run.eval_every", "10", "--run.checkpoint_every", "5",
                        "--run.progress_bar", "false", "--run.output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args(tmp_path / "straight"), check=True, capture_output=True, env=env)
    process = subprocess.Popen(args(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step_00000010").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(losses(tmp_path / "killed")) < 40
    subprocess.run(args(tmp_path / "killed"), check=True, capture_output=True, env=env)
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert losses(tmp_path / "killed", "val_loss") == losses(tmp_path / "straight", "val_loss")


# -- bad input: one IIETError each, nothing overwritten -----------------------------------------------------------


def test_missing_or_empty_data_path(data_dir, tmp_path):
    with pytest.raises(IIETError, match="does not exist|holds no prepared data"):
        Trainer(tiny_config(tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IIETError, match="holds no prepared data"):
        Trainer(tiny_config(tmp_path / "empty", tmp_path / "out"))
    with pytest.raises(IIETError, match="data.path is not set"):
        Trainer(tiny_config(None, tmp_path / "out"))


def test_tokenizer_larger_than_model_vocab(data_dir, tmp_path):
    with pytest.raises(IIETError, match="512 tokens but the model's vocab_size is 100"):
        Trainer(tiny_config(data_dir, tmp_path, model__overrides={"vocab_size": 100}))


def test_seq_len_beyond_max_position_embeddings(data_dir, tmp_path):
    with pytest.raises(IIETError, match="exceeds the model's max_position_embeddings 32"):
        Trainer(tiny_config(data_dir, tmp_path, model__overrides={"max_position_embeddings": 32}))


def test_unwritable_output_dir(data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(IIETError, match="cannot be created: .*a-file' is a file"):
        Trainer(tiny_config(data_dir, blocker / "run"))
    assert blocker.read_text() == "not a directory"


def test_batch_that_does_not_split(data_dir, tmp_path):
    with pytest.raises(IIETError, match="not a multiple of the data's seq_len=64"):
        Trainer(tiny_config(data_dir, tmp_path, optim__batch_tokens=100))
    with pytest.raises(IIETError, match="does not split into micro-batches"):
        Trainer(tiny_config(data_dir, tmp_path, optim__micro_batch_size=3))


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


@pytest.fixture
def trained_run(data_dir, tmp_path) -> Path:
    """A finished tiny run with checkpoints at steps 4 and 8."""
    fit(tiny_config(data_dir, tmp_path / "run"))
    return tmp_path / "run"


def test_resume_with_a_different_model_or_fresh_start_over_checkpoints(data_dir, trained_run):
    before = _snapshot(trained_run)
    with pytest.raises(IIETError, match="different model config .*num_hidden_layers"):
        Trainer(tiny_config(data_dir, trained_run, model__overrides={"num_hidden_layers": 2}))
    with pytest.raises(IIETError, match="different model config .*scheme"):
        Trainer(tiny_config(data_dir, trained_run, "iiet"))
    with pytest.raises(IIETError, match="already holds checkpoints"):
        Trainer(tiny_config(data_dir, trained_run, run__resume="none"))
    assert _snapshot(trained_run) == before


def test_checkpoint_written_before_a_new_config_field_still_resumes(data_dir, trained_run):
    # A checkpoint from an older iiet lacks config fields added since (at their defaults): it must still resume,
    # while a field set to another value is still a different model.
    newest = trained_run / "checkpoints" / "step_00000008"
    state_file = newest / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for key in ("residual_init_scale", "embedding_multiplier"):
        del state["model_config"][key]
    state_file.write_text(json.dumps(state))
    trainer = Trainer(tiny_config(data_dir, trained_run))
    assert trainer.step == 8
    trainer.close()
    with pytest.raises(IIETError, match="different model config .*residual_init_scale"):
        Trainer(tiny_config(data_dir, trained_run, model__overrides={"residual_init_scale": 0.5}))


def test_corrupt_checkpoint(data_dir, trained_run):
    newest = trained_run / "checkpoints" / "step_00000008"
    (trained_run / "checkpoints" / "step_00000012.tmp").mkdir()  # a save that crashed half-way: never a candidate
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a torn write
    before = _snapshot(trained_run)
    with pytest.raises(IIETError, match=f"{newest} has a truncated model.safetensors.*--run.resume .*step_00000004"):
        Trainer(tiny_config(data_dir, trained_run, run__resume=str(newest)))
    assert _snapshot(trained_run) == before
    with pytest.warns(UserWarning, match="newest valid checkpoint; skipped step_00000008"):
        trainer = Trainer(tiny_config(data_dir, trained_run))  # resume="auto" falls back to step 4
    assert trainer.step == 4
    trainer.close()
    (newest / "trainer_state.json").write_text("{not json")
    with pytest.raises(IIETError, match="has a corrupt trainer_state.json"):
        Trainer(tiny_config(data_dir, trained_run, run__resume=str(newest)))


# -- CLI --------------------------------------------------------------------------------------------------------


def test_cli_train_and_plot(data_dir, tmp_path, capsys):
    from iiet.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"model: {{preset: tiny, scheme: {{name: iiet, num_iterations: 1}}}}\n"
        f"data: {{path: {data_dir}}}\n"
        f"optim: {{lr: 3.0e-3, batch_tokens: {4 * SEQ_LEN}, micro_batch_size: 4, max_steps: 4}}\n"
        "run: {device: cpu, log_every: 2, eval_every: 2, checkpoint_every: 2, progress_bar: false}\n"
    )
    main(["train", "--config", str(recipe), "--run.output_dir", str(tmp_path / "a")])
    main(["train", "--config", str(recipe), "--run.output_dir", str(tmp_path / "b"), "--model.scheme", "{name: euler}"])
    assert "val_loss=" in capsys.readouterr().out
    main(["plot", "--runs", f"[{tmp_path / 'a'},{tmp_path / 'b'}]", "--output", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--run.output_dir", str(tmp_path / "c"), "--data.path", "/nowhere"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("iiet: error: ") and "/nowhere" in error and len(error.splitlines()) == 1


def test_cli_help_lists_every_section(capsys):
    from iiet.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--model.scheme", "--data.path", "--optim.batch_tokens", "--run.parallel", "--run.resume"):
        assert option in text

