"""Iteration plans from iteration influence: how many corrections each layer of an efficient IIET keeps (§4.1).

Corrections are sequential (correction ``i`` refines iterate ``i - 1``), so a plan is a *count* ``k_n`` per layer: the
layer runs its initial computation and corrections ``1 .. k_n``. With ``I_n^i`` the influence of correction ``i`` of
layer ``n`` (``Influence.iteration[n][i]``; entry 0 is the initial computation, which always runs):

``lower-bound``   ``k_n = 0``: one block evaluation per layer (the paper's "Lower Bound").
``e-iiet``        the paper's rule: threshold ``theta = min_n I_n^0`` (the smallest initial-compute influence), then
                  the ``threshold`` rule with it. Reproduces the paper's counts (72 -> 15 corrections at 340M).
``threshold``     a given ``theta``; a correction is *influential* when ``I_n^i >= theta``. How influential
                  corrections become a count is ``keep``:
                    ``count`` (default): ``k_n = #{i : I_n^i >= theta}``, the number of influential corrections.
                      The paper omits "iteration steps with influence below the threshold" and counts what is left;
                      since only a prefix can run, the layer keeps that many steps, the first ones.
                    ``leading``: ``k_n`` = the number of influential corrections before the first one below
                      ``theta`` (never runs a non-influential step; may drop a late influential one).
                    ``through-last``: ``k_n`` = the index of the last influential correction (keeps every
                      influential step, and the non-influential ones before it).
``budget``        at most ``B`` block evaluations per token (``budget_evaluations``, ``L <= B``) or at most a fraction
                  of the measured model's FLOPs per token (``budget_flops_fraction``, converted to the largest ``B``
                  that fits). Keeping corrections ``1 .. k`` of layer ``n`` is worth ``sum_{i<=k} I_n^i`` (what those
                  steps were measured to change); the plan maximises the total worth with ``sum_n (1 + k_n) <= B``.
                  This is a knapsack over prefixes, solved exactly by dynamic programming over layers (the greedy
                  "take the most influential next step" can miss a large correction behind a small one); the budget
                  is never exceeded.

Other multi-pass schemes are read the same way through their scheme config: ``influence_rows`` orders a layer's
traced steps as "the step it always runs, then the steps a plan may drop", ``plan_keeping`` turns the kept counts
into the scheme's plan (PCformer: the corrector always runs; a layer keeps its predictor order or becomes one
explicit step). ``budget`` counts corrections and applies to IIET only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from iiet.errors import IIETError
from iiet.iiad.files import read_json, write_json
from iiet.iiad.influence import Influence
from iiet.models.configuration_iiet import IIETConfig, parse_scheme
from iiet.models.costs import flops_per_token

RULES = ("e-iiet", "lower-bound", "threshold", "budget")
KEEP_MODES = ("count", "leading", "through-last")
FORMAT = "iiet-plan"
FORMAT_VERSION = 1


# -- the rules on a plain influence table (lists of floats per layer) -------------------------------------------------


def e_iiet_threshold(iteration: list[list[float]]) -> float:
    """The paper's threshold: the smallest initial-compute influence over the layers."""
    return min(row[0] for row in iteration)


def threshold_plan(iteration: list[list[float]], threshold: float, keep: str = "count") -> list[int]:
    """Corrections per layer whose influence reaches ``threshold``, made a count by ``keep`` (module docstring)."""
    if keep not in KEEP_MODES:
        raise IIETError(f"keep={keep!r} is not one of {KEEP_MODES}.")
    plan = []
    for row in iteration:
        influential = [value >= threshold for value in row[1:]]
        if keep == "count":
            plan.append(sum(influential))
        elif keep == "leading":
            plan.append(influential.index(False) if False in influential else len(influential))
        else:
            plan.append(max((i + 1 for i, ok in enumerate(influential) if ok), default=0))
    return plan


def kept_influence(iteration: list[list[float]], plan: list[int]) -> float:
    """Total influence of the corrections a plan runs: ``sum_n sum_{i <= k_n} I_n^i``."""
    return sum(sum(row[1 : 1 + k]) for row, k in zip(iteration, plan))


def budget_plan(iteration: list[list[float]], max_corrections: int) -> list[int]:
    """The plan of at most ``max_corrections`` corrections with the largest kept influence (exact, by DP).

    ``best[c]`` holds the best (worth, plan) over the layers so far using exactly ``c`` corrections; each layer
    extends it by ``k = 0 .. r_n`` of its own. Among plans of equal worth the one with fewer corrections wins.
    """
    if max_corrections < 0:
        raise IIETError(f"the budget leaves {max_corrections} corrections; it must allow at least one block "
                        "evaluation per layer (the initial computation always runs).")
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for row in iteration:
        gains = [0.0, *accumulate(row[1:])]  # gains[k] = worth of corrections 1 .. k
        extended: dict[int, tuple[float, list[int]]] = {}
        for used, (worth, plan) in best.items():
            for k in range(min(len(gains) - 1, max_corrections - used) + 1):
                candidate = (worth + gains[k], plan + [k])
                if used + k not in extended or candidate[0] > extended[used + k][0]:
                    extended[used + k] = candidate
        best = extended
    used = max(best, key=lambda c: (best[c][0], -c))
    return best[used][1]


# -- plans of a measured model --------------------------------------------------------------------------------------


@dataclass
class Plan:
    """An iteration plan and how it was made, as saved to ``plan.json``.

    Attributes:
        iteration_plan: corrections per layer ``k_n``.
        scheme: the scheme dict of the efficient model (the measured model's scheme with this plan); ``None`` in a
            hand-written plan (the teacher's scheme with the plan is used).
        rule: the rule that made it (``RULES``), with ``threshold``, ``keep`` and ``budget`` where they apply.
        corrections, block_evaluations, flops_per_token: ``{"before": ..., "after": ...}`` per token (FLOPs at
            ``context`` keys, ``iiet.models.costs``).
        kept_influence: ``{"after": ..., "before": ...}``, the summed influence of the corrections run.
        model: identity of the measured model (from the influence file), checked against the teacher by distillation.
    """

    iteration_plan: list[int]
    scheme: dict[str, Any] | None = None
    rule: str = "manual"
    threshold: float | None = None
    keep: str | None = None
    budget: dict[str, Any] | None = None
    corrections: dict[str, int] = field(default_factory=dict)
    block_evaluations: dict[str, int] = field(default_factory=dict)
    flops_per_token: dict[str, Any] = field(default_factory=dict)
    kept_influence: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    influence_file: str | None = None

    def summary(self) -> str:
        lines = [f"rule: {self.rule}" + (f" (threshold {self.threshold:.4f}, keep={self.keep})"
                                         if self.threshold is not None else "")
                 + (f" (budget {self.budget})" if self.budget else ""),
                 f"corrections per layer: {self.iteration_plan}"]
        c, e, f = self.corrections, self.block_evaluations, self.flops_per_token
        if c:
            lines.append(f"corrections: {c['before']} -> {c['after']}   "
                         f"block evaluations per token: {e['before']} -> {e['after']}")
        if f:
            lines.append(f"forward FLOPs per token at context {f['context']}: {f['before'] / 1e9:.4g} G -> "
                         f"{f['after'] / 1e9:.4g} G ({f['after'] / f['before']:.1%} of the measured model)")
        if self.kept_influence:
            lines.append(f"kept correction influence: {self.kept_influence['after']:.4f} of "
                         f"{self.kept_influence['before']:.4f}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        return write_json(path, FORMAT, FORMAT_VERSION, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a plan file; a hand-written ``{"iteration_plan": [...]}`` is accepted too."""
        raw = read_json(path, "plan file", "iiet plan")
        plan = raw.get("iteration_plan") if isinstance(raw, dict) else None
        if not isinstance(plan, list) or any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in plan):
            raise IIETError(f"{path} has no valid iteration_plan (a list of integers >= 0, one per layer).")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in raw.items() if k in known}
        return cls(**values)


def plan_scheme(scheme: dict[str, Any], plan: list[int]) -> dict[str, Any]:
    """A model's scheme running ``plan`` (IIET: corrections, PCformer: predictor orders; the rest kept)."""
    return parse_scheme(scheme).with_plan(plan).to_dict()


def _config(influence: Influence, plan: list[int] | None):
    values = dict(influence.model.get("config") or {})
    if not values:
        raise IIETError("the influence file records no model config; re-measure it with `iiet influence`.")
    scheme = values.pop("scheme")
    return IIETConfig(**values, scheme=scheme if plan is None else plan_scheme(scheme, plan))


def max_evaluations_for_flops(influence: Influence, fraction: float, context: int) -> int:
    """The most block evaluations per token whose FLOPs stay within ``fraction`` of the measured model's."""
    if not 0 < fraction <= 1:
        raise IIETError(f"budget_flops_fraction={fraction} must be in (0, 1] (a fraction of the measured model).")
    L = len(influence.iteration)
    full = flops_per_token(_config(influence, None), context)
    lower = flops_per_token(_config(influence, [0] * L), context)
    per_evaluation = flops_per_token(_config(influence, [1] + [0] * (L - 1)), context) - lower  # FLOPs are linear
    head = lower - L * per_evaluation
    return math.floor((fraction * full - head) / per_evaluation)


def make_plan(
    influence: Influence,
    rule: str = "e-iiet",
    threshold: float | None = None,
    budget_evaluations: int | None = None,
    budget_flops_fraction: float | None = None,
    keep: str = "count",
    context: int = 2048,
    influence_file: str | None = None,
) -> Plan:
    """Apply a rule (module docstring) to a model's measured influence; ``IIETError`` on inconsistent options."""
    if rule not in RULES:
        raise IIETError(f"rule={rule!r} is not one of {RULES}.")
    scheme = influence.scheme_config
    if scheme is None or not scheme.accepts_plan:
        raise IIETError(f"the influence file describes a {influence.scheme_name!r} model, which takes no plan; plans "
                        "are made for iiet models (measure an IIET checkpoint).")
    if rule == "budget" and scheme.corrections(len(influence.iteration)) is None:
        raise IIETError(f"rule 'budget' counts implicit-Euler corrections, and a {scheme.name!r} model has none; use "
                        "--rule e-iiet or threshold (which drop its non-influential steps), lower-bound (every layer "
                        "one pass) or a hand-written plan.")
    if (threshold is not None) != (rule == "threshold"):
        raise IIETError("give --threshold exactly when --rule threshold.")
    budgets = [b for b in (budget_evaluations, budget_flops_fraction) if b is not None]
    if (len(budgets) == 1) != (rule == "budget") or len(budgets) > 1:
        raise IIETError("with --rule budget give exactly one of --budget_evaluations and --budget_flops_fraction "
                        "(and neither with other rules).")
    if keep not in KEEP_MODES:
        raise IIETError(f"keep={keep!r} is not one of {KEEP_MODES}.")
    iteration, L = scheme.influence_rows(influence.iteration), len(influence.iteration)
    budget = None
    if rule == "lower-bound":
        plan = kept = [0] * L
    elif rule in ("e-iiet", "threshold"):
        threshold = e_iiet_threshold(iteration) if rule == "e-iiet" else threshold
        kept = threshold_plan(iteration, threshold, keep)
        plan = scheme.plan_keeping(L, kept)
    else:
        if budget_evaluations is not None:
            evaluations = budget_evaluations
            budget = {"evaluations": budget_evaluations}
        else:
            evaluations = max_evaluations_for_flops(influence, budget_flops_fraction, context)
            budget = {"flops_fraction": budget_flops_fraction, "context": context, "evaluations": evaluations}
        if evaluations < L:
            raise IIETError(f"a budget of {evaluations} block evaluations is below the {L} initial computations "
                            "(one per layer) that every plan runs; raise the budget.")
        plan = kept = budget_plan(iteration, evaluations - L)
    before, after = _config(influence, None), _config(influence, plan)
    return Plan(
        iteration_plan=plan,
        scheme=plan_scheme(influence.model["scheme"], plan),
        rule=rule,
        threshold=threshold,
        keep=keep if rule in ("e-iiet", "threshold") else None,
        budget=budget,
        corrections={"before": sum(len(row) - 1 for row in iteration), "after": sum(kept)},
        block_evaluations={"before": before.num_block_evaluations, "after": after.num_block_evaluations},
        flops_per_token={"before": flops_per_token(before, context), "after": flops_per_token(after, context),
                         "context": context},
        kept_influence={"after": kept_influence(iteration, kept),
                        "before": kept_influence(iteration, [len(row) - 1 for row in iteration])},
        model=influence.model,
        influence_file=influence_file,
    )
