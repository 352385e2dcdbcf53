"""Which models a benchmark compares: ``[PRESET:]NAME[=VALUE]`` specs (random weights) or checkpoint directories.

======================  ===========================================================  =================
spec                    scheme                                                       table label
======================  ===========================================================  =================
``transformer++``       ``euler``                                                    Transformer++
``dlcl``                ``dlcl``                                                     DLCL
``pcformer[=O]``        ``pcformer``, predictor order ``O`` (default 2)              PCformer
``iiet[=R]``            ``iiet``, ``R`` corrections per layer (default 3)            IIET (r=R)
``e-iiet[=r0,r1,...]``  ``iiet`` with an iteration plan (default: ``default_plan``)   E-IIET
``lower-bound``         ``iiet`` with a plan of zeros (E-IIET without corrections)   Lower Bound
``trans-ws[=K]``        ``weight_shared``, ``K`` repeats (default 4)                 Trans WS (k=K)
``adaptive[=TOL]``      ``iiet`` r=3 with ``adaptive_tolerance`` TOL (default 1e-3)  IIET adaptive
``path/to/checkpoint``  whatever the checkpoint's config says                        the folder name
======================  ===========================================================  =================

``PRESET:`` (e.g. ``55M:iiet``) overrides the benchmark's preset for that model.

``SPEC+draft[=DRAFT][:k=K]`` decodes the model of ``SPEC`` by exact self-speculative decoding
(``iiet.models.speculative``): the same weights draft ``K`` tokens per round (default 4) with the cheaper plan
``DRAFT`` (default ``lower-bound``; or ``e-iiet:PLAN.json``, ``adaptive[:TOL]``, ``r0,r1,...``), e.g.
``iiet+draft=lower-bound:k=4`` or ``runs/iiet/final+draft:k=6``.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, replace
from typing import Any

from iiet.errors import IIETError
from iiet.models.configuration_iiet import IIETConfig
from iiet.models.presets import PRESETS, build_config
from iiet.models.speculative import DEFAULT_DRAFT_TOKENS, resolve_draft

# E-IIET at 340M keeps 15 of the 72 corrections of IIET r=3 (§4.1); the default plan keeps the same fraction.
PAPER_E_IIET_KEPT = 15 / 72
IIET_ITERATIONS = 3  # the paper's r


def default_plan(num_layers: int, iterations: int = IIET_ITERATIONS) -> list[int]:
    """An uneven E-IIET plan: the paper's fraction of corrections, on the deepest layers (which gain most, Fig. 5)."""
    remaining = max(1, round(PAPER_E_IIET_KEPT * iterations * num_layers))
    plan = [0] * num_layers
    for n in reversed(range(num_layers)):
        plan[n] = min(iterations, remaining)
        remaining -= plan[n]
    return plan


@dataclass
class ModelSpec:
    """A model to benchmark: a label, and either a config (random weights) or a checkpoint directory."""

    spec: str
    label: str
    config: IIETConfig | None = None
    checkpoint: str | None = None
    preset: str | None = None
    draft: str | None = None  # decode by self-speculative decoding with this draft plan ...
    num_draft_tokens: int | None = None  # ... drafting this many tokens per round


def _int(value: str, spec: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise IIETError(f"model spec {spec!r}: {value!r} is not an integer.") from None


def _scheme(name: str, value: str | None, num_layers: int, spec: str) -> tuple[dict[str, Any], str]:
    if name in ("transformer++", "euler"):
        return {"name": "euler"}, "Transformer++"
    if name == "dlcl":
        return {"name": "dlcl"}, "DLCL"
    if name == "pcformer":
        order = _int(value, spec) if value else 2
        return {"name": "pcformer", "order": order}, "PCformer" if order == 2 else f"PCformer (RK{order})"
    if name == "iiet":
        r = _int(value, spec) if value else IIET_ITERATIONS
        return {"name": "iiet", "num_iterations": r}, f"IIET (r={r})"
    if name == "e-iiet":
        plan = [_int(v, spec) for v in value.split(",")] if value else default_plan(num_layers)
        return {"name": "iiet", "iteration_plan": plan}, f"E-IIET (sum r={sum(plan)})"
    if name == "lower-bound":
        return {"name": "iiet", "iteration_plan": [0] * num_layers}, "Lower Bound"
    if name == "adaptive":
        try:
            tol = float(value) if value else 1e-3
        except ValueError:
            raise IIETError(f"model spec {spec!r}: {value!r} is not a number.") from None
        scheme = {"name": "iiet", "num_iterations": IIET_ITERATIONS, "adaptive_tolerance": tol}
        return scheme, f"IIET adaptive (tol={tol:g})"
    if name == "trans-ws":
        k = _int(value, spec) if value else 4
        return {"name": "weight_shared", "repeats": k}, f"Trans WS (k={k})"
    raise IIETError(
        f"unknown model spec {spec!r}: use [PRESET:]NAME[=VALUE] with NAME one of transformer++, dlcl, pcformer, "
        "iiet, e-iiet, lower-bound, trans-ws, adaptive, or a checkpoint directory."
    )


DRAFT_SUFFIX = "+draft"
DRAFT_OPTIONS = re.compile(r"(?:=(?P<draft>.+?))?(?::k=(?P<k>\d+))?")


def parse_spec(spec: str, preset: str) -> ModelSpec:
    """Turn one spec string into a ``ModelSpec`` (see the module docstring)."""
    base, suffix, options = spec.partition(DRAFT_SUFFIX)
    if not suffix:
        return _parse_model(spec, preset)
    match = DRAFT_OPTIONS.fullmatch(options)
    if not base or match is None or match["k"] == "0":
        raise IIETError(f"model spec {spec!r}: write SPEC+draft[=DRAFT][:k=K], e.g. iiet+draft=lower-bound:k=4 "
                        "(K >= 1 drafted tokens per round).")
    model = _parse_model(base, preset)
    k = int(match["k"] or DEFAULT_DRAFT_TOKENS)
    config = model.config or IIETConfig.from_pretrained(model.checkpoint)
    draft = match["draft"] or "lower-bound"
    label = resolve_draft(config, draft).label  # checked before any work
    return replace(model, spec=spec, label=f"{model.label} + draft {label} (k={k})", draft=draft, num_draft_tokens=k)


def _parse_model(spec: str, preset: str) -> ModelSpec:
    path = pathlib.Path(spec)
    if (path / "config.json").is_file():
        resolved = path.resolve()
        # A training run exports to <run>/final: name it after the run.
        label = resolved.parent.name if resolved.name == "final" else resolved.name
        return ModelSpec(spec=spec, label=label, checkpoint=str(path))
    own_preset, _, rest = spec.rpartition(":")
    if own_preset and own_preset not in PRESETS:
        raise IIETError(f"model spec {spec!r}: unknown preset {own_preset!r}; choose one of {list(PRESETS)}.")
    size = own_preset or preset
    name, _, value = rest.strip().lower().partition("=")
    num_layers = build_config(size).num_hidden_layers
    scheme, label = _scheme(name, value or None, num_layers, spec)
    if own_preset and own_preset != preset:
        label = f"{label} [{own_preset}]"
    return ModelSpec(spec=spec, label=label, config=build_config(size, scheme), preset=size)


def parse_specs(specs: list[str], preset: str) -> list[ModelSpec]:
    models = [parse_spec(spec, preset) for spec in specs]
    labels = [m.label for m in models]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise IIETError(f"models {duplicates} appear more than once; list each model once.")
    if not models:
        raise IIETError("no models to benchmark; pass at least one model spec.")
    return models
