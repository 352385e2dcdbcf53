"""Correctors on a trained IIET: held-out quality against block evaluations (docs/adaptive.md, "Correctors").

For one checkpoint and the val split of prepared data, runs the same weights with (``SchemeOptions`` per call, no
training):

* ``fixed_point`` (the paper's corrections) with ``k`` corrections in every layer that corrects in the checkpoint's
  own plan (``k = 0`` is the Lower Bound of those layers, the checkpoint's ``r`` is the model as trained);
* ``adaptive`` stopping (fixed-point steps, a token stops once ``1 - cos < tol``) at the trained plan;
* ``anderson`` mixing, window ``m``, damping 1, with ``k`` corrections;

and reports, per run: token perplexity, the KL divergence from the model as trained (its own plan, fixed point) and
the distance of the last layer's output to a near-converged reference (``--reference_corrections`` fixed-point
corrections), against the block evaluations per token actually run (adaptive: the corrections taken).

    python benchmarks/corrector_study.py --model RUN/final --data DATA_DIR --output docs/results/corrector_study.json

Prints a Markdown table and writes the JSON last.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import iiet  # noqa: F401
from iiet.data import PackedDataset
from iiet.models.schemes import SchemeOptions


@torch.no_grad()
def run(model, batches, options: SchemeOptions, reference_logits, reference_states) -> dict:
    """Perplexity, KL from the trained model, final-state distance to the converged reference, evaluations/token."""
    nll = kl = dist = tokens = 0.0
    evaluations = []
    for ids, ref_logits, ref_state in zip(batches, reference_logits, reference_states):
        out = model(ids, use_cache=False, scheme_options=options, output_hidden_states=True)
        logits = out.logits.float()
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        log_p, log_q = F.log_softmax(ref_logits, -1), F.log_softmax(logits, -1)
        kl += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
        state = out.hidden_states[-1]
        dist += ((state - ref_state).norm(dim=-1) / ref_state.norm(dim=-1)).sum().item()
        tokens += ids.numel()
        L = model.config.num_hidden_layers
        if out.corrections is not None:  # (L, B, T): what each token took
            evaluations.append(L + out.corrections.sum(0).float().mean().item())
        elif options.plan is not None:
            evaluations.append(float(L + sum(options.plan)))
        else:
            evaluations.append(float(model.config.num_block_evaluations))
    predicted = tokens - len(batches) * batches[0].shape[0]
    return {"perplexity": math.exp(nll / predicted), "kl_from_trained": kl / tokens,
            "final_state_rel_distance_to_fixed_point": dist / tokens,
            "block_evaluations": sum(evaluations) / len(evaluations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained IIET checkpoint directory")
    parser.add_argument("--data", required=True, help="a prepared data directory; its val split is used")
    parser.add_argument("--num_sequences", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--corrections", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6])
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--reference_corrections", type=int, default=24)
    parser.add_argument("--output", default="bench_results/corrector_study.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    L = model.config.num_hidden_layers
    trained = model.config.scheme_config.plan(L)
    data = PackedDataset(args.data, split="val")
    rows = torch.stack([data[i] for i in range(min(args.num_sequences, len(data)))])
    batches = list(rows.split(args.batch_size))

    def plan(k: int) -> list[int]:
        return [k if r else 0 for r in trained]  # the layers the checkpoint corrects

    with torch.no_grad():
        reference_logits = [model(ids, use_cache=False).logits.float() for ids in batches]
        converged = SchemeOptions(plan=plan(args.reference_corrections))
        reference_states = [model(ids, use_cache=False, scheme_options=converged, output_hidden_states=True)
                            .hidden_states[-1] for ids in batches]

    runs = []

    def record(corrector: str, setting: str, options: SchemeOptions) -> None:
        result = {"corrector": corrector, "setting": setting, **run(model, batches, options, reference_logits,
                                                                  reference_states)}
        runs.append(result)
        print(f"| {corrector} | {setting} | {result['block_evaluations']:.2f} | {result['perplexity']:.3f} | "
              f"{result['kl_from_trained']:.4f} | {result['final_state_rel_distance_to_fixed_point']:.4f} |",
              flush=True)

    print(f"model {args.model}: trained plan {trained}; {rows.shape[0]} x {rows.shape[1]} val tokens\n")
    print("| corrector | setting | block evals/token | val ppl | KL from trained | final state vs fixed point |")
    print("|---|---|---|---|---|---|")
    for k in args.corrections:
        record("fixed_point", f"k={k}", SchemeOptions(plan=plan(k)))
    for tol in args.tolerances:
        record("adaptive", f"tol={tol:g}, plan {trained}",
               SchemeOptions(corrector={"name": "adaptive", "tolerance": tol}))
    for m in args.windows:
        for k in args.corrections:
            if k >= 2:  # Anderson's first step is a fixed-point step
                record("anderson", f"m={m}, k={k}", SchemeOptions(plan=plan(k), corrector={"name": "anderson",
                                                                                           "window": m}))
    result = {"model": args.model, "trained_plan": trained, "tokens": rows.numel(),
              "reference_corrections": args.reference_corrections, "runs": runs}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
