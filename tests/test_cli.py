"""The ``iiet`` command: the front door answers without torch, each command imports only itself, smoke tests of the
commands that have no test of their own elsewhere (info, reproduce)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import iiet_cli
from iiet.cli import main

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_every_command_is_listed_with_its_docstring_summary(capsys):
    assert iiet_cli.COMMANDS.keys() == iiet_cli.SUMMARIES.keys()
    for name, path in iiet_cli.COMMANDS.items():
        module, _, attr = path.partition(":")
        docstring = getattr(importlib.import_module(module), attr).__doc__
        assert docstring.strip().splitlines()[0] == iiet_cli.SUMMARIES[name], name
    main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in iiet_cli.COMMANDS)


def test_help_and_version_do_not_import_torch_and_a_command_imports_only_itself():
    out = _python(
        "import sys, iiet_cli\n"
        "iiet_cli.main(['--help']); iiet_cli.main(['--version'])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "try:\n    iiet_cli.main(['plot', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('packages:', sorted({m.split('.')[1] for m in sys.modules if m.startswith('iiet.')}))\n"
    )
    assert "torch imported: False" in out and "iiet 0.1.0" in out and "usage: iiet" in out
    packages = eval(out.split("packages:")[1])  # noqa: S307  (our own printed list)
    assert "train" in packages and not {"eval", "iiad", "bench", "study", "serve"} & set(packages), packages


def test_unknown_command_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian", "--model.preset", "tiny"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("iiet: error: unknown command 'trian'; did you mean 'train'?")


def test_info_command(capsys):
    main(["info", "--presets", "[tiny]", "--context", "64"])
    out = capsys.readouterr().out
    assert "tiny" in out and "Transformer++" in out and "IIET (r=3)" in out


def test_reproduce_command_runs_a_tiny_study_and_a_rerun_skips_it(corpus_file, tmp_path, capsys):
    args = ["reproduce", "--output_dir", str(tmp_path / "study"), "--preset", "tiny", "--sources", f"[{corpus_file}]",
            "--tokenizer_vocab_size", "300", "--seq_len", "32", "--train_tokens", "512", "--batch_tokens", "256",
            "--micro_batch_size", "8", "--seeds", "1", "--arms", "[transformer++]", "--bench", "false",
            "--device", "cpu"]
    main(args)
    assert f"study report: {tmp_path / 'study' / 'results.md'}" in capsys.readouterr().out
    state = json.loads((tmp_path / "study" / "study.json").read_text())
    assert state["command"].startswith("iiet ") and "transformer++-s0" in state["eval"]
    assert (tmp_path / "study" / "runs" / "transformer++-s0" / "final" / "config.json").is_file()
    main(args)
    assert "[reproduce] pretrain" not in capsys.readouterr().out  # the finished run is not trained again


def test_a_closed_pipe_ends_quietly():
    """``iiet --help | head``: the reader goes away before the help is written; no traceback."""
    process = subprocess.Popen([sys.executable, "-c", "import iiet_cli; iiet_cli.main(['--help'])"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr
