"""Which model an influence file or a plan was measured on.

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
from iiet.models.comparison import comparable, config_difference, config_values

_SAMPLED_VALUES = 64  # values of each parameter (start and end) that go into the weights fingerprint
FINGERPRINT_CHARS = 16


def config_fingerprint(config) -> str:
    """A hash of the config entries that decide the model (``iiet.models.comparison.comparable``)."""
    text = json.dumps(comparable(config_values(config)), sort_keys=True)
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
    saved = identity.get("config")
    if saved is None:  # an identity without its config: only the fingerprint can tell
        difference = "" if identity.get("config_fingerprint") == config_fingerprint(model.config) else "another config"
    else:
        difference = config_difference(saved, config_values(model.config), arrow="vs")
    if difference:
        raise IIETError(
            f"{source} was measured on another model ({identity.get('path')}; {difference}); "
            "measure the influence of this model with `iiet influence` and make the plan from that."
        )
    if identity.get("weights_fingerprint") not in (None, weights_fingerprint(model)):
        warnings.warn(
            f"{source} was measured on other weights of the same model config ({identity.get('path')}); "
            "its influence values may not describe this checkpoint", stacklevel=2,
        )
