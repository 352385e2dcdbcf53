"""The exact multi-pass KV cache: for every scheme, cached decoding reproduces the full forward."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .conftest import TINY, tiny_model

ATOL = 1e-4  # fp32, max abs logit difference (the bound)


def _batch(B=3, T=14, pad=(0, 4, 2), seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pad):
        mask[b, :p] = 0  # left padding
        ids[b, :p] = TINY["pad_token_id"]
    return ids, mask


def _decode(model, ids, mask, prefill: int, chunk: int = 1):
    """Prefill ``prefill`` tokens, then feed the rest ``chunk`` tokens at a time through the cache."""
    cache = DynamicCache()
    out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], past_key_values=cache, use_cache=True)
    logits = [out.logits]
    for t in range(prefill, ids.shape[1], chunk):
        end = min(t + chunk, ids.shape[1])
        out = model(ids[:, t:end], attention_mask=mask[:, :end], past_key_values=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1), cache


@torch.no_grad()
def test_token_by_token_decoding_equals_full_forward(scheme):
    model = tiny_model(scheme)
    ids, mask = _batch(pad=(0, 0, 0))
    full = model(ids).logits
    cached, cache = _decode(model, ids, mask, prefill=5)
    assert (cached - full).abs().max() <= ATOL
    assert len(cache.layers) == model.num_block_evaluations()  # one slot per block evaluation


@torch.no_grad()
def test_chunked_prefill_with_left_padding_equals_full_forward(scheme):
    model = tiny_model(scheme)
    ids, mask = _batch()
    full = model(ids, attention_mask=mask).logits
    real = mask.bool()
    for prefill, chunk in ((6, 1), (3, 4)):
        cached, _ = _decode(model, ids, mask, prefill=prefill, chunk=chunk)
        assert (cached - full)[real].abs().max() <= ATOL, (prefill, chunk)


@torch.no_grad()
def test_left_padded_rows_equal_the_unpadded_sequence(scheme):
    model = tiny_model(scheme)
    ids, mask = _batch(pad=(0, 4, 2))
    full = model(ids, attention_mask=mask).logits
    for b in range(ids.shape[0]):
        alone = model(ids[b : b + 1, mask[b].bool()]).logits[0]
        assert (full[b][mask[b].bool()] - alone).abs().max() <= ATOL


@torch.no_grad()
def test_future_tokens_never_change_past_logits(scheme):
    model = tiny_model(scheme)
    ids, _ = _batch(pad=(0, 0, 0))
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 7) % TINY["vocab_size"]
    a, b = model(ids).logits, model(changed).logits
    assert (a[:, :9] - b[:, :9]).abs().max() == 0
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 0


@torch.no_grad()
def test_generate_uses_the_cache_and_matches_greedy_recomputation(scheme):
    model = tiny_model(scheme)
    ids, mask = _batch(B=2, T=8, pad=(0, 3))
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
        pad_token_id=TINY["pad_token_id"],
    )
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], dim=1)
    reference = model(seq[:, :-1], attention_mask=full_mask[:, :-1]).logits[:, ids.shape[1] - 1 :]
    generated_logits = torch.stack(out.logits, dim=1)
    assert (generated_logits - reference).abs().max() <= ATOL
    assert torch.equal(seq[:, ids.shape[1] :], reference.argmax(-1))


@torch.no_grad()
def test_sampling_generate_runs_with_the_cache():
    model = tiny_model({"name": "iiet", "iteration_plan": [1, 0, 2]})
    ids, mask = _batch(B=2, T=5, pad=(0, 1))
    torch.manual_seed(0)
    seq = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=True, top_k=5, pad_token_id=0)
    assert seq.shape == (2, 9)


@torch.no_grad()
def test_a_draft_plan_keeps_its_own_slots_beside_the_verifiers():
    """Self-speculative decoding: the same weights run a cheaper plan (Lower Bound) into slots after the verifier's;
    both decode exactly their own full forward through one cache, and neither disturbs the other."""
    from iiet.models.cache import SlotCache
    from iiet.models.schemes import SchemeOptions

    model = tiny_model({"name": "iiet", "num_iterations": 2})
    base = model.model
    draft = SchemeOptions(plan=[0] * TINY["num_hidden_layers"], slot_base=base.num_slots)
    assert base.slot_offsets_for(draft) == [base.num_slots + n for n in range(TINY["num_hidden_layers"])]
    ids, _ = _batch(B=2, pad=(0, 0))
    full, full_draft = model(ids).logits, model(ids, scheme_options=draft).logits
    for cache in (DynamicCache(), SlotCache(base.num_slots_for(draft), 2, ids.shape[1], TINY["num_key_value_heads"],
                                            TINY["hidden_size"] // TINY["num_attention_heads"])):
        verified, drafted = [], []
        for t in range(ids.shape[1]):  # interleaved: draft token t, then verify it
            drafted.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True, scheme_options=draft).logits)
            verified.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
        assert (torch.cat(verified, 1) - full).abs().max() <= ATOL
        assert (torch.cat(drafted, 1) - full_draft).abs().max() <= ATOL
