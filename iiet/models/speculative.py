"""Exact self-speculative decoding: an IIET drafts with a cheaper iteration plan of its own weights, then verifies.

An IIET evaluates block ``n`` ``1 + r_n`` times per token. The same weights run with a cheaper plan ``r'`` (the Lower
Bound ``[0] * L``, an E-IIET plan, adaptive corrections; for a PCformer, lower predictor orders) are a draft model for
free: no second copy of the weights, only its own ``sum_n (1 + r'_n)`` KV-cache slots, in a second ``SlotCache``
beside the full model's. The model runs the draft through ``forward(..., scheme_options=SchemeOptions(plan=r'))``
(``draft_forward``). One round:

1. the draft proposes ``k`` tokens ``d_1..d_k`` (one cheap forward each, sampled from its distributions ``q_j``);
2. the full model, the *verifier*, scores ``[t, d_1..d_k]`` in one forward of ``k + 1`` positions (``p_1..p_{k+1}``);
3. greedy: the longest prefix of drafts equal to the verifier's argmax is kept, then the verifier's own next token.
   Sampling (Leviathan et al. 2023; Chen et al. 2023): ``d_j`` is kept with probability ``min(1, p_j(d_j) / q_j(d_j))``;
   the first rejected position is resampled from ``norm(max(0, p_j - q_j))``, and if all ``k`` are kept a bonus
   token is drawn from ``p_{k+1}``. Each token is then distributed exactly as in plain sampling from ``p``;
4. the rejected positions are rolled back in every slot of both caches (``SlotCache.crop``).

The output is the full model's: greedy tokens equal plain greedy decoding, sampled ones have plain sampling's
distribution (tests/test_speculative.py); only the speed depends on how often the draft agrees (docs/benchmarks.md).

Batches: rows keep different numbers of drafts. Both caches hold one length for all rows, so a row that kept fewer
than the longest leaves *holes*: its rejected positions stay in the buffers but are masked out of attention and
skipped by the position ids, exactly like left padding. When holes would overflow the buffers,
``SlotCache.compact`` squeezes them out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .cache import SlotCache
from .configuration_iiet import IIETConfig
from .errors import IIETError
from .schemes import SchemeOptions

DEFAULT_DRAFT_TOKENS = 4
DEFAULT_ADAPTIVE_TOLERANCE = 1e-3  # the draft of ``"adaptive"`` (docs/adaptive.md: close to the full model there)
# Rejected drafts of a batch leave holes in the caches; this many rounds' worth of positions is allocated for them
# beyond the tokens themselves before ``SlotCache.compact`` has to squeeze them out.
HOLE_ROUNDS = 8
DRAFT_NAMES = "a list of corrections per layer, 'r0,r1,...', 'lower-bound', 'e-iiet:PLAN.json' or 'adaptive[:TOL]'"


# -- the draft ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftPlan:
    """What the draft runs: its per-layer plan (IIET corrections, PCformer predictor orders) and, optionally, an
    adaptive tolerance (docs/adaptive.md)."""

    iteration_plan: tuple[int, ...]
    adaptive_tolerance: float | None = None
    label: str = ""

    num_slots: int = 0  # KV-cache slots of the draft: one per block evaluation of its plan

    @property
    def options(self) -> SchemeOptions:
        """How the model's forward runs the draft (``iiet.models.schemes``)."""
        return SchemeOptions(plan=list(self.iteration_plan))


def _read_plan_file(path: str) -> list[int]:
    """The ``iteration_plan`` of a plan file written by ``iiet plan`` (or a hand-written ``{"iteration_plan": [...]}``);
    its entries are checked against the model by ``resolve_draft``."""
    file = Path(path)
    if not file.is_file():
        raise IIETError(f"draft plan file {path} does not exist; make one with `iiet plan`.")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise IIETError(
            f"draft plan file {path} is not JSON ({error}); give a plan.json written by `iiet plan`."
        ) from None
    plan = raw.get("iteration_plan") if isinstance(raw, dict) else None
    if not isinstance(plan, list):
        raise IIETError(f"draft plan file {path} has no iteration_plan list; give a plan.json written by `iiet plan`.")
    return plan


def resolve_draft(config: IIETConfig, draft: Any) -> DraftPlan:
    """Turn ``draft`` (a ``DraftPlan``, a list of corrections per layer, ``"r0,r1,..."``, ``"lower-bound"``,
    ``"e-iiet:PLAN.json"``, ``"adaptive[:TOL]"``) into the ``DraftPlan`` of ``config``'s model, validated."""
    scheme = config.scheme_config
    if not scheme.accepts_plan:
        raise IIETError(
            f"self-speculative decoding drafts with a cheaper per-layer plan of the same weights; this model's "
            f"scheme {scheme.name!r} has no plan (use an iiet or pcformer model)."
        )
    L = config.num_hidden_layers
    tolerance, label = None, None
    if isinstance(draft, DraftPlan):
        plan, tolerance, label = list(draft.iteration_plan), draft.adaptive_tolerance, draft.label
    elif isinstance(draft, (list, tuple)):
        plan = list(draft)
    elif isinstance(draft, str):
        name, _, value = draft.strip().partition(":")
        if name == "lower-bound" and not value:
            plan, label = [0] * L, "lower-bound"
        elif name == "e-iiet" and value:
            plan = _read_plan_file(value)
            label = "e-iiet " + ",".join(map(str, plan))
        elif name == "adaptive":
            if not scheme.accepts_tolerance:
                raise IIETError(f"draft_plan={draft!r}: adaptive corrections apply to iiet models, not "
                                f"{scheme.name!r}.")
            try:
                tolerance = float(value) if value else DEFAULT_ADAPTIVE_TOLERANCE
            except ValueError:
                raise IIETError(f"draft_plan={draft!r}: {value!r} is not a tolerance (a number >= 0).") from None
            if not tolerance >= 0:
                raise IIETError(f"draft_plan={draft!r}: the tolerance must be >= 0.")
            plan, label = scheme.plan(L), f"adaptive:{tolerance:g}"
        else:
            try:
                plan = [int(r) for r in draft.split(",")]
            except ValueError:
                raise IIETError(f"draft_plan={draft!r} is not understood; give {DRAFT_NAMES}.") from None
    else:
        raise IIETError(f"draft_plan={draft!r} is not understood; give {DRAFT_NAMES}.")
    try:
        drafting = scheme.with_plan(plan)
        drafting.validate(L)
    except IIETError as error:
        raise IIETError(f"draft plan {plan}: {error}") from None
    return DraftPlan(tuple(plan), tolerance, label or ",".join(map(str, plan)), sum(drafting.passes_per_layer(L)))


def draft_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cache: SlotCache,
    draft: DraftPlan,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last-position logits (B, V) of ``model``'s own weights run with ``draft``'s plan, writing the draft's cache.

    The draft has its own cache, so its slots start at 0 (``SchemeOptions.slot_base``).
    """
    out = model(
        input_ids, attention_mask=attention_mask, cache=cache, use_cache=True, logits_to_keep=1,
        scheme_options=draft.options, adaptive_tolerance=draft.adaptive_tolerance,
    )
    return out.logits[:, -1]


# -- sampling and acceptance ----------------------------------------------------------------------------------------


class Sampling:
    """Plain sampling's settings: the draft and the verifier warp their logits alike, with HF's own warpers in the
    order ``generate()`` applies them (temperature, top-k, top-p)."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise IIETError(f"temperature={temperature!r} must be > 0 (use greedy decoding for temperature 0).")
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
            raise IIETError(f"top_k={top_k!r} must be an integer >= 1 (or 0/None: no top-k).")
        if top_p is not None and not 0 < top_p <= 1:
            raise IIETError(f"top_p={top_p!r} must be in (0, 1] (1/None: no top-p).")
        self.temperature, self.top_k, self.top_p = float(temperature), top_k or None, top_p
        self.warpers = []
        if self.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            self.warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(self.top_p))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V) logits -> (..., V) fp32 probabilities of plain sampling."""
        scores = logits.reshape(-1, logits.shape[-1]).float()
        for warp in self.warpers:
            scores = warp(None, scores)
        return scores.softmax(-1).view(logits.shape)


def greedy_accept(drafted: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: (B, k) drafts, (B, k + 1, V) verifier logits -> (kept drafts (B,), next token (B,)).

    The kept drafts are the longest prefix equal to the verifier's argmax; the next token is the verifier's argmax
    after them (its correction of the first wrong draft, or the bonus token after ``k`` right ones).
    """
    target = logits.argmax(-1)  # (B, k + 1)
    kept = (target[:, :-1] == drafted).long().cumprod(-1).sum(-1)
    return kept, target.gather(1, kept[:, None]).squeeze(1)


def speculative_accept(
    drafted: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule: (B, k) drafts sampled from ``q`` (B, k, V), verifier's ``p`` (B, k + 1, V) ->
    (kept drafts (B,), next token (B,)).

    ``d_j`` is kept with probability ``min(1, p_j(d_j) / q_j(d_j))``; at the first rejection the next token is drawn
    from ``norm(max(0, p_j - q_j))``, after ``k`` kept drafts from ``p_{k+1}``. Then every emitted token is distributed
    as plain sampling from ``p`` (the proof: Leviathan et al. 2023, appendix A.1).
    """
    B, k = drafted.shape
    p_draft = p[:, :k].gather(-1, drafted[..., None]).squeeze(-1)  # (B, k)
    q_draft = q.gather(-1, drafted[..., None]).squeeze(-1)
    u = torch.rand(B, k, generator=generator, device=p.device)
    kept = (u * q_draft < p_draft).long().cumprod(-1).sum(-1)  # P(u < p/q) = min(1, p/q)
    residual = torch.cat([(p[:, :k] - q).clamp_min(0), p[:, k:]], dim=1)  # (B, k + 1, V): row k is p_{k+1} itself
    rows = torch.arange(B, device=p.device)
    dist, fallback = residual[rows, kept], p[rows, kept]
    # Rounding can leave an all-zero residual where p == q (a rejection there has probability 0): use p.
    dist = torch.where(dist.sum(-1, keepdim=True) > 0, dist, fallback)
    return kept, torch.multinomial(dist, 1, generator=generator).squeeze(1)


# -- the decoding loop ----------------------------------------------------------------------------------------------


@dataclass
class SpeculativeStats:
    """Counts over the rows still generating at each round (rows that are done do not dilute the rates)."""

    rounds: int = 0  # verify forwards after the prefill
    draft_forwards: int = 0
    row_rounds: int = 0  # (row, round) pairs
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0  # tokens the rounds produced (kept drafts + the verifier's own token)
    compactions: int = 0
    shortened: int = 0  # rounds whose drafting stopped early (``draft_confidence``)
    seconds: dict[str, float] = field(default_factory=lambda: {"draft": 0.0, "verify": 0.0, "other": 0.0})

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens the verifier kept."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_verify(self) -> float:
        """Tokens emitted per verify forward, per row (1 = no draft ever kept; at most ``k + 1``)."""
        return self.emitted / self.row_rounds if self.row_rounds else float("nan")

    @classmethod
    def total(cls, runs: list["SpeculativeStats"]) -> "SpeculativeStats":
        """The counts and times of several runs added up."""
        out = cls()
        for run in runs:
            for name in COUNTS:
                setattr(out, name, getattr(out, name) + getattr(run, name))
            for phase, seconds in run.seconds.items():
                out.seconds[phase] += seconds
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in COUNTS}, "acceptance_rate": self.acceptance_rate,
                "tokens_per_verify": self.tokens_per_verify, "seconds": dict(self.seconds)}


COUNTS = [f.name for f in fields(SpeculativeStats) if f.type == "int"]


class SpeculativeDecoder:
    """Self-speculative decoding through two pre-allocated ``SlotCache``s: the full model's and the draft's.

    ``prefill(input_ids, attention_mask)`` runs the prompt through both and returns the first tokens (B, 1);
    ``decode(steps)`` returns the next (B, steps) tokens of every row. The decoder is reusable (``reset``) with
    the same batch size, as the benchmark does.

    Args:
        model: an ``IIETForCausalLM`` whose scheme takes a plan (iiet, pcformer), in eval mode; it is the verifier
            and, with the draft's plan, the draft.
        draft: the draft plan (see ``resolve_draft``).
        num_draft_tokens: tokens ``k`` the draft proposes per round.
        batch_size: rows.
        max_length: positions each cache holds (prompt + new tokens + room for drafts and holes).
        sampling: ``None`` for greedy decoding, else a ``Sampling``.
        generator: random source for sampling (``None``: torch's global one).
        profile: time the draft, verify and other phases of each round (synchronising the device).
        draft_confidence: adapt the draft length: a round stops drafting at the first token to which the draft
            gives less than this probability in every row (its argmax probability when greedy), and the verifier
            scores the drafts so far. ``None``: always ``num_draft_tokens``. Exactness is unaffected (the rule looks
            at the draft alone).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        draft: Any,
        num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
        batch_size: int = 1,
        max_length: int = 512,
        sampling: Sampling | None = None,
        generator: torch.Generator | None = None,
        profile: bool = False,
        draft_confidence: float | None = None,
    ):
        if not (isinstance(num_draft_tokens, int) and num_draft_tokens >= 1):
            raise IIETError(f"num_draft_tokens={num_draft_tokens!r} must be an integer >= 1.")
        if draft_confidence is not None and not 0 <= draft_confidence <= 1:
            raise IIETError(f"draft_confidence={draft_confidence!r} must be a probability in [0, 1] (or None).")
        self.draft_confidence = draft_confidence
        config = model.config
        self.model, self.draft, self.k = model, resolve_draft(config, draft), num_draft_tokens
        self.sampling, self.generator, self.profile = sampling, generator, profile
        self.cache = SlotCache.for_model(model, batch_size, max_length)
        self.draft_cache = SlotCache(
            self.draft.num_slots, batch_size, max_length, config.num_key_value_heads, config.head_dim,
            dtype=model.dtype, device=model.device,
        )
        # Every token at every cache position (holes included) and which positions hold real tokens.
        self.tokens = torch.zeros(batch_size, max_length, dtype=torch.long, device=model.device)
        self.mask = torch.ones(batch_size, max_length, dtype=torch.long, device=model.device)
        # Tokens emitted per row, in order (never more than the positions of a row); a round writes up to k + 1 ahead,
        # the next round overwrites what its row did not keep.
        self.emitted = torch.zeros(batch_size, max_length + num_draft_tokens + 2, dtype=torch.long,
                                   device=model.device)
        self.reset()

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_length(self) -> int:
        return self.tokens.shape[1]

    def reset(self) -> None:
        self.cache.reset()
        self.draft_cache.reset()
        self.mask.fill_(1)
        self.prompt_length = 0
        self.length = 0  # verifier cache length; the pending token (emitted, not yet cached) sits at this position
        self.masked = False  # whether forwards need the mask (left padding or holes)
        self.count = torch.zeros(self.batch_size, dtype=torch.long, device=self.tokens.device)  # emitted per row
        self.returned = 0  # emitted tokens per row already handed out
        self.stats = SpeculativeStats()

    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, V) logits -> (B,) tokens (argmax, or a sample) and the sampling distribution (``None`` when greedy)."""
        if self.sampling is None:
            return logits.argmax(-1), None
        probs = self.sampling.probabilities(logits)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1), probs

    def _mask(self, end: int) -> torch.Tensor | None:
        return self.mask[:, :end] if self.masked else None

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the (B, T) prompt (left-padded where rows differ) through both caches; returns the first tokens
        (B, 1)."""
        self.reset()
        B, T = input_ids.shape
        if B != self.batch_size or T + 2 > self.max_length:
            raise IIETError(
                f"this decoder holds {self.batch_size} rows of {self.max_length} positions; a ({B}, {T}) prompt "
                "needs a decoder built for its batch size with max_length >= prompt + new tokens + room for drafts."
            )
        self.tokens[:, :T] = input_ids
        self.prompt_length = T
        if attention_mask is not None and not bool(attention_mask.all()):
            self.mask[:, :T] = attention_mask
            self.masked = True
        mask = self._mask(T)
        logits = self.model(input_ids, attention_mask=mask, cache=self.cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1]
        draft_forward(self.model, input_ids, self.draft_cache, self.draft, mask)
        first, _ = self._choose(logits)
        self.length = T
        self.tokens[:, T] = first
        self.emitted[:, 0] = first
        self.count += 1
        self.returned = 1
        return first[:, None]

    def _sync(self) -> float:
        if self.profile and self.tokens.device.type == "cuda":
            torch.cuda.synchronize(self.tokens.device)
        return time.perf_counter()

    def _compact(self) -> None:
        """Squeeze the holes out of both caches and the token buffers (rows right-aligned, like left padding)."""
        S = self.length
        keep = self.mask[:, :S].bool()
        # Stable sort on the keep flag: holes first, then each row's real positions in order.
        order = torch.argsort(keep.long(), dim=1, stable=True)
        n = int(keep.sum(1).max())
        index = order[:, S - n:]  # (B, n)
        pending = self.tokens[:, S].clone()
        self.tokens[:, :n] = self.tokens[:, :S].gather(1, index)
        self.mask[:, :n] = keep.gather(1, index).long()
        self.mask[:, n:] = 1
        self.tokens[:, n] = pending
        self.cache.compact(index)
        self.draft_cache.reset()  # rebuilt from the tokens by the next round's catch-up forward
        self.length = n
        self.stats.compactions += 1

    def _round(self, k: int, active: torch.Tensor) -> None:
        """One draft-verify round with ``k`` drafts (``k = 0``: a plain verifier step)."""
        model, draft, stats = self.model, self.draft, self.stats
        t0 = self._sync()
        S = self.length
        start = self.draft_cache.get_seq_length()  # behind the verifier by the last kept draft, or 0 after compact
        q = []
        inputs = self.tokens[:, start : S + 1]
        forwards = k
        for j in range(k):
            logits = draft_forward(model, inputs, self.draft_cache, draft, self._mask(S + 1 + j))
            d, probs = self._choose(logits)
            if self.draft_confidence is not None:
                top = (logits.float().softmax(-1) if probs is None else probs).amax(-1)  # (B,)
                if not bool((top >= self.draft_confidence)[active].any()):
                    forwards, k = j + 1, j  # the draft doubts every row's next token: verify the j it has
                    self.stats.shortened += 1
                    break
            self.tokens[:, S + 1 + j] = d
            q.append(probs)
            inputs = self.tokens[:, S + 1 + j : S + 2 + j]
        t1 = self._sync()
        logits = model(self.tokens[:, S : S + k + 1], attention_mask=self._mask(S + k + 1),
                       cache=self.cache, use_cache=True).logits  # (B, k + 1, V)
        t2 = self._sync()
        drafted = self.tokens[:, S + 1 : S + 1 + k]
        if self.sampling is None:
            kept, nxt = greedy_accept(drafted, logits)
        else:
            p = self.sampling.probabilities(logits)
            kept, nxt = speculative_accept(drafted, torch.stack(q, 1) if k else p[:, :0], p, self.generator)
        if not bool(active.all()):
            # Rows that have all their tokens stand still, or the longest row would grow the caches without bound:
            # their pending token becomes a hole at S and is fed again at the new end (same position id).
            kept = kept * active
            nxt = torch.where(active, nxt, self.tokens[:, S])
            self.mask[:, S] = active.long()
            self.masked = True
        longest = int(kept.max())
        end = S + longest + 1  # the new verifier length: the pending token and the longest kept run
        if longest:
            holes = torch.arange(1, longest + 1, device=kept.device)[None, :] > kept[:, None]  # (B, longest)
            self.mask[:, S + 1 : end] = (~holes).long()
            self.masked = self.masked or bool(holes.any())
        self.cache.crop(end)
        self.draft_cache.crop(min(self.draft_cache.get_seq_length(), end))
        self.tokens[:, end] = nxt
        # Emitted tokens of row b: its kept drafts, then the next token, written at count[b].
        out = torch.cat([drafted, nxt[:, None]], dim=1).scatter(1, kept[:, None], nxt[:, None])  # (B, k + 1)
        self.emitted.scatter_(1, self.count[:, None] + torch.arange(k + 1, device=kept.device), out)
        self.count += (kept + 1) * active
        self.length = end
        stats.rounds += 1
        stats.draft_forwards += forwards
        stats.row_rounds += int(active.sum())
        stats.drafted += k * int(active.sum())
        stats.accepted += int(kept[active].sum())
        stats.emitted += int((kept + 1)[active].sum())
        if self.profile:
            t3 = self._sync()
            stats.seconds["draft"] += t1 - t0
            stats.seconds["verify"] += t2 - t1
            stats.seconds["other"] += t3 - t2

    @torch.inference_mode()
    def decode(self, steps: int) -> torch.Tensor:
        """The next (B, steps) tokens of every row (after ``prefill``'s first and any earlier ``decode``)."""
        target = self.returned + steps
        if self.prompt_length + target > self.max_length:
            raise IIETError(f"this decoder holds {self.max_length} positions per row; build it with a larger "
                            "max_length (prompt + new tokens + room for drafts).")
        while True:
            need = target - self.count  # (B,)
            most = int(need.max())
            if most <= 0:
                break
            k = min(self.k, most - 1)
            if self.length + k + 2 > self.max_length:
                self._compact()
                k = min(k, self.max_length - self.length - 2)
                if k < 0:
                    raise IIETError(f"this decoder's {self.max_length} positions per row are full; build it with "
                                    "a larger max_length.")
            self._round(k, need > 0)
        tokens = self.emitted[:, self.returned : target].clone()
        self.returned = target
        return tokens


def speculative_max_length(prompt_len: int, max_new_tokens: int, num_draft_tokens: int, batch_size: int) -> int:
    """Positions the decoder's caches need: prompt, new tokens, one round of drafts, and room for holes (B > 1)."""
    holes = HOLE_ROUNDS * (num_draft_tokens + 1) if batch_size > 1 else 0
    return prompt_len + max_new_tokens + num_draft_tokens + 2 + holes


@torch.inference_mode()
def generate_speculative(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    draft: Any = "lower-bound",
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    attention_mask: torch.Tensor | None = None,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    draft_confidence: float | None = None,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Self-speculative decoding; returns (B, T + max_new_tokens) token ids and the round statistics.

    Greedy (``sampling=None``): the same tokens as ``generate_fast`` / ``model.generate(do_sample=False)`` (no EOS
    stopping). With ``sampling``, tokens distributed as plain sampling's. Left padding through ``attention_mask``.
    """
    if max_new_tokens < 1:
        raise IIETError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    B, T = input_ids.shape
    decoder = SpeculativeDecoder(
        model, draft, num_draft_tokens, B, speculative_max_length(T, max_new_tokens, num_draft_tokens, B),
        sampling, generator, draft_confidence=draft_confidence,
    )
    first = decoder.prefill(input_ids, attention_mask)
    rest = decoder.decode(max_new_tokens - 1)
    return torch.cat([input_ids, first, rest], dim=1), decoder.stats


# -- model.generate(..., draft_plan=...) ----------------------------------------------------------------------------

# generate() options this path honours; anything else (beams, penalties, streamers, ...) is refused.
GENERATE_OPTIONS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
                    "pad_token_id", "use_cache")
# Generation-config settings that change what plain generate() computes; they must keep these values.
UNSUPPORTED_SETTINGS = {"num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": None,
                        "min_length": 0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


def generate(
    model: torch.nn.Module,
    inputs: torch.Tensor | None = None,
    generation_config: Any = None,
    *,
    draft_plan: Any,
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    draft_confidence: float | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """``model.generate(input_ids, draft_plan=..., num_draft_tokens=k, ...)``: the output plain ``generate()`` gives
    (greedy: the same tokens; sampling: the same distribution), computed by self-speculative decoding.

    Honours ``max_new_tokens``/``max_length``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``
    and ``pad_token_id`` (from the arguments, else ``generation_config``/the model's), and ``attention_mask`` (left
    padding). Rows that reach EOS are padded after it, and decoding stops once every row has, as in ``generate()``.
    ``generator`` seeds the sampling; ``draft_confidence`` adapts the draft length (``SpeculativeDecoder``).
    """
    input_ids = kwargs.pop("input_ids", inputs)
    if input_ids is None:
        raise IIETError("generate(draft_plan=...) needs input_ids (the prompt tokens, left-padded if rows differ).")
    unknown = sorted(set(kwargs) - set(GENERATE_OPTIONS))
    if unknown:
        raise IIETError(f"generate(draft_plan=...) does not support {unknown}; it supports {list(GENERATE_OPTIONS)} "
                        "and attention_mask. Drop them or decode without draft_plan.")
    # HF's own resolution (arguments > generation_config > the model's > global defaults such as top_k=50), so the
    # target distribution is exactly plain generate()'s.
    config, _ = model._prepare_generation_config(generation_config, **kwargs)
    for name, default in UNSUPPORTED_SETTINGS.items():
        value = getattr(config, name, default)
        if value is not None and value != default:
            raise IIETError(f"generate(draft_plan=...) does not support {name}={value!r}; use the default "
                            f"({default!r}) or decode without draft_plan.")
    B, T = input_ids.shape
    new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - T
    if new < 1:
        raise IIETError(f"nothing to generate: max_new_tokens={new}; give max_new_tokens >= 1.")
    sampling = Sampling(config.temperature or 1.0, config.top_k, config.top_p) if config.do_sample else None
    eos = config.eos_token_id
    eos = None if eos is None else torch.tensor([eos] if isinstance(eos, int) else list(eos), device=input_ids.device)
    pad = config.pad_token_id if config.pad_token_id is not None else (None if eos is None else int(eos[0]))

    length = speculative_max_length(T, new, num_draft_tokens, B)
    decoder = SpeculativeDecoder(model, draft_plan, num_draft_tokens, B, length, sampling, generator,
                                 draft_confidence=draft_confidence)
    pieces = [decoder.prefill(input_ids, attention_mask)]
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    while True:
        if eos is not None:
            done |= torch.isin(pieces[-1], eos).any(1)
        produced = sum(piece.shape[1] for piece in pieces)
        if produced >= new or (eos is not None and bool(done.all())):
            break
        pieces.append(decoder.decode(min(num_draft_tokens + 1, new - produced)))
    tokens = torch.cat(pieces, dim=1)
    if eos is not None:
        # As generate(): every token after a row's first EOS is padding, and the output ends where the last row's
        # EOS is (or at max_new_tokens).
        finished = torch.isin(tokens, eos).long().cumsum(1)
        after = (finished - torch.isin(tokens, eos).long()) > 0
        tokens = tokens.masked_fill(after, pad)
        if bool(done.all()):
            tokens = tokens[:, : int((~after).sum(1).max())]
    return torch.cat([input_ids, tokens], dim=1)
