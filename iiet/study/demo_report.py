"""The demo's results: one table (``results.json``, ``demo.md``), one figure (``demo.png``), and a reading of them.

Every sentence of the reading is computed from the rows: which model is best at equal tokens and by how much, where
each model sits against the unigram plateau, what each costs to decode against Transformer++ and what the student
buys at that cost, and how small the budget is (tokens against the paper's, one seed, the machine's load).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iiet.data.packed import PackedDataset
from iiet.plotting import pyplot, save_figure
from iiet.study.compute import RESULTS_FILE
from iiet.study.heldout import held_out_ids
from iiet.models.names import label_of
from iiet.models.presets import PRESETS
from iiet.study.study import ADAPTIVE_RUN, Study, arm_label
from iiet.train.metrics import read_metrics

# Seed spread of held-out val loss measured here at 1.2M tokens (docs/results.md, reduced evidence tier: 0.007 for
# Transformer++, 0.032 for IIET r=3): gaps below it are not evidence of anything.
SEED_SPREAD_NATS = 0.032
# The paper's 340M models see 16B tokens (§5.1).
PAPER_TOKENS = 16e9
# A model whose held-out loss is within this of the unigram level has not left the plateau.
PLATEAU_MARGIN_NATS = 0.1
# Two models decode "at about equal cost" when their decode tokens/s differ by less than this fraction.
EQUAL_COST_TOLERANCE = 0.2
UNIGRAM_ROWS = 4096  # training rows counted at a time
MARKERS = "osD^vP*X"
DRAFT_ROW = "+draft"  # the run name of IIET decoded self-speculatively (the same weights as the teacher)
COLUMNS = ("model", "block_evaluations_per_token", "tokens_seen", "val_loss", "val_ppl", "bits_per_byte",
           "decode_tokens_per_s")
TEACHER_RUN = "iiet-r3-s0"


def _bench_models(study: Study) -> dict[tuple[str, bool], dict[str, Any]]:
    """The benchmark's models by (run, decoded self-speculatively?)."""
    path = study.root / "bench" / "bench.json"
    if not path.is_file():
        return {}
    return {(Path(m["source"]).parent.name, bool(m.get("draft"))): m for m in json.loads(path.read_text())["models"]}


def _batch_one(model: dict[str, Any]) -> dict[str, Any]:
    batches = model["batches"]
    return batches.get("1") or batches.get(1) or next(iter(batches.values()))


def rows(study: Study, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, in the order of the story: the pretrained models, IIET with adaptive corrections, IIET
    decoded self-speculatively, the distilled student."""
    s, evals = study.config, study.state.get("eval", {})
    layers = PRESETS[s.preset]["num_hidden_layers"]
    bench = _bench_models(study)
    out = []

    def row(run: str, label: str, scored_run: str, pretrained: int, distilled: int = 0, **extra) -> dict[str, Any]:
        scored = evals[scored_run]["held_out"]
        model = bench.get((run.removesuffix(DRAFT_ROW), run.endswith(DRAFT_ROW)))
        return {
            "model": label, "run": run,
            "scheme": json.loads((study.run_dir(scored_run) / "final" / "config.json").read_text())["scheme"],
            "block_evaluations_per_token": round(extra.pop("evaluations", scored["block_evaluations"]), 2),
            "tokens_seen": pretrained + distilled, "pretraining_tokens": pretrained, "distillation_tokens": distilled,
            "val_loss": round(scored["loss"], 4), "val_ppl": round(scored["token_perplexity"], 2),
            "bits_per_byte": round(scored["bits_per_byte"], 4),
            "decode_tokens_per_s": round(_batch_one(model)["decode_tokens_per_s"], 1) if model else None, **extra,
        }

    for arm in s.arms:
        run = f"{arm}-s0"
        if "held_out" in evals.get(run, {}):
            scheme = json.loads((study.run_dir(run) / "final" / "config.json").read_text())["scheme"]
            out.append(row(run, label_of(scheme, layers), run, _tokens_trained(study.run_dir(run))))
    if TEACHER_RUN not in evals:
        return out
    teacher = out[[r["run"] for r in out].index(TEACHER_RUN)]
    if "held_out" in evals.get(ADAPTIVE_RUN, {}):
        out.append(row(ADAPTIVE_RUN, f"{teacher['model']}, adaptive (tol={s.adaptive_tolerance:g})", ADAPTIVE_RUN,
                       teacher["pretraining_tokens"]))
    speculative = bench.get((TEACHER_RUN, True))
    if speculative:
        stats, draft = _batch_one(speculative)["speculative"], speculative["draft"]
        # Compute per generated token: each draft forward runs the draft's plan on one token, each verify forward the
        # full model on the drafted tokens plus one; exact, so the quality is the teacher's own.
        evaluations = (stats["draft_forwards"] * draft["block_evaluations"]
                       + (stats["drafted"] + stats["rounds"]) * teacher["block_evaluations_per_token"]) / stats["emitted"]
        out.append(row(TEACHER_RUN + DRAFT_ROW, f"{teacher['model']}, self-speculative ({draft['label']} draft, "
                       f"k={draft['num_draft_tokens']})", TEACHER_RUN, teacher["pretraining_tokens"],
                       evaluations=evaluations, acceptance_rate=round(stats["acceptance_rate"], 3),
                       tokens_per_verify=round(stats["tokens_per_verify"], 2),
                       identical_tokens=stats["identical_tokens"]))
    for name in s.students:
        if "held_out" in evals.get(name, {}):
            out.append(row(name, arm_label(name, s.preset), name, teacher["pretraining_tokens"],
                           _tokens_trained(study.run_dir(name)), teacher=TEACHER_RUN))
    return out


def _tokens_trained(run_dir: Path) -> int:
    """Tokens a training run has seen, from its log."""
    return max((r["tokens"] for r in read_metrics(run_dir / "metrics.jsonl") if "tokens" in r), default=0)


def missing_rows(study: Study, table: list[dict[str, Any]]) -> list[str]:
    """What the table leaves out, and why."""
    missing = []
    if not study.config.draft:
        missing.append("IIET decoded by self-speculative decoding: left out (--draft null).")
    elif not any(r["run"].endswith(DRAFT_ROW) for r in table):
        missing.append(f"IIET decoded by self-speculative decoding (draft {study.config.draft}): no such model in "
                       "the benchmark's results (was the benchmark cut short?).")
    return missing


def unigram_loss(data_dir: Path, ids) -> float:
    """Cross-entropy (nats/token) of the held-out tokens under the training split's token frequencies (add-one):
    the plateau a language model sits on before it uses any context."""
    train = PackedDataset(data_dir, "train")
    counts = np.ones(train.vocab_size, dtype=np.float64)
    for start in range(0, len(train), UNIGRAM_ROWS):
        rows = torch.stack([train[i] for i in range(start, min(start + UNIGRAM_ROWS, len(train)))])
        counts += np.bincount(rows.flatten().numpy(), minlength=train.vocab_size)
    log_p = np.log(counts / counts.sum())
    targets = np.asarray(ids[1:], dtype=np.int64)
    return float(-log_p[targets].mean())


def _pct(new: float, old: float) -> str:
    return f"{100 * (new / old - 1):+.1f}%"


def reading(table: list[dict[str, Any]], unigram: float, plan: dict[str, Any], context: dict[str, Any]) -> list[str]:
    """Sentences computed from the table (no canned conclusions)."""
    by_run = {r["run"]: r for r in table}
    base, iiet = by_run.get("transformer++-s0"), by_run.get("iiet-r3-s0")
    lines = []
    pretrained = [r for r in table if r["run"].endswith("-s0")]
    if context["budget"] == "tokens" and base and iiet:
        ranked = sorted(pretrained, key=lambda r: r["val_loss"])
        gap = iiet["val_loss"] - base["val_loss"]
        verdict = "beats" if gap < 0 else "does not beat"
        within = abs(gap) < SEED_SPREAD_NATS
        lines.append(
            f"At equal tokens ({base['tokens_seen']:,} each), {ranked[0]['model']} is best of the pretrained models. "
            f"{iiet['model']} {verdict} {base['model']}: held-out perplexity {iiet['val_ppl']:.1f} vs {base['val_ppl']:.1f} "
            f"({_pct(iiet['val_ppl'], base['val_ppl'])}; {gap:+.3f} nats/token; bits per byte "
            f"{iiet['bits_per_byte']:.3f} vs {base['bits_per_byte']:.3f})"
            + (f", a gap inside the seed spread measured at 1.2M tokens ({SEED_SPREAD_NATS} nats): not evidence either "
               "way." if within else ".")
        )
    elif base and iiet:
        lines.append(
            f"At equal training time, {base['model']} saw {base['tokens_seen']:,} tokens and {iiet['model']} "
            f"{iiet['tokens_seen']:,} ({iiet['tokens_seen'] / base['tokens_seen']:.2f}x): held-out perplexity "
            f"{iiet['val_ppl']:.1f} vs {base['val_ppl']:.1f} ({_pct(iiet['val_ppl'], base['val_ppl'])}); "
            f"{iiet['model']} {'beats' if iiet['val_loss'] < base['val_loss'] else 'does not beat'} {base['model']} "
            "in equal time."
        )
    trained = [r for r in table if not r["run"].endswith(DRAFT_ROW)]  # the draft row is the teacher's own quality
    below = [f"{r['model']} {unigram - r['val_loss']:.2f}" for r in trained]
    stuck = [r["model"] for r in trained if unigram - r["val_loss"] < PLATEAU_MARGIN_NATS]
    lines.append(
        f"The unigram plateau (token frequencies only) is {unigram:.3f} nats/token on this held-out text; held-out "
        f"loss below it (nats/token, negative = above): {', '.join(below)}. "
        + (f"Not clear of the plateau (less than {PLATEAU_MARGIN_NATS} nats below it): {', '.join(stuck)}." if stuck
           else f"Every model is more than {PLATEAU_MARGIN_NATS} nats below it: all have left the plateau.")
    )
    if base and base.get("decode_tokens_per_s"):
        speed = base["decode_tokens_per_s"]
        parts = []
        for r in table:
            if r is base or not r.get("decode_tokens_per_s"):
                continue
            parts.append(f"{r['model']} {r['decode_tokens_per_s'] / speed:.2f}x "
                         f"({r['block_evaluations_per_token']:g} block evaluations/token, ppl {r['val_ppl']:.1f})")
        lines.append(f"Decoding one sequence (batch 1), against {base['model']}'s {speed:.0f} tokens/s and "
                     f"{base['block_evaluations_per_token']:g} block evaluations per token: " + "; ".join(parts) + ".")
        comparable = [r for r in table if r is not base and r.get("decode_tokens_per_s")
                      and abs(r["decode_tokens_per_s"] / speed - 1) < EQUAL_COST_TOLERANCE]
        if comparable:
            best = min(comparable, key=lambda r: r["val_loss"])
            gap = best["val_loss"] - base["val_loss"]
            verdict = ("is level with it (inside the seed spread)" if abs(gap) < SEED_SPREAD_NATS
                       else "is better" if gap < 0 else "is worse")
            lines.append(
                f"At about {base['model']}'s decode cost (within {EQUAL_COST_TOLERANCE:.0%} of its tokens/s), "
                f"{best['model']} {verdict}: ppl {best['val_ppl']:.1f} vs {base['val_ppl']:.1f} ({gap:+.3f} "
                f"nats/token), having seen {best['tokens_seen']:,} tokens in all against {base['tokens_seen']:,}."
            )
        else:
            fastest = max((r for r in table if r is not base and r.get("decode_tokens_per_s")),
                          key=lambda r: r["decode_tokens_per_s"], default=None)
            if fastest is not None:
                lines.append(
                    f"No other model decodes within {EQUAL_COST_TOLERANCE:.0%} of {base['model']}'s speed; the fastest, "
                    f"{fastest['model']}, runs at {fastest['decode_tokens_per_s'] / speed:.2f}x with ppl "
                    f"{fastest['val_ppl']:.1f} vs {base['val_ppl']:.1f}."
                )
    speculative = next((r for r in table if r["run"].endswith(DRAFT_ROW)), None)
    if speculative and iiet and iiet.get("decode_tokens_per_s") and speculative.get("decode_tokens_per_s"):
        lines.append(
            f"Self-speculative decoding keeps {iiet['model']}'s output exactly (greedy tokens identical to plain "
            f"decoding in the benchmark: {'yes' if speculative['identical_tokens'] else 'NO'}): its draft's tokens were "
            f"accepted {speculative['acceptance_rate']:.0%} of the time, {speculative['tokens_per_verify']:.2f} tokens "
            f"per verify forward, {speculative['decode_tokens_per_s'] / iiet['decode_tokens_per_s']:.2f}x the plain "
            f"decode speed, at {speculative['block_evaluations_per_token']:g} block evaluations per generated token "
            f"(draft plus verify) against {iiet['block_evaluations_per_token']:g}."
        )
    students = [r for r in table if r.get("teacher")]
    for student in students:
        teacher = by_run.get(student["teacher"])
        if teacher:
            lines.append(
                f"The distilled {student['model']} (plan {student['scheme'].get('iteration_plan')}) keeps "
                f"{student['block_evaluations_per_token']:g} of its teacher's {teacher['block_evaluations_per_token']:g} "
                f"block evaluations per token after {student['distillation_tokens']:,} distillation tokens: ppl "
                f"{student['val_ppl']:.1f} vs the teacher's {teacher['val_ppl']:.1f} "
                f"({_pct(student['val_ppl'], teacher['val_ppl'])})."
            )
    most = max(r["tokens_seen"] for r in table)
    lines.append(
        f"Caveat of the budget: at most {most:,} tokens per model ({most / PAPER_TOKENS:.1e} of the paper's 16B for "
        f"340M), one seed, a {context['parameters'] / 1e6:.1f}M-parameter model, {context['minutes']:g} minutes asked, "
        f"{plan['planned_s'] / 60:.1f} planned and {context['wall_s'] / 60:.1f} taken on a machine with load average "
        f"{context['load_average'][0]:.1f} "
        f"({context['cpus']} CPUs): this shows the method working end to end, not the paper's numbers."
    )
    return lines


def markdown_table(table: list[dict[str, Any]]) -> str:
    header = ("| model | block evals / token | tokens seen | val loss | val ppl | bits / byte | decode tok/s (batch 1) |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
    body = [f"| {r['model']} | {r['block_evaluations_per_token']:g} | {r['tokens_seen']:,} | {r['val_loss']:.3f} | "
            f"{r['val_ppl']:.1f} | {r['bits_per_byte']:.3f} | "
            + (f"{r['decode_tokens_per_s']:.0f}" if r["decode_tokens_per_s"] is not None else "–") + " |"
            for r in table]
    return "\n".join([header, *body])


def figure(study: Study, table: list[dict[str, Any]], unigram: float, path: Path) -> Path:
    """Left: held-out bits per byte against decode tokens/s (down and right is better). Right: validation loss
    against tokens seen, students continuing from their teacher's tokens; the unigram level dotted."""
    plt = pyplot()
    fig, (speed_axis, loss_axis) = plt.subplots(1, 2, figsize=(13, 5))
    for i, r in enumerate(table):
        color = f"C{i}"
        if r["decode_tokens_per_s"]:  # a legend, not labels at the points: IIET's variants sit close together
            speed_axis.scatter(r["decode_tokens_per_s"], r["bits_per_byte"], color=color, s=60, zorder=3,
                               marker=MARKERS[i % len(MARKERS)],
                               label=f"{r['model']} ({r['block_evaluations_per_token']:g} evals/token)")
        metrics = study.run_dir(r["run"]) / "metrics.jsonl"
        if metrics.is_file():
            offset = r["pretraining_tokens"] if r["distillation_tokens"] else 0
            records = read_metrics(metrics)
            # Validation only: the training loss of these short runs swings by a nat from batch to batch (files
            # of code differ), and a student's training loss includes its distillation term.
            val = [(offset + x["tokens"], x["val_loss"]) for x in records if "val_loss" in x and "tokens" in x]
            if val:
                loss_axis.plot(*zip(*val), color=color, marker="o", markersize=3, label=r["model"])
    loss_axis.axhline(unigram, color="gray", linestyle=":", label="unigram plateau")
    speed_axis.set_xlabel("decode tokens/s, batch 1 (faster →)")
    speed_axis.set_ylabel("held-out bits per byte (lower is better)")
    speed_axis.set_title("quality vs decode speed")
    speed_axis.margins(x=0.15, y=0.15)
    speed_axis.legend(fontsize=7, loc="upper left")
    loss_axis.set_xlabel("tokens seen (students: teacher's pretraining + distillation)")
    loss_axis.set_ylabel("held-out loss (nats/token)")
    loss_axis.set_title("validation loss during training")
    loss_axis.legend(fontsize=8)
    for axis in (speed_axis, loss_axis):
        axis.grid(alpha=0.3)
    return save_figure(fig, path)


def write_results(study: Study, plan: dict[str, Any], progress, wall_s: float) -> dict[str, Any]:
    """Write results.json, demo.png and demo.md under the study root; print the table and the reading."""
    s = study.config
    data_dir = study.data_dir
    table = rows(study, plan)
    unigram = unigram_loss(data_dir, held_out_ids(data_dir, s.held_out_tokens))
    parameters = json.loads((study.root / "bench" / "bench.json").read_text())["models"][0]["parameters"] if (
        study.root / "bench" / "bench.json").is_file() else math.nan
    context = {"budget": plan["budget"], "minutes": plan["minutes"],
               "wall_s": wall_s, "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), "parameters": parameters}
    text = reading(table, unigram, plan, context)
    figure_path = figure(study, table, unigram, study.root / "demo.png")
    # The study's own results.json (one record per run: costs, curves, evaluations) gains the demo's table.
    path = study.root / RESULTS_FILE
    results = json.loads(path.read_text()) if path.is_file() else {}
    results |= {
        "columns": list(COLUMNS),
        "rows": table,
        "reading": text,
        "unigram_loss": round(unigram, 4),
        "missing": missing_rows(study, table),
        "held_out": {"tokens": s.held_out_tokens, "source": "first tokens of the held-out documents of the slice"},
        "plan": {"tokens": plan["tokens"], "planned_s": round(plan["planned_s"], 1), "phases": progress.summary()},
        "wall_s": round(wall_s, 1),
        "load_average": context["load_average"],
        "settings": s.to_dict(),
        "figure": figure_path.name,
    }
    path.write_text(json.dumps(results, indent=2, default=str))
    markdown = "\n\n".join(["# iiet demo", markdown_table(table), f"![demo]({figure_path.name})",
                            "\n".join(f"- {line}" for line in text),
                            "\n".join(f"- _{line}_" for line in results["missing"])]) + "\n"
    (study.root / "demo.md").write_text(markdown)
    lines = ["", markdown_table(table), "", *(f"- {line}" for line in text), *(f"- ({line})" for line in results["missing"]),
             "", f"results: {study.root / 'results.json'}, {study.root / 'demo.md'}, figure {figure_path}; "
             f"full study report {study.root / 'results.md'}"]
    return {**results, "text": "\n".join(lines)}
