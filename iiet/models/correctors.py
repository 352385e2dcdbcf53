"""Correctors: how the implicit-Euler corrections of an IIET layer step towards the fixed point (docs/adaptive.md).

Layer ``n`` of IIET solves ``e = G(e)`` for its newest history entry ``e``, where ``G(e) = store_n(x_n, F_n(y(e)))``
and ``y(e) = sum_{j<=n} W[n+1, j] e_j + W[n+1, n+1] e`` is the iterate the entry gives (Eq. 9-11). The iterate is
affine in ``e``, so mixing entries mixes iterates with the same coefficients. A corrector is the rule for one
correction, in the spirit of torchdeq's solvers:

    next entry      = corrector.step(e_k, G(e_k))        e_k: the current entry, G(e_k): the block's proposal
    converged (B,T) = corrector.converged(y_k, y_{k+1})  (only for correctors with ``stops_early``)

The IIET loop (``schemes.ImplicitEuler``) owns everything else once: history replacement, freezing converged
tokens and back-filling the cache slots of skipped passes. Every corrector here is per token, so a token's
iterates depend on its own past only and cached decoding stays exact (tests/test_cache.py, tests/test_adaptive.py).

==================  ==============================================================================================
``fixed_point``     ``e_{k+1} = G(e_k)``: the paper's iteration (Alg. 1). Default.
``adaptive``        the fixed-point step; a token stops once ``1 - cos(y_k, y_{k+1}) < tolerance``.
``anderson``        Anderson mixing over the last ``window`` residuals ``f_k = G(e_k) - e_k``, damping ``beta``
                    (Walker & Ni 2011); ``window = 0`` with ``damping = 1`` is ``fixed_point`` bit for bit.
==================  ==============================================================================================

A corrector is a typed config (``{"name": "anderson", "window": 2}`` in ``scheme.corrector``, or an object in
``SchemeOptions.corrector`` per call); ``start()`` gives the per-layer solve state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .errors import SchemeConfigError
from .registry import parse_named


@dataclass(frozen=True)
class CorrectorConfig:
    """Base of the correctors: a JSON-able config whose ``start()`` gives one layer's solve state."""

    name: ClassVar[str] = ""
    stops_early: ClassVar[bool] = False  # the loop tracks converged tokens (and reports corrections taken)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            CORRECTORS[cls.name] = cls

    def start(self) -> "CorrectorConfig":
        """The solve state of one layer (stateless correctors are their own state)."""
        return self

    def step(self, entry: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        """The next history entry from the current one ``e_k`` and the block's proposal ``G(e_k)``."""
        raise NotImplementedError

    def converged(self, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: tokens whose iterate has converged after this step."""
        raise NotImplementedError

    def with_tolerance(self, tolerance: float) -> "CorrectorConfig":
        """This corrector with the adaptive stopping rule at ``tolerance``."""
        return Adaptive(tolerance=tolerance)

    def validate(self) -> None:
        """Raise ``SchemeConfigError`` on values it cannot run with."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


CORRECTORS: dict[str, type[CorrectorConfig]] = {}


def cosine_change(y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
    """``1 - cos(y, y_next)`` per token, clamped at 0 (rounding can push it below): (B, T, d) x2 -> (B, T)."""
    return (1 - F.cosine_similarity(y_next.float(), y.float(), dim=-1)).clamp_min(0)


def _check_tolerance(tolerance: float | None, field: str) -> None:
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise SchemeConfigError(f"{field}={tolerance!r} must be a number >= 0 (0 = run every correction).")


@dataclass(frozen=True)
class FixedPoint(CorrectorConfig):
    """The paper's correction: the next entry is the block's proposal."""

    name: ClassVar[str] = "fixed_point"

    def step(self, entry: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        return proposal


@dataclass(frozen=True)
class Adaptive(FixedPoint):
    """The fixed-point step; a token stops correcting once ``1 - cos`` of successive iterates is below ``tolerance``.

    Stopping is strict (``< tolerance``), so ``tolerance = 0`` never stops and is exactly the full model.
    """

    name: ClassVar[str] = "adaptive"
    stops_early: ClassVar[bool] = True
    tolerance: float = 1e-3

    def converged(self, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        return cosine_change(y, y_next) < self.tolerance

    def validate(self) -> None:
        _check_tolerance(self.tolerance, "corrector tolerance")


@dataclass(frozen=True)
class Anderson(CorrectorConfig):
    """Anderson mixing (type II) of the last ``window`` fixed-point residuals, per token.

    With residuals ``f_i = G(e_i) - e_i`` and the differences ``dF``, ``dE``, ``dG`` of the last ``m_k = min(window,
    k)`` steps, ``gamma = argmin ||f_k - dF gamma||`` (a ridge-regularised ``m_k x m_k`` solve per token) and

        e_{k+1} = beta (G(e_k) - dG gamma) + (1 - beta) (e_k - dE gamma)

    ``window = 0`` is the damped fixed-point step (``damping = 1``: exactly ``fixed_point``). ``tolerance`` adds the
    adaptive stopping rule.

    Attributes:
        window: residuals mixed, ``m >= 0``.
        damping: ``beta`` in ``(0, 1]``.
        tolerance: ``None`` = run every correction of the plan.
        regularization: ridge term relative to the mean squared residual difference (keeps the solve well posed
            when two residuals coincide).
    """

    name: ClassVar[str] = "anderson"
    window: int = 2
    damping: float = 1.0
    tolerance: float | None = None
    regularization: float = 1e-6

    @property
    def stops_early(self) -> bool:  # type: ignore[override]
        return self.tolerance is not None

    def start(self) -> "_AndersonState":
        return _AndersonState(self)

    def with_tolerance(self, tolerance: float) -> "Anderson":
        return dataclasses.replace(self, tolerance=tolerance)

    def converged(self, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        return cosine_change(y, y_next) < self.tolerance

    def validate(self) -> None:
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 0:
            raise SchemeConfigError(f"anderson window={self.window!r} must be an integer >= 0 (0 = fixed point).")
        if not (isinstance(self.damping, (int, float)) and 0 < self.damping <= 1):
            raise SchemeConfigError(f"anderson damping={self.damping!r} must be in (0, 1] (1 = undamped).")
        if not (isinstance(self.regularization, (int, float)) and self.regularization >= 0):
            raise SchemeConfigError(f"anderson regularization={self.regularization!r} must be >= 0.")
        _check_tolerance(self.tolerance, "anderson tolerance")


class _AndersonState:
    """One layer's window of entries and proposals."""

    def __init__(self, config: Anderson):
        self.config = config
        self.entries: list[torch.Tensor] = []  # e_{k-m} .. e_k (float32 copies: the history buffer is overwritten)
        self.proposals: list[torch.Tensor] = []  # G(e_{k-m}) .. G(e_k)

    @property
    def stops_early(self) -> bool:
        return self.config.stops_early

    def converged(self, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        return self.config.converged(y, y_next)

    def step(self, entry: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        m, beta = self.config.window, self.config.damping
        if m == 0:
            return proposal if beta == 1 else entry + beta * (proposal - entry)
        # Copies, at least in float32: ``entry`` is a view of the history buffer, which the loop overwrites.
        dtype = torch.promote_types(entry.dtype, torch.float32)
        self.entries = [*self.entries, entry.to(dtype, copy=True)][-(m + 1):]
        self.proposals = [*self.proposals, proposal.to(dtype, copy=True)][-(m + 1):]
        if len(self.entries) == 1:  # no residual difference yet: a (damped) fixed-point step
            return proposal if beta == 1 else entry + beta * (proposal - entry)
        E = torch.stack(self.entries, dim=-1)  # (B, T, d, m_k + 1)
        G = torch.stack(self.proposals, dim=-1)
        R = G - E  # residuals f_i
        dR, dE, dG = R.diff(dim=-1), E.diff(dim=-1), G.diff(dim=-1)  # (B, T, d, m_k)
        gram = dR.transpose(-1, -2) @ dR  # (B, T, m_k, m_k)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)[..., None]  # (B, T, 1, 1)
        # The floor keeps a converged token (all differences 0) solvable: gamma = 0, the fixed-point step.
        floor = torch.finfo(gram.dtype).tiny ** 0.5
        gram = gram + (self.config.regularization * scale + floor) * eye
        gamma = torch.linalg.solve(gram, (dR.transpose(-1, -2) @ R[..., -1:]))  # (B, T, m_k, 1)
        mixed = G[..., -1] - (dG @ gamma)[..., 0]
        if beta != 1:
            mixed = beta * mixed + (1 - beta) * (E[..., -1] - (dE @ gamma)[..., 0])
        return mixed.to(proposal.dtype)


def parse_corrector(value: str | dict[str, Any] | CorrectorConfig | None) -> CorrectorConfig:
    """Turn ``None`` (fixed point), a name, ``{"name": ..., **parameters}`` or a config into a validated config."""
    if value is None:
        return FixedPoint()
    if isinstance(value, CorrectorConfig):
        value.validate()
        return value
    corrector = parse_named(value, CORRECTORS, "corrector")
    corrector.validate()
    return corrector
