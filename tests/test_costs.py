"""The model reports its own cost: the analytic FLOP formula against torch's FLOP counter, KV bytes per slot."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from iiet.models.costs import flops_per_token, kv_cache_bytes_per_token

from .conftest import ALL_SCHEMES, tiny_model


@pytest.mark.parametrize("name", ["euler", "iiet-r2", "e-iiet", "pcformer", "weight-shared"])
def test_flop_formula_matches_the_flop_counter(name):
    model = tiny_model(ALL_SCHEMES[name])
    T = 16
    ids = torch.randint(1, 100, (1, T))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    expected = T * flops_per_token(model.config, context=T)
    if not any("scaled_dot_product" in str(op) for op in counter.get_flop_counts()["Global"]):
        # torch has no FLOP formula for the CPU SDPA kernel: take the attention term (4 H D per query-key pair,
        # T x T pairs per block evaluation) out of the expectation; on GPU the counter charges it itself.
        c = model.config
        expected -= c.num_block_evaluations * 4 * c.num_attention_heads * c.head_dim * T * T
    assert counter.get_total_flops() == expected


def test_kv_cache_bytes_scale_with_block_evaluations():
    euler = tiny_model("euler").config
    for name, scheme in ALL_SCHEMES.items():
        config = tiny_model(scheme).config
        ratio = config.num_block_evaluations / config.num_hidden_layers
        assert kv_cache_bytes_per_token(config) == ratio * kv_cache_bytes_per_token(euler), name
