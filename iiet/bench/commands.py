"""``iiet bench``: inference speed, FLOPs and memory of several models side by side (the paper's Table 3, Fig. 3b)."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import torch
from transformers import AutoTokenizer

from iiet.errors import IIETError
from iiet.models.loading import resolve_device, resolve_dtype
from iiet.models.speculative import Sampling
from iiet.outputs import atomic_write, check_writable

from . import report
from .runner import Entry, Settings, build_model, describe, machine, measure
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
    prompt_text: str | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    log=lambda message: print(message, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Measure the models; returns the JSON-ready result (``settings``, ``machine``, ``models``, ``targets``)."""
    if min(prompt_len, new_tokens, repeats) < 1:
        raise IIETError("prompt_len, new_tokens and repeats must all be >= 1.")
    dev = resolve_device(device)
    dtype = resolve_dtype("auto", dev)  # bf16 on GPU, fp32 on CPU (bf16 matmuls are 10-100x slower there)
    if batch_sizes is None:
        batch_sizes = GPU_BATCH_SIZES if dev.type == "cuda" else CPU_BATCH_SIZES
    if not batch_sizes or min(batch_sizes) < 1:
        raise IIETError(f"batch_sizes={batch_sizes} must be a non-empty list of positive integers.")
    if compile and cuda_graphs:
        raise IIETError("choose one of compile and cuda_graphs for the decode step, not both.")
    if temperature < 0 or (temperature == 0 and (top_k or top_p)):
        raise IIETError("temperature must be > 0 to sample (top_k/top_p apply to sampling); 0 = greedy decoding.")
    if temperature and (compile or cuda_graphs):
        raise IIETError("sampling (temperature > 0) runs the decode step eagerly; drop compile/cuda_graphs.")
    settings = Settings(batch_sizes, prompt_len, new_tokens, repeats, dev, dtype, compile, cuda_graphs)
    settings.sampling = Sampling(temperature, top_k, top_p) if temperature else None
    specs = parse_specs(models, preset)
    if prompt_text is not None:
        settings.prompt_tokens = text_prompts(prompt_text, specs, max(batch_sizes) * prompt_len)
    entries = []
    for spec in specs:
        entry = Entry(spec, build_model(spec, dev, dtype))
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
                     "cuda_graphs": cuda_graphs, "prompt_text": prompt_text,
                     "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p} if temperature else None},
        "machine": machine(settings),
        "models": results,
        "targets": targets,
    }


def text_prompts(path: str, specs: list, num_tokens: int) -> torch.Tensor:
    """The first ``num_tokens`` tokens of the text file ``path`` (1D), tokenized with the tokenizer saved in the
    first checkpoint among ``specs``; rows of a batch are its consecutive ``prompt_len`` windows."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise IIETError(f"prompt_text {path} does not exist; give a text file (e.g. held-out text of the corpus).")
    folder = next((s.checkpoint for s in specs if s.checkpoint and (pathlib.Path(s.checkpoint) / "tokenizer.json")
                   .is_file()), None)
    if folder is None:
        raise IIETError("prompt_text needs a checkpoint with its tokenizer (tokenizer.json) among the models; "
                        "random-weight models have none: drop --prompt_text to use random prompts.")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids: list[int] = []
    with file.open(encoding="utf-8", errors="replace") as f:
        for line in f:  # the head of the file suffices: stop once there are enough tokens
            ids += tokenizer(line, add_special_tokens=False)["input_ids"]
            if len(ids) >= num_tokens:
                return torch.tensor(ids[:num_tokens])
    raise IIETError(f"prompt_text {path} has {len(ids)} tokens; the largest batch needs {num_tokens} "
                    "(batch x prompt_len): give a longer text or smaller sizes.")


def render(result: dict[str, Any]) -> str:
    """The Markdown report: settings line, Table 3, targets."""
    s, m = result["settings"], result["machine"]
    where = m.get("gpu") or m.get("cpu")
    speculative = report.speculative_table(result["models"], s["batch_sizes"])
    return "\n\n".join(part for part in [
        f"Inference benchmark on {where} ({m['device']}, {m['dtype']}, torch {m['torch']}): prompt {s['prompt_len']} "
        "tokens" + (f" of {pathlib.Path(s['prompt_text']).name}" if s.get("prompt_text") else " (random ids)")
        + f", {s['new_tokens']} decoded tokens"
        + (f" sampled ({', '.join(f'{k} {v}' for k, v in s['sampling'].items() if v)})" if s.get("sampling") else "")
        + f", median of {s['repeats']} interleaved runs"
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
    prompt_text: str | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
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
        prompt_text: a text file whose first ``batch x prompt_len`` tokens (tokenized with the first checkpoint's
            tokenizer) are the prompts, instead of random ids: what a draft's acceptance should be measured on.
        temperature: 0 (default) decodes greedily; > 0 samples (every model alike), with ``top_k``/``top_p``.
        top_k: sampling only: keep the ``top_k`` most likely tokens.
        top_p: sampling only: keep the smallest set of tokens with probability >= ``top_p``.
        output_dir: where results.md, decode_vs_iterations.png and results.json go.
    """
    out = check_writable(output_dir, "--output_dir")
    result = run_benchmark(models, preset, batch_sizes, prompt_len, new_tokens, repeats, device, compile, cuda_graphs,
                           prompt_text, temperature, top_k, top_p)
    text = render(result)
    print(text)
    atomic_write(out / "results.md", text + "\n")
    plot = out / "decode_vs_iterations.png"
    if report.plot_iterations(result["models"], result["settings"]["batch_sizes"], str(plot)):
        print(f"\nwrote {plot}")
    atomic_write(out / "results.json", json.dumps(result, indent=2) + "\n")  # last: its presence means a full run
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
