"""``results.md`` of a study: tables shaped like the paper's Tables 1, 3 and 5, figures, seeds, tokens, wall time."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy

from iiet.eval.report import markdown_table
from iiet.plotting import pyplot, save_figure
from iiet.study.compute import runs_table, write_results
from iiet.study.study import (COMPUTE_MATCHED, COMPUTE_REFERENCE, MULTI_SEED_ARMS, PCFORMER_E_IIET,
                              PCFORMER_TEACHERS, Study, arm_label, machine, mean_spread,
                              training_settings)
from iiet.train.metrics import has_loss_records, read_metrics
from iiet.train.plots import plot_loss_curves

R_SWEEP = ("dlcl", "iiet-r1", "iiet-r2", "iiet-r3")  # r = 0 .. 3 (Table 5, Figure 2)
IIAD_ROWS = ("distil-pcformer", PCFORMER_E_IIET, "lower-bound", "e-iiet")
IIAD_TEACHERS = ("iiet-r3",) + PCFORMER_TEACHERS


def _label(arm: str) -> str:
    return arm_label(arm)


def _arm_of(run: str) -> str:
    return run.rsplit("-s", 1)[0] if run.rsplit("-s", 1)[-1].isdigit() else run


def _evaluations_of(study: Study, arm: str) -> list[tuple[str, dict]]:
    """(run, evaluation) of every evaluated run of ``arm`` (its seeds), this study's and the merged ones."""
    evaluations = study.evaluations
    return [(k, evaluations[k]) for k in sorted(evaluations) if k == arm or k.rsplit("-s", 1)[0] == arm]


def _fmt(values: list[float], decimals: int = 3) -> str:
    if not values:
        return "–"
    mean, spread = mean_spread(values)
    return f"{mean:.{decimals}f}" + (f" ± {spread / 2:.{decimals}f} (n={len(values)})" if len(values) > 1 else "")


def _perplexity_table(study: Study, arms: tuple[str, ...] | list[str]) -> str:
    texts = list(study.config.eval_texts)
    headers = ["Model", "val ppl (in-domain)"] + [f"{Path(t).parent.name}/{Path(t).name} ppl / bpb" for t in texts]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for arm in arms:
        runs = [entry for _, entry in _evaluations_of(study, arm)]
        if not runs:
            continue
        cells = [_label(arm), _fmt([r["val"]["perplexity"] for r in runs if r.get("val")], 2)]
        for text in texts:
            ppl = [r["texts"][text]["token_perplexity"] for r in runs if text in r.get("texts", {})]
            bpb = [r["texts"][text]["bits_per_byte"] for r in runs if text in r.get("texts", {})]
            cells.append(f"{_fmt(ppl, 2)} / {_fmt(bpb, 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _zero_shot_table(study: Study, arms) -> str:
    results = {}
    for arm in arms:
        for key, entry in _evaluations_of(study, arm):
            zero_shot = entry.get("zero_shot")
            if zero_shot:
                results[f"{_label(arm)} ({key.rsplit('-', 1)[-1]})" if arm in MULTI_SEED_ARMS else
                        _label(arm)] = {"results": zero_shot}
    return markdown_table(results) if results else "_zero-shot suite not run (no eval_data_dir)_\n"


def _bench_table(study: Study) -> str:
    path = study.root / "bench" / "bench.md"
    return path.read_text() + "\n" if path.is_file() else "_benchmark not run_\n"


def _figure_r_sweep(study: Study, path: Path) -> Path | None:
    points = []
    for r, arm in enumerate(R_SWEEP):
        runs = [entry for _, entry in _evaluations_of(study, arm)]
        values = [x["val"]["perplexity"] for x in runs if x.get("val")]
        if values:
            points.append((r, statistics.mean(values), values))
    if not points:
        return None
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="IIET (r = 0 is DLCL)")
    for r, _, values in points:
        ax.scatter([r] * len(values), values, color="tab:blue", alpha=0.4, s=12)
    for arm, style in (("transformer++", "--"), ("pcformer", ":"), ("pcformer-fl", "-.")):
        runs = [entry for _, entry in _evaluations_of(study, arm)]
        values = [x["val"]["perplexity"] for x in runs if x.get("val")]
        if values:
            ax.axhline(statistics.mean(values), linestyle=style, color="gray", label=_label(arm))
    ax.set_xlabel("iterations r")
    ax.set_ylabel("held-out perplexity")
    ax.set_xticks(range(len(R_SWEEP)))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _corpora_table(study: Study, arms) -> str:
    """Bits per byte on the held-out corpora: pooled, and median [q1, q3] over documents."""
    corpora = list(study.config.eval_corpora)
    if not corpora:
        return "_no held-out corpora (eval_corpora)_\n"
    headers = ["Model"] + [f"{Path(corpus).name or corpus}: bpb (median [q1, q3] over documents)" for corpus in corpora]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * len(corpora)) + "|"]
    for arm in arms:
        runs = [entry for _, entry in _evaluations_of(study, arm)]
        cells = [_label(arm)]
        for corpus in corpora:
            scores = [r["corpora"][corpus] for r in runs if corpus in r.get("corpora", {})]
            cells.append(f"{_fmt([x['bits_per_byte'] for x in scores])} ({_fmt([x['median'] for x in scores])} "
                         f"[{_fmt([x['q1'] for x in scores])}, {_fmt([x['q3'] for x in scores])}], "
                         f"{scores[0]['documents'] if scores else 0} docs)" if scores else "–")
        if any(cell != "–" for cell in cells[1:]):
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finished(rows: list[dict], arm: str) -> list[dict]:
    """The finished runs of ``arm`` that have a validation curve."""
    return [row for row in rows if _arm_of(row["run"]) == arm and row["finished"] and row["val_curve"]]


def curve_gaps(reference: list[dict], other: list[dict], axis: str) -> list[float]:
    """``other``'s validation loss minus ``reference``'s at each evaluation of ``reference`` that ``other``'s curve
    spans on ``axis`` (``tokens`` or ``training_flops``), ``other`` interpolated linearly in log ``axis``."""
    xs = [math.log(point[axis]) for point in other if point[axis] > 0]
    ys = [point["val_loss"] for point in other if point[axis] > 0]
    if len(xs) < 2:
        return []
    return [float(numpy.interp(math.log(point[axis]), xs, ys)) - point["val_loss"]
            for point in reference if point[axis] > 0 and xs[0] <= math.log(point[axis]) <= xs[-1]]


AXES = {"tokens": "tokens", "training_flops": "training FLOPs"}  # the x axes of the validation curves, as written


def compute_verdict(rows: list[dict]) -> str:
    """The equal-compute reading, generated from the finished runs' final validation losses, with the range of the
    gap along the way (every evaluation of the reference that the other arm's curve spans, every pair of seeds)."""
    reference = [row["val_loss"] for row in _finished(rows, COMPUTE_REFERENCE)]
    if not reference:
        return f"_{_label(COMPUTE_REFERENCE)} has not finished: no equal-compute verdict yet._"
    ref = statistics.mean(reference)
    sentences = []
    for arm, what, axis in (("transformer++", "at equal tokens", "tokens"),
                            ("transformer++-flops", "at equal training FLOPs", "training_flops"),
                            ("transformer++-deep", "at equal inference FLOPs per token (and equal training FLOPs)",
                             "tokens")):
        losses = [row["val_loss"] for row in _finished(rows, arm)]
        if not losses:
            continue
        other = statistics.mean(losses)
        better = "beats" if ref < other else "loses to"
        gaps = [gap for ours in _finished(rows, COMPUTE_REFERENCE) for theirs in _finished(rows, arm)
                for gap in curve_gaps(ours["val_curve"], theirs["val_curve"], axis)]
        along = (f" (along the way, at equal {AXES[axis]}: {_label(arm)} minus {_label(COMPUTE_REFERENCE)} "
                 f"from {min(gaps):+.3f} to {max(gaps):+.3f} over {len(gaps)} evaluations)") if gaps else ""
        sentences.append(f"{what}, {_label(COMPUTE_REFERENCE)} ({ref:.3f}, n={len(reference)}) {better} "
                         f"{_label(arm)} ({other:.3f}, n={len(losses)}) by {abs(other - ref):.3f} nats/token{along}")
    return ("Final validation loss: " + "; ".join(sentences) + ".") if sentences else "_no comparison arm finished yet._"


def write_report(study: Study) -> Path:
    figures = study.root / "figures"
    figures.mkdir(exist_ok=True)
    s, state = study.config, study.state
    # The runs that have logged a step (one started a moment ago has an empty metrics.jsonl: a report of a study in
    # progress leaves it out)
    runs = sorted(p for p in (study.root / "runs").glob("*") if (p / "metrics.jsonl").is_file()
                  and has_loss_records(read_metrics(p)))
    if runs:
        plot_loss_curves([str(p) for p in runs], output=str(figures / "loss_curves.png"))
    r_sweep = _figure_r_sweep(study, figures / "ppl_vs_r.png")
    for name in ("iteration_influence.png", "block_influence.png"):
        source = study.root / "iiad" / "influence" / name
        if source.is_file():
            shutil.copy2(source, figures / name)
    plans = {}
    for name in ("e-iiet", "lower-bound", PCFORMER_E_IIET):
        plan_file = study.root / "iiad" / f"plan-{name}.json"
        if plan_file.is_file():
            plans[name] = json.loads(plan_file.read_text())

    tier = s.tier
    lines = [
        "# Reproduction study" + (" — pipeline tier (smoke run, not evidence)" if tier == "pipeline" else ""),
        "",
        f"Command: `{state.get('command') or 'run_study(StudyConfig(...)): see settings in study.json'}`",
        "",
        f"Machine: {json.dumps(machine())}",
        "",
        f"Preset **{s.preset}**, {s.train_tokens:,} pretraining tokens per model"
        + (f" ({', '.join(f'{_label(a)} {n:,}' for a, n in s.arm_tokens.items())})" if s.arm_tokens else "")
        + f" (sequence length {s.seq_len}, "
        f"{s.batch_tokens:,} tokens per step, lr {s.lr}), history reading `{s.history}`"
        + (f", model overrides `{s.model_overrides}`" if s.model_overrides else "")
        + (", IIET arms with an explicit first layer (plan `[0, r, ..., r]`; an arm named by its plan keeps it)"
           if s.explicit_first_layer else "")
        + "; seeds: "
        f"{s.seeds} for {', '.join(_label(a) for a in MULTI_SEED_ARMS)}, 1 for the others. Distillation: "
        f"{s.distill_fraction:.2f} x the pretraining tokens. Values with ± are mean ± half the spread over seeds.",
        "",
        "Wall time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in state.get("wall_s", {}).items()),
        "",
    ]
    sources = {}
    for name, row in sorted(study.merged.items()):
        sources.setdefault(row["merged_from"], []).append(name)
    lines += [f"Merged from `{path}` (trained and evaluated by another study with the same training settings; "
              f"their curves are in the compute figure, not in the loss-curve figure): {', '.join(names)}.\n"
              for path, names in sources.items()]
    lines += [
        "## Pretraining: perplexity (Figure 2 / Table 1 columns)",
        "",
        _perplexity_table(study, list(s.arms) + (list(COMPUTE_MATCHED) if s.compute_matched else [])),
        "## Pretraining: zero-shot suite (Table 1 shape)" + (f", {s.eval_limit} documents per task" if s.eval_limit else ""),
        "",
        _zero_shot_table(study, list(s.arms)),
        "## Iterations r (Table 5 / Figure 2 shape)",
        "",
        _perplexity_table(study, ("transformer++",) + PCFORMER_TEACHERS + R_SWEEP),
    ]
    if r_sweep:
        lines += ["![perplexity vs r](figures/ppl_vs_r.png)", ""]
    lines += ["## IIAD: plans and distillation (Table 1, lower half)", ""]
    if not s.iiad:
        lines += ["_IIAD not run (`--iiad false`)_", ""]
    for name, plan in plans.items():
        evals = plan.get("block_evaluations", {})
        teacher = (plan.get("model") or {}).get("path")
        same = state.get("same_student", {}).get(name)
        lines.append(f"- {_label(name)}: plan `{plan['iteration_plan']}`, block evaluations per token "
                     f"{evals.get('before', '?')} -> {evals.get('after', '?')}"
                     + (f", measured on `{Path(teacher).parent.name}`" if teacher else "")
                     + (f"; the same plan as {_label(same)}: one student, distilled once (its rows repeat "
                        f"{_label(same)}'s)" if same else ""))
    lines += ["", _perplexity_table(study, IIAD_TEACHERS + IIAD_ROWS), _zero_shot_table(study, IIAD_TEACHERS + IIAD_ROWS)]
    if (figures / "iteration_influence.png").is_file():
        lines += ["![iteration influence](figures/iteration_influence.png)", ""]
    if (figures / "block_influence.png").is_file():
        lines += ["![block influence](figures/block_influence.png)", ""]
    labels = {run.name: _label(_arm_of(run.name)) + (f" (seed {run.name.rsplit('-s', 1)[1]})" if _arm_of(run.name) != run.name else "")
              for run in runs}
    rows, compute_figure = write_results(study.root, study.data_dir, s.seq_len, study.evaluations, labels,
                                         merged=list(study.merged.values()), settings=training_settings(s))
    lines += ["## Equal compute: validation loss against training FLOPs", "",
              "Training FLOPs are forward + backward matmul FLOPs (`iiet.models.costs.training_flops_per_token`), "
              "per run in `results.json` (tokens, training FLOPs, block evaluations, parameters, losses).", "",
              compute_verdict(rows), "", runs_table(rows)]
    if compute_figure:
        lines += ["![validation loss against training FLOPs](figures/loss_vs_training_flops.png)", ""]
    lines += ["## Held-out corpora (other domains), per document", "",
              _corpora_table(study, list(s.arms) + list(COMPUTE_MATCHED) + list(IIAD_ROWS))]
    lines += ["## Inference (Table 3 shape)", "", _bench_table(study), "## Loss curves", "",
              "![loss curves](figures/loss_curves.png)" if runs else "_no runs_", ""]
    path = study.root / "results.md"
    path.write_text("\n".join(lines))
    return path

