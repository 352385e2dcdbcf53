"""The LLaMA pieces shared by every scheme: RMSNorm, rotary embeddings, attention, SwiGLU MLP, and the block.

A ``DecoderBlock`` computes only the *update* of a layer (docs/architecture.md, Eq. A):

    F_n(x) = a + MLP(RMSNorm(x + a)),   a = Attention(RMSNorm(x))

so that ``x + F_n(x)`` is exactly one LLaMA decoder layer (Transformer++, explicit Euler). It never adds ``x`` itself:
how updates are combined is the numerical scheme's job (``schemes.py``). Parameter names follow HF LLaMA
(``self_attn.q_proj``, ``mlp.gate_proj``, ``input_layernorm``, ...), so LLaMA state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 like HF LLaMA, so bf16 runs and parity tests see the same numbers.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for RoPE at the given positions: (B, T) -> two (B, T, head_dim) tensors.

    Computed once per forward and shared by every block evaluation (all passes see the same positions).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (B, T, D) -> broadcast over heads
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class AttentionContext:
    """What every block evaluation of one forward shares: RoPE tables, the mask, and the KV cache."""

    __slots__ = ("cos", "sin", "mask", "is_causal", "cache")

    def __init__(self, cos, sin, mask, is_causal, cache):
        self.cos, self.sin = cos, sin
        self.mask = mask  # None or bool (B, 1, T, S): True = may attend
        self.is_causal = is_causal  # SDPA's own causal mask (no cache, no padding): enables flash kernels
        self.cache = cache  # None or a cache with update(k, v, slot) -> (all k, all v)


class Attention(nn.Module):
    """Grouped-query causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.o_proj.writes_residual = True  # initialised with config.residual_init_scale

    def project_kv(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values of ``x``: two (B, Hkv, T, D) tensors."""
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(k, ctx.cos, ctx.sin), v

    def forward(self, x: torch.Tensor, ctx: AttentionContext, slot: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        q = apply_rotary(q, ctx.cos, ctx.sin)
        k, v = self.project_kv(x, ctx)
        if ctx.cache is not None:
            # Each block evaluation owns its slot: pass i attends to keys/values made from pass i's own inputs,
            # exactly as in the full forward, so cached decoding is exact.
            k, v = ctx.cache.update(k, v, slot)  # (B, Hkv, S, D)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=ctx.mask, is_causal=ctx.is_causal, enable_gqa=self.num_kv_heads != self.num_heads
        )  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.down_proj.writes_residual = True  # initialised with config.residual_init_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(GradientCheckpointingLayer):
    """One layer's update ``F_n(x)`` (the residual is the scheme's business).

    Subclassing ``GradientCheckpointingLayer`` makes ``model.gradient_checkpointing_enable()`` checkpoint every
    *block evaluation*: IIET runs each block ``r + 1`` times, so activations then stay one block's worth per pass.
    """

    def __init__(self, config):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, slot: int) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(x), ctx, slot)
        return a + self.mlp(self.post_attention_layernorm(x + a))

    def write_cache(self, x: torch.Tensor, ctx: AttentionContext, slot: int) -> None:
        """Store in ``slot`` the keys/values that an evaluation on ``x`` would store, without running the block."""
        k, v = self.self_attn.project_kv(self.input_layernorm(x), ctx)
        ctx.cache.update(k, v, slot)
