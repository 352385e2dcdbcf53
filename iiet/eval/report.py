"""Reports shaped like the paper's Table 1: one row per model, perplexities and accuracies, and their average.

    Avg. = mean(LMB. acc, PiQA acc_norm, Hella. acc_norm, SciQ acc, ARC-c acc_norm, Wino. acc)

i.e. the average over every column that is an accuracy (the paper's "average over all benchmarks that use
(normalized) accuracy"); perplexities are excluded. Accuracies are shown in percent. Only the columns of tasks that
were run appear, and Avg. is the mean of the accuracy columns shown.

``write_reports`` writes ``table.md`` (this table), ``results.csv`` (the same numbers at full precision) and
``results.json`` (everything lm-eval returned per model, plus the lm-eval version, task versions and sample counts).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iiet.eval.tasks import HUB_TASKS, LOCAL_TASKS, PAPER_TASKS


@dataclass(frozen=True)
class Column:
    header: str
    task: str  # paper task name
    metric: str  # lm-eval metric name
    is_accuracy: bool


COLUMNS: tuple[Column, ...] = (
    Column("Wiki. ppl", "wikitext", "word_perplexity", False),
    Column("LMB. ppl", "lambada", "perplexity", False),
    Column("LMB. acc", "lambada", "acc", True),
    Column("PiQA acc_norm", "piqa", "acc_norm", True),
    Column("Hella. acc_norm", "hellaswag", "acc_norm", True),
    Column("SciQ acc", "sciq", "acc", True),
    Column("ARC-c acc_norm", "arc_challenge", "acc_norm", True),
    Column("Wino. acc", "winogrande", "acc", True),
)
AVERAGE = "Avg."
PERCENT = 100.0


def metric_value(output: Mapping[str, Any], task: str, metric: str) -> float | None:
    """One metric of one paper task from an lm-eval result dict (local ``iiet_*`` or hub task), or None."""
    names = [output.get("iiet", {}).get("tasks", {}).get(task), LOCAL_TASKS[task], HUB_TASKS[task]]
    task_results = output.get("results", {})
    for name in names:
        value = task_results.get(name, {}).get(f"{metric},none")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def table_rows(results: Mapping[str, Mapping[str, Any]]) -> tuple[list[Column], list[dict[str, Any]]]:
    """The columns present in any model's results and one row per model (accuracies in %, Avg. included)."""
    values = {
        name: {column.header: metric_value(output, column.task, column.metric) for column in COLUMNS}
        for name, output in results.items()
    }
    columns = [c for c in COLUMNS if any(v[c.header] is not None for v in values.values())]
    rows = []
    for name, row_values in values.items():
        row: dict[str, Any] = {"Model": name}
        for column in columns:
            value = row_values[column.header]
            row[column.header] = value * PERCENT if value is not None and column.is_accuracy else value
        accuracies = [row[c.header] for c in columns if c.is_accuracy]
        complete = accuracies and all(a is not None for a in accuracies)
        row[AVERAGE] = sum(accuracies) / len(accuracies) if complete else None
        rows.append(row)
    return columns, rows


def _cell(value: float | None, decimals: int) -> str:
    if value is None:
        return "–"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.{decimals}f}"


def markdown_table(results: Mapping[str, Mapping[str, Any]], decimals: int = 1) -> str:
    """The Table 1 layout as Markdown: perplexities (lower is better), accuracies in % (higher is better)."""
    columns, rows = table_rows(results)
    headers = ["Model"] + [c.header for c in columns] + [AVERAGE]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in rows:
        cells = [row["Model"]] + [_cell(row[h], decimals) for h in headers[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    return str(value)


def task_summary(output: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per lm-eval task: its version and how many documents were scored (after ``limit``) out of how many."""
    versions, counts = output.get("versions", {}), output.get("n-samples", {})
    return {task: {"version": versions.get(task), "n_samples": counts.get(task)} for task in output.get("results", {})}


def write_reports(results: Mapping[str, Mapping[str, Any]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``table.md``, ``results.csv`` and ``results.json`` into ``output_dir``; returns their paths."""
    import lm_eval

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": output_dir / "table.md", "csv": output_dir / "results.csv", "json": output_dir / "results.json"}

    paths["markdown"].write_text(markdown_table(results))

    columns, rows = table_rows(results)
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Model"] + [c.header for c in columns] + [AVERAGE])
        writer.writeheader()
        writer.writerows(rows)

    document = {
        "lm_eval_version": lm_eval.__version__,
        "paper_tasks": list(PAPER_TASKS),
        "columns": {c.header: {"task": c.task, "metric": c.metric, "percent": c.is_accuracy} for c in columns},
        "table": rows,
        "tasks": {name: task_summary(output) for name, output in results.items()},
        "models": dict(results),
    }
    paths["json"].write_text(json.dumps(document, indent=2, default=_json_default))
    return paths
