"""Numerical schemes: how the layers' block updates ``F_n`` combine into the residual stream.

Every scheme is an ``nn.Module`` with one call signature and one result::

    scheme(h0, blocks, options) -> SchemeOutput(hidden, iterations, corrections)

``h0`` is the token embedding; ``blocks`` is the block runner (``Blocks``): ``blocks(n, i, x)`` runs block ``n`` on
``x`` as its ``i``-th evaluation in this layer, and the model maps ``(n, i)`` to a KV-cache slot;
``options`` (``SchemeOptions``) is how this one call runs:

==================  ===============================================================================================
``output_iterations``  return, per layer, the states ``[layer input, iterate 0, iterate 1, ...]`` (influence
                    analysis and distillation read them).
``plan``            a per-layer plan for this call instead of the configured one, on the same weights: IIET
                    corrections per layer (``[0] * L`` = Lower Bound, an E-IIET plan, ...), PCformer predictor
                    orders. The model gives the call the cache slots of that plan (``IIETModel.slot_offsets_for``).
``corrector``       how IIET corrections step (``iiet.models.correctors``: fixed point, adaptive, Anderson);
                    ``None`` = the configured one.
``slot_base``       first KV-cache slot of this call. A draft that runs a cheaper plan on the verifier's weights
                    passes ``slot_base = verifier slots`` and keeps its own slots beside the verifier's in one cache.
==================  ===============================================================================================

``SchemeOutput.hidden`` is the final state (before the final norm), ``iterations`` the traced states (or ``None``),
``corrections`` a (L, B, T) long tensor of the corrections each token took when the corrector can stop early
(``None``: every token ran the plan).

Equations as implemented (docs/architecture.md has the full derivation and the mapping to the paper):

* Euler (Eq. 1):            ``y_{n+1} = y_n + F_n(y_n)``
* DLCL (Fig. 1b):           ``x_n = sum_{j<=n} W[n, j] e_j``, ``e_0 = h0``, ``e_{n+1} = store(x_n, F_n(x_n))``
* IIET (Eq. 8-11, Alg. 1):  ``f^0 = F_n(x_n)``; ``y^i = sum_{j<=n} W[n+1, j] e_j + W[n+1, n+1] store(x_n, f^i)``;
                            ``f^{i+1} = F_n(y^i)``; output ``y^r``. With ``W = 1`` (residual reading):
                            ``y^i = x_n + F_n(y^{i-1})``, the fixed-point iteration of implicit Euler (Eq. 9).
* PCformer (Eq. 5-6):       ``y_p = x_n + sum_k gamma (1-gamma)^{o-k} F_k``; corrector ``e_{n+1} = store(x_n, F_n(y_p))``
                            (order ``o = 0``: no predictor, ``y_p = x_n``)
* Trans WS (§3.5):          ``y <- y + F_n(y)``, ``repeats`` times per layer (a looped layer).

``store`` is the history reading: ``"residual"`` keeps the increment ``f`` (weights start at 1: Euler exactly);
``"normalized"`` keeps ``LayerNorm_n(x_n + f)`` (weights start as row averages: the public PCformer LM code).

Each module initialises its own parameters (``init_parameters``, called by the model's ``_init_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import initialization as init

from .configuration_iiet import (
    DLCLScheme,
    EulerScheme,
    IIETConfig,
    ImplicitEulerScheme,
    PredictorCorrectorScheme,
    SchemeConfig,
    WeightSharedScheme,
)
from .correctors import CorrectorConfig, parse_corrector

GAMMA_INIT = 0.5  # PCformer's EMA coefficient at initialisation (the public code's)


class Blocks(Protocol):
    """Runs block ``n`` on ``x`` as its ``i``-th evaluation in the layer (the model maps ``(n, i)`` to a cache slot)."""

    def __call__(self, n: int, i: int, x: torch.Tensor) -> torch.Tensor: ...

    def write_cache(self, n: int, i: int, x: torch.Tensor) -> None:
        """Fill evaluation ``i``'s cache slot as if the block had run on ``x`` (no-op without a cache)."""


@dataclass(frozen=True)
class SchemeOptions:
    """How one forward runs the scheme (module docstring); the defaults run the model as configured."""

    output_iterations: bool = False
    plan: list[int] | None = None
    corrector: CorrectorConfig | dict[str, Any] | str | None = None
    slot_base: int = 0


@dataclass
class SchemeOutput:
    """What a scheme returns: the final state, the traced states on request, the corrections taken."""

    hidden: torch.Tensor
    iterations: list[list[torch.Tensor]] | None = None
    corrections: torch.Tensor | None = None


class LayerHistory(nn.Module):
    """The DLCL layer history: entries ``e_0..e_n`` and a learnable lower-triangular weight matrix ``W``.

    Written once and shared by DLCL, IIET and PCformer. Row ``n`` of ``W`` (``n + 1`` entries) is the input of
    layer ``n``; row ``L`` feeds the final norm.
    """

    def __init__(self, num_layers: int, hidden_size: int, reading: str, eps: float = 1e-5):
        super().__init__()
        self.reading = reading
        self.weights = nn.Parameter(torch.empty(num_layers + 1, num_layers + 1))
        # One LayerNorm per stored layer output (the embedding, entry 0, is stored raw), as in the public code.
        self.norms = (
            nn.ModuleList(nn.LayerNorm(hidden_size, eps=eps) for _ in range(num_layers))
            if reading == "normalized"
            else None
        )
        self.init_parameters()

    def initial_weights(self) -> torch.Tensor:
        n = self.weights.shape[0]
        w = torch.tril(torch.ones(n, n))
        if self.reading == "normalized":
            w = w / w.sum(dim=1, keepdim=True)  # row i averages its i + 1 entries
        return w

    def init_parameters(self) -> None:
        # ``init.*`` skips tensors HF has marked as loaded, so from_pretrained keeps trained weights.
        init.copy_(self.weights, self.initial_weights())

    def store(self, n: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The history entry of layer ``n`` for input ``x`` and block update ``f`` (fixed base ``x``)."""
        if self.norms is None:
            return f
        return self.norms[n](x + f)

    def begin(self, h0: torch.Tensor) -> HistoryEntries:
        """The entries of one forward pass, starting with the embedding ``e_0 = h0``."""
        return HistoryEntries(self.weights, h0)


class HistoryEntries:
    """The entries ``e_0..e_n`` of one forward pass and their combinations ``sum_j W[row, j] e_j``.

    Without autograd (inference, decoding) the entries live in one buffer allocated up front, so a combination is a
    single matrix-vector product instead of ``2 (n + 1)`` elementwise kernels: at decode sizes the GPU time follows
    the kernel count (docs/benchmarks.md). With autograd they stay a list combined term by term, so that backward
    keeps references to the entries rather than a stacked copy per layer (``O(L^2)`` activation memory).
    """

    def __init__(self, weights: torch.Tensor, h0: torch.Tensor):
        self.weights = weights
        self.n = 1
        self.buffer = None
        self.items = [h0]
        if not torch.is_grad_enabled():
            self.buffer = h0.new_empty((weights.shape[0], *h0.shape))  # (L+1, B, T, d)
            self.buffer[0].copy_(h0)

    def append(self, entry: torch.Tensor) -> None:
        self.n += 1
        self.set_last(entry)

    def set_last(self, entry: torch.Tensor) -> None:
        """Write the newest entry (IIET replaces it at every correction: Alg. 1 line 6)."""
        if self.buffer is not None:
            self.buffer[self.n - 1].copy_(entry)
        elif len(self.items) < self.n:
            self.items.append(entry)
        else:
            self.items[-1] = entry

    def last(self) -> torch.Tensor:
        return self.buffer[self.n - 1] if self.buffer is not None else self.items[-1]

    def combine(self, row: int) -> torch.Tensor:
        """``sum_j W[row, j] * e_j`` over the ``n`` entries stored so far."""
        if self.buffer is not None:
            entries = self.buffer[: self.n]
            w = self.weights[row, : self.n].to(entries.dtype)
            return (w @ entries.flatten(1)).view(entries.shape[1:])
        w = self.weights[row, : self.n].to(self.items[0].dtype)
        out = self.items[0] * w[0]
        for j in range(1, self.n):
            out = out + self.items[j] * w[j]
        return out


class Euler(nn.Module):
    """Transformer++: ``y_{n+1} = y_n + F_n(y_n)``."""

    def __init__(self, config: IIETConfig, scheme: EulerScheme):
        super().__init__()
        self.num_layers = config.num_hidden_layers

    def forward(self, h: torch.Tensor, blocks: Blocks, options: SchemeOptions = SchemeOptions()) -> SchemeOutput:
        trace = [] if options.output_iterations else None
        for n in range(self.num_layers):
            y = h + blocks(n, 0, h)
            if trace is not None:
                trace.append([h, y])
            h = y
        return SchemeOutput(h, trace)


class WeightShared(nn.Module):
    """Trans WS: each layer applied ``repeats`` times in a row, ``y <- y + F_n(y)`` (a looped layer)."""

    def __init__(self, config: IIETConfig, scheme: WeightSharedScheme):
        super().__init__()
        self.num_layers = config.num_hidden_layers
        self.repeats = scheme.repeats

    def forward(self, h: torch.Tensor, blocks: Blocks, options: SchemeOptions = SchemeOptions()) -> SchemeOutput:
        trace = [] if options.output_iterations else None
        for n in range(self.num_layers):
            states = [h]
            for i in range(self.repeats):
                h = h + blocks(n, i, h)
                states.append(h)
            if trace is not None:
                trace.append(states)
        return SchemeOutput(h, trace)


class ImplicitEuler(nn.Module):
    """IIET / E-IIET / DLCL: explicit-Euler initial value plus ``r_n`` implicit-Euler corrections per layer.

    Each correction asks the corrector (``correctors.py``) for the next history entry and, if it can stop early,
    which tokens have converged; history replacement, freezing converged tokens and the cache back-fill of skipped
    passes are done here, once. With ``r_n = 0`` everywhere this is DLCL; ``DLCLScheme`` builds this module with a
    plan of zeros.
    """

    def __init__(self, config: IIETConfig, scheme: DLCLScheme):
        super().__init__()
        L = config.num_hidden_layers
        self.history = LayerHistory(L, config.hidden_size, scheme.history)
        self.corrections = scheme.corrections(L)
        self.corrector = scheme.corrector_config()

    def forward(self, h: torch.Tensor, blocks: Blocks, options: SchemeOptions = SchemeOptions()) -> SchemeOutput:
        plan = self.corrections if options.plan is None else options.plan
        corrector = self.corrector if options.corrector is None else parse_corrector(options.corrector)
        trace = [] if options.output_iterations else None
        taken = [] if corrector.stops_early else None
        entries = self.history.begin(h)
        x = entries.combine(0)
        for n, r in enumerate(plan):
            f = blocks(n, 0, x)  # initial value f^0 = F_n(x_n)          (Eq. 10 / Alg. 1 line 2)
            entries.append(self.history.store(n, x, f))
            y = entries.combine(n + 1)  # y^0                            (Eq. 11 with i = 0)
            states = [x, y]
            solve = corrector.start()
            active = used = None
            if taken is not None:
                active = torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)  # (B, T)
                used = torch.zeros(y.shape[:-1], dtype=torch.long, device=y.device)
            for i in range(1, r + 1):
                if active is not None and not bool(active.any()):
                    # Every token has converged: the remaining passes would see the converged iterate as input, so
                    # their cache slots get its keys/values (cheap: two projections, no block evaluation).
                    for j in range(i, r + 1):
                        blocks.write_cache(n, j, y)
                    break
                f = blocks(n, i, y)  # f^i = F_n(y^{i-1})                  (Alg. 1 line 5)
                entry = solve.step(entries.last(), self.history.store(n, x, f))
                if active is not None:
                    # Converged tokens keep their iterate (masking): the block still ran on it, so the cache slot of
                    # this pass holds the converged pass's keys/values, the value a fixed point would give.
                    entry = torch.where(active[..., None], entry, entries.last())
                entries.set_last(entry)  # replace, never append (Alg. 1 line 6)
                y_next = entries.combine(n + 1)  # y^i                    (Eq. 11)
                if active is not None:
                    used += active.long()
                    active = active & ~solve.converged(y, y_next)
                y = y_next
                states.append(y)
            if taken is not None:
                taken.append(used)
            if trace is not None:
                trace.append(states)
            x = y  # row n + 1 of W is both layer n's output and layer n + 1's input
        return SchemeOutput(x, trace, torch.stack(taken) if taken else None)


class PredictorCorrector(nn.Module):
    """PCformer: RK predictor with EMA coefficient ``gamma``, then a linear-multistep corrector (Eq. 5-6).

    Order 2: ``F_1 = F(x)``, ``F_2 = F(x + F_1)``, ``y_p = x + gamma (1-gamma) F_1 + gamma F_2``.
    Order 4: stage inputs ``x + F_1/2``, ``x + F_2/2``, ``x + F_3`` (classical RK4) with EMA weights
    ``gamma (1-gamma)^{4-k}``. Order 0: no predictor, ``y_p = x``. Corrector: ``e_{n+1} = store(x, F(y_p))`` and the
    output is row ``n + 1`` of the history. The order may differ per layer (``order_plan``).
    """

    STAGE_SCALES = {0: (), 2: (1.0,), 4: (0.5, 0.5, 1.0)}

    def __init__(self, config: IIETConfig, scheme: PredictorCorrectorScheme):
        super().__init__()
        L = config.num_hidden_layers
        self.orders = scheme.orders(L)
        self.history = LayerHistory(L, config.hidden_size, scheme.history)
        self.gamma = nn.Parameter(torch.empty(L if scheme.coefficient == "per_layer" else 1))
        self.init_parameters()

    def init_parameters(self) -> None:
        init.constant_(self.gamma, GAMMA_INIT)

    def forward(self, h: torch.Tensor, blocks: Blocks, options: SchemeOptions = SchemeOptions()) -> SchemeOutput:
        orders = self.orders if options.plan is None else options.plan
        trace = [] if options.output_iterations else None
        entries = self.history.begin(h)
        x = entries.combine(0)
        for n, order in enumerate(orders):
            y_p = x
            if order:
                g = self.gamma[n if self.gamma.numel() > 1 else 0].to(h.dtype)
                stages = [blocks(n, 0, x)]
                for k, scale in enumerate(self.STAGE_SCALES[order], start=1):
                    stages.append(blocks(n, k, x + scale * stages[-1]))
                for k, stage in enumerate(stages, start=1):
                    y_p = y_p + g * (1 - g) ** (order - k) * stage
            f = blocks(n, order, y_p)
            entries.append(self.history.store(n, x, f))
            y = entries.combine(n + 1)
            if trace is not None:
                trace.append([x, y_p, y])
            x = y
        return SchemeOutput(x, trace)


# Keyed by the scheme's name, not its class: a checkpoint loaded with trust_remote_code imports its own copy of
# configuration_iiet, whose classes are different objects from ours.
SCHEME_MODULES: dict[str, type[nn.Module]] = {
    EulerScheme.name: Euler,
    DLCLScheme.name: ImplicitEuler,  # DLCL is IIET with zero corrections
    ImplicitEulerScheme.name: ImplicitEuler,
    PredictorCorrectorScheme.name: PredictorCorrector,
    WeightSharedScheme.name: WeightShared,
}


def build_scheme(config: IIETConfig) -> nn.Module:
    """The scheme module for ``config.scheme``."""
    scheme: SchemeConfig = config.scheme_config
    return SCHEME_MODULES[scheme.name](config, scheme)
