"""Turn measurements into the paper's views: Table 3 (speed, FLOPs, memory), speed targets, Figure 3b (speed vs r).

Ratios compare a model with the Transformer++ of the same size measured in the same run (``paired_ratio``). The
targets:

* IIET (r=3) decode >= 0.25x Transformer++ (it evaluates every block 4 times);
* Lower Bound (a plan of zeros: DLCL structure) decode >= 0.95x;
* any other IIET plan (E-IIET) decode >= 0.9x its *ideal* ratio ``L / block evaluations``;
* KV-cache bytes per token exactly ``block evaluations / L`` times Transformer++'s (one slot per evaluation);
* a model decoded by self-speculative decoding (``SPEC+draft=...``): decode >= 0.5x Transformer++, and greedy tokens
  identical to plain decoding of the same weights.
"""

from __future__ import annotations

import statistics
from typing import Any

from iiet.models.configuration_iiet import parse_scheme
from iiet.plotting import pyplot, save_figure

IIET_R3_TARGET = 0.25
SPECULATIVE_TARGET = 0.5
SAME_TOKENS = {True: "yes", False: "NO", None: "n/a (sampled)"}
LOWER_BOUND_TARGET = 0.95
E_IIET_FRACTION_OF_IDEAL = 0.9
MIB = 2**20


def paired_ratios(reference_s: list[float], model_s: list[float]) -> list[float]:
    """Per repetition, ``reference time / model time``: both ran back to back in the same repetition, so a burst of
    load on the machine scales both, which a ratio of two medians would not cancel."""
    return [r / m for r, m in zip(reference_s, model_s)]


def paired_ratio(reference_s: list[float], model_s: list[float]) -> float:
    """Speed ratio vs the reference: the median of ``paired_ratios``."""
    return statistics.median(paired_ratios(reference_s, model_s))


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q3]


def _corrections(result: dict[str, Any]) -> list[int] | None:
    """Implicit-Euler corrections per layer (``None`` for a scheme without them), as the scheme says."""
    return parse_scheme(result["scheme"]).corrections(result["num_layers"])


def _baseline(result: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The same-size model whose scheme is LLaMA's residual stream (Transformer++)."""
    return next((r for r in results if r["size"] == result["size"]
                 and parse_scheme(r["scheme"]).beyond_llama(r["num_layers"]) is None), None)


def _plain(result: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The same weights decoded without a draft, if the run has them."""
    return next((r for r in results if not r.get("draft") and r["source"] == result["source"]
                 and r["scheme"] == result["scheme"] and r["size"] == result["size"]), None)


def _speculative_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for B, batch in result["batches"].items():
        spec = batch["speculative"]
        if spec["identical_tokens"] is not None:  # None: sampled tokens, which differ by chance
            targets.append({"model": result["label"], "batch_size": B, "target": "greedy tokens = plain decoding",
                            "value": spec["identical_tokens"], "threshold": True, "passed": spec["identical_tokens"]})
        if "decode_ratio" in batch:
            targets.append({
                "model": result["label"], "batch_size": B, "target": f"decode >= {SPECULATIVE_TARGET}x Transformer++",
                "value": batch["decode_ratio"], "quartiles": batch["decode_ratio_quartiles"],
                "threshold": SPECULATIVE_TARGET, "passed": batch["decode_ratio"] >= SPECULATIVE_TARGET,
            })
    return targets


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ratios vs the same-size Transformer++ to every result; return the list of target checks."""
    targets = []
    for result in results:
        base = _baseline(result, results)
        result["baseline"] = base["label"] if base else None
        plain = _plain(result, results) if result.get("draft") else None
        result["plain"] = plain["label"] if plain else None
        if plain is not None:
            for B, batch in result["batches"].items():
                speedups = paired_ratios(plain["batches"][B]["decode_s"], batch["decode_s"])
                batch["speculative"]["speedup_vs_plain"] = statistics.median(speedups)
                batch["speculative"]["speedup_vs_plain_quartiles"] = _quartiles(speedups)
        if base is None:
            if result.get("draft"):
                targets += _speculative_targets(result)
            continue
        result["ideal_ratio"] = base["block_evaluations"] / result["block_evaluations"]
        result["flop_ratio"] = base["flops_per_token"] / result["flops_per_token"]
        for B, batch in result["batches"].items():
            ref = base["batches"][B]
            batch["decode_ratio"] = paired_ratio(ref["decode_s"], batch["decode_s"])
            batch["decode_ratio_quartiles"] = _quartiles(paired_ratios(ref["decode_s"], batch["decode_s"]))
            batch["prefill_ratio"] = paired_ratio(ref["prefill_s"], batch["prefill_s"])
        if result is base:
            continue
        if result.get("draft"):
            targets += _speculative_targets(result)
            continue
        evals, layers = result["block_evaluations"], base["num_layers"]
        kv, kv_base = result["kv_bytes_per_token"], base["kv_bytes_per_token"]
        targets.append({
            "model": result["label"], "batch_size": None, "target": "KV bytes/token = evals/L x Transformer++",
            "value": kv, "threshold": evals * kv_base / layers, "passed": kv * layers == evals * kv_base,
        })
        plan = _corrections(result)
        if plan is None:
            continue
        if all(r == 3 for r in plan):
            name, threshold = f"decode >= {IIET_R3_TARGET}x Transformer++", IIET_R3_TARGET
        elif not any(plan):
            name, threshold = f"decode >= {LOWER_BOUND_TARGET}x Transformer++", LOWER_BOUND_TARGET
        else:
            threshold = E_IIET_FRACTION_OF_IDEAL * result["ideal_ratio"]
            name = f"decode >= {E_IIET_FRACTION_OF_IDEAL} x ideal ({result['ideal_ratio']:.3f}x)"
        for B, batch in result["batches"].items():
            targets.append({
                "model": result["label"], "batch_size": B, "target": name, "value": batch["decode_ratio"],
                "quartiles": batch["decode_ratio_quartiles"], "threshold": threshold,
                "passed": batch["decode_ratio"] >= threshold,
            })
    return targets


def _ratio(batch: dict[str, Any], key: str) -> str:
    return f" ({batch[key]:.2f}x)" if key in batch else ""


def markdown_table(results: list[dict[str, Any]], batch_sizes: list[int]) -> str:
    """Table 3 of the paper, per batch size: speed (tokens/s, ratio vs Transformer++), FLOPs, memory."""
    largest = max(batch_sizes)
    header = ["model", "params (M)", "block evals/tok", "GFLOPs/tok", "KV KiB/tok", "weights MiB",
              f"KV cache MiB (B={largest})", f"peak MiB (B={largest})"]
    for B in batch_sizes:
        header += [f"prefill tok/s B={B}", f"decode tok/s B={B}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        top = r["batches"][largest]
        peak = f"{top['peak_memory_bytes'] / MIB:.1f}" + ("" if top["memory_measured"] else " (analytic)")
        row = [r["label"], f"{r['parameters'] / 1e6:.1f}", str(r["block_evaluations"]),
               f"{r['flops_per_token'] / 1e9:.3f}", f"{r['kv_bytes_per_token'] / 1024:.1f}",
               f"{r['weights_bytes'] / MIB:.1f}", f"{top['kv_cache_bytes'] / MIB:.1f}", peak]
        for B in batch_sizes:
            b = r["batches"][B]
            row += [f"{b['prefill_tokens_per_s']:.0f}{_ratio(b, 'prefill_ratio')}",
                    f"{b['decode_tokens_per_s']:.1f}{_ratio(b, 'decode_ratio')}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def speculative_table(results: list[dict[str, Any]], batch_sizes: list[int]) -> str | None:
    """Self-speculative decoding per model and batch: acceptance, tokens per verify forward, speed, time per round.

    ``None`` when no model of the run has a draft.
    """
    drafted = [r for r in results if r.get("draft")]
    if not drafted:
        return None
    lines = ["| model | weights | batch | acceptance | tokens / verify | decode tok/s | vs plain (quartiles) | "
             "vs Transformer++ | ms per round: draft / verify / other | greedy tokens = plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    random = False
    for r in drafted:
        weights = "random*" if r["source"] == "random weights" else "checkpoint"
        random = random or weights == "random*"
        for B in batch_sizes:
            b = r["batches"][B]
            s = b["speculative"]
            ms = s["ms_per_round"]
            vs_plain = (f"{s['speedup_vs_plain']:.2f}x ({s['speedup_vs_plain_quartiles'][0]:.2f}-"
                        f"{s['speedup_vs_plain_quartiles'][1]:.2f})" if "speedup_vs_plain" in s else "-")
            lines.append(
                f"| {r['label']} | {weights} | {B} | {s['acceptance_rate']:.3f} | {s['tokens_per_verify']:.2f} | "
                f"{b['decode_tokens_per_s']:.1f} | {vs_plain} | "
                + (f"{b['decode_ratio']:.2f}x" if "decode_ratio" in b else "-")
                + f" | {ms['draft']:.1f} / {ms['verify']:.1f} / {ms['other']:.1f} | "
                f"{SAME_TOKENS[s['identical_tokens']]} |"
            )
    if random:
        lines.append("\n\\* Random weights: the acceptance (and so the speed) of a draft is meaningless there, "
                     "since a random model's plans agree or disagree by accident; measure a trained checkpoint.")
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    if not targets:
        return "(no targets: the run has no Transformer++ of the same size to compare with)"
    lines = ["| model | target | batch | measured (quartiles over repetitions) | needed | result |",
             "|---|---|---|---|---|---|"]
    for t in targets:
        if isinstance(t["value"], bool):
            measured, needed = ("yes" if t["value"] else "no"), "yes"
        elif t["batch_size"] is None:
            measured, needed = f"{t['value']} B", f"{t['threshold']:.0f} B"
        else:
            q1, q3 = t["quartiles"]
            measured, needed = f"{t['value']:.3f}x ({q1:.2f}-{q3:.2f})", f"{t['threshold']:.3f}x"
        lines.append(f"| {t['model']} | {t['target']} | {t['batch_size'] or '-'} | {measured} | {needed} | "
                     f"{'pass' if t['passed'] else 'MISS'} |")
    return "\n".join(lines)


def plot_iterations(results: list[dict[str, Any]], batch_sizes: list[int], path: str) -> bool:
    """Figure 3b: decode speed and memory vs mean corrections per layer r, for the IIET models of the run.

    Returns ``False`` (and writes nothing) when the run has no IIET model.
    """
    family = sorted(
        (r for r in results if _corrections(r) is not None and r.get("baseline") and not r.get("draft")),
        key=lambda r: r["block_evaluations"],
    )
    if not family:
        return False
    base = next(r for r in results if r["label"] == family[0]["baseline"])
    rs = [r["block_evaluations"] / r["num_layers"] - 1 for r in family]  # mean corrections per layer
    fig, (speed, memory) = pyplot().subplots(1, 2, figsize=(10, 4))
    for B in batch_sizes:
        line, = speed.plot(rs, [r["batches"][B]["decode_tokens_per_s"] for r in family], "o-", label=f"IIET, B={B}")
        ref = base["batches"][B]["decode_tokens_per_s"]
        speed.axhline(ref, color=line.get_color(), ls="--", lw=0.8)
        grid = [x / 20 * max(rs) for x in range(21)] if max(rs) > 0 else [0.0]
        speed.plot(grid, [ref / (1 + x) for x in grid], ":", color=line.get_color(), lw=0.8)
    speed.set_yscale("log")
    speed.set_xlabel("mean corrections per layer r")
    speed.set_ylabel("decode tokens/s")
    speed.set_title("decode speed (dashed: Transformer++, dotted: ideal 1/(1+r))", fontsize=9)
    speed.legend(fontsize=8)
    largest = max(batch_sizes)
    for key, label in (("peak_memory_bytes", "weights + KV (+ activations)"), ("kv_cache_bytes", "KV cache")):
        memory.plot(rs, [r["batches"][largest][key] / MIB for r in family], "o-", label=label)
    memory.axhline(base["batches"][largest]["peak_memory_bytes"] / MIB, color="gray", ls="--", lw=0.8,
                   label="Transformer++ total")
    memory.set_xlabel("mean corrections per layer r")
    memory.set_ylabel(f"MiB at B={largest}")
    memory.set_title("memory", fontsize=9)
    memory.legend(fontsize=8)
    for label, x, r in zip([r["label"] for r in family], rs, family):
        speed.annotate(label, (x, r["batches"][batch_sizes[0]]["decode_tokens_per_s"]), fontsize=7,
                       textcoords="offset points", xytext=(3, 3))
    save_figure(fig, path)
    return True
