"""What a model costs per token, from its config alone (the model reports its own cost).

* block evaluations per token: ``sum_n passes_n`` (Transformer++: ``L``; IIET: ``L (r + 1)``; PCformer: ``3 L``);
* forward FLOPs per token: ``2 x`` the multiply-adds of every matmul a token goes through: each block evaluation's
  projections (``2 P_block``) and attention (``4 H D S`` for ``S`` keys attended), the layer-history
  combinations (``2 d n`` each; a matrix-vector product at inference) and the LM head (``2 d V``). The elementwise
  work (norms, RoPE, SwiGLU gating) is left out, as ``torch.utils.flop_counter`` does; tests/test_costs.py checks the
  formula against that counter;
* KV-cache bytes per token: ``slots x 2 x H_kv x D x bytes`` (one slot per block evaluation).
"""

from __future__ import annotations

import torch

from .configuration_iiet import IIETConfig
from .modeling_iiet import IIETForCausalLM


def block_parameters(config: IIETConfig) -> int:
    """Weights of one decoder block's matmuls (attention projections + SwiGLU MLP)."""
    d, D = config.hidden_size, config.head_dim
    attn = d * D * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    mlp = 3 * d * config.intermediate_size
    return attn + mlp


def history_flops_per_token(config: IIETConfig) -> int:
    """FLOPs of the layer-history combinations (DLCL, IIET, PCformer): ``2 d n`` for a combination of ``n`` entries.

    Layer ``k`` combines ``k + 2`` entries (the embedding, ``k`` earlier layers, its own), plus one combination of
    the embedding alone for layer 0's input. Small next to the blocks (``O(L^2 d)`` vs ``O(L d^2)``).
    """
    per_layer = config.scheme_config.history_combinations(config.num_hidden_layers)
    if per_layer is None:
        return 0
    return 2 * config.hidden_size * (1 + sum(c * (k + 2) for k, c in enumerate(per_layer)))


def flops_per_token(config: IIETConfig, context: int) -> int:
    """Forward matmul FLOPs for one token attending to ``context`` keys (see the module docstring)."""
    per_eval = 2 * block_parameters(config) + 4 * config.num_attention_heads * config.head_dim * context
    return (
        config.num_block_evaluations * per_eval
        + history_flops_per_token(config)
        + 2 * config.hidden_size * config.vocab_size
    )


def training_flops_per_token(config: IIETConfig, seq_len: int) -> int:
    """Matmul FLOPs of one training token (forward + backward) at sequence length ``seq_len``.

    Backward computes two matmuls per forward matmul (the gradients of its input and of its weight), so a training
    token costs three forward passes; attention is counted dense over the ``seq_len`` keys, as the forward formula
    does (tests/test_costs.py checks both against torch's FLOP counter). This is the x axis on which a multi-pass
    model and a Transformer++ trained on more tokens are compared at equal compute (docs/results.md).
    """
    return 3 * flops_per_token(config, context=seq_len)


def kv_cache_bytes_per_token(config: IIETConfig, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of KV cache one token occupies: one slot per block evaluation."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return config.num_block_evaluations * 2 * config.num_key_value_heads * config.head_dim * itemsize


def parameter_count(config: IIETConfig) -> int:
    """Trainable parameters (tied embeddings counted once), counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = IIETForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def describe(config: IIETConfig, context: int = 2048) -> dict[str, int]:
    """Parameters, block evaluations, FLOPs and KV bytes per token of a config."""
    return {
        "parameters": parameter_count(config),
        "block_evaluations": config.num_block_evaluations,
        "flops_per_token": flops_per_token(config, context),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config),
    }
