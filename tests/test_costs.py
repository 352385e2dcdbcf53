"""The model reports its own cost: the analytic FLOP formula against torch's FLOP counter, KV bytes per slot."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from iiet.models.costs import (
    flops_per_token,
    history_flops_per_token,
    kv_cache_bytes_per_token,
    training_flops_per_token,
)

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


@pytest.mark.parametrize("name", ["euler", "e-iiet", "pcformer"])
def test_training_flops_match_the_flop_counter_over_forward_and_backward(name):
    model = tiny_model(ALL_SCHEMES[name]).train()
    T = 16
    ids = torch.randint(1, 100, (2, T))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids, use_cache=False).loss.backward()
    # With autograd the layer history is combined term by term (elementwise, which the counter does not see).
    expected = 2 * T * (training_flops_per_token(model.config, seq_len=T) - 3 * history_flops_per_token(model.config))
    if not any("scaled_dot_product" in str(op) for op in counter.get_flop_counts()["Global"]):
        c = model.config  # the CPU SDPA kernel has no FLOP formula, forward or backward (see above)
        expected -= 3 * 2 * c.num_block_evaluations * 4 * c.num_attention_heads * c.head_dim * T * T
    assert counter.get_total_flops() == expected


def test_kv_cache_bytes_scale_with_block_evaluations():
    euler = tiny_model("euler").config
    for name, scheme in ALL_SCHEMES.items():
        config = tiny_model(scheme).config
        ratio = config.num_block_evaluations / config.num_hidden_layers
        assert kv_cache_bytes_per_token(config) == ratio * kv_cache_bytes_per_token(euler), name
