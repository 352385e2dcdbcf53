"""Exact self-speculative decoding: the same weights draft with a cheaper plan, the full model verifies.

Greedy decoding must give exactly plain greedy decoding's tokens (every prompt, scheme, draft plan, draft length,
left-padded batches with per-row acceptance, caches compacted); sampling must give plain sampling's distribution
(many draws at a fixed prefix against the exact distribution, with a wrong acceptance rule shown to fail the bound).
The models run in float64 so that the verifier's multi-token forward and plain one-token decoding cannot round an
argmax differently. Draft quality is made poor on purpose (``_disagreeing``), so that rejections, roll-backs and
holes are exercised, not only accepted drafts.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from iiet import IIETForCausalLM
from iiet.bench import generate_fast
from iiet.errors import IIETError
from iiet.models import speculative
from iiet.models.cache import SlotCache
from iiet.models.schemes import SchemeOptions
from iiet.models.speculative import (
    DraftPlan,
    Sampling,
    SpeculativeDecoder,
    draft_forward,
    generate_speculative,
    resolve_draft,
    speculative_accept,
)

from .conftest import TINY, tiny_model

SCHEMES = {
    "iiet-r2": {"name": "iiet", "num_iterations": 2},
    "e-iiet": {"name": "iiet", "iteration_plan": [0, 3, 1]},
    "pcformer": {"name": "pcformer", "order": 2},  # drafts with lower predictor orders
}
# A weight scale at which the Lower Bound draft of a random tiny IIET disagrees with it often (acceptance ~0.3-0.8).
DISAGREEMENT_SCALE = 2.0


def _disagreeing(scheme, scale: float = DISAGREEMENT_SCALE, seed: int = 0, **overrides) -> IIETForCausalLM:
    """A tiny float64 model whose residual-writing projections are scaled up: larger updates make the corrections
    matter, so a cheaper plan drafts tokens the full model often rejects."""
    model = tiny_model(scheme, seed=seed, **overrides).double()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
    return model


def _prompts(B: int, T: int, pad: tuple[int, ...] = (), seed: int = 0, vocab: int = TINY["vocab_size"]):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pad):
        mask[b, :p] = 0
        ids[b, :p] = TINY["pad_token_id"]
    return ids, mask


# -- greedy: identical tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, draft",
    [("iiet-r2", "lower-bound"), ("iiet-r2", "0,1,0"), ("e-iiet", "lower-bound"), ("e-iiet", "adaptive:0.3"),
     ("pcformer", "0,2,0")],
)
def test_greedy_speculative_decoding_gives_plain_greedy_tokens(scheme, draft):
    model = _disagreeing(SCHEMES[scheme])
    drafted = accepted = 0
    for k in (1, 4):
        for seed in range(3):
            ids, _ = _prompts(1, 5 + 2 * seed, seed=seed)
            out, stats = generate_speculative(model, ids, 16, draft, k)
            assert torch.equal(out, generate_fast(model, ids, 16)), (k, seed)
            drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
            assert 1 <= stats.tokens_per_verify <= k + 1
    assert 0 < accepted < drafted  # drafts were both kept and rejected: the roll-back really ran


def test_draft_length_adapted_to_the_drafts_confidence_keeps_the_tokens():
    model = _disagreeing(SCHEMES["iiet-r2"])
    ids, mask = _prompts(2, 7, pad=(0, 3), seed=3)
    reference = generate_fast(model, ids, 20, attention_mask=mask)
    out, stats = generate_speculative(model, ids, 20, "lower-bound", 5, attention_mask=mask, draft_confidence=0.5)
    assert torch.equal(out, reference)
    assert stats.shortened > 0  # some rounds stopped drafting early


def test_a_draft_with_the_full_plan_is_always_accepted():
    model = _disagreeing(SCHEMES["e-iiet"])
    ids, _ = _prompts(2, 6)
    out, stats = generate_speculative(model, ids, 20, [0, 3, 1], 4)
    assert torch.equal(out, generate_fast(model, ids, 20))
    assert stats.acceptance_rate == 1.0 and stats.draft_forwards == stats.rounds * 4 - 1  # last round drafts 3


def test_batched_left_padded_prompts_accept_per_row_and_equal_plain_greedy():
    model = _disagreeing(SCHEMES["iiet-r2"])
    ids, mask = _prompts(4, 9, pad=(0, 3, 5, 1), seed=4)
    reference = generate_fast(model, ids, 30, attention_mask=mask)
    decoder = SpeculativeDecoder(model, "lower-bound", 4, 4, speculative.speculative_max_length(9, 30, 4, 4))
    first = decoder.prefill(ids, mask)
    rest = decoder.decode(29)
    assert torch.equal(torch.cat([ids, first, rest], 1), reference)
    # Rows kept different numbers of drafts: the shorter ones left holes between their real tokens.
    generated = decoder.mask[:, 9 : decoder.length]
    assert (generated == 0).any() and len(set(generated.sum(1).tolist())) > 1


def test_holes_are_compacted_when_the_caches_fill_and_tokens_stay_exact():
    model = _disagreeing(SCHEMES["iiet-r2"])
    ids, mask = _prompts(3, 7, pad=(0, 2, 4), seed=1)
    reference = generate_fast(model, ids, 40, attention_mask=mask)
    decoder = SpeculativeDecoder(model, "lower-bound", 5, 3, max_length=7 + 40 + 5 + 2)  # no room for holes
    out = torch.cat([ids, decoder.prefill(ids, mask), decoder.decode(39)], 1)
    assert decoder.stats.compactions > 0
    assert torch.equal(out, reference)


def test_decoding_in_several_calls_equals_one_call():
    model = _disagreeing(SCHEMES["iiet-r2"])
    ids, mask = _prompts(3, 6, pad=(0, 2, 0), seed=2)
    decoder = SpeculativeDecoder(model, "lower-bound", 3, 3, 64)
    first = decoder.prefill(ids, mask)
    pieces = [decoder.decode(n) for n in (1, 5, 2, 9)]
    assert torch.equal(torch.cat([ids, first, *pieces], 1), generate_fast(model, ids, 18, attention_mask=mask))


def test_model_generate_with_a_draft_plan_equals_plain_generate(tmp_path):
    model = _disagreeing(SCHEMES["e-iiet"])
    ids, mask = _prompts(3, 6, pad=(0, 2, 3), seed=5)
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"iteration_plan": [0, 1, 0]}))
    for draft in ("lower-bound", f"e-iiet:{plan}", [0, 0, 1]):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                             draft_plan=draft, num_draft_tokens=3)
        assert torch.equal(out, plain), draft
    # EOS (several ids): rows end at different steps, are padded after their EOS, and decoding stops once all ended.
    eos = [int(plain[0, 6 + 2]), int(plain[1, 6 + 5]), int(plain[2, 6 + 9])]
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                           eos_token_id=eos)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                         eos_token_id=eos, draft_plan="lower-bound", num_draft_tokens=4)
    assert plain.shape[1] < 26 and torch.equal(out, plain)


# -- the cache roll-back --------------------------------------------------------------------------------------------


@torch.no_grad()
def test_slot_cache_crop_rolls_back_every_slot():
    model = tiny_model(SCHEMES["iiet-r2"])
    ids, _ = _prompts(2, 12)
    full = model(ids).logits
    cache = SlotCache.for_model(model, 2, 16)
    model(ids[:, :8], cache=cache)
    model(torch.randint(1, 100, (2, 5)), cache=cache)  # 5 positions of rejected drafts
    cache.crop(8)
    assert all(layer.get_seq_length() == 8 for layer in cache.layers)
    torch.testing.assert_close(model(ids[:, 8:], cache=cache).logits, full[:, 8:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_slot_cache_compact_squeezes_holes_out():
    model = tiny_model(SCHEMES["e-iiet"])
    ids, _ = _prompts(2, 13, seed=7)
    full = model(ids).logits
    # The first 10 tokens of each row with junk positions (holes) interleaved and masked out.
    holed = torch.randint(1, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    for b, holes in enumerate(([3, 5], [0, 7])):
        mask[b, holes] = 0
        holed[b, mask[b].bool()] = ids[b, :10]
    cache = SlotCache.for_model(model, 2, 16)
    model(holed, attention_mask=mask, cache=cache)
    cache.compact(torch.stack([torch.nonzero(row).squeeze(1) for row in mask]))  # (2, 10): the real positions
    assert all(layer.get_seq_length() == 10 for layer in cache.layers)
    torch.testing.assert_close(model(ids[:, 10:], cache=cache).logits, full[:, 10:], atol=1e-5, rtol=0)


# -- the draft view -------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_draft_forward_is_the_model_with_the_draft_plan():
    model = tiny_model(SCHEMES["iiet-r2"])
    lower = IIETForCausalLM(model.config.__class__(**{**TINY, "scheme": {"name": "iiet", "iteration_plan": [0] * 3}}))
    lower.load_state_dict(model.state_dict())
    lower.eval()
    ids, _ = _prompts(2, 9)
    draft = resolve_draft(model.config, "lower-bound")
    cache = SlotCache(draft.num_slots, 2, 9, TINY["num_key_value_heads"], model.config.head_dim)
    logits = draft_forward(model, ids[:, :5], cache, draft)
    logits = [logits, *(draft_forward(model, ids[:, t : t + 1], cache, draft) for t in range(5, 9))]
    torch.testing.assert_close(torch.stack(logits[1:], 1), lower(ids).logits[:, 5:], atol=1e-5, rtol=0)
    assert model.model.num_slots == 9 and draft.num_slots == 3


def test_draft_plans_are_validated():
    config = tiny_model(SCHEMES["iiet-r2"]).config
    assert resolve_draft(config, "lower-bound").iteration_plan == (0, 0, 0)
    assert resolve_draft(config, "adaptive").iteration_plan == (2, 2, 2)
    assert resolve_draft(config, "adaptive:0.01").adaptive_tolerance == 0.01
    assert resolve_draft(config, "1,0,2") == resolve_draft(config, [1, 0, 2])
    for bad in ("0,1", [0, -1, 0], "e-iiet", "e-iiet:/nonexistent/plan.json", "lower", "adaptive:x", 3):
        with pytest.raises(IIETError):
            resolve_draft(config, bad)
    with pytest.raises(IIETError, match="has no plan"):
        resolve_draft(tiny_model({"name": "euler"}).config, "lower-bound")
    model = tiny_model(SCHEMES["iiet-r2"])
    with pytest.raises(IIETError, match="num_draft_tokens"):
        SpeculativeDecoder(model, "lower-bound", 0)
    with pytest.raises(IIETError, match="num_beams"):
        model.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=3, num_beams=2, draft_plan="lower-bound")
    with pytest.raises(IIETError, match="streamer"):
        model.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=3, streamer=object(),
                       draft_plan="lower-bound")


# -- sampling: plain sampling's distribution ------------------------------------------------------------------------

STAT_VOCAB = 8  # small enough that the joint distribution of three tokens (512 cells) is estimated well
STAT_MODEL = dict(vocab_size=STAT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1)
STAT_DRAWS = 12000
STAT_PROMPT = [3, 1]
CHI2_Z = 3.719  # the standard-normal quantile of 1 - 1e-4: a correct rule fails one run in 10,000


def _resample_from_p(drafted, q, p, generator=None):
    """A WRONG rule: at a rejection draw from p instead of norm(max(0, p - q)) (over-weights the drafts' tokens)."""
    kept, _ = speculative_accept(drafted, q, p, generator)
    rows = torch.arange(drafted.shape[0])
    return kept, torch.multinomial(p[rows, kept], 1, generator=generator).squeeze(1)


def _exact_joint(model, sampling: Sampling, plan=None) -> torch.Tensor:
    """P(t1, t2, t3 | prompt) under plain sampling (of the model run with ``plan``), flat (V^3,)."""
    V = STAT_VOCAB
    grid = torch.cartesian_prod(*[torch.arange(V)] * 3)  # (V^3, 3): every continuation, scored in one forward
    ids = torch.cat([torch.tensor(STAT_PROMPT).expand(len(grid), -1), grid], 1)
    with torch.no_grad():
        logits = model(ids, scheme_options=SchemeOptions(plan=plan)).logits
    T = len(STAT_PROMPT)
    probs = sampling.probabilities(logits[:, T - 1 : T + 2]).double()  # (V^3, 3, V): p(t1), p(t2|t1), p(t3|t1,t2)
    return (probs.gather(2, grid[:, :, None]).squeeze(2)).prod(1)


def _sampled_counts(model, sampling: Sampling, seed: int, confidence: float | None = None) -> torch.Tensor:
    """Counts of (t1, t2, t3) over STAT_DRAWS speculative samples with k = 2 drafts, flat (V^3,). The draws are the
    rows of a batch: each row accepts on its own."""
    V, B, k = STAT_VOCAB, 4000, 2
    counts = torch.zeros(V**3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    decoder = SpeculativeDecoder(model, "lower-bound", k, B, 64, sampling, generator, draft_confidence=confidence)
    shortened = 0
    for _ in range(STAT_DRAWS // B):
        first = decoder.prefill(torch.tensor(STAT_PROMPT).expand(B, -1))
        tokens = torch.cat([first, decoder.decode(3)], 1)  # t1 from the prefill; one round of 2 drafts makes t2, t3
        counts += torch.bincount(tokens[:, 0] * V * V + tokens[:, 1] * V + tokens[:, 2], minlength=V**3)
        shortened += decoder.stats.shortened
    assert confidence is None or shortened  # the confidence rule really cut drafts short
    return counts


def _chi_square(counts: torch.Tensor, p: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic of ``counts`` against ``p`` and its critical value at 1e-4 (Wilson-Hilferty); cells
    expected below 5 are pooled. A count in a cell of probability 0 fails outright."""
    expected = p * counts.sum()
    assert counts[expected == 0].sum() == 0, "a token plain sampling never emits was emitted"
    counts, expected = counts[expected > 0], expected[expected > 0]
    rare = expected < 5
    if rare.any():
        counts = torch.cat([counts[~rare], counts[rare].sum()[None]])
        expected = torch.cat([expected[~rare], expected[rare].sum()[None]])
    df = len(expected) - 1
    critical = df * (1 - 2 / (9 * df) + CHI2_Z * math.sqrt(2 / (9 * df))) ** 3
    return ((counts - expected) ** 2 / expected).sum().item(), critical


@pytest.mark.parametrize(
    "sampling, confidence", [(Sampling(temperature=0.3), None), (Sampling(temperature=0.7, top_k=5, top_p=0.9), 0.3)],
    ids=["temperature", "temperature-top-k-top-p-adaptive-draft-length"],
)
def test_speculative_sampling_has_plain_samplings_distribution(sampling, confidence, monkeypatch):
    model = _disagreeing({"name": "iiet", "num_iterations": 2}, scale=3.0, **STAT_MODEL).float()
    exact = _exact_joint(model, sampling)
    draft = _exact_joint(model, sampling, plan=[0, 0])
    assert 0.5 * (draft - exact).abs().sum() > 0.15  # the draft's distribution is far from the full model's
    statistic, critical = _chi_square(_sampled_counts(model, sampling, 0, confidence), exact)
    assert statistic < critical
    # The same test rejects a subtly wrong rule: it can fail.
    monkeypatch.setattr(speculative, "speculative_accept", _resample_from_p)
    statistic, critical = _chi_square(_sampled_counts(model, sampling, 0, confidence), exact)
    assert statistic > critical
