"""Atomic, exactly resumable training checkpoints that load without unpickling, and the final HF export.

Layout of one checkpoint (``<output_dir>/checkpoints/step_00001000/``)::

    model.safetensors      the full model state (fp32; gathered from the shards under FSDP2)
    optimizer.safetensors  the optimizer's tensors (AdamW moments and step counts, keyed ``<parameter>/<name>``);
                           its param groups (lr, betas, ...) as JSON in the safetensors header
    rng_rank{r}.json       python, numpy, torch (and CUDA) random states of rank r
    trainer_state.json     step, tokens seen, data position, scheduler, model config, and the size and SHA-256 of
                           every file above; written last, so its presence marks a complete checkpoint

Trust boundary: resuming reads safetensors (raw tensors and a JSON header) and JSON, never pickle, so no code stored
in a checkpoint can run; a tampered checkpoint can at worst hold wrong numbers. The checksums catch accidental
corruption (torn writes, flipped bits), not deliberate edits: whoever can write the files can rewrite the checksums.

The state is saved *full* (unsharded): under FSDP2 rank 0 gathers it to CPU memory (3 copies of the parameters: the
weights and AdamW's two moments) and writes it alone, so a checkpoint resumes under none/ddp/fsdp and any world size.

Atomicity: everything is written into ``step_XXXXXXXX.tmp``, fsynced, and renamed into place with ``os.replace``
(one atomic rename of the directory); a crash or a full disk at any point leaves the previous checkpoints untouched
and at worst a ``.tmp`` directory that the next save removes. Older checkpoints are pruned only after the new one is
in place.
"""

from __future__ import annotations

import base64
import errno
import hashlib
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
from iiet.models.export import check_special_tokens, save_tokenizer
from iiet.train.parallel import Distributed

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT_VERSION = 2  # 1: torch.distributed.checkpoint (pickled metadata), no longer loaded
_STEP_DIR = re.compile(r"^step_(\d+)$")
_HASH_CHUNK = 1 << 24


class CheckpointError(IIETError):
    """A checkpoint that cannot be resumed from; the message names the file and what to do."""


class NoSpaceError(IIETError):
    """The disk filled up while writing; earlier checkpoints are intact."""

    exit_code = 1


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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_no_space(error: BaseException) -> bool:
    """True for a full disk, whether Python (OSError ENOSPC) or a library's own I/O error reports it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left" in text or "StorageFull" in text or "Disk quota exceeded" in text


# -- random states as JSON ------------------------------------------------------------------------------------------


def _bytes_tensor(state: torch.Tensor | None) -> str | None:
    return None if state is None else base64.b64encode(state.numpy().tobytes()).decode()


def _tensor_bytes(text: str | None) -> torch.Tensor | None:
    return None if text is None else torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA random states, as JSON values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _bytes_tensor(torch.get_rng_state()),
        "cuda": _bytes_tensor(torch.cuda.get_rng_state().cpu()) if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_tensor_bytes(state["torch"]))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(_tensor_bytes(state["cuda"]))


# -- model and optimizer state as safetensors -------------------------------------------------------------------------


def _aliases(model: nn.Module) -> dict[str, str]:
    """Tied parameters: every later name of a parameter -> its first name (safetensors stores each tensor once)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            aliases[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return aliases


def _optimizer_tensors(optim_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten a full optimizer state dict into safetensors tensors plus JSON header entries."""
    tensors, scalars = {}, {}
    for parameter, entries in optim_state["state"].items():
        for name, value in entries.items():
            key = f"{parameter}/{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    header = {"param_groups": json.dumps(optim_state["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, header


def _optimizer_state(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *json.loads(header["scalars"]).items()]:
        parameter, _, name = key.rpartition("/")
        state.setdefault(parameter, {})[name] = value
    return {"state": state, "param_groups": json.loads(header["param_groups"])}


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], dist_info: Distributed
) -> None:
    """Write a checkpoint of ``model`` (the unwrapped or FSDP2-sharded module), ``optimizer`` and ``state``.

    Collective: every rank calls it (FSDP2 gathers the full state to rank 0, which writes everything). ``state``
    must be JSON-serialisable (rank 0's copy is written). A full disk raises ``NoSpaceError`` on every rank.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 only
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    rng_states = dist_info.gather_object(rng_state())
    failure, original = None, None
    if dist_info.is_main:
        try:
            _write_checkpoint(path, _aliases(model), model_state, optim_state, rng_states,
                              {**state, "world_size": dist_info.world_size})
        except Exception as caught:  # every rank must learn of it, or the others wait at the next collective
            failure, original = (type(caught) is NoSpaceError, str(caught)), caught
    failure = dist_info.broadcast_object(failure)
    if original is not None:
        raise original
    if failure is not None:
        no_space, message = failure
        raise NoSpaceError(message) if no_space else RuntimeError(f"rank 0 failed to write {path}: {message}")


def _write_checkpoint(path, aliases, model_state, optim_state, rng_states, state) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    model_tensors = {k: v.contiguous() for k, v in model_state.items() if k not in aliases}
    optim_tensors, optim_header = _optimizer_tensors(optim_state)
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash during an earlier save
        tmp.mkdir(parents=True)
        needed = sum(t.numel() * t.element_size() for t in [*model_tensors.values(), *optim_tensors.values()])
        if shutil.disk_usage(tmp).free < needed:
            raise OSError(errno.ENOSPC, f"{needed:,} bytes needed")
        save_file(model_tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        save_file(optim_tensors, str(tmp / OPTIMIZER_FILE), metadata=optim_header)
        for rank, rng in enumerate(rng_states):
            (tmp / f"rng_rank{rank}.json").write_text(json.dumps(rng))
        files = {}
        for file in sorted(tmp.iterdir()):
            _fsync(file)
            files[file.name] = {"bytes": file.stat().st_size, "sha256": sha256(file)}
        state_file = tmp / STATE_FILE
        state_file.write_text(json.dumps({"format_version": FORMAT_VERSION, **state, "files": files}, indent=1))
        _fsync(state_file)
        _fsync(tmp)
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(error):
            newest = list_checkpoints(path.parent.parent)
            kept = f"the earlier checkpoints are intact (newest {newest[-1].name})" if newest else "nothing was kept"
            raise NoSpaceError(
                f"no space left on {path.parent} while writing checkpoint {path.name}; {kept}: free some space "
                "and rerun the same command to resume."
            ) from None
        raise
    if path.exists():  # only when a run re-saves a step it already saved; keep the old one until the swap
        stale = path.with_name(path.name + ".old")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(path, stale)
        os.replace(tmp, path)
        shutil.rmtree(stale)
    else:
        os.replace(tmp, path)
    _fsync(path.parent)


# -- checking and loading -------------------------------------------------------------------------------------------


def checkpoint_problem(path: Path, verify: bool = True) -> tuple[str | None, dict[str, Any] | None]:
    """``(None, trainer state)`` for a complete checkpoint, else ``(what is wrong, None)``.

    ``verify`` also compares every file's SHA-256 with the one recorded when it was written (reads all of it).
    """
    state_file = path / STATE_FILE
    if not path.is_dir():
        return "does not exist", None
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        return f"is incomplete ({STATE_FILE} is missing: the save was interrupted)", None
    except (OSError, ValueError) as error:
        return f"has a corrupt {STATE_FILE} ({error})", None
    if not isinstance(state, dict) or state.get("format_version") == 1:
        return ("was written by an earlier iiet with torch.distributed.checkpoint, whose pickled metadata can run "
                "code when loaded; iiet no longer reads that format"), None
    if state.get("format_version") != FORMAT_VERSION or not isinstance(state.get("files"), dict):
        return f"has an unknown format ({STATE_FILE} format_version={state.get('format_version')!r})", None
    for name, record in state["files"].items():
        file = path / name
        if not (isinstance(record, dict) and file.parent == path):
            return f"has an invalid file list in {STATE_FILE}", None
        actual = file.stat().st_size if file.is_file() else None
        if actual is None:
            return f"lacks {name}", None
        if actual != record.get("bytes"):
            return f"has a truncated {name} ({actual} bytes, {record.get('bytes')} expected)", None
        if verify and sha256(file) != record.get("sha256"):
            return f"has a corrupt {name} (its SHA-256 differs from the one recorded when it was written)", None
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        if name not in state["files"]:
            return f"lacks {name}", None
    return None, state


def read_checkpoint_state(path: Path, verify: bool = True) -> dict[str, Any]:
    """Check that ``path`` is a complete checkpoint and return its trainer state; ``CheckpointError`` if not."""
    problem, state = checkpoint_problem(path, verify)
    if problem is None:
        return state
    if problem == "does not exist":
        raise CheckpointError(f"checkpoint {path} does not exist; give an existing checkpoint directory or "
                              "--run.resume auto.")
    previous = [p for p in _step_dirs(path.parent) if p.name < path.name]
    fix = (f"resume from the previous checkpoint (--run.resume {previous[-1]})" if previous
           else "start a new run in another --run.output_dir")
    raise CheckpointError(f"checkpoint {path} {problem}; {fix}.")


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, dist_info: Distributed
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's random states from ``path``; return the trainer state.

    Every rank reads the full state (no pickle anywhere) and keeps its own shard of it under FSDP2.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = read_checkpoint_state(path, verify=False)  # the files were verified when the checkpoint was chosen
    rng_file = path / f"rng_rank{dist_info.rank}.json"
    try:
        model_state, _ = _read_safetensors(path / MODEL_FILE)
        optim_state = _optimizer_state(*_read_safetensors(path / OPTIMIZER_FILE))
        # A checkpoint from a smaller world size has no random state for the extra ranks.
        rng = json.loads(rng_file.read_text()) if rng_file.is_file() else None
        for alias, first in _aliases(model).items():
            model_state[alias] = model_state[first]
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
        if rng is not None:
            set_rng_state(rng)
    except Exception as error:  # safetensors, JSON and state-dict errors alike: the files are not what they claim
        lines = str(error).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(error).__name__}: {lines[0] if lines else ''}); resume "
            "from an earlier checkpoint (--run.resume PATH) or start a new run in another --run.output_dir."
        ) from None
    return state


def find_resume_checkpoint(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from (``resume`` = "auto" | "none" | a path), or None for a fresh start.

    With "auto", invalid checkpoints are skipped with a warning in favour of the newest valid one; when there are
    checkpoints but none is valid, or an explicitly named checkpoint is invalid, ``CheckpointError``: a run never
    silently starts over (and prunes) checkpoints it could not read.
    """
    output_dir = Path(output_dir)
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
    candidates = list_checkpoints(output_dir)
    skipped = []
    for path in reversed(candidates):
        problem, _ = checkpoint_problem(path)
        if problem is None:
            if skipped:
                warnings.warn(f"resuming from {path}, the newest valid checkpoint; skipped {'; '.join(skipped)}",
                              stacklevel=2)
            return path
        skipped.append(f"{path.name} (it {problem})")
    if candidates:
        raise CheckpointError(
            f"none of the checkpoints in {output_dir / CHECKPOINTS} can be resumed from: {'; '.join(skipped)}; to "
            f"start afresh, move {output_dir / CHECKPOINTS} away (or use another --run.output_dir)."
        )
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
