"""Reports shaped like the paper's Table 1: one row per model, perplexities and accuracies, and their average.

    Avg. = mean(LMB. acc, PiQA acc_norm, Hella. acc_norm, SciQ acc, ARC-c acc_norm, Wino. acc)

i.e. the average over every column that is an accuracy (the paper's "average over all benchmarks that use
(normalized) accuracy"); perplexities are excluded. Accuracies are shown in percent. Only the columns of tasks that
were run appear, and Avg. is the mean of the accuracy columns shown. The plain ``lm_eval`` route reports the same
average as the ``paper_acc`` of the ``iiet_table1`` group.

Each cell shows lm-eval's standard error where it has one (``65.2 ± 1.1``); Avg.'s is that of a mean of
independent estimates, ``sqrt(sum se_i^2) / n`` (lm-eval's ``unweighted_mean_stderr``, as in the group). A model
evaluated with ``--limit`` is marked ``†`` and a note under the table says that its numbers are partial.

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
from iiet.outputs import atomic_file, atomic_write


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
STDERR = " stderr"  # suffix of a column's standard-error key in the rows and the CSV
LIMIT = "limit"
LIMIT_MARK = "†"


def metric_value(output: Mapping[str, Any], task: str, metric: str) -> float | None:
    """One metric of one paper task from an lm-eval result dict (local ``iiet_*`` or hub task), or None."""
    names = [output.get("iiet", {}).get("tasks", {}).get(task), LOCAL_TASKS[task], HUB_TASKS[task]]
    task_results = output.get("results", {})
    for name in names:
        value = task_results.get(name, {}).get(f"{metric},none")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def metric_stderr(output: Mapping[str, Any], task: str, metric: str) -> float | None:
    """lm-eval's standard error of one metric of one paper task, or None where it has none ("N/A")."""
    return metric_value(output, task, f"{metric}_stderr")


def table_rows(results: Mapping[str, Mapping[str, Any]]) -> tuple[list[Column], list[dict[str, Any]]]:
    """The columns present in any model's results and one row per model (accuracies in %, Avg. included), each
    value ``X`` with its standard error under ``X stderr`` (None where lm-eval has none) and the run's ``limit``."""
    from lm_eval.api.metrics import unweighted_mean_stderr

    values = {
        name: {column.header: metric_value(output, column.task, column.metric) for column in COLUMNS}
        for name, output in results.items()
    }
    columns = [c for c in COLUMNS if any(v[c.header] is not None for v in values.values())]
    rows = []
    for name, row_values in values.items():
        output = results[name]
        row: dict[str, Any] = {"Model": name}
        for column in columns:
            scale = PERCENT if column.is_accuracy else 1.0
            value, stderr = row_values[column.header], metric_stderr(output, column.task, column.metric)
            row[column.header] = value * scale if value is not None else None
            row[column.header + STDERR] = stderr * scale if stderr is not None else None
        accuracies = [row[c.header] for c in columns if c.is_accuracy]
        stderrs = [row[c.header + STDERR] for c in columns if c.is_accuracy]
        complete = accuracies and all(a is not None for a in accuracies)
        row[AVERAGE] = sum(accuracies) / len(accuracies) if complete else None
        has_stderrs = complete and all(se is not None for se in stderrs)
        row[AVERAGE + STDERR] = float(unweighted_mean_stderr(stderrs)) if has_stderrs else None
        row[LIMIT] = output.get("iiet", {}).get("limit")
        rows.append(row)
    return columns, rows


def _number(value: float, decimals: int) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.{decimals}f}"


def _cell(value: float | None, decimals: int, stderr: float | None = None) -> str:
    if value is None:
        return "–"
    shown = _number(value, decimals)
    return shown if stderr is None else f"{shown} ± {_number(stderr, decimals)}"


def markdown_table(results: Mapping[str, Mapping[str, Any]], decimals: int = 1) -> str:
    """The Table 1 layout as Markdown: perplexities (lower is better), accuracies in % (higher is better), each
    ``± stderr`` where lm-eval has one; rows of ``--limit`` runs marked, with a note below."""
    columns, rows = table_rows(results)
    headers = ["Model"] + [c.header for c in columns] + [AVERAGE]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    limits = sorted({row[LIMIT] for row in rows if row[LIMIT] is not None})
    for row in rows:
        name = f"{row['Model']} {LIMIT_MARK}" if row[LIMIT] is not None else row["Model"]
        cells = [name] + [_cell(row[h], decimals, row[h + STDERR]) for h in headers[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    if limits:
        shown = ", ".join(str(limit) for limit in limits)
        lines += ["", f"{LIMIT_MARK} partial: --limit {shown} scored at most that many documents per task (a fraction "
                  "if < 1); these numbers are not comparable with full-task results or the paper."]
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
    paths = {"markdown": output_dir / "table.md", "csv": output_dir / "results.csv", "json": output_dir / "results.json"}

    atomic_write(paths["markdown"], markdown_table(results))

    columns, rows = table_rows(results)
    with atomic_file(paths["csv"]) as tmp, tmp.open("w", newline="") as f:
        values = [c.header for c in columns] + [AVERAGE]
        writer = csv.DictWriter(f, fieldnames=["Model", *values, *(v + STDERR for v in values), LIMIT])
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
    atomic_write(paths["json"], json.dumps(document, indent=2, default=_json_default))
    return paths
