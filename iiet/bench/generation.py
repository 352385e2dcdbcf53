"""Greedy generation through a ``SlotCache``: the loop the benchmark times, usable on its own.

``generate_fast`` = one ``prefill`` forward over the prompt, then ``decode``: one forward per new token, each feeding
the previous argmax. It skips ``model.generate()``'s per-step bookkeeping (logits processors, stopping criteria, mask
growth), so the time measured is the model's, and the slots are written in place (no per-token allocation).
``model.generate(..., past_key_values=SlotCache.for_model(model, B, T + new))`` gives the same tokens.

``generate_speculative`` (from ``iiet.models.speculative``, where ``model.generate(..., draft_plan=...)`` finds it too)
gives the same tokens again by self-speculative decoding: the same weights draft ``k`` tokens per round with a
cheaper iteration plan in their own ``SlotCache``, and one verifier forward scores them.
"""

from __future__ import annotations

from typing import Callable

import torch

from iiet.models.cache import SlotCache
from iiet.models.speculative import Sampling, generate_speculative

__all__ = ["SamplingStep", "decode", "decode_step", "generate_fast", "generate_speculative", "prefill"]

DecodeStep = Callable[[torch.nn.Module, torch.Tensor, SlotCache], torch.Tensor]


def decode_step(model: torch.nn.Module, token: torch.Tensor, cache: SlotCache) -> torch.Tensor:
    """One decoding step: (B, 1) tokens in, (B, 1) greedy next tokens out; appends one position to every slot."""
    logits = model(token, past_key_values=cache, use_cache=True).logits  # (B, 1, V)
    return logits[:, -1].argmax(-1, keepdim=True)


class SamplingStep:
    """A decoding step that samples from plain sampling's distribution (``Sampling``: temperature, top-k, top-p)
    instead of taking the argmax: what ``iiet bench --temperature`` times."""

    def __init__(self, sampling: Sampling, generator: torch.Generator | None = None):
        self.sampling, self.generator = sampling, generator

    def __call__(self, model: torch.nn.Module, token: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]  # (B, V)
        return torch.multinomial(self.sampling.probabilities(logits), 1, generator=self.generator)


def prefill(
    model: torch.nn.Module, input_ids: torch.Tensor, cache: SlotCache, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the prompt (B, T) through the model, filling ``cache``; returns the first greedy tokens (B, 1)."""
    # Only the last position's logits are needed: skips the (B, T, V) LM-head product over the prompt.
    logits = model(
        input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True, logits_to_keep=1
    ).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def decode(
    model: torch.nn.Module,
    token: torch.Tensor,
    cache: SlotCache,
    steps: int,
    attention_mask: torch.Tensor | None = None,
    step: DecodeStep = decode_step,
) -> torch.Tensor:
    """Feed ``token`` (B, 1) and each greedy successor for ``steps`` forwards; returns the (B, steps) new tokens.

    ``attention_mask`` (B, past) is needed only for left-padded prompts; ``step`` may be a compiled ``decode_step``
    (used only without a mask).
    """
    tokens = []
    for _ in range(steps):
        if attention_mask is None:
            token = step(model, token, cache)
        else:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
            logits = model(token, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


@torch.inference_mode()
def generate_fast(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
    cache: SlotCache | None = None,
) -> torch.Tensor:
    """Greedy decoding with a pre-allocated ``SlotCache``; returns (B, T + max_new_tokens) token ids.

    Same tokens as ``model.generate(input_ids, attention_mask=..., max_new_tokens=..., do_sample=False)`` (no EOS
    stopping). Left padding is supported through ``attention_mask``.

    Args:
        model: an ``IIETForCausalLM`` in eval mode.
        input_ids: (B, T) prompt ids, left-padded if rows differ in length.
        max_new_tokens: tokens to generate per row.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; ``None`` when there is no padding.
        cache: a ``SlotCache`` for ``B`` rows and at least ``T + max_new_tokens`` positions; built when ``None``.
    """
    B, T = input_ids.shape
    if cache is None:
        cache = SlotCache.for_model(model, B, T + max_new_tokens)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the mask-free path lets SDPA use its fused kernels
    first = prefill(model, input_ids, cache, attention_mask)
    rest = decode(model, first, cache, max_new_tokens - 1, attention_mask) if max_new_tokens > 1 else first[:, :0]
    return torch.cat([input_ids, first, rest], dim=1)
