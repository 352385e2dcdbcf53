"""Training throughput and peak memory per scheme, side by side in one run (issue: pretraining benchmark).

Each configuration runs full training steps (forward, backward, AdamW step) on random tokens at one preset; the
schemes are interleaved across repetitions so that load on a shared machine hits all of them alike, and the median
step time is reported. Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU weights + gradients + optimizer state plus the
activation bytes autograd saves for backward (``saved_tensors_hooks``), since the CPU allocator keeps no peak.

    python benchmarks/training.py --preset cpu-small --seq_len 256 --batch_size 4           # CPU
    python benchmarks/training.py --preset 55M --seq_len 2048 --batch_size 8 --device cuda  # GPU (bf16 autocast)

Prints a Markdown table (ratios vs Transformer++ and the targets: IIET r=3 step time <= 4.2x, IIET r=3 peak memory
with activation checkpointing <= 1.5x) and writes the JSON last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import iiet  # noqa: F401
from iiet.models.names import resolve
from iiet.models.presets import build_config

# Variants: a model name (iiet.models.names), with CHECKPOINTING appended for activation checkpointing.
CHECKPOINTING = "+ckpt"
VARIANTS = ["transformer++", "pcformer", "iiet-r3", f"transformer++{CHECKPOINTING}", f"iiet-r3{CHECKPOINTING}"]
BASELINE = "transformer++"
TARGETS = {"step_time": ("iiet-r3", 4.2), "peak_memory": (f"iiet-r3{CHECKPOINTING}", 1.5)}


def scheme_and_label(variant: str, preset: str) -> tuple[dict, bool, str]:
    """The variant's scheme, whether it checkpoints activations, and its label (the paper's name)."""
    checkpointing = variant.endswith(CHECKPOINTING)
    named = resolve(variant.removesuffix(CHECKPOINTING), build_config(preset).num_hidden_layers)
    return named.scheme, checkpointing, named.label + (f" {CHECKPOINTING}" if checkpointing else "")


def build(variant: str, preset: str, device: str):
    from transformers import AutoModelForCausalLM

    scheme, checkpointing, _ = scheme_and_label(variant, preset)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(preset, scheme)).to(device).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    return model, optimizer


def step(model, optimizer, ids, device: str) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cpu_memory(variant: str, args) -> float:
    """Training memory on CPU: weights + gradients + AdamW's two moments (4 x parameter bytes) plus the bytes autograd
    saves for the backward pass, measured with ``saved_tensors_hooks`` (each storage counted once). This is the part
    activation checkpointing changes; the CPU allocator has no peak counter of its own."""
    model, _ = build(variant, args.preset, "cpu")
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len))
    seen: set[int] = set()
    saved = 0

    def pack(tensor):
        nonlocal saved
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return float(4 * params + saved)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=VARIANTS,
                        help=f"model names (iiet bench --help lists them), {CHECKPOINTING} = activation checkpointing")
    parser.add_argument("--output", default="bench_results/training.json")
    args = parser.parse_args()

    built = {v: build(v, args.preset, args.device) for v in args.variants} if args.device == "cuda" else {}
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    peak: dict[str, float] = {}
    ids = None
    for rep in range(args.repeats + 1):  # repetition 0 is warm-up
        for variant in args.variants:
            model, optimizer = built[variant] if built else build(variant, args.preset, args.device)
            if ids is None:
                ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), device=args.device)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step(model, optimizer, ids, args.device)
            sync(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, ids, args.device)
            sync(args.device)
            if rep > 0:
                times[variant].append((time.perf_counter() - start) / args.steps)
            if args.device == "cuda":
                peak[variant] = max(peak.get(variant, 0.0), float(torch.cuda.max_memory_allocated()))
            if not built:
                del model, optimizer
    if args.device != "cuda":
        peak = {v: cpu_memory(v, args) for v in args.variants}

    tokens = args.batch_size * args.seq_len
    base_time = statistics.median(times[BASELINE]) if BASELINE in times else None
    base_mem = peak.get(BASELINE)
    rows = []
    for variant in args.variants:
        t = statistics.median(times[variant])
        scheme, _, label = scheme_and_label(variant, args.preset)
        rows.append({
            "variant": variant,
            "label": label,
            "step_time_s": t,
            "tokens_per_s": tokens / t,
            "peak_memory_bytes": peak[variant],
            "step_time_ratio": t / base_time if base_time else None,
            "peak_memory_ratio": peak[variant] / base_mem if base_mem else None,
            "block_evaluations": build_config(args.preset, scheme).num_block_evaluations,
        })
    print(f"\npreset {args.preset}, batch {args.batch_size} x {args.seq_len} tokens, device {args.device}, "
          f"median of {args.repeats} x {args.steps} steps\n")
    print("| variant | block evals | step (s) | tokens/s | step vs T++ | peak mem (MiB) | mem vs T++ |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['block_evaluations']} | {r['step_time_s']:.3f} | {r['tokens_per_s']:.0f} | "
              f"{_ratio(r['step_time_ratio'])} | {r['peak_memory_bytes'] / 2**20:.0f} | {_ratio(r['peak_memory_ratio'])} |")
    by_name = {r["variant"]: r for r in rows}
    checks = {}
    for metric, (variant, bound) in TARGETS.items():
        if variant in by_name:
            value = by_name[variant][f"{metric}_ratio"]
            if value is None:
                continue
            checks[metric] = {"variant": variant, "ratio": value, "target": bound, "met": value <= bound}
            print(f"target {metric}: {variant} {value:.2f}x <= {bound}x: {'met' if value <= bound else 'MISSED'}")
    result = {"args": vars(args), "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "rows": rows, "targets": checks}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
