"""``iiet bench``: inference speed, FLOPs and memory of several models side by side (the paper's Table 3, Fig. 3b)."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import torch

from iiet.errors import IIETError
from iiet.outputs import atomic_write, check_writable

from . import report
from .runner import Entry, Settings, describe, load_model, machine, measure, resolve_device
from .specs import parse_specs

DEFAULT_MODELS = ["transformer++", "pcformer", "iiet", "e-iiet", "lower-bound"]
GPU_BATCH_SIZES = [1, 8, 32]
CPU_BATCH_SIZES = [1, 4]


def run_benchmark(
    models: list[str],
    preset: str,
    batch_sizes: list[int] | None,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
    device: str,
    compile: bool,
    cuda_graphs: bool = False,
    log=lambda message: print(message, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Measure the models; returns the JSON-ready result (``settings``, ``machine``, ``models``, ``targets``)."""
    if min(prompt_len, new_tokens, repeats) < 1:
        raise IIETError("prompt_len, new_tokens and repeats must all be >= 1.")
    dev, dtype = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IIETError(f"device={device!r} but CUDA is not available here; use --device cpu or auto.")
    if batch_sizes is None:
        batch_sizes = GPU_BATCH_SIZES if dev.type == "cuda" else CPU_BATCH_SIZES
    if not batch_sizes or min(batch_sizes) < 1:
        raise IIETError(f"batch_sizes={batch_sizes} must be a non-empty list of positive integers.")
    if compile and cuda_graphs:
        raise IIETError("choose one of compile and cuda_graphs for the decode step, not both.")
    settings = Settings(batch_sizes, prompt_len, new_tokens, repeats, dev, dtype, compile, cuda_graphs)
    specs = parse_specs(models, preset)
    entries = []
    for spec in specs:
        entry = Entry(spec, load_model(spec, dev, dtype))
        limit = entry.model.config.max_position_embeddings
        if prompt_len + new_tokens > limit:
            raise IIETError(f"{spec.label}: prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the model's "
                            f"max_position_embeddings ({limit}).")
        entries.append(entry)
    log(f"benchmarking {[e.spec.label for e in entries]} on {dev} ({str(dtype).removeprefix('torch.')}), "
        f"batch sizes {batch_sizes}, prompt {prompt_len}, {new_tokens} new tokens, {repeats} repeats")
    measure(entries, settings, log)
    results = []
    for entry in entries:
        result = describe(entry, settings)
        result["batches"] = entry.batches
        results.append(result)
    targets = report.compare(results)
    return {
        "settings": {"models": models, "preset": preset, "batch_sizes": batch_sizes, "prompt_len": prompt_len,
                     "new_tokens": new_tokens, "repeats": repeats, "compile": compile,
                     "cuda_graphs": cuda_graphs},
        "machine": machine(settings),
        "models": results,
        "targets": targets,
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown report: settings line, Table 3, targets."""
    s, m = result["settings"], result["machine"]
    where = m.get("gpu") or m.get("cpu")
    speculative = report.speculative_table(result["models"], s["batch_sizes"])
    return "\n\n".join(part for part in [
        f"Inference benchmark on {where} ({m['device']}, {m['dtype']}, torch {m['torch']}): prompt {s['prompt_len']} "
        f"tokens, {s['new_tokens']} decoded tokens, median of {s['repeats']} interleaved runs"
        + (", decode step compiled" if s["compile"] else "")
        + (", decode step replayed from a CUDA graph" if s.get("cuda_graphs") else "")
        + (f"; load average {m['load_average'][0]:.1f} on {m['threads']} CPU threads" if "load_average" in m else "")
        + ".",
        report.markdown_table(result["models"], s["batch_sizes"]),
        "Speed: tokens/s (ratio: median over repetitions of the same-size Transformer++'s time / this model's time, "
        "timed back to back in this run). FLOPs: forward matmul FLOPs per decoded "
        "token at the mean decode context. Peak memory: weights + KV cache + measured transient memory on GPU; "
        "weights + allocated KV cache on CPU (analytic).",
        speculative and "Self-speculative decoding (the same weights draft with a cheaper plan, the full model "
        "verifies; docs/benchmarks.md): acceptance = drafted tokens kept; tokens / verify = tokens emitted per verify "
        "forward per row; vs plain = paired speed ratio against the same weights decoded without a draft.\n\n"
        + speculative,
        report.targets_table(result["targets"]),
    ] if part)


def bench(
    models: list[str] = DEFAULT_MODELS,
    preset: str = "cpu-small",
    batch_sizes: list[int] | None = None,
    prompt_len: int = 128,
    new_tokens: int = 32,
    repeats: int = 3,
    device: str = "auto",
    compile: bool = False,
    cuda_graphs: bool = False,
    output_dir: str = "bench_results",
) -> None:
    """Measure prefill and decode speed, FLOPs, KV cache and memory of several models in one run.

    Prints a Markdown table shaped like the paper's Table 3 (with ratios vs the Transformer++ of the same size,
    measured in the same run, and pass/miss against the speed targets), and writes ``results.md``,
    ``decode_vs_iterations.png`` (Figure 3b) and, last, ``results.json`` to ``output_dir``. Models use random
    weights unless a checkpoint directory is given; speed does not depend on the weights.

    Args:
        models: model specs ``[PRESET:]NAME[-fl][=VALUE]`` with NAME one of ``transformer++``, ``dlcl``,
            ``pcformer[=order]``, ``trans-ws[=repeats]``, ``iiet[=r]`` (or ``iiet-rR``), ``e-iiet[=r0,r1,...]``
            (default: an uneven plan keeping the paper's 15/72 of the corrections), ``lower-bound``,
            ``adaptive[=tol]``, ``anderson[=window]``; ``-fl`` = the explicit-first-layer variant (``iiet-fl``,
            ``pcformer-fl``); or a checkpoint directory (the table of names: ``iiet.models.names``). Append
            ``+draft[=DRAFT][:k=K][:c=C]`` to decode by exact self-speculative decoding: the same weights draft
            ``K`` tokens per round (default 4) with the cheaper plan ``DRAFT`` (``lower-bound`` (default),
            ``e-iiet:PLAN.json``, ``adaptive[:TOL]``, ``r0,r1,...``), fewer where the draft's probability falls
            below ``C``; e.g. ``iiet+draft=lower-bound:k=4``.
        preset: model size for specs without their own ``PRESET:`` (tiny, cpu-small, 55M, 340M, 740M).
        batch_sizes: batch sizes to sweep; default 1, 8, 32 on GPU and 1, 4 on CPU.
        prompt_len: prompt tokens per row (prefill length).
        new_tokens: tokens decoded per row after the prefill (one forward each).
        repeats: timed runs per model and batch size (after one warm-up); the median is reported.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``; bf16 on GPU, fp32 on CPU.
        compile: ``torch.compile`` the decode step (dynamic shapes); minutes to compile a large IIET, and on CPU.
        cuda_graphs: replay the decode step from a CUDA graph (fixed shapes: the whole cache, masked); removes the
            per-kernel host overhead that bounds eager decoding of small models. On CPU the same step runs eagerly.
        output_dir: where results.md, decode_vs_iterations.png and results.json go.
    """
    out = check_writable(output_dir, "--output_dir")
    result = run_benchmark(models, preset, batch_sizes, prompt_len, new_tokens, repeats, device, compile, cuda_graphs)
    text = render(result)
    print(text)
    atomic_write(out / "results.md", text + "\n")
    plot = out / "decode_vs_iterations.png"
    if report.plot_iterations(result["models"], result["settings"]["batch_sizes"], str(plot)):
        print(f"\nwrote {plot}")
    atomic_write(out / "results.json", json.dumps(result, indent=2) + "\n")  # last: its presence means a full run
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
