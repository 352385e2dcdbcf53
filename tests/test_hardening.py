"""Hardening (issue 13): no code runs from a checkpoint, no silent NaN, one writer per run, every bad input one line.

Everything goes through the CLI (``iiet.cli.main`` in-process, two cases as subprocesses to prove that no traceback
escapes), on a tiny model and a self-contained synthetic corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iiet.cli import main
from iiet.train.checkpoint import sha256
from iiet.train.metrics import read_metrics

SEQ_LEN = 32


@pytest.fixture(scope="module")
def corpus(corpus_file, tmp_path_factory) -> Path:
    """The shared English-like corpus with a 300-token BPE and 32-token sequences (seconds to build)."""
    from iiet.data import prepare_data, train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    shutil.copy(corpus_file, root / "docs.jsonl")
    train_tokenizer([str(root / "docs.jsonl")], root / "tokenizer", vocab_size=300)
    prepare_data([str(root / "docs.jsonl")], str(root / "tokenizer"), root / "packed", seq_len=SEQ_LEN,
                 val_fraction=0.1)
    return root


def train_args(corpus: Path, output_dir: Path, *extra: str, steps: int = 8, every: int = 4) -> list[str]:
    return ["train", "--data.path", str(corpus / "packed"), "--model.overrides", "{num_hidden_layers: 2}",
            "--optim.batch_tokens", str(4 * SEQ_LEN), "--optim.micro_batch_size", "2", "--optim.max_steps", str(steps),
            "--optim.lr", "3e-3", "--run.device", "cpu", "--run.log_every", "1", "--run.eval_every", "0",
            "--run.eval_batches", "2", "--run.checkpoint_every", str(every), "--run.progress_bar", "false",
            "--run.output_dir", str(output_dir), *extra]


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``iiet ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    """The one ``iiet: error:`` line that stderr must consist of (warnings aside), without a traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("iiet: error: ")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    return errors[0]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "tensorboard" not in p.parts}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """A finished 8-step run with checkpoints at steps 4 and 8."""
    run = tmp_path_factory.mktemp("trained") / "run"
    code, _, err = cli(*train_args(corpus, run))
    assert code == 0, err
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


# -- 1. resuming never unpickles ---------------------------------------------------------------------------------


class _Payload:
    """A pickle that creates ``marker`` when unpickled (what a tampered checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fix_up_record(checkpoint: Path, name: str) -> None:
    """What an attacker does after replacing a file: record its new size and checksum."""
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    file = checkpoint / name
    state["files"][name] = {"bytes": file.stat().st_size, "sha256": sha256(file)}
    state_file.write_text(json.dumps(state))


def test_tampered_checkpoints_run_no_code(corpus, run_copy, tmp_path):
    marker = tmp_path / "code-ran"
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(_Payload(canary)))  # the payload works when unpickled ...
    assert canary.exists()
    payload = pickle.dumps(_Payload(marker))
    newest = step_dir(run_copy, 8)

    # ... as an optimizer-state file, with its size and SHA-256 fixed up to match
    (newest / "optimizer.safetensors").write_bytes(payload)
    _fix_up_record(newest, "optimizer.safetensors")
    code, _, err = cli(*train_args(corpus, run_copy, "--run.resume", str(newest)))
    assert code == 2 and "cannot be loaded" in error_line(err)
    assert not marker.exists()

    # ... and as the pickled .metadata of the torch.distributed.checkpoint layout of iiet < 0.2
    (newest / "state").mkdir()
    (newest / "state" / ".metadata").write_bytes(payload)
    state = json.loads((newest / "trainer_state.json").read_text())
    state.update(format_version=1, files={"state/.metadata": len(payload)})
    (newest / "trainer_state.json").write_text(json.dumps(state))
    code, _, err = cli(*train_args(corpus, run_copy, "--run.resume", str(newest)))
    assert code == 2 and "no longer reads that format" in error_line(err)
    assert not marker.exists()

    # ... and as a random-state file
    newest = step_dir(run_copy, 4)
    (newest / "rng_rank0.json").write_bytes(payload)
    _fix_up_record(newest, "rng_rank0.json")
    code, _, err = cli(*train_args(corpus, run_copy, "--run.resume", str(newest)))
    assert code == 2 and "cannot be loaded" in error_line(err)
    assert not marker.exists()


# -- 2. a diverging run stops --------------------------------------------------------------------------------------


def _all_finite(run: Path) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for c in run.glob("checkpoints/step_*") for t in
               load_file(c / "model.safetensors").values())


def test_divergence_stops_the_run_and_keeps_finite_checkpoints(corpus, tmp_path):
    run = tmp_path / "diverged"
    code, _, err = cli(*train_args(corpus, run, "--optim.lr", "1e3", steps=30, every=2))
    line = error_line(err)
    assert code == 1 and "training diverged at step" in line and "--optim.lr" in line
    assert list(run.glob("checkpoints/step_*")) and _all_finite(run)
    assert not (run / "final").exists()

    skipping = tmp_path / "skipping"  # skip-step: the same run with patience finishes, skipping the bad steps
    code, _, err = cli(*train_args(corpus, skipping, "--optim.lr", "1e3", "--optim.skip_nonfinite_steps", "1000",
                                   steps=30, every=10))
    assert code == 0, err
    assert max(r.get("skipped_steps", 0) for r in read_metrics(skipping)) > 0 and _all_finite(skipping)


# -- 3. one writer per run directory -------------------------------------------------------------------------------


def test_a_second_run_on_the_same_directory_is_refused(corpus, run_copy):
    from iiet.train import load_config
    from iiet.train.trainer import Trainer

    config = load_config(run_copy / "train_config.yaml")
    config.run.output_dir = str(run_copy)
    first = Trainer(config)  # holds the directory
    before = tree_hashes(run_copy)
    try:
        code, _, err = cli(*train_args(corpus, run_copy))
        assert code == 2 and f"in use by another iiet run (pid {os.getpid()}" in error_line(err)
        assert tree_hashes(run_copy) == before
    finally:
        first.close()
    # A lock left behind by a run that died (its pid is gone) does not hold the directory.
    (run_copy / ".iiet.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    code, _, err = cli(*train_args(corpus, run_copy))
    assert code == 0, err


# -- 4./5. invalid checkpoints -------------------------------------------------------------------------------------


def test_all_checkpoints_invalid_refuses_instead_of_starting_over(corpus, run_copy):
    for step in (4, 8):
        weights = step_dir(run_copy, step) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    before = tree_hashes(run_copy)
    code, _, err = cli(*train_args(corpus, run_copy))
    line = error_line(err)
    assert code == 2 and "step_00000004" in line and "step_00000008" in line and "move" in line
    assert tree_hashes(run_copy) == before


def test_flipped_bytes_are_caught_and_resume_falls_back(corpus, run_copy):
    weights = step_dir(run_copy, 8) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])  # same size, 64 bytes flipped
    weights.write_bytes(bytes(data))
    code, _, err = cli(*train_args(corpus, run_copy, "--run.resume", str(step_dir(run_copy, 8))))
    assert code == 2 and "corrupt model.safetensors" in error_line(err)
    shutil.rmtree(run_copy / "final")
    with pytest.warns(UserWarning, match="skipped step_00000008 .*corrupt model.safetensors"):
        code, out, err = cli(*train_args(corpus, run_copy))  # auto: warns, resumes from step 4, finishes
    assert code == 0 and f"resumed from {step_dir(run_copy, 4)}" in out, err


# -- 6. a full disk -------------------------------------------------------------------------------------------------


def test_disk_full_names_the_directory_keeps_checkpoints_and_resumes(corpus, tmp_path, monkeypatch):
    import safetensors.torch

    original = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if "step_00000004" in str(filename):
            raise OSError(28, "No space left on device")
        return original(tensors, filename, metadata=metadata)

    run = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    code, _, err = cli(*train_args(corpus, run, steps=6, every=2))
    line = error_line(err)
    assert code == 1 and f"no space left on {run / 'checkpoints'}" in line and "step_00000002" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]
    monkeypatch.setattr(safetensors.torch, "save_file", original)  # space freed
    code, out, err = cli(*train_args(corpus, run, steps=6, every=2))
    assert code == 0 and f"resumed from {step_dir(run, 2)}" in out, err


# -- 9. signals: a checkpoint, then exit 128 + N --------------------------------------------------------------------


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_is_exact(corpus, trained, tmp_path, monkeypatch):
    from iiet.train.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, indices):
        metrics = original(self, indices)
        if self.step == 2:  # during step 3
            signal.raise_signal(signal.SIGTERM)
        return metrics

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    code, _, err = cli(*train_args(corpus, run))
    assert code == 143 and f"interrupted by SIGTERM at step 3; saved {step_dir(run, 3)}" in error_line(err)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(Trainer, "train_step", original)
    code, _, err = cli(*train_args(corpus, run))
    assert code == 0, err
    assert losses(run) == losses(trained)  # bitwise: the resumed run continues the same trajectory


def test_ctrl_c_in_a_real_process_saves_and_exits_130_without_traceback(corpus, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "iiet.cli", *train_args(corpus, run, steps=100000, every=0)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= 2):
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 130, err[-2000:]
    assert "interrupted by SIGINT" in error_line(err)
    assert len(list(run.glob("checkpoints/step_*"))) == 1


# -- 8. distillation on data of another tokenizer --------------------------------------------------------------------


def test_distill_refuses_data_of_another_tokenizer(corpus, trained, tmp_path):
    from iiet.data import prepare_data, train_tokenizer

    other = tmp_path / "other"
    train_tokenizer([str(corpus / "docs.jsonl")], other / "tokenizer", vocab_size=280)
    prepare_data([str(corpus / "docs.jsonl")], str(other / "tokenizer"), other / "packed", seq_len=SEQ_LEN)
    code, _, err = cli("distill", "--distill.teacher", str(trained / "final"), "--distill.student_scheme", "euler",
                       "--data.path", str(other / "packed"), "--optim.max_steps", "1", "--run.device", "cpu",
                       "--run.output_dir", str(tmp_path / "student"))
    assert code == 2 and "prepared with another tokenizer" in error_line(err)
    assert not (tmp_path / "student").exists()


# -- CLI: version, examples, did-you-mean ---------------------------------------------------------------------------


def test_version_and_examples_in_help():
    from iiet import __version__
    from iiet.cli import COMMANDS
    from iiet.cli_parser import EXAMPLES

    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"iiet {__version__}"
    assert set(EXAMPLES) == set(COMMANDS)
    code, out, _ = cli("train", "--help")
    assert code == 0 and "examples:\n  iiet train --config" in out


@pytest.mark.parametrize("command", ["train", "bench", "plot", "plan", "eval", "data-prepare", "tokenizer-train",
                                     "upcycle", "influence", "distill", "reproduce", "demo", "export", "serve"])
def test_every_example_parses(command, monkeypatch):
    """Each example in --help is a valid command line (parsed up to running: --print_config)."""
    import shlex

    from iiet.cli_parser import EXAMPLES

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # examples name configs/ of the repository
    for example in EXAMPLES[command]:
        argv = shlex.split(example.split("#")[0])
        if argv[0] == "torchrun":
            argv = ["iiet", *argv[argv.index("iiet.cli") + 1:]]
        assert argv[0] == "iiet"
        code, _, err = cli(*argv[1:], "--print_config")
        assert code == 0, (example, err)


# -- the battery: every bad input is one line, exit 2, and changes nothing -----------------------------------------


def _bad_inputs(corpus: Path, trained: Path, root: Path) -> list[list[str]]:
    blocker = root / "a-file"
    blocker.write_text("not a directory")
    empty_run, binary_run, list_json, not_llama, garbage, corrupt = (
        root / n for n in ("empty-run", "binary-run", "list.json", "not-llama", "garbage", "corrupt"))
    empty_run.mkdir()
    (empty_run / "metrics.jsonl").write_text("")
    binary_run.mkdir()
    (binary_run / "metrics.jsonl").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    list_json.write_text("[1, 2, 3]")
    shutil.copytree(trained / "final", not_llama)  # an iiet model, not a LLaMA
    garbage.mkdir()
    (garbage / "config.json").write_text("{this is not json")
    shutil.copytree(trained / "final", corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    yaml_typo = root / "typo.yaml"
    yaml_typo.write_text("run:\n  outptu_dir: x\n")
    fresh = str(root / "fresh-run")  # must not be created by any refused command
    data, model = str(corpus / "packed"), str(trained / "final")
    return [
        ["trian"],
        ["train", "--bogus", "1"],
        ["train", "--run.outptu_dir", fresh],
        ["train", "--config", str(yaml_typo)],
        ["train", "--config", str(root / "missing.yaml")],
        ["train", "--optim.lr", "abc"],
        ["train", "--run.parallel", "dpp"],
        train_args(corpus, Path(fresh))[:-2] + ["--run.output_dir", str(blocker / "run")],
        train_args(corpus, Path(fresh), "--data.path", str(root / "nowhere")),
        train_args(corpus, Path(fresh), "--optim.max_steps", "0"),
        train_args(corpus, Path(fresh), "--optim.skip_nonfinite_steps", "-1"),
        train_args(corpus, Path(fresh), "--optim.batch_tokens", "100"),
        train_args(corpus, Path(fresh), "--model.preset", "huge"),
        train_args(corpus, trained, "--run.resume", "none"),
        train_args(corpus, trained, "--model.scheme", "{name: iiet, num_iterations: 2}"),
        train_args(corpus, Path(fresh), "--run.resume", str(root / "no-such-checkpoint")),
        ["plot", "--runs", f"[{root / 'nowhere'}]", "--output", str(root / "p.png")],
        ["plot", "--runs", f"[{empty_run}]", "--output", str(root / "p.png")],
        ["plot", "--runs", f"[{binary_run}]", "--output", str(root / "p.png")],
        ["plot", "--runs", f"[{trained}]", "--output", str(blocker / "p.png")],
        ["plan", "--influence", str(list_json), "--output", str(root / "plan.json")],
        ["plan", "--influence", str(root / "nowhere.json"), "--output", str(root / "plan.json")],
        ["plan", "--influence", str(list_json), "--output", str(blocker / "plan.json")],
        ["plan", "--influence", str(list_json), "--rule", "e-iit"],
        ["bench", "--models", f"[{corrupt}]", "--preset", "tiny", "--device", "cpu", "--output_dir", fresh],
        ["bench", "--models", f"[{garbage}]", "--preset", "tiny", "--device", "cpu", "--output_dir", fresh],
        ["bench", "--models", "[iiet]", "--preset", "tiny", "--output_dir", str(blocker / "bench")],
        ["bench", "--models", "[transformer+]", "--preset", "tiny", "--device", "cpu", "--output_dir", fresh],
        ["bench", "--modles", "[iiet]"],
        ["upcycle", "--llama_dir", str(not_llama), "--output_dir", fresh],
        ["upcycle", "--llama_dir", str(garbage), "--output_dir", fresh],
        ["influence", "--model", model, "--data", data, "--output_dir", str(blocker / "influence")],
        ["influence", "--model", str(garbage), "--data", data, "--output_dir", fresh],
        ["eval", "--models", f"[{model}]", "--output_dir", str(blocker / "eval")],
        ["tokenizer-train", "--sources", f"[{corpus / 'docs.jsonl'}]", "--output_dir", str(blocker / "tok")],
        ["data-prepare", "--sources", f"[{corpus / 'docs.jsonl'}]", "--tokenizer", str(corpus / "tokenizer"),
         "--output_dir", str(blocker / "data")],
        ["reproduce", "--preset", "huge", "--output_dir", fresh],
        ["reproduce", "--workers", "0", "--output_dir", fresh],
        ["reproduce", "--arms", "[]", "--output_dir", fresh],
        ["reproduce", "--merge_results", f"[{root / 'nowhere.json'}]", "--output_dir", fresh],
        ["reproduce", "--report_only", "true", "--compute_matched", "true", "--output_dir", fresh],
        ["distill", "--distill.teacher", str(root / "nowhere"), "--data.path", data, "--optim.max_steps", "1",
         "--run.output_dir", fresh],
        ["info", "--bogus"],
        ["demo", "--output_dir", str(blocker / "demo")],
        ["export", "--model", str(garbage), "--to", "llama", "--output_dir", fresh],
        ["export", "--model", model, "--to", "llama", "--output_dir", str(blocker / "llama")],
        ["serve", "--model", str(corrupt), "--port", "0"],
        ["eval", "--models", f"[{garbage}]", "--output_dir", fresh],
    ]


def test_battery_of_bad_inputs(corpus, trained, tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    battery = _bad_inputs(corpus, trained, root)
    assert len(battery) >= 30
    before = {"inputs": tree_hashes(root), "trained": tree_hashes(trained), "corpus": tree_hashes(corpus)}
    failures = []
    for argv in battery:
        code, _, err = cli(*argv)
        try:
            error_line(err)
            assert code == 2
        except AssertionError:
            failures.append((argv[:3], code, err[-600:]))
    assert not failures, failures
    after = {"inputs": tree_hashes(root), "trained": tree_hashes(trained), "corpus": tree_hashes(corpus)}
    assert after == before
    assert not (root / "fresh-run").exists()


def test_bad_input_in_a_real_process_prints_one_line(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "iiet.cli", "train", "--config", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert error_line(result.stderr).startswith("iiet: error: ")
