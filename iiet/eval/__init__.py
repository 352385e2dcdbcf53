"""Evaluation on the paper's Table 1 suite through lm-evaluation-harness (§3.3): tasks, harness, reports."""

from iiet.eval.harness import ALL, PAPER_TASKS, evaluate
from iiet.eval.report import markdown_table, write_reports

__all__ = ["ALL", "PAPER_TASKS", "evaluate", "markdown_table", "write_reports"]
