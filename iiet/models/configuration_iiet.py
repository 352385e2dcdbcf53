"""Configuration of the numerical-Transformer family (one config, the scheme is a typed field).

A model is a LLaMA decoder (Transformer++: RMSNorm, RoPE, SwiGLU, grouped-query attention) whose layers are combined
by a *numerical scheme* (docs/architecture.md):

==================  =====================================================  ==========================
scheme ``name``     what it computes                                       paper
==================  =====================================================  ==========================
``euler``           ``y_{n+1} = y_n + F_n(y_n)``                           Eq. 1, Fig. 1a
``dlcl``            layer input = learnable combination of the history     Fig. 1b (Wang et al. 2019)
``iiet``            Euler initial value + ``r`` implicit-Euler corrections   Eq. 8-11, Alg. 1, Fig. 1d
                    (``iteration_plan``: ``r`` per layer = E-IIET, §4.1)
``pcformer``        RK predictor (EMA coefficient) + multistep corrector   Eq. 5-6, Fig. 1c
``weight_shared``   each layer applied ``repeats`` times (Trans WS)        §3.5, Table 2
==================  =====================================================  ==========================

The scheme is stored in ``config.scheme`` as a plain dict (``{"name": "iiet", "num_iterations": 3}``) so that the
config stays JSON; ``config.scheme_config`` returns the validated dataclass.

Tools never switch on a scheme's name: they ask its config (``SchemeConfig``) what they need to know: the block
evaluations and corrections per layer, whether it has a layer history, whether it accepts a per-layer plan
(``with_plan``) or a tolerance, the names of its traced stages (heatmap rows) and its explicit-first-layer variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from transformers import LlamaConfig

from .correctors import CorrectorConfig, parse_corrector
from .errors import IIETError, SchemeConfigError
from .registry import parse_named

HISTORY_READINGS = ("residual", "normalized")


@dataclass
class SchemeConfig:
    """Base of the typed scheme parameters, and what tools may ask of a scheme.

    Class attributes:
        name: the key in ``config.scheme["name"]``.
        has_history: the scheme keeps a DLCL layer history (``scheme.history`` reading, ``history_combinations``).
        accepts_tolerance: adaptive corrections (``adaptive_tolerance``) and correctors apply.
        plan_field: the field holding a per-layer plan (``None``: the scheme takes none); see ``plan``/``with_plan``.
        plan_values: the values a plan entry may take (``None``: any integer >= 0).
    """

    name: ClassVar[str] = ""
    has_history: ClassVar[bool] = False
    accepts_tolerance: ClassVar[bool] = False
    plan_field: ClassVar[str | None] = None
    plan_values: ClassVar[tuple[int, ...] | None] = None

    def passes_per_layer(self, num_layers: int) -> list[int]:
        """Block evaluations of each layer (each one owns a KV-cache slot)."""
        return [1] * num_layers

    def corrections(self, num_layers: int) -> list[int] | None:
        """Implicit-Euler corrections per layer; ``None`` for a scheme that has none to plan or stop early."""
        return None

    def history_combinations(self, num_layers: int) -> list[int] | None:
        """Combinations of the layer history each layer computes (``None`` without a history)."""
        return None

    @property
    def accepts_plan(self) -> bool:
        return self.plan_field is not None

    @property
    def has_explicit_plan(self) -> bool:
        """Whether a per-layer plan is set (``e-iiet=3,3,3,3``), rather than one value for every layer."""
        return self.plan_field is not None and getattr(self, self.plan_field) is not None

    def plan(self, num_layers: int) -> list[int] | None:
        """The per-layer plan the scheme runs (IIET: corrections, PCformer: predictor orders); ``None`` if it takes none."""
        return None

    def with_plan(self, plan: list[int]) -> "SchemeConfig":
        """The same scheme running ``plan`` (the parameters do not change, so any checkpoint can run any plan)."""
        if self.plan_field is None:
            raise SchemeConfigError(
                f"the {self.name!r} scheme takes no per-layer plan; plans apply to schemes with a multi-pass layer "
                f"({', '.join(sorted(n for n, c in SCHEMES.items() if c.plan_field))})."
            )
        return dataclasses.replace(self, **{self.plan_field: list(plan)})

    def influence_rows(self, iteration: list[list[float]]) -> list[list[float]]:
        """Each layer's iteration influence (one value per traced step) as IIAD's rules read it: first the step the
        layer always runs, then the steps a plan may drop, in the order a plan keeps them (``plan_keeping``)."""
        return [list(row) for row in iteration]

    def plan_keeping(self, num_layers: int, kept: list[int]) -> list[int]:
        """The plan that keeps, in each layer ``n``, the first ``kept[n]`` of its droppable steps
        (``influence_rows``); IIAD's threshold rules make plans through it."""
        raise SchemeConfigError(f"the {self.name!r} scheme has no steps for a plan to keep or drop.")

    def explicit_first_layer(self, num_layers: int) -> "SchemeConfig | None":
        """The variant whose layer 0 is a single explicit step (``self`` if it is already; ``None`` if the scheme
        cannot express one). At small token budgets a multi-pass layer 0 holds a model at the unigram plateau
        (docs/training.md, "The slow start of IIET")."""
        return self

    def stage_labels(self, num_stages: int) -> list[str]:
        """Names of the ``num_stages`` transitions between the states a layer traces (influence heatmap rows)."""
        return [f"pass {i + 1}" for i in range(num_stages)]

    def validate(self, num_layers: int) -> None:
        """Raise ``SchemeConfigError`` on values the model cannot be built with."""

    def beyond_llama(self, num_layers: int) -> str | None:
        """What this scheme computes that a LLaMA's residual stream does not (``None``: it is LLaMA's, Eq. 1)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    def _validate_plan(self, plan: list[int] | None, num_layers: int, what: str) -> None:
        if plan is None:
            return
        field = f"scheme.{self.plan_field}"
        if len(plan) != num_layers:
            raise SchemeConfigError(
                f"{field} has {len(plan)} entries but the model has {num_layers} layers; give one {what} per layer."
            )
        allowed = self.plan_values
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 or (allowed and k not in allowed) for k in plan):
            values = f"one of {list(allowed)}" if allowed else "integers >= 0"
            raise SchemeConfigError(f"{field}={plan} must hold {values} ({what} per layer).")


@dataclass
class EulerScheme(SchemeConfig):
    """Transformer++: the standard residual connection, one explicit Euler step per layer (Eq. 1)."""

    name: ClassVar[str] = "euler"


@dataclass
class DLCLScheme(SchemeConfig):
    """Dynamic linear combination of layers: each layer reads a learnable combination of all earlier outputs.

    Attributes:
        history: how the layer history is stored and its weights initialised. ``"residual"``: entries are the raw
            embedding and each layer's increment ``F``, weights start at 1 (so the model starts as Transformer++
            exactly). ``"normalized"``: entries are LayerNorm'd full layer outputs, weights start as row averages
            (the reading of the public PCformer LM code).
    """

    name: ClassVar[str] = "dlcl"
    has_history: ClassVar[bool] = True
    history: Literal["residual", "normalized"] = "residual"

    def corrections(self, num_layers: int) -> list[int]:
        """Implicit-Euler corrections per layer (none: DLCL is IIET with ``r = 0``)."""
        return [0] * num_layers

    def history_combinations(self, num_layers: int) -> list[int]:
        """Combinations of the layer history each layer computes (the initial value plus one per correction)."""
        return [1 + r for r in self.corrections(num_layers)]

    def beyond_llama(self, num_layers: int) -> str | None:
        corrections = self.corrections(num_layers)
        history = "each layer reads a learned combination of all earlier layers' outputs"
        if not any(corrections):
            return history
        return f"{history} and runs implicit-Euler corrections (per layer: {corrections})"

    def stage_labels(self, num_stages: int) -> list[str]:
        return ["initial compute"] + [f"iteration {i}" for i in range(1, num_stages)]

    def corrector_config(self) -> CorrectorConfig:
        """How corrections step (DLCL has none: the fixed point, never used)."""
        return parse_corrector(None)

    def validate(self, num_layers: int) -> None:
        if self.history not in HISTORY_READINGS:
            raise SchemeConfigError(
                f"scheme.history={self.history!r} is not one of {HISTORY_READINGS}; pick one of them."
            )


@dataclass
class ImplicitEulerScheme(DLCLScheme):
    """IIET: explicit-Euler initial value, then fixed-point implicit-Euler corrections (Eq. 8-11, Algorithm 1).

    Attributes:
        num_iterations: corrections ``r`` per layer (the paper's best is 3; ``r = 0`` is DLCL).
        iteration_plan: corrections per layer (E-IIET, §4.1); overrides ``num_iterations`` when given. All zeros
            is the paper's "Lower Bound".
        adaptive_tolerance: inference only. When set, a token stops correcting at a layer once ``1 - cos`` between
            successive iterates falls below it (docs/adaptive.md). ``None`` (default) always runs the plan.
        corrector: how a correction computes the next iterate (``iiet.models.correctors``): ``None`` or
            ``{"name": "fixed_point"}`` = the paper's fixed-point step; ``{"name": "anderson", "window": m,
            "damping": beta}`` = Anderson mixing. ``adaptive_tolerance`` adds the stopping rule to either.
    """

    name: ClassVar[str] = "iiet"
    accepts_tolerance: ClassVar[bool] = True
    plan_field: ClassVar[str | None] = "iteration_plan"
    num_iterations: int = 3
    iteration_plan: list[int] | None = None
    adaptive_tolerance: float | None = None
    corrector: dict[str, Any] | None = None

    def corrections(self, num_layers: int) -> list[int]:
        if self.iteration_plan is not None:
            return list(self.iteration_plan)
        return [self.num_iterations] * num_layers

    def passes_per_layer(self, num_layers: int) -> list[int]:
        return [1 + r for r in self.corrections(num_layers)]

    def plan(self, num_layers: int) -> list[int]:
        return self.corrections(num_layers)

    def plan_keeping(self, num_layers: int, kept: list[int]) -> list[int]:
        return list(kept)  # the steps after the initial computation are the corrections, in order

    def explicit_first_layer(self, num_layers: int) -> "ImplicitEulerScheme":
        plan = self.corrections(num_layers)
        return self if plan[0] == 0 else self.with_plan([0, *plan[1:]])

    def corrector_config(self) -> CorrectorConfig:
        """The configured corrector, with the stopping rule when ``adaptive_tolerance`` is set."""
        corrector = parse_corrector(self.corrector)
        return corrector if self.adaptive_tolerance is None else corrector.with_tolerance(self.adaptive_tolerance)

    def validate(self, num_layers: int) -> None:
        super().validate(num_layers)
        if not isinstance(self.num_iterations, int) or self.num_iterations < 0:
            raise SchemeConfigError(
                f"scheme.num_iterations={self.num_iterations!r} must be an integer >= 0 (0 = DLCL)."
            )
        self._validate_plan(self.iteration_plan, num_layers, "number of corrections")
        if self.adaptive_tolerance is not None and not self.adaptive_tolerance >= 0:
            raise SchemeConfigError(
                f"scheme.adaptive_tolerance={self.adaptive_tolerance!r} must be >= 0 (or null to switch it off)."
            )
        parse_corrector(self.corrector)


@dataclass
class PredictorCorrectorScheme(DLCLScheme):
    """PCformer: Runge-Kutta predictor with an EMA coefficient, linear-multistep corrector (Eq. 5-6).

    Attributes:
        order: predictor order, 2 (the paper's) or 4.
        coefficient: the EMA coefficient ``gamma``: one scalar for the whole model (``"shared"``, as in the public
            code) or one per layer (``"per_layer"``). Initialised to 0.5.
        order_plan: predictor order per layer, overriding ``order``. Order ``0`` is no predictor: the layer is one
            explicit step (``e_{n+1} = store(x_n, F_n(x_n))``, DLCL's, which is Euler at initialisation). ``[0, 2,
            ..., 2]`` is the PCformer with an explicit first layer; all zeros its Lower Bound (IIAD).
    """

    name: ClassVar[str] = "pcformer"
    plan_field: ClassVar[str | None] = "order_plan"
    plan_values: ClassVar[tuple[int, ...] | None] = (0, 2, 4)
    order: Literal[2, 4] = 2
    coefficient: Literal["shared", "per_layer"] = "shared"
    order_plan: list[int] | None = None

    def orders(self, num_layers: int) -> list[int]:
        """Predictor order of each layer (0 = no predictor)."""
        return list(self.order_plan) if self.order_plan is not None else [self.order] * num_layers

    def passes_per_layer(self, num_layers: int) -> list[int]:
        return [order + 1 for order in self.orders(num_layers)]

    def corrections(self, num_layers: int) -> None:
        return None  # a predictor is not a sequence of fixed-point corrections

    def history_combinations(self, num_layers: int) -> list[int]:
        return [1] * num_layers  # the corrector's output

    def beyond_llama(self, num_layers: int) -> str | None:
        if self.order_plan is None:
            return f"each layer runs an order-{self.order} Runge-Kutta predictor and a multistep corrector"
        return f"its layers run Runge-Kutta predictors of orders {self.order_plan} and a multistep corrector"

    def plan(self, num_layers: int) -> list[int]:
        return self.orders(num_layers)

    def influence_rows(self, iteration: list[list[float]]) -> list[list[float]]:
        # A layer traces its predictor and its corrector. The corrector is the layer's own step, which always runs
        # (an order-0 layer's only step: it has no predictor); the predictor is the extra work a plan may drop.
        orders = self.orders(len(iteration))
        return [[row[-1], *row[:-1]] if order else [row[-1]] for row, order in zip(iteration, orders)]

    def plan_keeping(self, num_layers: int, kept: list[int]) -> list[int]:
        # A layer that keeps its predictor keeps its order; one that drops it becomes a single explicit step.
        return [order if keep else 0 for order, keep in zip(self.orders(num_layers), kept)]

    def explicit_first_layer(self, num_layers: int) -> "PredictorCorrectorScheme":
        orders = self.orders(num_layers)
        return self if orders[0] == 0 else self.with_plan([0, *orders[1:]])

    def stage_labels(self, num_stages: int) -> list[str]:
        return ["predictor", "corrector"] if num_stages == 2 else super().stage_labels(num_stages)

    def validate(self, num_layers: int) -> None:
        super().validate(num_layers)
        if self.order not in (2, 4):
            raise SchemeConfigError(f"scheme.order={self.order!r}: the predictor supports order 2 or 4.")
        self._validate_plan(self.order_plan, num_layers, "predictor order")
        if self.coefficient not in ("shared", "per_layer"):
            raise SchemeConfigError(
                f"scheme.coefficient={self.coefficient!r} must be 'shared' or 'per_layer'."
            )


@dataclass
class WeightSharedScheme(SchemeConfig):
    """Trans WS: every layer is applied ``repeats`` times in a row, ``y <- y + F_n(y)`` (a looped layer, §3.5).

    Attributes:
        repeats: applications per layer ``k``; same FLOPs as IIET with ``r = k - 1``; ``k = 1`` is Transformer++.
    """

    name: ClassVar[str] = "weight_shared"
    repeats: int = 4

    def passes_per_layer(self, num_layers: int) -> list[int]:
        return [self.repeats] * num_layers

    def beyond_llama(self, num_layers: int) -> str | None:
        return None if self.repeats == 1 else f"each layer is applied {self.repeats} times in a row"

    def explicit_first_layer(self, num_layers: int) -> None:
        return None if self.repeats > 1 else self  # one repeat count for every layer

    def validate(self, num_layers: int) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise SchemeConfigError(f"scheme.repeats={self.repeats!r} must be an integer >= 1.")


SCHEMES: dict[str, type[SchemeConfig]] = {
    cls.name: cls
    for cls in (EulerScheme, DLCLScheme, ImplicitEulerScheme, PredictorCorrectorScheme, WeightSharedScheme)
}


def parse_scheme(value: str | dict[str, Any] | SchemeConfig | None) -> SchemeConfig:
    """Turn ``"iiet"``, ``{"name": "iiet", "num_iterations": 3}`` or a ``SchemeConfig`` into a ``SchemeConfig``."""
    if value is None:
        return EulerScheme()
    if isinstance(value, SchemeConfig):
        return value
    return parse_named(value, SCHEMES, "scheme")


class IIETConfig(LlamaConfig):
    """LLaMA hyper-parameters plus ``scheme``, the numerical scheme that combines the layers.

    Args:
        scheme: the scheme name or a dict ``{"name": ..., **parameters}`` (see ``SCHEMES``); default ``"euler"``.
        residual_init_scale: multiplies the initial standard deviation (``initializer_range``) of the two
            projections that write into the residual stream, attention ``o_proj`` and MLP ``down_proj``; ``0``
            initialises them to zero. Default ``1.0`` = LLaMA's initialisation. Values below 1 make each block
            update ``F`` small against its input at initialisation, which keeps the fixed-point corrections of
            IIET a contraction from the first step (docs/training.md, "The slow start of IIET").
        embedding_multiplier: multiplies the token embeddings before the first layer (Gemma uses
            ``sqrt(hidden_size)``); the LM head (tied or not) is unchanged. Default ``1.0`` = LLaMA. Under pre-norm the
            blocks do not see this scale, only the skip connection does: a larger value keeps the first layer's
            implicit-Euler fixed point ``y = x + F(y)`` tied to its input ``x`` (docs/training.md).
        Every other argument is ``transformers.LlamaConfig``'s.
    """

    model_type = "iiet"
    scheme: dict | str | None = None
    residual_init_scale: float = 1.0
    embedding_multiplier: float = 1.0

    def __post_init__(self, **kwargs):
        self.scheme = parse_scheme(self.scheme).to_dict()
        super().__post_init__(**kwargs)
        self.scheme_config.validate(self.num_hidden_layers)
        if not isinstance(self.residual_init_scale, (int, float)) or self.residual_init_scale < 0:
            raise IIETError(
                f"residual_init_scale={self.residual_init_scale!r} must be a number >= 0 (1 = LLaMA's "
                "initialisation, 0 = zero-initialised output projections)."
            )
        if not isinstance(self.embedding_multiplier, (int, float)) or not self.embedding_multiplier > 0:
            raise IIETError(
                f"embedding_multiplier={self.embedding_multiplier!r} must be a number > 0 (1 = LLaMA; e.g. "
                "sqrt(hidden_size) as in Gemma)."
            )

    @property
    def scheme_config(self) -> SchemeConfig:
        """The validated, typed scheme (parsed from ``self.scheme``)."""
        return parse_scheme(self.scheme)

    @property
    def passes_per_layer(self) -> list[int]:
        return self.scheme_config.passes_per_layer(self.num_hidden_layers)

    @property
    def num_block_evaluations(self) -> int:
        """Block evaluations per token (= KV-cache slots): ``num_hidden_layers`` for Transformer++."""
        return sum(self.passes_per_layer)
