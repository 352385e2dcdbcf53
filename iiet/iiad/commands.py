"""``iiet influence``, ``iiet plan`` and ``iiet distill``: the IIAD workflow on the command line (docs/iiad.md).

    iiet influence --model runs/iiet/final --data data/wikitext --output_dir runs/influence
    iiet plan --influence runs/influence/influence.json --rule e-iiet --output runs/influence/plan.json
    iiet distill --distill.teacher runs/iiet/final --distill.plan runs/influence/plan.json --data.path data/enwiki \\
        --optim.max_tokens 5000000000 --run.output_dir runs/e-iiet
"""

from __future__ import annotations

from typing import Any, Literal

from iiet.iiad.distill import DistillConfig, DistillTrainConfig
from iiet.iiad.distill import distill as run_distillation
from iiet.iiad.influence import Influence
from iiet.iiad.measure import measure_influence
from iiet.iiad.plan import make_plan
from iiet.train.config import DataConfig, OptimConfig, RunConfig
from iiet.outputs import check_writable
from iiet.train.parallel import is_main_process

DISTILL_LR = 2e-4  # Appendix B.2: cosine decay from 2e-4


def influence(**options) -> dict[str, str]:
    """Measure block influence (Eq. 12) and iteration influence (§4.1) of a model over random text segments.

    Writes influence.json, iteration_influence.png (Figures 5/6) and block_influence.png (Figure 4) into
    output_dir (``iiet.iiad.measure.measure_influence``), and prints the values.
    """
    result, files = measure_influence(**options)
    print(f"{result.data['num_segments']} segments, {result.data['num_tokens']:,} tokens")
    print("block influence:     " + " ".join(f"{v:.3f}" for v in result.block))
    for label, row in zip(result.row_labels(), _rows(result.iteration)):
        print(f"{label:<20} " + " ".join("  -  " if v is None else f"{v:.3f}" for v in row))
    for name, path in files.items():
        print(f"{name}: {path}")
    return {name: str(path) for name, path in files.items()}


def _rows(iteration: list[list[float]]) -> list[list[float | None]]:
    depth = max(len(row) for row in iteration)
    return [[row[i] if i < len(row) else None for row in iteration] for i in range(depth)]


def plan(
    influence: str,
    rule: Literal["e-iiet", "lower-bound", "threshold", "budget"] = "e-iiet",
    threshold: float | None = None,
    budget_evaluations: int | None = None,
    budget_flops_fraction: float | None = None,
    keep: Literal["count", "leading", "through-last"] = "count",
    context: int = 2048,
    output: str = "plan.json",
) -> dict[str, Any]:
    """Turn measured iteration influence into an iteration plan (corrections per layer) for an efficient IIET.

    Prints corrections, block evaluations and FLOPs per token before -> after, and writes the plan with the scheme
    to give the student (docs/iiad.md explains the rules).

    Args:
        influence: influence.json written by iiet influence.
        rule: e-iiet (the paper: threshold = smallest initial-compute influence), lower-bound (no corrections),
            threshold (give --threshold) or budget (give --budget_evaluations or --budget_flops_fraction).
        threshold: Influence a correction must reach to count as influential (rule threshold).
        budget_evaluations: At most this many block evaluations per token in total, initial computations included
            (rule budget).
        budget_flops_fraction: At most this fraction of the measured model's forward FLOPs per token (rule budget).
        keep: How influential corrections become a per-layer count (e-iiet, threshold): count = as many as are
            influential, leading = those before the first non-influential one, through-last = up to the last
            influential one.
        context: Keys attended per token when counting attention FLOPs.
        output: The plan file to write.
    """
    check_writable(output, "--output", kind="file")
    result = make_plan(Influence.load(influence), rule, threshold, budget_evaluations, budget_flops_fraction, keep,
                       context, influence_file=influence)
    path = result.save(output)
    print(result.summary())
    print(f"student scheme: {result.scheme}")
    print(f"plan: {path}")
    return {"iteration_plan": result.iteration_plan, "scheme": result.scheme, "output": str(path)}


def distill(
    distill: DistillConfig = DistillConfig(),
    data: DataConfig = DataConfig(),
    optim: OptimConfig = OptimConfig(lr=DISTILL_LR),
    run: RunConfig = RunConfig(output_dir="runs/distill"),
) -> dict[str, Any]:
    """Iteration Influence-Aware Distillation: continue pretraining an efficient student against its full teacher.

    The student is the teacher's weights under a cheaper scheme (the plan's E-IIET / Lower Bound, or e.g.
    --distill.student_scheme euler for Distil PCformer); the loss is CE + alpha * MSE(block outputs) +
    beta * KL(logits / tau) (Eq. 13-15). Training options, checkpoints, resume and DDP/FSDP2 are those of iiet train;
    the student is exported to <run.output_dir>/final.

    Args:
        distill: teacher, student (plan or scheme) and the loss weights.
        data: Prepared training data (as in iiet train); the paper uses a third of the pretraining tokens.
        optim: Optimizer and run length (the paper: cosine decay from 2e-4, otherwise as pretraining).
        run: Output directory, resume, parallelism, precision, logging/eval/checkpoint cadence.
    """
    summary = run_distillation(DistillTrainConfig(distill=distill, data=data, optim=optim, run=run))
    if is_main_process():  # under torchrun only rank 0 reports
        shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in summary.items()}
        print("  ".join(f"{k}={v}" for k, v in shown.items()))
    return summary
