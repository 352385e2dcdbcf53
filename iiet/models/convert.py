"""Upcycling: start an IIET / DLCL / PCformer / Trans WS model from a LLaMA checkpoint's weights.

The block parameters keep their HF LLaMA names, so a ``LlamaForCausalLM`` state dict loads unchanged; only the
scheme's own parameters (history weights, LayerNorms, EMA coefficient) are new and start at their initial values.
With the residual history reading those start as the identity combination, so IIET with ``r = 0`` (DLCL) of a
converted LLaMA computes exactly the LLaMA; with ``r > 0`` it starts as the fixed-point iteration
``y = y_n + F_n(y)`` of the LLaMA's own layers, ready for continued pretraining.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iiet.errors import IIETError
from iiet.outputs import check_writable

from .comparison import TRANSFORMERS_BOOKKEEPING
from .configuration_iiet import IIETConfig, parse_scheme
from .export import load_tokenizer_if_any, save_pretrained_with_tokenizer, special_token_ids
from .modeling_iiet import IIETForCausalLM


def config_from_llama(llama_config, scheme: str | dict[str, Any], tokenizer=None) -> IIETConfig:
    """An ``IIETConfig`` with a LLaMA config's hyper-parameters and the given scheme (special tokens: the tokenizer's)."""
    values = {k: v for k, v in llama_config.to_dict().items() if k not in TRANSFORMERS_BOOKKEEPING}
    if tokenizer is not None:
        values.update(special_token_ids(tokenizer))
    return IIETConfig(**values, scheme=parse_scheme(scheme).to_dict())


def upcycle_llama(llama, scheme: str | dict[str, Any], tokenizer=None) -> IIETForCausalLM:
    """Build an ``IIETForCausalLM`` with ``scheme`` from an in-memory ``LlamaForCausalLM`` (and its tokenizer)."""
    model = IIETForCausalLM(config_from_llama(llama.config, scheme, tokenizer))
    result = model.load_state_dict(llama.state_dict(), strict=False)
    unexpected = [k for k in result.unexpected_keys if "rotary_emb" not in k]
    missing = [k for k in result.missing_keys if not k.startswith("model.scheme.")]
    if unexpected or missing:
        raise IIETError(
            f"the LLaMA weights do not fit this config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "is it a plain LlamaForCausalLM checkpoint?"
        )
    return model


def upcycle(llama_dir: str, output_dir: str, scheme: dict[str, Any] | str = "iiet") -> None:
    """Convert a LLaMA checkpoint directory into a numerical-Transformer checkpoint that starts from its weights.

    Args:
        llama_dir: a directory saved by ``LlamaForCausalLM.save_pretrained`` (config + safetensors; a tokenizer in it
            is saved along, and its bos/eos/pad ids become the model's).
        output_dir: where to write the converted checkpoint (must not exist yet or be empty).
        scheme: the target scheme, e.g. ``iiet`` or ``{"name": "iiet", "num_iterations": 3}`` (default r = 3).
    """
    from transformers import LlamaForCausalLM

    src, dst = Path(llama_dir), Path(output_dir)
    if not (src / "config.json").is_file():
        raise IIETError(f"{src} has no config.json; point llama_dir at a LlamaForCausalLM.save_pretrained directory.")
    if dst.is_dir() and any(dst.iterdir()):
        raise IIETError(f"{dst} is not empty; choose a new output_dir so nothing is overwritten.")
    check_writable(dst, "--output_dir")
    try:
        model_type = json.loads((src / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):  # not JSON, not text, or not an object
        raise IIETError(f"{src / 'config.json'} is not a model config (JSON object); point llama_dir at a "
                        "LlamaForCausalLM.save_pretrained directory.") from None
    if model_type != "llama":
        raise IIETError(f"{src} holds a {model_type!r} model, not a LLaMA; upcycle converts LlamaForCausalLM "
                        "checkpoints (model_type 'llama').")
    try:
        llama = LlamaForCausalLM.from_pretrained(src)
    except Exception as error:  # noqa: BLE001 - any load failure is reported as bad input
        raise IIETError(f"could not load the LLaMA checkpoint in {src} ({error}); is it complete?") from error
    tokenizer = load_tokenizer_if_any(src)
    model = upcycle_llama(llama, scheme, tokenizer)
    save_pretrained_with_tokenizer(model, dst, tokenizer)
    print(f"wrote {dst} ({model.config.scheme}, {model.num_block_evaluations()} block evaluations per token)")
