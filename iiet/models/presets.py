"""Model sizes: the paper's Table 4 (55M, 340M, 740M; LLaMA-2 vocabulary) plus tiny sizes that train on a CPU.

``build_config(preset, scheme)`` is the one builder; ``iiet info`` prints what each preset costs under each scheme.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from iiet.errors import IIETError

from .configuration_iiet import IIETConfig, parse_scheme
from .costs import describe
from .names import resolve

PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: a few hundred thousand parameters.
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    ),
    # The CPU calibration size (docs/training.md): ~3.3M parameters with an 8k vocabulary.
    "cpu-small": dict(
        vocab_size=8192, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
    ),
    # Table 4 of the paper.
    "55M": dict(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=12,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
    ),
    "340M": dict(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
    ),
    "740M": dict(
        vocab_size=32000, hidden_size=1536, intermediate_size=4224, num_hidden_layers=24,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
    ),
}
COMMON = dict(hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-6, tie_word_embeddings=True)

# The models compared in the paper, as ``iiet info`` shows them (names of ``iiet.models.names``).
PAPER_MODELS = ("transformer++", "dlcl", "pcformer", "iiet-r3", "trans-ws")


def build_config(
    preset: str, scheme: str | dict[str, Any] = "euler", vocab_size: int | None = None, **overrides: Any
) -> IIETConfig:
    """The ``IIETConfig`` of a preset with a scheme; ``overrides`` are any other ``IIETConfig`` fields."""
    if preset not in PRESETS:
        raise IIETError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}.")
    fields = {f.name for f in dataclasses.fields(IIETConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise IIETError(f"unknown model config key(s) {unknown}; valid keys are IIETConfig's fields: {sorted(fields)}.")
    values = {**COMMON, **PRESETS[preset], **overrides, "scheme": parse_scheme(scheme).to_dict()}
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    return IIETConfig(**values)


def info(
    presets: list[str] = ["tiny", "cpu-small", "55M", "340M", "740M"],
    context: int = 2048,
) -> None:
    """Print each preset's parameters, block evaluations, FLOPs and KV-cache bytes per token under each scheme.

    Args:
        presets: preset names (see ``iiet.models.presets.PRESETS``).
        context: context length used for the attention part of the FLOPs (keys attended per token).
    """
    header = f"{'preset':<10} {'scheme':<15} {'params':>9} {'block evals':>11} {'GFLOPs/tok':>10} {'KV KiB/tok':>10}"
    print(header)
    print("-" * len(header))
    for preset in presets:
        num_layers = build_config(preset).num_hidden_layers
        for name in PAPER_MODELS:
            named = resolve(name, num_layers)
            label, cost = named.label, describe(build_config(preset, named.scheme), context=context)
            print(
                f"{preset:<10} {label:<15} {cost['parameters'] / 1e6:>8.1f}M {cost['block_evaluations']:>11d} "
                f"{cost['flops_per_token'] / 1e9:>10.3f} {cost['kv_cache_bytes_per_token'] / 1024:>10.1f}"
            )
    print(f"\nFLOPs: forward matmul FLOPs per token at a context of {context} tokens; KV cache in bf16.")
