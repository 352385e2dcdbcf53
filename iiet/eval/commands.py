"""``iiet eval``: evaluate checkpoints on the paper's Table 1 suite and write the table (see docs/evaluation.md)."""

from __future__ import annotations

from iiet.eval.harness import PAPER_TASKS, evaluate, scheme_overrides
from iiet.eval.report import markdown_table
from iiet.outputs import check_writable


def eval_command(
    models: list[str],
    tasks: list[str] = list(PAPER_TASKS),
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    output_dir: str = "eval_results",
    num_iterations: int | None = None,
    iteration_plan: list[int] | None = None,
    adaptive_tolerance: float | None = None,
) -> None:
    """Zero-shot lm-eval evaluation of one or more checkpoints, printed and saved as the paper's Table 1.

    Writes table.md, results.csv and results.json (all of lm-eval's output) into output_dir.

    Args:
        models: Checkpoint directories saved with save_pretrained, one table row each, e.g. [ckpt_a,ckpt_b].
        tasks: Tasks to run, from wikitext, lambada, piqa, hellaswag, sciq, arc_challenge, winogrande (or all).
        data_dir: Local data directory (wikitext-2-raw/test.raw, lambada/test.jsonl, piqa/valid.jsonl +
            piqa/valid-labels.lst, hellaswag/val.jsonl, sciq/test.json, arc-challenge/test.jsonl,
            winogrande/dev.jsonl); without it lm-eval downloads its hub data sets (needs network).
        limit: Score at most this many documents per task (smoke tests; the numbers are then not comparable).
        batch_size: lm-eval batch size.
        device: cpu, cuda, cuda:N or auto (CUDA when available).
        dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.
        output_dir: Directory for table.md, results.csv and results.json.
        num_iterations: IIET checkpoints only: evaluate with this many implicit-Euler corrections in every layer
            instead of the trained number (sets scheme.num_iterations and clears a saved scheme.iteration_plan;
            the checkpoint's other scheme settings are kept).
        iteration_plan: IIET checkpoints only: corrections per layer, one number per layer (sets
            scheme.iteration_plan), e.g. the plan an IIAD distillation chose.
        adaptive_tolerance: IIET checkpoints only: stop correcting a token at a layer once 1 - cos between its
            successive iterates is below this (docs/adaptive.md); 0 runs every correction.
    """
    check_writable(output_dir, "--output_dir")  # before the models load and the tasks run
    overrides = scheme_overrides(num_iterations, iteration_plan, adaptive_tolerance)
    results = evaluate(
        models,
        tasks=tasks,
        data_dir=data_dir,
        limit=limit,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        output_dir=output_dir,
        model_overrides=overrides,
    )
    print(markdown_table(results), end="")
    print(f"wrote {output_dir}/table.md, results.csv, results.json")
