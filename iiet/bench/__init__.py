"""Inference benchmarks: prefill/decode speed, FLOPs and memory of the model family (the paper's Table 3, Fig. 3b).

``iiet bench`` (``commands.bench``) times several models side by side through a pre-allocated ``SlotCache``;
``generate_fast`` is the greedy decoding loop it times, usable on its own, and ``generate_speculative`` its exact
self-speculative counterpart (the same weights draft with a cheaper plan; ``iiet.models.speculative``).
"""

from .generation import decode, decode_step, generate_fast, generate_speculative, prefill

__all__ = ["decode", "decode_step", "generate_fast", "generate_speculative", "prefill"]
