"""Which config entries decide a model, and how two configs differ: one answer for resume checks and model identity.

A config's *comparable* entries are all but ``IGNORED_CONFIG_KEYS``: the bookkeeping transformers adds
(``TRANSFORMERS_BOOKKEEPING``: versions, dtype, paths, output switches), which changes neither the parameters nor the
function, and the special-token ids, which come from the tokenizer (they decide where generation stops, not what the
network computes; checkpoints written before the ids came from the tokenizer carry LLaMA's defaults and must still
resume and match their influence files).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from .export import SPECIAL_TOKEN_KEYS

TRANSFORMERS_BOOKKEEPING = frozenset({
    "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "use_cache", "model_type",
    "output_attentions", "output_hidden_states", "return_dict", "_attn_implementation", "attn_implementation",
    "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "auto_map",
})
IGNORED_CONFIG_KEYS = TRANSFORMERS_BOOKKEEPING | frozenset(SPECIAL_TOKEN_KEYS)
SHOWN_DIFFERENCES = 4  # entries named in a difference message


def _json(values: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(values), sort_keys=True, default=str))


def comparable(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a config dict (``config.to_dict()``) that decide the model, as plain JSON values."""
    return _json({k: v for k, v in config_dict.items() if k not in IGNORED_CONFIG_KEYS})


def config_values(config) -> dict[str, Any]:
    """The config class's own fields without transformers' bookkeeping: what rebuilds ``config`` elsewhere."""
    fields = {f.name for f in dataclasses.fields(type(config))}
    return _json({k: v for k, v in config.to_dict().items() if k in fields and k not in TRANSFORMERS_BOOKKEEPING})


def config_difference(before: Mapping[str, Any], after: Mapping[str, Any], arrow: str = "->") -> str:
    """``"key: before -> after, ..."`` over the comparable entries that differ (empty when none do)."""
    before, after = comparable(before), comparable(after)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    shown = [f"{k}: {before.get(k)!r} {arrow} {after.get(k)!r}" for k in changed[:SHOWN_DIFFERENCES]]
    more = len(changed) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
