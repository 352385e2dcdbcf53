"""Loading a model directory (``save_pretrained``), and the device and dtype it runs in: one way for every tool.

``load_model`` gives the model in eval mode on its device, with config fields overridden before the weights are
built (``override_config``), and a one-line ``IIETError`` for whatever a user can get wrong (no such directory, an
unreadable config, another model family where an iiet one is needed, weights that do not load).

``resolve_device("auto")`` is CUDA when available, else the CPU; ``resolve_dtype("auto", device)`` is bf16 on GPU
and fp32 on CPU (CPU bf16 matmuls are 10-100x slower, and fp32 is the reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from iiet.errors import IIETError

from .configuration_iiet import IIETConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without a visible GPU is an ``IIETError``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise IIETError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise IIETError(f"device={device!r} but CUDA is not available here; use --device cpu or auto.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype name (``float32``, ``bfloat16``, ``float16``) or ``auto`` (bf16 on GPU, fp32 on CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise IIETError(f"unknown dtype {dtype!r}; use auto or one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def override_config(config, overrides: Mapping[str, Any] | None, source: str = "checkpoint"):
    """A copy of ``config`` with ``overrides`` applied, rebuilt through the config class so it validates them.

    Dict-valued fields are merged key by key: ``{"scheme": {"num_iterations": 2}}`` keeps the checkpoint's other
    scheme settings. Only fields the config already has may be overridden.
    """
    if not overrides:
        return config
    fields = config.to_dict()
    unknown = [key for key in overrides if key not in fields]
    if unknown:
        raise IIETError(f"{source}: its config ({config.model_type}) has no field(s) {unknown} to override")
    return type(config).from_dict(_merge(fields, overrides))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    overrides: Mapping[str, Any] | None = None,
    require_iiet: bool = False,
):
    """The causal LM saved in ``path``, in eval mode on ``device``; ``IIETError`` (one line) if it cannot be.

    Args:
        path: a directory written by ``save_pretrained`` (e.g. a training run's final/).
        device: where the model runs (``resolve_device``).
        dtype: the dtype of its weights (``resolve_dtype``: ``auto`` = bf16 on GPU, fp32 on CPU).
        overrides: config fields set before the model is built (``override_config``).
        require_iiet: refuse other model families (tools that read the scheme: influence, distillation, bench).
    """
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "holds no config.json"
        raise IIETError(f"checkpoint {path} {what}; give a model directory saved with save_pretrained "
                        "(e.g. a training run's final/).")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as error:  # transformers raises many types; the user needs one line
        raise IIETError(f"cannot load checkpoint {path}: {_first_line(error)}") from error
    if require_iiet and not isinstance(config, IIETConfig):
        raise IIETError(f"{path} is a {config.model_type!r} model; this needs an iiet checkpoint (convert a LLaMA "
                        "with `iiet upcycle`).")
    config = override_config(config, overrides, source=str(path))
    torch_device = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=resolve_dtype(dtype, torch_device))
    except IIETError:
        raise  # already names the problem (e.g. an impossible scheme override)
    except Exception as error:
        raise IIETError(f"cannot load the weights in {path}: {_first_line(error)}") from error
    return model.to(torch_device).eval()


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a model directory; ``IIETError`` (one line) if there is none that loads."""
    try:
        return AutoTokenizer.from_pretrained(str(Path(path).expanduser()))
    except Exception as error:
        raise IIETError(f"cannot load the tokenizer in {path}: {_first_line(error)}") from error
