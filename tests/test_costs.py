"""The model reports its own cost: the analytic FLOP formula against torch's FLOP counter, the KV bytes formula
against the caches a forward fills."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from iiet.models.cache import SlotCache
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


def test_kv_bytes_formula_matches_the_caches_the_model_fills(scheme):
    """The analytic bytes per token against what a forward actually stores: HF's DynamicCache (generate()'s) and
    the SlotCache that ``iiet bench`` pre-allocates."""
    model = tiny_model(scheme)
    T = 5
    with torch.no_grad():
        cache = model(torch.randint(1, 100, (1, T)), use_cache=True).past_key_values
    stored = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_cache_bytes_per_token(model.config, torch.float32) * T == stored
    assert SlotCache.for_model(model, 1, T).bytes_per_token() * T == stored
