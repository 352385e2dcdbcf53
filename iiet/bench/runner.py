"""Time prefill and decode of several models side by side, in one process, under the same load.

For each batch size every model gets one warm-up run, then ``repeats`` timed runs; the models take turns within each
repetition (the starting model rotates), so a burst of load on a shared machine hits all of them alike, and the
median of the repetitions is reported. A run = reset the model's ``SlotCache`` (allocated once per batch size),
time the prefill of a ``(B, prompt_len)`` prompt (random ids, or windows of a text), then time ``new_tokens`` decode
steps (greedy, or sampled alike for every model).
The decode step runs eagerly, compiled (``torch.compile``) or replayed from a CUDA graph (``graphs.py``).
A model with a draft (``SPEC+draft=...``) decodes the same ``new_tokens`` by self-speculative decoding
(``iiet.models.speculative``, eager): its decoder holds both caches, and each run also records the acceptance,
the tokens per verify forward and the time split into draft, verify and the rest; the warm-up run checks that its
greedy tokens equal plain decoding's.
On CUDA the clock is read after ``torch.cuda.synchronize()`` and the transient memory of each run is measured with
``torch.cuda.max_memory_allocated``; on CPU memory is reported analytically (weights + allocated cache).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from iiet.models.cache import SlotCache
from iiet.models.costs import flops_per_token, kv_cache_bytes_per_token
from iiet.models.loading import load_model
from iiet.models.modeling_iiet import IIETForCausalLM
from iiet.models.speculative import (
    Sampling,
    SpeculativeDecoder,
    SpeculativeStats,
    resolve_draft,
    speculative_max_length,
)

from .generation import SamplingStep, decode, decode_step, generate_fast, prefill
from .graphs import GraphDecodeStep
from .specs import ModelSpec

WARMUP_RUNS = 1
PROMPT_SEED = 0
WEIGHT_SEED = 0
# Each compiled model re-traces the shared ``decode_step`` (dynamo guards on the module); allow one entry per model.
COMPILE_CACHE_LIMIT = 64


@dataclass
class Settings:
    batch_sizes: list[int]
    prompt_len: int
    new_tokens: int
    repeats: int
    device: torch.device
    dtype: torch.dtype
    compile: bool = False
    cuda_graphs: bool = False
    prompt_tokens: torch.Tensor | None = None  # 1D text to cut the prompts from; None: random ids
    sampling: Sampling | None = None  # decode by sampling (every model alike); None: greedy


@dataclass
class Entry:
    """One model under test: what it is, its weights, and its measurements per batch size."""

    spec: ModelSpec
    model: IIETForCausalLM
    batches: dict[int, dict[str, Any]] = field(default_factory=dict)
    step: Any = decode_step


def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> IIETForCausalLM:
    """The checkpoint's model, or a model of the spec's config with seeded random weights, in eval mode."""
    if spec.checkpoint is not None:
        return load_model(spec.checkpoint, device, dtype, require_iiet=True)
    torch.manual_seed(WEIGHT_SEED)
    with torch.device(device):  # initialise on the device: fast for the large presets
        model = IIETForCausalLM(spec.config)
    return model.to(dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _weights_bytes(model: torch.nn.Module) -> int:
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers())}  # tied weights counted once
    return sum(t.nbytes for t in tensors.values())


def _decoder(entry: Entry, batch_size: int, settings: Settings) -> SpeculativeDecoder:
    """The self-speculative decoder of a draft entry: both caches, sized for one prefill and ``new_tokens`` more."""
    k = entry.spec.num_draft_tokens
    length = speculative_max_length(settings.prompt_len, settings.new_tokens + 1, k, batch_size)
    generator = torch.Generator(settings.device).manual_seed(PROMPT_SEED) if settings.sampling else None
    return SpeculativeDecoder(entry.model, entry.spec.draft, k, batch_size, length, settings.sampling, generator,
                              profile=True, draft_confidence=entry.spec.draft_confidence)


def describe(entry: Entry, settings: Settings) -> dict[str, Any]:
    """What the model is and costs per token (analytic), independent of timing."""
    config = entry.model.config
    cache = SlotCache.for_model(entry.model, 1, 1)  # a one-position cache: its bytes per token, as allocated
    kv_bytes, draft = cache.bytes_per_token(), None
    if entry.spec.draft is not None:
        plan = resolve_draft(config, entry.spec.draft)
        draft = {"spec": entry.spec.draft, "label": plan.label, "plan": list(plan.iteration_plan),
                 "adaptive_tolerance": plan.adaptive_tolerance, "num_draft_tokens": entry.spec.num_draft_tokens,
                 "draft_confidence": entry.spec.draft_confidence,
                 "block_evaluations": plan.num_slots}
        kv_bytes += kv_bytes * plan.num_slots // config.num_block_evaluations  # the draft's own slots beside
    decode_context = settings.prompt_len + (settings.new_tokens + 1) / 2  # mean keys a decoded token attends to
    return {
        "label": entry.spec.label,
        "spec": entry.spec.spec,
        "source": entry.spec.checkpoint or "random weights",
        "preset": entry.spec.preset,
        "scheme": dict(config.scheme),
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "parameters": sum(p.numel() for p in entry.model.parameters()),
        "block_evaluations": config.num_block_evaluations,
        "flops_per_token": flops_per_token(config, round(decode_context)),
        "kv_bytes_per_token": kv_bytes,
        "kv_bytes_per_token_analytic": kv_cache_bytes_per_token(config, settings.dtype),
        "weights_bytes": _weights_bytes(entry.model),
        "size": [config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                 config.num_attention_heads, config.num_key_value_heads],
        "draft": draft,
    }


@torch.inference_mode()
def _run_once(
    entry: Entry, prompt: torch.Tensor, cache: SlotCache | SpeculativeDecoder, settings: Settings
) -> tuple[float, float, int, SpeculativeStats | None, torch.Tensor]:
    """One prefill + decode; returns (prefill seconds, decode seconds, transient CUDA bytes or 0, the speculative
    decoder's statistics or ``None``, the new tokens)."""
    device = settings.device
    speculative = isinstance(cache, SpeculativeDecoder)
    if not speculative:
        cache.reset()  # the decoder resets itself in prefill
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    _sync(device)
    t0 = time.perf_counter()
    token = cache.prefill(prompt) if speculative else prefill(entry.model, prompt, cache)
    _sync(device)
    t1 = time.perf_counter()
    if speculative:
        rest = cache.decode(settings.new_tokens)
    else:
        rest = decode(entry.model, token, cache, settings.new_tokens, step=entry.step)
    _sync(device)
    t2 = time.perf_counter()
    transient = torch.cuda.max_memory_allocated(device) - resident if device.type == "cuda" else 0
    return t1 - t0, t2 - t1, transient, cache.stats if speculative else None, torch.cat([token, rest], 1)


def _cache_bytes(cache: SlotCache | SpeculativeDecoder) -> int:
    if isinstance(cache, SpeculativeDecoder):
        return cache.cache.nbytes + cache.draft_cache.nbytes
    return cache.nbytes


def _speculative_summary(stats: list[SpeculativeStats], identical: bool | None) -> dict[str, Any]:
    """Acceptance, tokens per verify forward and the time per round, over the timed runs."""
    total = SpeculativeStats.total(stats)
    summary = total.to_dict()
    summary["ms_per_round"] = {phase: 1e3 * s / total.rounds for phase, s in total.seconds.items()}
    summary["identical_tokens"] = identical
    return summary


def _decode_step(settings: Settings):
    if settings.sampling is not None:
        return SamplingStep(settings.sampling, torch.Generator(settings.device).manual_seed(PROMPT_SEED))
    if settings.compile:
        return torch.compile(decode_step, dynamic=True)
    if settings.cuda_graphs:
        return GraphDecodeStep()  # one graph per (model, cache); a new one per batch size frees the old caches
    return decode_step


def measure(entries: list[Entry], settings: Settings, log=print) -> None:
    """Fill ``entry.batches[B]`` for every batch size with timings (medians) and memory."""
    if settings.compile:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, COMPILE_CACHE_LIMIT)
    vocab = min(e.model.config.vocab_size for e in entries)
    max_length = settings.prompt_len + settings.new_tokens
    for B in settings.batch_sizes:
        if settings.prompt_tokens is None:
            seeded = torch.Generator().manual_seed(PROMPT_SEED)
            prompt = torch.randint(1, vocab, (B, settings.prompt_len), generator=seeded)
        else:
            prompt = settings.prompt_tokens[: B * settings.prompt_len].view(B, settings.prompt_len)
        prompt = prompt.to(settings.device)
        caches = [
            _decoder(e, B, settings) if e.spec.draft is not None else SlotCache.for_model(e.model, B, max_length)
            for e in entries
        ]
        for entry in entries:  # compiled or captured during the warm-up run
            entry.step = _decode_step(settings)
        runs: list[list[tuple]] = [[] for _ in entries]
        identical: list[bool | None] = [None if settings.sampling else True for _ in entries]
        started = time.perf_counter()
        for rep in range(WARMUP_RUNS + settings.repeats):
            first = rep % len(entries)  # rotate who goes first
            for k in [*range(first, len(entries)), *range(first)]:
                result = _run_once(entries[k], prompt, caches[k], settings)
                if rep >= WARMUP_RUNS:
                    runs[k].append(result)
                elif entries[k].spec.draft is not None and settings.sampling is None:
                    # Untimed: the draft must not change the greedy tokens (sampled ones differ by chance).
                    plain = generate_fast(entries[k].model, prompt, settings.new_tokens + 1)[:, settings.prompt_len :]
                    identical[k] = torch.equal(result[4], plain)
        for entry, cache, timings, same in zip(entries, caches, runs, identical):
            prefill_s = [t[0] for t in timings]
            decode_s = [t[1] for t in timings]
            transient = max(t[2] for t in timings)
            weights = _weights_bytes(entry.model)
            measured = settings.device.type == "cuda"
            cache_bytes = _cache_bytes(cache)
            entry.batches[B] = {
                "prefill_s": prefill_s,
                "decode_s": decode_s,
                "prefill_tokens_per_s": B * settings.prompt_len / statistics.median(prefill_s),
                "decode_tokens_per_s": B * settings.new_tokens / statistics.median(decode_s),
                "decode_ms_per_step": 1e3 * statistics.median(decode_s) / settings.new_tokens,
                "kv_cache_bytes": cache_bytes,
                "activation_peak_bytes": transient if measured else None,
                "peak_memory_bytes": weights + cache_bytes + transient,
                "memory_measured": measured,
            }
            if entry.spec.draft is not None:
                entry.batches[B]["speculative"] = _speculative_summary([t[3] for t in timings], same)
        del caches
        for entry in entries:
            entry.step = decode_step
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
        log(f"batch {B}: {len(entries)} models x {WARMUP_RUNS}+{settings.repeats} runs in "
            f"{time.perf_counter() - started:.1f}s")


def machine(settings: Settings) -> dict[str, Any]:
    """Where the numbers come from."""
    info = {
        "load_average": list(os.getloadavg()),  # 1/5/15 min at the end: other work while we measured
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(settings.device),
        "dtype": str(settings.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if settings.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(settings.device)
        info["cuda"] = torch.version.cuda
    return info
