"""Checkpoints that behave as the Hugging Face ecosystem expects: the tokenizer's special tokens, saved together,
and ``iiet export --to llama``: a Transformer++ checkpoint as a plain ``LlamaForCausalLM``.

A model's ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` are the tokenizer's (``special_token_ids``): they
go into the config before the model is built, so its ``generation_config`` carries them too and ``generate()`` and
``pipeline`` stop at ``</s>`` and pad with ``<pad>``. ``save_pretrained_with_tokenizer`` refuses to write a model
whose config or generation config disagrees with its tokenizer, and sets the tokenizer's ``model_max_length`` to the
model's context (``max_position_embeddings``), so ``truncation=True`` cuts where the model ends.

An explicit-Euler model (scheme ``euler``, or ``weight_shared`` with one repeat) computes ``y_{n+1} = y_n + F_n(y_n)``
with LLaMA's blocks under LLaMA's parameter names, so its weights *are* a LLaMA's: ``to_llama`` loads them into
``LlamaForCausalLM`` unchanged, and vLLM, llama.cpp or any tool without remote code can read the result. Every other
scheme computes something a LLaMA cannot (its ``beyond_llama`` says what) and is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from iiet.errors import IIETError
from iiet.outputs import check_writable

from .loading import load_model
from .names import label_of

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


def save_pretrained_with_tokenizer(model, directory: str | Path, tokenizer=None) -> None:
    """``model.save_pretrained(directory)`` plus its tokenizer, after checking they agree on the special tokens.

    The check runs before anything is written. Without a tokenizer only the model is saved.
    """
    if tokenizer is not None:
        check_special_tokens(model, tokenizer)
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        save_tokenizer(tokenizer, model.config, directory)


def load_tokenizer_if_any(directory: str | Path):
    """The tokenizer saved in a model directory, or ``None`` when it holds none."""
    from transformers import AutoTokenizer

    folder = Path(directory)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(str(folder))


# Largest |logit| difference accepted between a model and its LLaMA export (fp32; measured ~3e-6 on small models:
# the two implementations sum in different orders).
LLAMA_EXPORT_TOLERANCE = 1e-4
_CHECK_TOKENS = 16


def llama_export_refusal(config) -> str | None:
    """Why a model of ``config`` is not a LLaMA (``None`` when it is one and ``to_llama`` can convert it)."""
    beyond = config.scheme_config.beyond_llama(config.num_hidden_layers)
    if beyond is not None:
        return f"its scheme {config.scheme['name']!r} is not explicit Euler: {beyond}"
    if config.embedding_multiplier != 1.0:
        return f"it multiplies the token embeddings by embedding_multiplier={config.embedding_multiplier}"
    return None


def to_llama(model):
    """The ``LlamaForCausalLM`` with ``model``'s weights, config values and generation config (explicit Euler only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    reason = llama_export_refusal(model.config)
    if reason is not None:
        raise IIETError(f"this model is not a LLaMA: {reason}; only Transformer++ (scheme euler) exports to LLaMA.")
    fields = {f.name for f in dataclasses.fields(LlamaConfig)} - {"architectures", "transformers_version"}
    values = {k: v for k, v in model.config.to_dict().items() if k in fields}
    llama = LlamaForCausalLM(LlamaConfig(**values)).to(model.dtype)
    result = llama.load_state_dict(model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:  # a bug, not bad input: the names are LLaMA's by design
        raise RuntimeError(f"LLaMA export: missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    llama.generation_config = model.generation_config
    return llama.eval()


def max_logit_difference(model, other, vocab_size: int, seed: int = 0) -> float:
    """Largest |logit| difference of two causal LMs on one random sequence of ``_CHECK_TOKENS`` tokens."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (1, _CHECK_TOKENS), generator=generator)
    with torch.no_grad():
        return (model(ids).logits.float() - other(ids).logits.float()).abs().max().item()


def export(model: str, output_dir: str, to: Literal["llama"] = "llama") -> None:
    """Write a checkpoint in another model family's format, loadable without iiet (--to llama: LlamaForCausalLM).

    ``--to llama``: a Transformer++ checkpoint (scheme ``euler``) becomes a plain ``LlamaForCausalLM`` directory
    (config ``model_type: llama``, the same safetensors weights, generation config and tokenizer), checked to give
    the same logits. Other schemes (IIET, E-IIET, Lower Bound, DLCL, PCformer, Trans WS) compute what a LLaMA cannot
    and are refused with the reason.

    Args:
        model: an iiet checkpoint directory (e.g. a training run's final/).
        output_dir: where to write the export (must not exist yet or be empty).
        to: the target format; ``llama`` (LlamaForCausalLM).
    """
    from transformers import AutoConfig

    source, output = Path(model), Path(output_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise IIETError(f"{output} is not empty; choose a new --output_dir so nothing is overwritten.")
    check_writable(output, "--output_dir")
    if (source / "config.json").is_file():
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as error:  # transformers raises many types for a broken config; the user needs one line
            raise IIETError(f"cannot read the config in {source}: {str(error).splitlines()[0]}") from None
        if config.model_type != "iiet":
            raise IIETError(f"{source} is a {config.model_type!r} checkpoint, not an iiet one; it needs no export.")
        reason = llama_export_refusal(config)
        if reason is not None:
            label = label_of(config.scheme, config.num_hidden_layers)
            raise IIETError(f"{source} ({label}) cannot be exported to LLaMA: {reason}. Only Transformer++ (scheme "
                            "euler) checkpoints are LLaMA models; share this one as an iiet checkpoint (it loads "
                            "with `import iiet` or trust_remote_code=True).")
    network = load_model(source, require_iiet=True)  # fp32, for the check below; one-line errors
    tokenizer = load_tokenizer_if_any(source)
    llama = to_llama(network)
    if tokenizer is not None:  # a checkpoint from before the ids came from the tokenizer: the tokenizer is right
        token_ids = special_token_ids(tokenizer)
        mismatches = special_token_mismatches(llama, token_ids)
        if mismatches:
            print(f"note: taking the tokenizer's special-token ids instead of {', '.join(mismatches)}")
            for target in (llama.config, llama.generation_config):
                for key, value in token_ids.items():
                    setattr(target, key, value)
    difference = max_logit_difference(network, llama, network.config.vocab_size)
    if difference > LLAMA_EXPORT_TOLERANCE:
        raise RuntimeError(f"the LLaMA export differs from the model by {difference:.2e} in the logits; report this "
                           "bug.")
    stored = getattr(config, "dtype", None)  # save in the checkpoint's own precision
    if isinstance(stored, str):
        import torch

        stored = getattr(torch, stored, None)
    if stored is not None:
        llama.to(stored)
    save_pretrained_with_tokenizer(llama, output, tokenizer)
    print(f"wrote {output} (LlamaForCausalLM{', with tokenizer' if tokenizer is not None else ''}; "
          f"max |logit difference| to {source}: {difference:.1e})")
