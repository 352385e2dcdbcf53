"""Adaptive corrections: a token stops correcting at a layer once its fixed point has converged."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from iiet import IIETConfig
from iiet.errors import IIETError
from iiet.models.correctors import Anderson, FixedPoint
from iiet.models.schemes import SchemeOptions

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


ANDERSON = {"name": "anderson", "window": 3}


def _contraction(seed=0, d=6, rate=0.9):
    """A per-token linear contraction G(e) = A e + b with spectral norm ``rate``, and its fixed point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    A = q @ torch.diag(torch.linspace(-rate, rate, d, dtype=torch.float64)) @ q.T
    b = torch.randn(2, 5, d, generator=g, dtype=torch.float64)  # (B, T, d)
    fixed = torch.linalg.solve(torch.eye(d) - A, b[..., None])[..., 0]
    return (lambda e: e @ A.T + b), fixed


def test_anderson_reaches_the_fixed_point_of_a_contraction_in_fewer_evaluations():
    G, fixed = _contraction()

    def evaluations(c, tol=1e-8, most=400):
        state, e = c.start(), torch.zeros_like(fixed)
        for k in range(1, most + 1):
            e = state.step(e, G(e))
            if (e - fixed).norm(dim=-1).max() < tol:
                return k
        return most

    plain, anderson = evaluations(FixedPoint()), evaluations(Anderson(window=6))
    assert anderson < plain / 4, (anderson, plain)  # a window as wide as the space: ~d + 1 evaluations
    assert evaluations(Anderson(window=2)) < plain


@torch.no_grad()
def test_anderson_on_an_iiet_model_gets_closer_to_its_fixed_point_than_plain_iteration():
    model = tiny_model(SCHEME, residual_init_scale=0.3)  # a contraction at this init
    ids = _ids()
    fixed = model(ids, scheme_options=SchemeOptions(plan=[40] * 3)).logits
    plain = model(ids, scheme_options=SchemeOptions(plan=[4] * 3)).logits
    anderson = model(ids, scheme_options=SchemeOptions(plan=[4] * 3, corrector=ANDERSON)).logits
    assert (anderson - fixed).abs().max() < 0.5 * (plain - fixed).abs().max()


@torch.no_grad()
def test_anderson_with_window_zero_is_plain_iteration_bit_for_bit():
    model = tiny_model(SCHEME)
    ids = _ids()
    plain = model(ids, output_iterations=True)
    zero = model(ids, output_iterations=True, scheme_options=SchemeOptions(corrector={"name": "anderson", "window": 0}))
    assert torch.equal(plain.logits, zero.logits)
    for a, b in zip(plain.iterations, zero.iterations):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(plain.logits, model(ids, scheme_options=SchemeOptions(corrector=ANDERSON)).logits)


@pytest.mark.parametrize("tol", [None, 1e-3])
@torch.no_grad()
def test_anderson_keeps_cached_decoding_exact(tol):
    configured = tiny_model({**SCHEME, "corrector": ANDERSON, "adaptive_tolerance": tol})
    ids = _ids()
    full = configured(ids)
    cache = DynamicCache()
    logits = [configured(ids[:, :3], past_key_values=cache, use_cache=True).logits]
    for t in range(3, ids.shape[1]):
        logits.append(configured(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(logits, 1) - full.logits).abs().max() <= 1e-4
    per_call = tiny_model(SCHEME)(ids, scheme_options=SchemeOptions(corrector=ANDERSON), adaptive_tolerance=tol)
    torch.testing.assert_close(per_call.logits, full.logits, atol=0, rtol=0)  # per call == in the config


def test_bad_correctors_are_clear_errors():
    for corrector, message in (({"name": "broyden"}, "unknown corrector"), ({"name": "anderson", "window": -1},
                               "window"), ({"name": "anderson", "damping": 0}, "damping")):
        with pytest.raises(IIETError, match=message):
            IIETConfig(**TINY, scheme={**SCHEME, "corrector": corrector})
    with pytest.raises(IIETError, match="iiet scheme only"):
        tiny_model("pcformer")(_ids(), scheme_options=SchemeOptions(corrector=ANDERSON))
