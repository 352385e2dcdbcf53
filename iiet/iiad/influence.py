"""Block influence (paper §3.5, Eq. 12) and iteration influence (§4.1, Figures 5 and 6) of an IIET model.

Block influence of layer ``n`` (ShortGPT's statistic), with ``H_n`` = the input of layer ``n`` = ``hidden_states[n]``
and ``H_{n+1}`` its output:

    BI_n = 1 - E_t [ cos(H_{n,t}, H_{n+1,t}) ]                                                    (Eq. 12)

Iteration influence is the same statistic between successive states *inside* a layer, read from
``iterations[n] = (y_n, y^0, y^1, ..., y^r)`` (layer input, then the iterate after the initial computation and after
each correction):

    II_n^0 = 1 - E_t [ cos(y_n,     y^0) ]      "initial compute"
    II_n^i = 1 - E_t [ cos(y^{i-1}, y^i) ]      correction i = 1 .. r_n

``E_t`` is the mean over every non-padding token of every segment (token-weighted). The cosine sums are accumulated
in float64 batch by batch under ``torch.no_grad``, so any number of segments needs memory for one batch only. For
other schemes the same statistic is taken over whatever states the scheme traces (PCformer: predictor, corrector;
Trans WS: each repeat); block influence applies to every scheme.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from iiet.errors import IIETError
from iiet.iiad.files import read_json, write_json
from iiet.iiad.identity import model_identity
from iiet.iiad.segments import batches
from iiet.models.configuration_iiet import SchemeConfig, parse_scheme

FORMAT = "iiet-influence"
FORMAT_VERSION = 1


def cosine_sum(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the masked tokens of ``cos(a_t, b_t)``: (B, T, D), (B, T, D), (B, T) bool -> float64 scalar."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)  # (B, T)
    return cos[mask].double().sum()


class InfluenceAccumulator:
    """Running sums of per-token cosines: one per layer (block) and one per state transition inside each layer."""

    def __init__(self) -> None:
        self.block_sums: list[torch.Tensor] | None = None
        self.iteration_sums: list[list[torch.Tensor]] | None = None
        self.num_tokens = 0
        self.num_segments = 0

    def update(self, hidden_states, iterations, mask: torch.Tensor) -> None:
        """Add one batch: the model's ``hidden_states`` and ``iterations`` and the (B, T) attention mask."""
        mask = mask.bool()
        blocks = [cosine_sum(hidden_states[n], hidden_states[n + 1], mask) for n in range(len(hidden_states) - 1)]
        steps = [[cosine_sum(states[i - 1], states[i], mask) for i in range(1, len(states))] for states in iterations]
        if self.block_sums is None:
            self.block_sums, self.iteration_sums = blocks, steps
        else:
            self.block_sums = [s + b for s, b in zip(self.block_sums, blocks)]
            self.iteration_sums = [[s + x for s, x in zip(row, new)] for row, new in zip(self.iteration_sums, steps)]
        self.num_tokens += int(mask.sum())
        self.num_segments += int(mask.any(dim=1).sum())

    def block_influence(self) -> list[float]:
        return [1.0 - float(s) / self.num_tokens for s in self.block_sums]

    def iteration_influence(self) -> list[list[float]]:
        return [[1.0 - float(s) / self.num_tokens for s in row] for row in self.iteration_sums]


@dataclass
class Influence:
    """Influence of one model, as saved to ``influence.json``.

    Attributes:
        block: ``BI_n`` per layer.
        iteration: per layer ``[II_n^0, II_n^1, ..., II_n^{r_n}]`` (initial compute, then each correction).
        model: the model's identity (``identity.model_identity``): scheme, sizes, fingerprints, path, config.
        data: where the segments came from, how many and how many tokens.
    """

    block: list[float]
    iteration: list[list[float]]
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme_name(self) -> str:
        return self.model.get("scheme", {}).get("name", "")

    @property
    def corrections(self) -> list[int]:
        """Corrections measured per layer (the number of iteration-influence entries minus the initial compute)."""
        return [len(row) - 1 for row in self.iteration]

    @property
    def scheme_config(self) -> SchemeConfig | None:
        """The measured model's scheme (``None`` if the file records none)."""
        scheme = self.model.get("scheme")
        return parse_scheme(scheme) if scheme else None

    def row_labels(self) -> list[str]:
        """Names of the states' transitions, bottom to top, as in the paper's Figure 5 (the scheme names them)."""
        rows = max(len(row) for row in self.iteration)
        scheme = self.scheme_config
        return scheme.stage_labels(rows) if scheme is not None else SchemeConfig().stage_labels(rows)

    def save(self, path: str | Path) -> Path:
        return write_json(path, FORMAT, FORMAT_VERSION, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "Influence":
        raw = read_json(path, "influence file", "iiet influence")
        if raw.get("format") != FORMAT:
            raise IIETError(f"{path} is not an influence file (format {raw.get('format')!r}); give an influence.json "
                            "written by `iiet influence`.")
        return cls(block=raw["block"], iteration=raw["iteration"], model=raw.get("model", {}),
                   data=raw.get("data", {}))


@torch.no_grad()
def measure_influence(
    model,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_segments: int | None = None,
    progress: bool = True,
) -> InfluenceAccumulator:
    """Run ``model`` over ``(input_ids, attention_mask)`` batches and accumulate block and iteration influence.

    Args:
        model: an ``IIETForCausalLM`` (eval mode is set here).
        batches: batches of token ids and their attention masks (1 = real token, 0 = padding).
        num_segments: total segments, for the progress bar only.
        progress: show a tqdm progress bar.
    """
    model.eval()
    device = next(model.parameters()).device
    accumulator = InfluenceAccumulator()
    bar = tqdm(total=num_segments, unit="segment", desc="influence", disable=not progress, dynamic_ncols=True)
    # A model configured to stop corrections early per token is measured with every correction (tolerance 0).
    adaptive = {"adaptive_tolerance": 0.0} if getattr(model.model, "adaptive_tolerance", None) is not None else {}
    for input_ids, attention_mask in batches:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        out = model.model(  # the base model: the LM head's logits are not needed
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
            output_hidden_states=True, output_iterations=True, **adaptive,
        )
        accumulator.update(out.hidden_states, out.iterations, attention_mask)
        bar.update(input_ids.shape[0])
    bar.close()
    if accumulator.num_tokens == 0:
        raise IIETError("no tokens were measured; give segments with at least one token.")
    return accumulator


def compute_influence(
    model,
    segments: list[torch.Tensor],
    batch_size: int = 8,
    model_path: str | None = None,
    data: dict[str, Any] | None = None,
    progress: bool = True,
) -> Influence:
    """Block and iteration influence of ``model`` over token ``segments`` (see the module docstring)."""
    if batch_size < 1:
        raise IIETError(f"batch_size={batch_size} must be >= 1.")
    pad_id = model.config.pad_token_id or 0  # any valid id: padded positions are masked out
    accumulator = measure_influence(model, batches(segments, batch_size, pad_id), len(segments), progress)
    info = {**(data or {}), "num_segments": accumulator.num_segments, "num_tokens": accumulator.num_tokens}
    return Influence(
        block=accumulator.block_influence(),
        iteration=accumulator.iteration_influence(),
        model=model_identity(model, model_path),
        data=info,
    )
