"""Which model an influence file or a plan was measured on, and loading IIET checkpoints with one-line errors.

An influence file (and every plan made from it) records the model's *identity*: its scheme, size, the config entries
that decide its function, a fingerprint of those (``config_fingerprint``), a cheap fingerprint of the weights
(``weights_fingerprint``: a hash of a few values of every parameter) and the checkpoint path. Distillation checks a
plan against its teacher with ``check_identity``: another config is an error (the plan's per-layer counts would be
meaningless), other weights with the same config only a warning (e.g. a later checkpoint of the same run).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from iiet.errors import IIETError

# Config entries that change neither the parameters nor the function (transformers bookkeeping).
_IGNORED_CONFIG_KEYS = frozenset({
    "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "use_cache", "model_type",
    "output_attentions", "output_hidden_states", "return_dict", "_attn_implementation", "attn_implementation",
    "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "auto_map",
})
_SAMPLED_VALUES = 64  # values of each parameter (start and end) that go into the weights fingerprint
FINGERPRINT_CHARS = 16


def comparable_config(config) -> dict[str, Any]:
    """The config entries that decide a model's parameters and function, as plain JSON values."""
    values = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_CONFIG_KEYS}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def config_values(config) -> dict[str, Any]:
    """``comparable_config`` restricted to the config class's own fields: what rebuilds the config elsewhere."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(type(config))}
    return {k: v for k, v in comparable_config(config).items() if k in fields}


def config_fingerprint(config) -> str:
    text = json.dumps(config_values(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's name, shape and first/last few values: cheap, and differs between checkpoints."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.state_dict().items()):
        flat = parameter.detach().reshape(-1).float().cpu()
        sample = torch.cat([flat[:_SAMPLED_VALUES], flat[-_SAMPLED_VALUES:]])
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def model_identity(model, path: str | Path | None = None) -> dict[str, Any]:
    """What identifies ``model`` in an influence file or plan (see the module docstring)."""
    config = model.config
    return {
        "path": str(path) if path is not None else None,
        "scheme": dict(config.scheme),
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "block_evaluations": config.num_block_evaluations,
        "config_fingerprint": config_fingerprint(config),
        "weights_fingerprint": weights_fingerprint(model),
        "config": config_values(config),
    }


def check_identity(identity: dict[str, Any], model, source: str) -> None:
    """Raise ``IIETError`` if ``identity`` (from the file ``source``) describes another model config than ``model``'s.

    Weights that differ under the same config only warn: a plan from an earlier checkpoint of the same run is usable.
    """
    if identity.get("config_fingerprint") == config_fingerprint(model.config):
        if identity.get("weights_fingerprint") not in (None, weights_fingerprint(model)):
            warnings.warn(
                f"{source} was measured on other weights of the same model config ({identity.get('path')}); "
                "its influence values may not describe this checkpoint", stacklevel=2,
            )
        return
    saved, current = identity.get("config", {}), config_values(model.config)
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    details = ", ".join(f"{k}: {saved.get(k)!r} vs {current.get(k)!r}" for k in changed[:3])
    raise IIETError(
        f"{source} was measured on another model ({identity.get('path')}; {details or 'different config'}); "
        "measure the influence of this model with `iiet influence` and make the plan from that."
    )


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """An ``IIETForCausalLM`` from a ``save_pretrained`` directory, in eval mode; ``IIETError`` if it is not one."""
    import iiet  # noqa: F401  (registers the Auto classes)
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise IIETError(f"{folder} holds no config.json; give a model directory saved with save_pretrained "
                        "(e.g. a training run's final/).")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as error:  # transformers raises many types; the user needs one line
        raise IIETError(f"cannot read the config in {folder}: {str(error).splitlines()[0]}") from error
    if config.model_type != "iiet":
        raise IIETError(f"{folder} is a {config.model_type!r} model; influence and distillation need an iiet "
                        "checkpoint (convert a LLaMA with `iiet upcycle`).")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except Exception as error:
        raise IIETError(f"cannot load the weights in {folder}: {str(error).splitlines()[0]}") from error
    return model.to(device).eval()


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise IIETError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]
