"""Compute accounting of a study: what every run cost to train, the compute-matched budgets, ``results.json`` and
the figure of validation loss against training FLOPs.

A multi-pass model (IIET r=3: 13 block evaluations per token at ``cpu-small`` with the first layer explicit, against
Transformer++'s 4) costs more per token, so "better at equal tokens" is not "better at equal compute". Two
Transformer++ arms answer the second question (``StudyConfig.compute_matched``):

* *training-FLOPs matched*: the same Transformer++ trained on more tokens, ``tokens x F_ref / F_euler`` with ``F`` the
  training FLOPs per token (``iiet.models.costs.training_flops_per_token``, the LM head included);
* *inference-FLOPs matched*: a deeper Transformer++ whose forward FLOPs per token are closest to the reference's,
  trained on the same tokens (so its training FLOPs match too; it has more parameters).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from iiet.models.configuration_iiet import IIETConfig
from iiet.models.costs import flops_per_token, parameter_count, training_flops_per_token
from iiet.models.names import resolve
from iiet.models.presets import build_config
from iiet.plotting import pyplot, save_figure
from iiet.study.study import data_identity
from iiet.train.metrics import read_metrics
from iiet.train.trainer import CONFIG_FILE, FINAL_DIR, build_model_config

RESULTS_FILE = "results.json"


def matched_tokens(reference, config, tokens: int, seq_len: int) -> int:
    """Tokens for ``config`` to spend the training FLOPs that ``reference`` spends on ``tokens`` tokens."""
    ratio = training_flops_per_token(reference, seq_len) / training_flops_per_token(config, seq_len)
    return int(round(tokens * ratio))


def matched_depth(reference, preset: str, seq_len: int, vocab_size: int) -> int:
    """Layers of a Transformer++ of ``preset``'s width whose forward FLOPs per token are closest to ``reference``'s."""
    target = flops_per_token(reference, seq_len)

    def distance(layers: int) -> float:
        config = build_config(preset, resolve("transformer++", layers).scheme, vocab_size=vocab_size,
                              num_hidden_layers=layers)
        return abs(flops_per_token(config, seq_len) - target)

    return min(range(1, 8 * reference.num_hidden_layers + 1), key=distance)


def _train_settings(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / CONFIG_FILE).read_text())


def run_model_config(run_dir: Path, meta: dict[str, Any]):
    """The model config of a run: its export if finished, else rebuilt from its ``train_config.yaml``."""
    final = run_dir / FINAL_DIR / "config.json"
    if final.is_file():
        return IIETConfig.from_pretrained(final.parent)
    model = _train_settings(run_dir)["model"]
    return build_model_config(model["preset"], model["scheme"], meta["vocab_size"], dict(model["overrides"]), meta)


def run_record(run_dir: Path, meta: dict[str, Any], seq_len: int) -> dict[str, Any] | None:
    """Tokens, training FLOPs, block evaluations and the validation curve of one run (``None`` before any log)."""
    if not (run_dir / "metrics.jsonl").is_file() or not (run_dir / CONFIG_FILE).is_file():
        return None
    config = run_model_config(run_dir, meta)
    per_token = training_flops_per_token(config, seq_len)
    records = read_metrics(run_dir)
    curve = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r and "tokens" in r]
    tokens = max((r.get("tokens", 0) for r in records), default=0)
    return {
        "run": run_dir.name,
        # A distilled student's cost includes its teacher's pretraining and forwards: not on the compute axis.
        "distilled": "distill" in _train_settings(run_dir),
        "finished": (run_dir / FINAL_DIR / "config.json").is_file(),
        "parameters": parameter_count(config),
        "block_evaluations": config.num_block_evaluations,
        "num_hidden_layers": config.num_hidden_layers,
        "scheme": config.scheme,
        "training_flops_per_token": per_token,
        "inference_flops_per_token": flops_per_token(config, seq_len),
        "tokens": tokens,
        "planned_tokens": _planned_tokens(run_dir),
        "training_flops": per_token * tokens,
        "train_seconds": max((r.get("elapsed_s", 0.0) for r in records), default=0.0),
        "val_loss": curve[-1][1] if curve else None,
        "val_perplexity": math.exp(curve[-1][1]) if curve else None,
        "val_curve": [{"tokens": t, "training_flops": per_token * t, "val_loss": v} for t, v in curve],
    }


def _planned_tokens(run_dir: Path) -> int | None:
    optim = _train_settings(run_dir).get("optim", {})
    steps, batch = optim.get("max_steps"), optim.get("batch_tokens")
    return steps * batch if steps and batch else None


def runs_table(rows: list[dict[str, Any]]) -> str:
    """One line per run: what it is, what it cost and where it ended (the report's list of runs and seeds)."""
    lines = ["| run | parameters | block evals / token | tokens (planned) | training FLOPs | final val loss | "
             "training time |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        planned = f" ({row['planned_tokens']:,})" if row.get("planned_tokens") else ""
        notes = [note for note, present in (("distilled: its teacher's compute not counted", row["distilled"]),
                                            ("not finished", not row["finished"]),
                                            (f"from {row.get('merged_from')}", row.get("merged_from"))) if present]
        loss = f"{row['val_loss']:.3f}" if row["val_loss"] is not None else "–"
        lines.append(f"| {row['label']}{''.join(f', {n}' for n in notes)} | {row['parameters'] / 1e6:.2f}M | "
                     f"{row['block_evaluations']} | {row['tokens']:,}{planned} | {row['training_flops']:.2e} | {loss} | "
                     f"{_duration(row.get('train_seconds', 0.0))} |")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def write_results(root: Path, data_dir: Path, seq_len: int, evaluations: dict[str, Any], labels: dict[str, str],
                  merged: list[dict[str, Any]] = (), settings: dict[str, Any] | None = None):
    """``results.json``: one row per run (costs, curve, every evaluation the study recorded), the ``merged`` rows of
    other studies in place of runs of the same name, the study's training ``settings``; and the figure."""
    meta = json.loads((data_dir / "meta.json").read_text())
    replaced = {row["run"] for row in merged}
    rows = []
    for run_dir in sorted(p for p in (root / "runs").glob("*") if p.is_dir() and p.name not in replaced):
        record = run_record(run_dir, meta, seq_len)
        if record is None:
            continue
        record["label"] = labels.get(run_dir.name, run_dir.name)
        record["evaluation"] = evaluations.get(run_dir.name)
        rows.append(record)
    rows = sorted(rows + list(merged), key=lambda row: row["run"])
    results = {"seq_len": seq_len, "settings": settings, "data": data_identity(meta), "runs": rows}
    (root / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    figure = plot_loss_vs_compute(rows, root / "figures" / "loss_vs_training_flops.png") if rows else None
    return rows, figure


def _flops_minor_label(value: float, _position: int) -> str:
    exponent = math.floor(math.log10(value))
    mantissa = round(value / 10 ** exponent)
    return rf"${mantissa}\times10^{{{exponent}}}$" if mantissa in (2, 5) else ""


def plot_loss_vs_compute(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation loss against training FLOPs (left, the equal-compute view) and against tokens (right); distilled
    students are left out (their compute is their teacher's plus their own)."""
    rows = [row for row in rows if row["val_curve"] and not row["distilled"]]
    if not rows:
        return None
    plt = pyplot()
    figure, (by_flops, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
    for i, row in enumerate(rows):
        style = dict(color=colours(i), marker="o", markersize=3, label=f"{row['label']} ({row['block_evaluations']} evals)")
        curve = row["val_curve"]
        by_flops.plot([p["training_flops"] for p in curve], [p["val_loss"] for p in curve], **style)
        by_tokens.plot([p["tokens"] for p in curve], [p["val_loss"] for p in curve], **style)
    by_flops.set_xscale("log")
    # label the minor ticks 2x and 5x only: over one or two decades matplotlib labels every one, and they overlap
    by_flops.xaxis.set_minor_formatter(_flops_minor_label)
    by_flops.set_xlabel("training FLOPs (forward + backward matmuls)")
    by_flops.set_ylabel("validation loss (nats/token)")
    by_flops.set_title("at equal compute")
    by_tokens.set_xlabel("training tokens")
    by_tokens.set_title("at equal tokens")
    for axis in (by_flops, by_tokens):
        axis.grid(alpha=0.3)
    by_tokens.legend(fontsize=7, loc="upper right")
    return save_figure(figure, path)
