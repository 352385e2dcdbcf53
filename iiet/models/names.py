"""The one table of named models: a name -> a scheme and the paper's label.

Every tool that names models reads ``MODELS``: ``iiet info``, the model specs of ``iiet bench``, the arms of
``iiet reproduce``, ``iiet demo`` and the scripts under ``benchmarks/``. A name is written

    NAME[-fl][=VALUE]        e.g. ``transformer++``, ``iiet=2``, ``iiet-r2`` (the same), ``pcformer-fl``, ``e-iiet=0,1,3,3``

``-fl`` is the model's explicit-first-layer variant (layer 0 one explicit step; the scheme config makes it, see
``SchemeConfig.explicit_first_layer``), for every model whose first layer is multi-pass. ``describe()`` lists the
table as ``--help`` shows it.

Adding a named model is one ``NamedModel`` here; tools never switch on names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .configuration_iiet import SchemeConfig, parse_scheme
from .errors import IIETError

IIET_ITERATIONS = 3  # the paper's r
PAPER_E_IIET_KEPT = 15 / 72  # E-IIET at 340M keeps 15 of the 72 corrections of IIET r=3 (§4.1)
EXPLICIT_FIRST_LAYER = "-fl"


def default_plan(num_layers: int, iterations: int = IIET_ITERATIONS) -> list[int]:
    """An uneven E-IIET plan: the paper's fraction of corrections, on the deepest layers (which gain most, Fig. 5)."""
    remaining = max(1, round(PAPER_E_IIET_KEPT * iterations * num_layers))
    plan = [0] * num_layers
    for n in reversed(range(num_layers)):
        plan[n] = min(iterations, remaining)
        remaining -= plan[n]
    return plan


@dataclass(frozen=True)
class NamedModel:
    """One row of the table.

    Attributes:
        name: what users type.
        summary: one line for ``--help`` and the docs.
        build: ``(num_layers, value) -> (scheme dict, label)``; ``value`` is the parsed ``=VALUE`` or ``None``.
        value: what ``=VALUE`` means (``None``: the name takes none).
        parse: turns the ``VALUE`` text into what ``build`` takes.
    """

    name: str
    summary: str
    build: Callable[[int, Any], tuple[dict[str, Any], str]]
    value: str | None = None
    parse: Callable[[str], Any] = str


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _pcformer(num_layers: int, order: int | None) -> tuple[dict[str, Any], str]:
    order = 2 if order is None else order
    return {"name": "pcformer", "order": order}, "PCformer" if order == 2 else f"PCformer (RK{order})"


def _iiet(num_layers: int, r: int | None) -> tuple[dict[str, Any], str]:
    r = IIET_ITERATIONS if r is None else r
    return {"name": "iiet", "num_iterations": r}, f"IIET (r={r})"


def _e_iiet(num_layers: int, plan: list[int] | None) -> tuple[dict[str, Any], str]:
    plan = default_plan(num_layers) if plan is None else plan
    if len(set(plan)) == 1 and plan[0] > 0:  # the same corrections in every layer: the paper's IIET, by its plan
        return {"name": "iiet", "iteration_plan": plan}, f"IIET (r={plan[0]}), every layer iterating"
    return {"name": "iiet", "iteration_plan": plan}, f"E-IIET (sum r={sum(plan)})"


def _adaptive(num_layers: int, tol: float | None) -> tuple[dict[str, Any], str]:
    tol = 1e-3 if tol is None else tol
    return {"name": "iiet", "num_iterations": IIET_ITERATIONS, "adaptive_tolerance": tol}, f"IIET adaptive (tol={tol:g})"


def _anderson(num_layers: int, window: int | None) -> tuple[dict[str, Any], str]:
    window = 2 if window is None else window
    corrector = {"name": "anderson", "window": window}
    return {"name": "iiet", "num_iterations": IIET_ITERATIONS, "corrector": corrector}, f"IIET Anderson (m={window})"


def _trans_ws(num_layers: int, k: int | None) -> tuple[dict[str, Any], str]:
    k = 4 if k is None else k
    return {"name": "weight_shared", "repeats": k}, f"Trans WS (k={k})"


MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("transformer++", "explicit Euler: the LLaMA residual stream (Eq. 1)",
               lambda L, v: ({"name": "euler"}, "Transformer++")),
    NamedModel("dlcl", "dynamic linear combination of layers (Fig. 1b)", lambda L, v: ({"name": "dlcl"}, "DLCL")),
    NamedModel("pcformer", "RK predictor + multistep corrector (Eq. 5-6)", _pcformer, "O: predictor order, 2 or 4",
               int),
    NamedModel("trans-ws", "each layer applied K times, weights shared (§3.5)", _trans_ws, "K: repeats (4)", int),
    NamedModel("iiet", "R implicit-Euler corrections per layer (Eq. 8-11); iiet-rR is the same", _iiet,
               f"R: corrections per layer ({IIET_ITERATIONS})", int),
    NamedModel("e-iiet", "IIET with a per-layer plan (§4.1)", _e_iiet,
               "r0,r1,...: corrections per layer (default: the paper's fraction, deepest layers)", _ints),
    NamedModel("lower-bound", "IIET with no corrections (E-IIET's lower bound)",
               lambda L, v: ({"name": "iiet", "iteration_plan": [0] * L}, "Lower Bound")),
    NamedModel("adaptive", "IIET r=3, a token stops correcting once converged (docs/adaptive.md)", _adaptive,
               "TOL: 1 - cos tolerance (1e-3)", float),
    NamedModel("anderson", "IIET r=3 with Anderson-mixed corrections (docs/adaptive.md)", _anderson,
               "M: window (2)", int),
)}
ALIASES = {"euler": "transformer++"}
_SHORT_IIET = re.compile(r"^iiet-r(\d+)$")  # iiet-r3 == iiet=3


@dataclass(frozen=True)
class Resolved:
    """A name resolved at a number of layers: its scheme (a validated dict) and label."""

    name: str
    scheme: dict[str, Any]
    label: str

    @property
    def scheme_config(self) -> SchemeConfig:
        return parse_scheme(self.scheme)


def _known() -> str:
    return ", ".join(f"{m.name}[={m.value.split(':')[0]}]" if m.value else m.name for m in MODELS.values())


def resolve(spec: str, num_layers: int) -> Resolved:
    """The scheme and label of ``NAME[-fl][=VALUE]`` for a model of ``num_layers`` layers; ``IIETError`` if unknown."""
    text = spec.strip().lower()
    base, _, raw = text.partition("=")
    explicit = base.endswith(EXPLICIT_FIRST_LAYER) and base not in MODELS
    if explicit:
        base = base[: -len(EXPLICIT_FIRST_LAYER)]
    short = _SHORT_IIET.match(base)
    if short and not raw:
        base, raw = "iiet", short.group(1)
    base = ALIASES.get(base, base)
    if base not in MODELS:
        raise IIETError(f"unknown model name {spec!r}: use NAME[-fl][=VALUE] with NAME one of {_known()}, or iiet-rR.")
    model = MODELS[base]
    if raw and model.value is None:
        raise IIETError(f"model name {spec!r}: {base} takes no =VALUE.")
    try:
        value = model.parse(raw) if raw else None
    except ValueError:
        raise IIETError(f"model name {spec!r}: {raw!r} is not a valid value ({model.value}).") from None
    scheme, label = model.build(num_layers, value)
    config = parse_scheme(scheme)
    if explicit:
        variant = config.explicit_first_layer(num_layers)
        if variant is None or variant == config:
            why = "its first layer is one explicit step already" if variant == config else \
                "its scheme has no explicit-first-layer variant"
            raise IIETError(f"model name {spec!r}: {base} has no -fl variant ({why}).")
        config, label = variant, f"{label}, explicit first layer"
    config.validate(num_layers)
    return Resolved(spec, config.to_dict(), label)


def _value_texts(model: NamedModel, num_layers: int, config: SchemeConfig) -> list[str]:
    """``=VALUE`` texts that may give ``config``: its values of the fields the name's default scheme sets."""
    default, _ = model.build(num_layers, None)
    texts = []
    for key in default:
        value = getattr(config, key, None) if key != "name" else None
        if isinstance(value, list):
            texts.append(",".join(str(v) for v in value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            texts.append(str(value))
    return texts


def label_of(scheme: dict[str, Any] | SchemeConfig, num_layers: int) -> str:
    """The paper's label of a scheme: the first name in the table (or its -fl variant) that gives it, first with the
    names' defaults (so all-zero plans are "Lower Bound"), then with a ``=VALUE`` (``IIET (r=2)``); otherwise the
    scheme's name and parameters."""
    config = parse_scheme(scheme)
    plain = [spec for name in MODELS for spec in (name, name + EXPLICIT_FIRST_LAYER)]
    valued = [spec for name, model in MODELS.items() if model.value is not None
              for text in _value_texts(model, num_layers, config)
              for spec in (f"{name}={text}", f"{name}{EXPLICIT_FIRST_LAYER}={text}")]
    for spec in plain + valued:
        try:
            resolved = resolve(spec, num_layers)
        except IIETError:
            continue
        if resolved.scheme_config == config:
            return resolved.label
    values = {k: v for k, v in config.to_dict().items() if k != "name" and v is not None}
    plan = config.plan(num_layers)
    if plan is not None and config.plan_field in values:
        values = {config.plan_field: plan, **{k: v for k, v in values.items() if k not in (config.plan_field,
                                                                                               "num_iterations", "order")}}
    extra = ", ".join(f"{k}={v}" for k, v in values.items())
    return f"{config.name} ({extra})" if extra else config.name


def describe() -> str:
    """The table as ``--help`` lists it: one line per name, with its ``=VALUE`` and whether it has a -fl variant."""
    lines = []
    for model in MODELS.values():
        head = f"{model.name}[={model.value.split(':')[0]}]" if model.value else model.name
        try:
            resolve(model.name + EXPLICIT_FIRST_LAYER, 4)
            head += f" (+{EXPLICIT_FIRST_LAYER})"
        except IIETError:
            pass
        lines.append(f"{head:<26} {model.summary}" + (f"; {model.value}" if model.value else ""))
    return "\n".join(lines)
