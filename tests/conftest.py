"""Shared fixtures: tiny configs for every scheme (CPU, fp32, seconds)."""

from __future__ import annotations

import pathlib

import pytest
import torch

import iiet  # noqa: F401  (registers the HF Auto classes)
from iiet import IIETConfig, IIETForCausalLM

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention on purpose
    max_position_embeddings=128,
    tie_word_embeddings=True,
    pad_token_id=0,
)

# Every scheme and reading the model family offers, including an uneven E-IIET plan and the Lower Bound.
ALL_SCHEMES = {
    "euler": {"name": "euler"},
    "dlcl": {"name": "dlcl"},
    "dlcl-normalized": {"name": "dlcl", "history": "normalized"},
    "iiet-r2": {"name": "iiet", "num_iterations": 2},
    "iiet-r2-normalized": {"name": "iiet", "num_iterations": 2, "history": "normalized"},
    "e-iiet": {"name": "iiet", "iteration_plan": [0, 3, 1]},
    "lower-bound": {"name": "iiet", "iteration_plan": [0, 0, 0]},
    "pcformer": {"name": "pcformer", "order": 2},
    "pcformer-rk4-per-layer": {"name": "pcformer", "order": 4, "coefficient": "per_layer"},
    "pcformer-normalized": {"name": "pcformer", "history": "normalized"},
    "pcformer-fl": {"name": "pcformer", "order_plan": [0, 2, 4]},  # explicit first layer, orders per layer
    "iiet-anderson": {"name": "iiet", "num_iterations": 3, "corrector": {"name": "anderson", "window": 2}},
    "weight-shared": {"name": "weight_shared", "repeats": 3},
}


def tiny_model(scheme, seed: int = 0, perturb: bool = True, **overrides) -> IIETForCausalLM:
    """A tiny fp32 model in eval mode; ``perturb`` moves the scheme's own parameters off their initial values so
    that tests also cover trained combination weights, not only the identity start."""
    torch.manual_seed(seed)
    model = IIETForCausalLM(IIETConfig(**{**TINY, **overrides}, scheme=scheme)).eval()
    if perturb:
        with torch.no_grad():
            for p in model.model.scheme.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from a second thread, and OpenMP threads spin badly on a shared CPU (~15x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=list(ALL_SCHEMES), ids=list(ALL_SCHEMES))
def scheme(request):
    return ALL_SCHEMES[request.param]
