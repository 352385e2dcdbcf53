"""Profile: how many compute kernels one decode step launches, per model (torch.profiler, on CPU).

When decoding is bound by per-kernel cost (small models, small batches: every kernel takes a few microseconds however
little it computes, eager or replayed from a CUDA graph), time per token follows this count, not FLOPs. The count does
not depend on the width of the model, so it is taken on a narrow copy of the preset (same depth and schemes).
A kernel here is a leaf ATen op that computes (views, reshapes and no-op casts excluded).

    python benchmarks/decode_kernels.py --preset 340M
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from iiet.bench.generation import decode_step
from iiet.bench.specs import parse_spec
from iiet.models.cache import SlotCache
from iiet.models.modeling_iiet import IIETForCausalLM

NARROW = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, vocab_size=512)
# Ops that only re-describe memory (no kernel on GPU).
VIEW_OPS = {
    "aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::transpose", "aten::t", "aten::slice",
    "aten::select", "aten::reshape", "aten::unsqueeze", "aten::expand", "aten::narrow", "aten::split", "aten::chunk",
    "aten::resolve_conj", "aten::resolve_neg", "aten::alias", "aten::detach", "aten::lift_fresh", "aten::empty",
    "aten::empty_strided", "aten::empty_like", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::squeeze",
    "aten::unbind", "aten::permute", "aten::expand_as", "aten::view_as", "aten::result_type",
}


def kernels_per_step(spec_text: str, preset: str) -> tuple[int, Counter]:
    spec = parse_spec(spec_text, preset)
    config = spec.config.__class__(**{**spec.config.to_dict(), **NARROW})
    torch.manual_seed(0)
    model = IIETForCausalLM(config).eval()
    with torch.inference_mode():
        cache = SlotCache.for_model(model, 1, 64)
        model(torch.ones(1, 8, dtype=torch.long), past_key_values=cache)
        token = torch.ones(1, 1, dtype=torch.long)
        token = decode_step(model, token, cache)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode_step(model, token, cache)
    ops = Counter(
        e.name for e in prof.events()
        if e.name.startswith("aten::") and not e.cpu_children and e.name not in VIEW_OPS
    )
    return sum(ops.values()), ops


def main(preset: str = "340M", models: list[str] = ["transformer++", "pcformer", "iiet", "e-iiet", "lower-bound",
                                                    "iiet=1", "iiet=2"]) -> None:
    """Print kernels per decode step per model, and the speed ratio vs Transformer++ that the count predicts.

    Args:
        preset: depth and schemes to count (the width is narrowed, which does not change the count).
        models: model specs (see ``iiet bench --help``); the first is the reference.
    """
    rows = [(m, *kernels_per_step(m, preset)) for m in models]
    base = rows[0][1]
    print(f"compute kernels per decode step, {preset} depth")
    print("| model | kernels/step | predicted ratio vs first | top ops |")
    print("|---|---|---|---|")
    for name, total, ops in rows:
        top = ", ".join(f"{op.removeprefix('aten::')} {n}" for op, n in ops.most_common(4))
        print(f"| {parse_spec(name, preset).label} | {total} | {base / total:.3f}x | {top} |")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
