"""Checkpoints that behave as the Hugging Face ecosystem expects: the tokenizer's special tokens, saved together.

A model's ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` are the tokenizer's (``special_token_ids``): they
go into the config before the model is built, so its ``generation_config`` carries them too and ``generate()`` and
``pipeline`` stop at ``</s>`` and pad with ``<pad>``. ``save_pretrained_with_tokenizer`` refuses to write a model
whose config or generation config disagrees with its tokenizer, and sets the tokenizer's ``model_max_length`` to the
model's context (``max_position_embeddings``), so ``truncation=True`` cuts where the model ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iiet.errors import IIETError

SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def special_token_ids(source: Any) -> dict[str, int]:
    """The bos/eos/pad ids a tokenizer defines (or a mapping records, e.g. a data ``meta.json``); unset ones omitted."""
    if isinstance(source, Mapping):
        values = {key: source.get(key) for key in SPECIAL_TOKEN_KEYS}
    else:
        values = {key: getattr(source, key, None) for key in SPECIAL_TOKEN_KEYS}
    return {key: value for key, value in values.items() if value is not None}


def with_special_tokens(overrides: Mapping[str, Any], token_ids: Mapping[str, int]) -> dict[str, Any]:
    """Model-config ``overrides`` plus the tokenizer's ``token_ids``; ``IIETError`` if an override names other ids."""
    clashes = {k: (overrides[k], v) for k, v in token_ids.items() if k in overrides and overrides[k] != v}
    if clashes:
        details = ", ".join(f"{k}={mine!r} but the tokenizer has {theirs!r}" for k, (mine, theirs) in clashes.items())
        raise IIETError(f"the model overrides set {details}; drop these overrides (the ids come from the tokenizer).")
    return {**overrides, **token_ids}


def special_token_mismatches(model, token_ids: Mapping[str, int]) -> list[str]:
    """Where ``model``'s config or generation config disagrees with the tokenizer's ``token_ids`` (empty: agrees).

    A generation config may list several end-of-text ids (LLaMA-3 does); it agrees when the tokenizer's is among them.
    """
    found = []
    for where, config in (("config", model.config), ("generation_config", getattr(model, "generation_config", None))):
        if config is None:
            continue
        for key, expected in token_ids.items():
            value = getattr(config, key, None)
            agrees = expected in value if isinstance(value, (list, tuple)) else value == expected
            if not agrees:
                found.append(f"{where}.{key}={value!r} (tokenizer: {expected})")
    return found


def check_special_tokens(model, tokenizer) -> None:
    """``IIETError`` unless ``model``'s bos/eos/pad ids are ``tokenizer``'s (so that generation stops at eos)."""
    mismatches = special_token_mismatches(model, special_token_ids(tokenizer))
    if mismatches:
        raise IIETError(
            f"the model's special-token ids disagree with its tokenizer ({', '.join(mismatches)}); generate() would "
            "not stop at end-of-text: set these config values to the tokenizer's ids before exporting."
        )


def save_tokenizer(tokenizer, config, directory: str | Path) -> None:
    """Save ``tokenizer`` beside a model of ``config``, with ``model_max_length`` = the model's context."""
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(str(directory))


def save_pretrained_with_tokenizer(model, directory: str | Path, tokenizer=None, **save_kwargs: Any) -> None:
    """``model.save_pretrained(directory)`` plus its tokenizer, after checking they agree on the special tokens.

    The check runs before anything is written. Without a tokenizer only the model is saved.
    """
    if tokenizer is not None:
        check_special_tokens(model, tokenizer)
    model.save_pretrained(str(directory), **save_kwargs)
    if tokenizer is not None:
        save_tokenizer(tokenizer, model.config, directory)


def load_tokenizer_if_any(directory: str | Path):
    """The tokenizer saved in a model directory, or ``None`` when it holds none."""
    from transformers import AutoTokenizer

    folder = Path(directory)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(str(folder))
