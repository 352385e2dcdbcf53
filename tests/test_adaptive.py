"""Adaptive corrections: a token stops correcting at a layer once its fixed point has converged."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from iiet.errors import IIETError

from .conftest import TINY, tiny_model

SCHEME = {"name": "iiet", "num_iterations": 4}


def _ids(B=2, T=12, seed=5):
    return torch.randint(1, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_zero_tolerance_is_the_full_model_logits_and_cache():
    model = tiny_model(SCHEME)
    ids = _ids()
    full_cache, adaptive_cache = DynamicCache(), DynamicCache()
    full = model(ids, past_key_values=full_cache, use_cache=True)
    adaptive = model(ids, past_key_values=adaptive_cache, use_cache=True, adaptive_tolerance=0.0)
    assert torch.equal(full.logits, adaptive.logits)
    for a, b in zip(full_cache.layers, adaptive_cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert (adaptive.corrections == 4).all()


@torch.no_grad()
def test_compute_is_monotone_and_error_shrinks_with_the_tolerance():
    model = tiny_model(SCHEME)
    ids = _ids()
    full = model(ids).logits
    spent, errors = [], []
    for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0):
        out = model(ids, adaptive_tolerance=tol)
        spent.append(out.corrections.float().mean().item())
        errors.append((out.logits - full).abs().max().item())
    assert spent == sorted(spent), spent  # smaller tolerance -> at least as many corrections
    assert errors[-1] == 0
    assert spent[0] < spent[-1]  # a loose tolerance actually saves corrections on this model
    assert errors[0] >= errors[-2] >= errors[-1]


@pytest.mark.parametrize("tol", [1e-3, 1e-1])  # 1e-1: whole batches converge, so skipped slots are filled
@torch.no_grad()
def test_adaptive_decoding_equals_the_adaptive_full_forward_and_batching_changes_nothing(tol):
    model = tiny_model(SCHEME)
    ids = _ids()
    full = model(ids, adaptive_tolerance=tol)
    cache = DynamicCache()
    out = model(ids[:, :4], past_key_values=cache, use_cache=True, adaptive_tolerance=tol)
    logits, used = [out.logits], [out.corrections]
    for t in range(4, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True, adaptive_tolerance=tol)
        logits.append(out.logits)
        used.append(out.corrections)
    assert (torch.cat(logits, 1) - full.logits).abs().max() <= 1e-4
    assert torch.equal(torch.cat(used, -1), full.corrections)
    for b in range(ids.shape[0]):
        alone = model(ids[b : b + 1], adaptive_tolerance=tol)
        assert (alone.logits[0] - full.logits[b]).abs().max() <= 1e-4
        assert torch.equal(alone.corrections[:, 0], full.corrections[:, b])


@torch.no_grad()
def test_generate_accepts_an_adaptive_tolerance():
    model = tiny_model(SCHEME)
    ids = _ids(B=1, T=5)
    exact = model.generate(ids, max_new_tokens=5, do_sample=False, adaptive_tolerance=0.0, pad_token_id=0)
    assert torch.equal(exact, model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))


def test_bad_tolerances_are_clear_errors():
    with pytest.raises(IIETError, match="must be >= 0"):
        tiny_model(SCHEME)(_ids(), adaptive_tolerance=-1.0)
    with pytest.raises(IIETError, match="iiet scheme only"):
        tiny_model("pcformer")(_ids(), adaptive_tolerance=0.1)


@torch.no_grad()
def test_the_tolerance_can_live_in_the_config_for_eval_and_bench():
    ids = _ids()
    configured = tiny_model({**SCHEME, "adaptive_tolerance": 1e-1})
    plain = tiny_model(SCHEME)
    assert plain(ids).corrections is None
    assert torch.equal(configured(ids).logits, plain(ids, adaptive_tolerance=1e-1).logits)
    assert configured(ids).corrections.float().mean() < 4
