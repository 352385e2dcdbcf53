"""Which models a benchmark compares: ``[PRESET:]NAME[-fl][=VALUE]`` (random weights) or checkpoint directories.

``NAME`` is any name of the table of named models (``iiet.models.names``; ``iiet bench --help`` lists them):
``transformer++``, ``dlcl``, ``pcformer[=O]``, ``trans-ws[=K]``, ``iiet[=R]`` (= ``iiet-rR``),
``e-iiet[=r0,r1,...]``, ``lower-bound``, ``adaptive[=TOL]``, ``anderson[=M]``, and ``-fl`` for the
explicit-first-layer variant of a model whose first layer is multi-pass. A checkpoint directory is benchmarked as
its config says and labelled with the folder name. ``PRESET:`` (e.g. ``55M:iiet``) overrides the benchmark's preset
for that model.

``SPEC+draft[=DRAFT][:k=K][:c=C]`` decodes the model of ``SPEC`` by exact self-speculative decoding
(``iiet.models.speculative``): the same weights draft ``K`` tokens per round (default 4) with the cheaper plan
``DRAFT`` (default ``lower-bound``; or ``e-iiet:PLAN.json``, ``adaptive[:TOL]``, ``r0,r1,...``), stopping a round's
drafting early where the draft's probability falls below ``C`` (default: never), e.g.
``iiet+draft=lower-bound:k=4`` or ``runs/iiet/final+draft:k=6:c=0.5``.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, replace

from iiet.errors import IIETError
from iiet.models.configuration_iiet import IIETConfig
from iiet.models.names import default_plan, resolve
from iiet.models.presets import PRESETS, build_config
from iiet.models.speculative import DEFAULT_DRAFT_TOKENS, resolve_draft

__all__ = ["ModelSpec", "default_plan", "parse_spec", "parse_specs"]


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
    draft_confidence: float | None = None  # ... or fewer, when the draft is less sure than this


DRAFT_SUFFIX = "+draft"
DRAFT_OPTIONS = re.compile(r"(?:=(?P<draft>.+?))?(?::k=(?P<k>\d+))?(?::c=(?P<c>0(?:\.\d*)?|1(?:\.0*)?|\.\d+))?")


def parse_spec(spec: str, preset: str) -> ModelSpec:
    """Turn one spec string into a ``ModelSpec`` (see the module docstring)."""
    base, suffix, options = spec.partition(DRAFT_SUFFIX)
    if not suffix:
        return _parse_model(spec, preset)
    match = DRAFT_OPTIONS.fullmatch(options)
    if not base or match is None or match["k"] == "0":
        raise IIETError(f"model spec {spec!r}: write SPEC+draft[=DRAFT][:k=K][:c=C], e.g. "
                        "iiet+draft=lower-bound:k=4 (K >= 1 drafted tokens per round; C in [0, 1]: stop drafting "
                        "below that draft confidence).")
    model = _parse_model(base, preset)
    k = int(match["k"] or DEFAULT_DRAFT_TOKENS)
    config = model.config or IIETConfig.from_pretrained(model.checkpoint)
    draft = match["draft"] or "lower-bound"
    label = resolve_draft(config, draft).label  # checked before any work
    confidence = float(match["c"]) if match["c"] else None
    options = f"k={k}" + (f", c={confidence:g}" if confidence is not None else "")
    return replace(model, spec=spec, label=f"{model.label} + draft {label} ({options})", draft=draft,
                   num_draft_tokens=k, draft_confidence=confidence)


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
    named = resolve(rest, build_config(size).num_hidden_layers)
    scheme, label = named.scheme, named.label
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
