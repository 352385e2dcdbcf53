"""GPU paths (skipped without CUDA): bf16 autocast, SDPA kernels, torch.compile, cache exactness on the device."""

from __future__ import annotations

import pytest
import torch

from .conftest import ALL_SCHEMES, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", ["euler", "iiet-r2", "e-iiet", "pcformer"])
@torch.no_grad()
def test_cached_decoding_is_exact_on_gpu_in_fp32_and_close_in_bf16(name):
    from transformers import DynamicCache

    for dtype, atol in ((torch.float32, 1e-4), (torch.bfloat16, 0.15)):
        model = tiny_model(ALL_SCHEMES[name]).to("cuda", dtype)
        ids = torch.randint(1, 100, (2, 16), device="cuda")
        full = model(ids).logits.float()
        cache = DynamicCache()
        out = model(ids[:, :6], past_key_values=cache, use_cache=True)
        logits = [out.logits]
        for t in range(6, 16):
            logits.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
        assert (torch.cat(logits, 1).float() - full).abs().max() <= atol, dtype


def test_bf16_autocast_training_step_has_finite_gradients():
    model = tiny_model(ALL_SCHEMES["iiet-r2"]).cuda().train()
    ids = torch.randint(1, 100, (2, 32), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_compile_matches_eager():
    model = tiny_model(ALL_SCHEMES["iiet-r2"]).cuda()
    ids = torch.randint(1, 100, (2, 32), device="cuda")
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model)(ids, use_cache=False).logits
    assert (eager - compiled).abs().max() <= 1e-3
