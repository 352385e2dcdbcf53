"""Adaptive corrections vs fixed iteration plans: quality and speed against compute (docs/adaptive.md).

For a trained IIET checkpoint and a held-out split of prepared data, measures for a sweep of ``adaptive_tolerance``:

* perplexity, teacher-forced through the same adaptive path that decoding uses (a token's corrections depend only on
  its own iterates and on earlier tokens' cache slots, so the full forward takes exactly the decisions decoding
  takes: tests/test_adaptive.py);
* the corrections actually taken (average per token per layer) and the block evaluations per token;
* greedy decode tokens/s at batch size 1 (where a converged token really skips its remaining block evaluations);
* for batched decoding (``--batch_size`` rows decoded together): the block evaluations per token that masking runs
  (a batch stops a layer's corrections only when all its rows have converged) against the evaluations the rows
  need on their own, i.e. the most that compacting the active rows could save, and the measured batched decode
  tokens/s;

and the same for fixed plans: the full model, the Lower Bound (no corrections) and any plans given (``iiet plan``
outputs: E-IIET, budget plans at the compute adaptive stopping reaches), all without distillation, so the
comparison asks whether stopping per token reaches a fixed plan's quality at equal compute without any training.

    python benchmarks/adaptive_study.py --model runs/demo/iiet/final --data runs/demo/data --output_dir docs/img \
        --plan plan-e-iiet.json plan-budget-7.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import iiet  # noqa: F401
from iiet.data import PackedDataset
from iiet.plotting import pyplot, save_figure

TOLERANCES = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


@torch.no_grad()
def perplexity(model, batches, tolerance=None) -> tuple[float, float, float]:
    """Token perplexity, average corrections per token per layer, and the corrections per layer a masked batch runs.

    The last two are ``nan`` without adaptive stopping. A token's decisions are the same teacher-forced as in
    decoding (tests/test_adaptive.py), so position ``t`` of the rows of a batch stands for one batched decode step:
    masking runs ``max`` over the rows of each layer's corrections, compaction would run their mean.
    """
    nll, count, used, masked = 0.0, 0, [], []
    for ids in batches:
        out = model(ids, labels=ids, use_cache=False, adaptive_tolerance=tolerance)
        n = ids[:, 1:].numel()
        nll += out.loss.item() * n
        count += n
        if out.corrections is not None:  # (L, B, T)
            used.append(out.corrections.float().mean().item())
            masked.append(out.corrections.amax(dim=1).float().mean().item())
    if not used:
        return math.exp(nll / count), float("nan"), float("nan")
    return math.exp(nll / count), statistics.mean(used), statistics.mean(masked)


@torch.no_grad()
def decode_speed(model, prompt, new_tokens: int, repeats: int, tolerance=None, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats + 1):  # first run is warm-up
        start = clock()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       adaptive_tolerance=tolerance, pad_token_id=0)
        times.append(clock() - start)
    return new_tokens / statistics.median(times[1:])


def load(path: str, scheme_update: dict | None = None):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    if scheme_update:
        scheme = {**model.config.scheme, **scheme_update}
        model = AutoModelForCausalLM.from_pretrained(path, scheme=scheme).eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained IIET checkpoint directory")
    parser.add_argument("--data", required=True, help="a prepared data directory (iiet data-prepare); uses its val split")
    parser.add_argument("--plan", nargs="*", default=[],
                        help="iteration-plan JSONs from `iiet plan` (E-IIET, budget plans, ...), each a fixed point")
    parser.add_argument("--num_sequences", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerances", type=float, nargs="+", default=TOLERANCES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 gives steadier timings)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time decoding by wall clock, or by this process's CPU time (with --threads 1: steady "
                             "on a machine shared with other jobs)")
    parser.add_argument("--output_dir", default="bench_results/adaptive")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)

    data = PackedDataset(args.data, split="val")
    n = min(args.num_sequences, len(data))
    rows = torch.stack([data[i] for i in range(n)])
    batches = list(rows.split(args.batch_size))
    prompt = rows[:1, :16]
    batch_prompt = rows[: args.batch_size, :16]

    full = load(args.model)
    L = full.config.num_hidden_layers
    r_max = max(full.config.scheme_config.corrections(L))
    results = []

    def record(label, model, tolerance=None):
        ppl, corrections, masked = perplexity(model, batches, tolerance)
        if tolerance is None:
            corrections = masked = sum(model.config.scheme_config.corrections(L)) / L
        speed = decode_speed(model, prompt, args.new_tokens, args.repeats, tolerance, clock)
        batch_speed = decode_speed(model, batch_prompt, args.new_tokens, args.repeats, tolerance, clock) * len(batch_prompt)
        row = {"variant": label, "tolerance": tolerance, "perplexity": ppl, "corrections_per_layer": corrections,
               "block_evaluations": L * (1 + corrections), "decode_tokens_per_s": speed,
               "masked_batch_block_evaluations": L * (1 + masked), "batch_decode_tokens_per_s": batch_speed}
        results.append(row)
        print(f"{label:<22} ppl {ppl:9.3f}  evals/token {row['block_evaluations']:6.2f} (masked batch "
              f"{row['masked_batch_block_evaluations']:6.2f})  decode {speed:7.1f} tok/s, "
              f"batch {batch_speed:7.1f} tok/s", flush=True)

    record(f"IIET r={r_max} (full)", full)
    record("Lower Bound (no distil.)", load(args.model, {"iteration_plan": [0] * L}))
    for plan_file in args.plan:
        plan = json.loads(Path(plan_file).read_text())
        plan_list = plan.get("iteration_plan") or plan["scheme"]["iteration_plan"]
        rule = {"e-iiet": "E-IIET", "lower-bound": "Lower Bound", "budget": "budget"}.get(plan.get("rule"), "plan")
        record(f"{rule} {plan_list} (no distil.)", load(args.model, {"iteration_plan": plan_list}))
    for tol in args.tolerances:
        record(f"adaptive tol={tol:g}", full, tol)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot(results, out / "adaptive-study.png")
    B = len(batch_prompt)
    lines = [f"| variant | block evals / token | corrections / layer | perplexity | decode tok/s (batch 1) | "
             f"block evals / token, masked batch of {B} | decode tok/s (batch {B}) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['block_evaluations']:.2f} | {r['corrections_per_layer']:.2f} | "
                     f"{r['perplexity']:.3f} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['masked_batch_block_evaluations']:.2f} | {r['batch_decode_tokens_per_s']:.1f} |")
    table = "\n".join(lines)
    (out / "adaptive-study.md").write_text(table + "\n")
    print("\n" + table)
    (out / "adaptive-study.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


def _plot(results, path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    adaptive = [r for r in results if r["tolerance"] is not None]
    fixed = [r for r in results if r["tolerance"] is None]
    for ax, key, label in ((axes[0], "perplexity", "perplexity (val)"),
                           (axes[1], "decode_tokens_per_s", "decode tokens/s (batch 1)")):
        ax.plot([r["block_evaluations"] for r in adaptive], [r[key] for r in adaptive], "o-", label="adaptive (tol sweep)")
        for r in fixed:
            ax.scatter(r["block_evaluations"], r[key], marker="s", s=60, label=r["variant"], zorder=3)
        ax.set_xlabel("block evaluations per token")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Adaptive corrections vs fixed iteration plans (no distillation)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
