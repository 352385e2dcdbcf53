"""Atomic, exactly resumable training checkpoints, and the final export in Hugging Face format.

Layout of one checkpoint (``<output_dir>/checkpoints/step_00001000/``)::

    state/                 model + optimizer, torch.distributed.checkpoint (DCP): sharded under FSDP2, one copy
                           otherwise, so a checkpoint resumes under any of none/ddp/fsdp and any world size
    rng_rank{r}.pt         python, numpy, torch (and CUDA) random states of rank r
    trainer_state.json     step, tokens seen, data position, scheduler, model config, and the size of every file
                           above; written last, so its presence with matching sizes marks a complete checkpoint

Atomicity: everything is written into ``step_XXXXXXXX.tmp``, fsynced, and renamed into place with ``os.replace``
(one atomic rename of the directory); a crash at any point leaves the previous checkpoints untouched and at worst a
``.tmp`` directory that the next save removes. Older checkpoints are pruned only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from iiet.errors import IIETError
from iiet.models.export import SPECIAL_TOKEN_KEYS, check_special_tokens, save_tokenizer
from iiet.train.parallel import Distributed

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Config entries that change neither the parameters nor the function the model computes. The special-token ids
# come from the tokenizer; checkpoints written before they did carry LLaMA's defaults and must still resume.
_CONFIG_KEYS_IGNORED = {
    "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "_attn_implementation", "attn_implementation",
    *SPECIAL_TOKEN_KEYS,
}


class CheckpointError(IIETError):
    """A checkpoint that cannot be resumed from; the message names the file and what to do."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished-looking checkpoint directories (no ``.tmp``), oldest first."""
    return _step_dirs(Path(output_dir) / CHECKPOINTS)


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _quiet_dcp():
    """DCP warns on every single-process save/load that it is assuming a single process; that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def comparable_model_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The entries of a model config that decide its parameters and function (JSON-normalised)."""
    kept = {k: v for k, v in config_dict.items() if k not in _CONFIG_KEYS_IGNORED}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], dist_info: Distributed
) -> None:
    """Write a checkpoint of ``model`` (the unwrapped or FSDP2-sharded module), ``optimizer`` and ``state``.

    Collective: every rank calls it. ``state`` must be JSON-serialisable (rank 0's copy is written).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(path.name + ".tmp")
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash during an earlier save
        tmp.mkdir(parents=True)
    dist_info.barrier()

    model_state, optim_state = get_state_dict(model, optimizer)
    with _quiet_dcp():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "state")
    rng_file = tmp / f"rng_rank{dist_info.rank}.pt"
    torch.save(_rng_state(), rng_file)
    _fsync(rng_file)
    dist_info.barrier()

    if dist_info.is_main:
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        for name in files:  # DCP fsyncs its own files; this also covers anything written without it
            _fsync(tmp / name)
        record = {"format_version": FORMAT_VERSION, **state, "world_size": dist_info.world_size, "files": files}
        state_file = tmp / STATE_FILE
        state_file.write_text(json.dumps(record, indent=1))
        _fsync(state_file)
        for directory in [tmp / "state", tmp]:
            _fsync(directory)
        if path.exists():  # only when a run re-saves a step it already saved; keep the old one until the swap
            stale = path.with_name(path.name + ".old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(path, stale)
            os.replace(tmp, path)
            shutil.rmtree(stale)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    dist_info.barrier()


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """Check that ``path`` is a complete checkpoint and return its trainer state; ``CheckpointError`` if not."""
    state_file = path / STATE_FILE
    previous = [p for p in _step_dirs(path.parent) if p.name < path.name]
    fix = (
        f"delete {path} and resume from the previous checkpoint ({previous[-1]})"
        if previous
        else f"delete {path} (there is no earlier checkpoint; the run restarts from step 0)"
    )
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; give an existing checkpoint directory or resume=auto.")
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is incomplete: {state_file} is missing; {fix}.") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint file {state_file} is corrupt ({error}); {fix}.") from None
    if state.get("format_version") != FORMAT_VERSION or "files" not in state:
        raise CheckpointError(f"checkpoint file {state_file} has an unknown format; {fix}.")
    for name, size in state["files"].items():
        file = path / name
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:
            what = "is missing" if actual is None else f"has {actual} bytes, expected {size} (truncated?)"
            raise CheckpointError(f"checkpoint file {file} {what}; {fix}.")
    return state


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, dist_info: Distributed
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's random states from ``path``; return the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_checkpoint_state(path)
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        with _quiet_dcp():
            dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=path / "state")
    except Exception as error:  # DCP wraps reader failures in CheckpointException and friends
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path / 'state'} cannot be read ({message}); delete {path} and resume from the previous "
            "checkpoint."
        ) from None
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    rng_file = path / f"rng_rank{dist_info.rank}.pt"
    if rng_file.is_file():  # a checkpoint from a different world size has no state for the extra ranks
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return state


def find_resume_checkpoint(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from (``resume`` = "auto" | "none" | a path), or None for a fresh start.

    With "auto", invalid checkpoints are skipped with a warning in favour of the newest valid one; an explicitly
    named checkpoint that is invalid raises ``CheckpointError``.
    """
    if resume == "none":
        existing = list_checkpoints(output_dir)
        if existing:
            raise IIETError(
                f"{output_dir} already holds checkpoints (newest {existing[-1].name}) and run.resume='none' would "
                "train over them; pass --run.resume auto to continue, or choose a new --run.output_dir."
            )
        return None
    if resume != "auto":
        path = Path(resume)
        read_checkpoint_state(path)
        return path
    for path in reversed(list_checkpoints(output_dir)):
        try:
            read_checkpoint_state(path)
            return path
        except CheckpointError as error:
            warnings.warn(f"skipping checkpoint: {error}", stacklevel=2)
    return None


def prune_checkpoints(output_dir: str | Path, keep_last_k: int) -> None:
    """Delete all but the newest ``keep_last_k`` checkpoints (rank 0 only)."""
    for path in list_checkpoints(output_dir)[:-keep_last_k]:
        shutil.rmtree(path, ignore_errors=True)


def export_pretrained(
    model: nn.Module, output: Path, tokenizer: str | None, dist_info: Distributed, extra_files: dict[str, str]
) -> None:
    """Save ``model`` as a Hugging Face checkpoint (safetensors) plus tokenizer, loadable by ``from_pretrained``.

    The model's special-token ids must be the tokenizer's (``IIETError`` before anything is written); the saved
    tokenizer's ``model_max_length`` is the model's context. Collective under FSDP2 (the full state dict is gathered
    to rank 0); rank 0 writes into ``output.tmp`` and renames it into place.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    loaded_tokenizer = AutoTokenizer.from_pretrained(tokenizer) if tokenizer else None
    if loaded_tokenizer is not None:
        check_special_tokens(model, loaded_tokenizer)

    full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Gathered tensors are separate copies, so HF can no longer see that tied weights (lm_head = embed_tokens) are
    # one tensor; keep only each parameter's first name, as save_pretrained of an unsharded model does.
    first_names = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    full_state = {name: tensor for name, tensor in full_state.items() if name in first_names}
    if dist_info.is_main:
        tmp = output.with_name(output.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=full_state, safe_serialization=True)
        if loaded_tokenizer is not None:
            save_tokenizer(loaded_tokenizer, model.config, tmp)
        for name, text in extra_files.items():
            (tmp / name).write_text(text)
        shutil.rmtree(output, ignore_errors=True)
        os.replace(tmp, output)
    dist_info.barrier()
