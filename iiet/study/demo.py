"""``iiet demo``: the paper's whole story in a few minutes, offline — a small preset of ``iiet reproduce``.

On a slice of the built-in corpus (the Python standard library's source), with a tokenizer trained on it:

1. Transformer++ and IIET r=3 with the first layer explicit (plan ``[0, 3, 3, 3]``, docs/training.md "The slow start
   of IIET") on the same tokens in the same order (``--budget time``: the same wall time instead); DLCL too when the
   budget allows;
2. IIAD: iteration influence of IIET -> the E-IIET plan -> distillation of that student for a third of the tokens;
3. held-out perplexity and bits per byte of every model, and decode tokens/s of Transformer++, IIET, IIET with
   adaptive corrections, IIET decoded self-speculatively (its Lower Bound plan drafts, the full model verifies) and
   the student side by side in one benchmark run;
4. ``results.json`` (one row per model), ``demo.png`` (quality vs decode speed, and the loss curves), ``demo.md``
   (the table, the figure and a reading generated from the numbers) and the study's own ``results.md``.

The budget: a short probe times training steps and forwards of each model on this machine; from it and
``--minutes`` the demo plans every phase (tokens per model, distillation tokens, held-out tokens, influence segments)
so that the whole run, data preparation included, takes about ``--minutes``. The plan is saved: an interrupted demo
rerun with the same options continues where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from transformers import AutoModelForCausalLM

from iiet.data.prepare import prepare_data
from iiet.data.tokenizer import train_tokenizer
from iiet.errors import IIETError
from iiet.models.loading import resolve_device
from iiet.models.names import resolve
from iiet.models.presets import PRESETS, build_config
from iiet.outputs import check_writable
from iiet.study.demo_report import write_results
from iiet.study.progress import Phase, Progress
from iiet.study.reproduce import run_study
from iiet.study.study import ADAPTIVE_RUN, Study, StudyConfig, arm_label

# What the demo trains. The first layer of IIET stays explicit: without that, IIET sits at the unigram plateau for
# the whole of a budget this small (docs/training.md).
TEACHER_ARM = "iiet-r3"
BASELINE_ARM = "transformer++"
DLCL_ARM = "dlcl"
STUDENT = "e-iiet"
# DLCL joins when every arm still gets at least this many tokens with it in the budget.
DLCL_MIN_TOKENS = 400_000
# The paper distils for a third of the pretraining tokens (Appendix B.2).
DISTILL_FRACTION = 1 / 3
# Per minute of --minutes: influence segments, and micro-batches of held-out text. The validations during training
# (the loss curves) and the final held-out scoring read the same held-out tokens, so a curve ends at its table row.
INFLUENCE_SEGMENTS_PER_MINUTE = 6
HELD_OUT_BATCHES_PER_MINUTE = 0.8
EVALS_PER_RUN = 4  # validation points of each loss curve
# Fixed costs the probe does not see, in seconds (measured on a loaded 2-core machine): tokenizer training plus
# tokenization per document; building, checkpointing and exporting one training run; the benchmark per model;
# the report and figures.
DATA_SECONDS = (8.0, 0.07)
RUN_OVERHEAD_SECONDS = 4.0
BENCH_SECONDS_PER_MODEL = 2.5
REPORT_SECONDS = 4.0
# A training step in a run costs about what it costs on the probe's random batch (measured: 0.8-1.0x; the data,
# logging and clipping are cheap next to the forward and backward).
STEP_OVERHEAD = 1.0
MARGIN = 0.05
# Influence runs two models with every iterate traced.
INFLUENCE_OVERHEAD = 1.5
PROBE_SEQUENCES = 4
PROBE_ROUNDS = 3
PROBE_FRACTION = 0.03
PLAN_FILE = "demo_plan.json"
LOG_FILE = "demo.log"


def demo(
    output_dir: str = "runs/demo",
    minutes: float = 8.0,
    budget: Literal["tokens", "time"] = "tokens",
    preset: str = "cpu-small",
    model_overrides: dict[str, Any] = {"hidden_size": 128, "intermediate_size": 352},
    documents: int = 300,
    vocab_size: int = 4096,
    seq_len: int = 128,
    batch_tokens: int = 1024,
    lr: float = 2e-3,
    adaptive_tolerance: float = 1e-2,
    draft: str | None = "lower-bound:k=4",
    dlcl: bool | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
) -> dict[str, Any]:
    """Offline demo of the whole method: train, IIAD, evaluate and benchmark in about ``--minutes``, one table.

    Trains Transformer++ and IIET r=3 (first layer explicit) on a slice of the Python standard library's source,
    derives the E-IIET plan from IIET's iteration influence and distils that student, then scores every model on
    held-out text (perplexity, bits per byte) and times its decoding (with IIET's adaptive corrections and IIET
    decoded self-speculatively too). Writes
    results.json, demo.png, demo.md (with a reading generated from the numbers) under ``output_dir``. Every phase's
    size is planned from a speed probe so that the whole run takes about ``--minutes``; progress lines show the
    phase, its ETA and the overall ETA. Rerun the same command to continue an interrupted demo.

    Args:
        output_dir: where the study (data, runs, IIAD, benchmark) and the results go.
        minutes: wall-time budget of the whole demo, data preparation included; every phase scales with it.
        budget: "tokens": every pretrained model sees the same tokens (the paper's comparison); "time": each gets
            the same wall time, so the faster Transformer++ sees more tokens.
        preset: model size preset (see ``iiet info``), shared by every model.
        model_overrides: model config values on top of the preset (the default is a 1.3M-parameter cpu-small).
        documents: documents of the built-in corpus to use (the corpus slice; ~4.5k tokens each).
        vocab_size: size of the byte-level BPE trained on that slice.
        seq_len: tokens per training sequence.
        batch_tokens: tokens per optimizer step (one micro-batch).
        lr: peak learning rate (cosine schedule).
        adaptive_tolerance: tolerance of IIET's adaptive corrections in the benchmark (docs/adaptive.md).
        draft: IIET is also decoded by exact self-speculative decoding with this draft of its own weights, written as
            after ``+draft=`` in an ``iiet bench`` spec (``lower-bound:k=4``: the Lower Bound plan drafts 4 tokens
            per verify forward); null leaves that row out.
        dlcl: train DLCL as well (true / false); unset: when the budget gives every arm >= 400k tokens with it.
        device: auto, cpu or cuda.
    """
    if not minutes > 0:
        raise IIETError(f"--minutes {minutes} must be positive (the wall-time budget of the whole demo).")
    if documents < 10:
        raise IIETError(f"--documents {documents} is too few to hold some out; use at least 10.")
    if batch_tokens % seq_len:
        raise IIETError(f"--batch_tokens {batch_tokens} must be a multiple of --seq_len {seq_len}.")
    request = dict(locals())
    root = check_writable(output_dir, "--output_dir")
    plan = _load_plan(root, request)
    started = time.perf_counter()
    if plan is None:
        print(f"[demo] timing one training step of each model to plan a {minutes:g}-minute run ...", flush=True)
        plan = plan_budget(request, probe(request))
        root.mkdir(parents=True, exist_ok=True)
        (root / PLAN_FILE).write_text(json.dumps({"request": request, "plan": plan}, indent=2))
    _print_plan(plan)

    config = StudyConfig(**plan["study"])
    progress = Progress(_phases(plan, root), name="demo", started=started)
    log = root / LOG_FILE
    print(f"[demo] the steps' own output goes to {log}", flush=True)
    with progress, open(log, "a") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        transformers.utils.logging.disable_progress_bar()  # weight-loading bars, once per model load
        progress.start("data")
        _prepare_data(request, root / "data")
        progress.finish("data")
        command = "iiet demo " + " ".join(f"--{k} {json.dumps(v)}" for k, v in request.items())
        run_study(config, command, observer=progress)
        progress.start("results")
        results = write_results(Study(config), plan, progress, wall_s=time.perf_counter() - started)
        progress.finish("results")
    print(results["text"], flush=True)
    return results


# -- the budget --------------------------------------------------------------------------------------------------


def _model_configs(request: dict[str, Any]) -> dict[str, Any]:
    """The IIETConfig of every model the demo trains or distils, at the demo's size."""
    if request["preset"] not in PRESETS:
        raise IIETError(f"unknown preset {request['preset']!r}; choose one of {list(PRESETS)}.")
    layers = PRESETS[request["preset"]]["num_hidden_layers"]
    # The study trains IIET with its first layer explicit (``explicit_first_layer``): its -fl variant.
    names = {BASELINE_ARM: BASELINE_ARM, DLCL_ARM: DLCL_ARM, TEACHER_ARM: f"{TEACHER_ARM}-fl"}
    overrides = dict(request["model_overrides"])
    return {arm: build_config(request["preset"], resolve(name, layers).scheme, request["vocab_size"], **overrides)
            for arm, name in names.items()}


def probe(request: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Seconds of one training step and of one forward (no grad) of each model, per ``batch_tokens``, here and now.

    Timed on a random batch of ``PROBE_SEQUENCES`` sequences and scaled to the step's size (cost is linear in the
    batch at these sizes). The models take turns (after a warm-up round) for ``PROBE_FRACTION`` of the budget (at
    least ``PROBE_ROUNDS`` rounds) and the median round is kept: on a shared machine a burst of load lasting a few
    seconds should neither shrink nor swell the plan (a two-round mean once planned half the tokens that then ran
    in half the time). DLCL is costed as Transformer++ (the same blocks; its layer-history combination is a few
    additions per layer).
    """
    device = resolve_device(request["device"])
    sequences = min(PROBE_SEQUENCES, request["batch_tokens"] // request["seq_len"])
    scale = request["batch_tokens"] / (sequences * request["seq_len"])
    entries = {}
    for name, config in _model_configs(request).items():
        if name == DLCL_ARM:
            continue
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
        batch = torch.randint(config.vocab_size, (sequences, request["seq_len"]), device=device)
        entries[name] = (model, optimizer, batch)
    timings: dict[str, dict[str, list[float]]] = {name: {"train_step_s": [], "forward_s": []} for name in entries}
    deadline = time.perf_counter() + PROBE_FRACTION * 60 * request["minutes"]
    round_index = 0
    while round_index <= PROBE_ROUNDS or time.perf_counter() < deadline:
        round_index += 1
        for name, (model, optimizer, batch) in entries.items():
            start = time.perf_counter()
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            middle = time.perf_counter()
            with torch.no_grad():
                model(input_ids=batch, labels=batch, use_cache=False)
            end = time.perf_counter()
            if round_index > 1:  # the first round warms up
                timings[name]["train_step_s"].append(scale * (middle - start))
                timings[name]["forward_s"].append(scale * (end - middle))
    speeds = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in timings.items()}
    speeds[DLCL_ARM] = dict(speeds[BASELINE_ARM])
    return speeds


def plan_budget(request: dict[str, Any], speeds: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Size every phase from the probe's timings so that the whole demo takes about ``request["minutes"]``.

    Fixed-size work (data, held-out scoring, influence, benchmark, report) is estimated first; the rest of the budget
    goes to pretraining plus distillation (a third of the pretraining tokens), which sets the tokens per model.
    """
    minutes, bt, seq = request["minutes"], request["batch_tokens"], request["seq_len"]
    per_token = {name: {k: STEP_OVERHEAD * v / bt for k, v in s.items()} for name, s in speeds.items()}
    train = {name: t["train_step_s"] for name, t in per_token.items()}
    forward = {name: t["forward_s"] for name, t in per_token.items()}
    # The E-IIET plan is known only after influence: cost the student between the Lower Bound and the full model.
    student_train = (train[BASELINE_ARM] + train[TEACHER_ARM]) / 2
    student_forward = (forward[BASELINE_ARM] + forward[TEACHER_ARM]) / 2
    segments = max(8, int(INFLUENCE_SEGMENTS_PER_MINUTE * minutes))
    eval_batches = max(2, round(HELD_OUT_BATCHES_PER_MINUTE * minutes))
    held_out = eval_batches * bt  # micro-batch = batch_tokens
    eval_tokens = EVALS_PER_RUN * held_out

    def estimates(arms: list[str], tokens: dict[str, int]) -> dict[str, float]:
        teacher_tokens = tokens[TEACHER_ARM]
        distill_tokens = teacher_tokens * DISTILL_FRACTION
        out = {"data": DATA_SECONDS[0] + DATA_SECONDS[1] * request["documents"]}
        for arm in arms:
            out[f"pretrain/{arm}"] = RUN_OVERHEAD_SECONDS + tokens[arm] * train[arm] + eval_tokens * forward[arm]
        out["evaluate"] = held_out * sum(forward[a] for a in arms)
        out["iiad/influence"] = INFLUENCE_OVERHEAD * segments * seq * (forward[BASELINE_ARM] + forward[TEACHER_ARM])
        out[f"distill/{STUDENT}"] = (RUN_OVERHEAD_SECONDS + distill_tokens * (forward[TEACHER_ARM] + student_train)
                                     + eval_tokens / 2 * student_forward)
        out[f"evaluate/{STUDENT}"] = held_out * student_forward
        out[f"evaluate/{ADAPTIVE_RUN}"] = held_out * forward[TEACHER_ARM]
        out["bench"] = BENCH_SECONDS_PER_MODEL * (len(arms) + 2 + bool(request["draft"]))
        out["results"] = REPORT_SECONDS
        return out

    def solve(arms: list[str]) -> dict[str, int]:
        """Tokens per arm that fill the budget: equal tokens, or equal pretraining time (``--budget time``)."""
        # What does not scale with the tokens, and a margin for what the probe cannot see (Python's start-up
        # before the clock starts, bursts of load).
        left = 60 * minutes * (1 - MARGIN) - sum(estimates(arms, dict.fromkeys(arms, 0)).values())
        distill_per_teacher_token = DISTILL_FRACTION * (forward[TEACHER_ARM] + student_train)
        if request["budget"] == "tokens":
            tokens = left / (sum(train[a] for a in arms) + distill_per_teacher_token)
            return {arm: _steps(tokens, bt) * bt for arm in arms}
        # Equal time: each arm trains for the same seconds; the teacher's distillation comes on top of its share.
        seconds = left / (len(arms) + distill_per_teacher_token / train[TEACHER_ARM])
        return {arm: _steps(seconds / train[arm], bt) * bt for arm in arms}

    arms = [BASELINE_ARM, TEACHER_ARM]
    with_dlcl = [BASELINE_ARM, DLCL_ARM, TEACHER_ARM]
    include_dlcl = request["dlcl"]
    if include_dlcl is None:
        include_dlcl = min(solve(with_dlcl).values()) >= DLCL_MIN_TOKENS
    if include_dlcl:
        arms = with_dlcl
    tokens = solve(arms)
    phase_seconds = estimates(arms, tokens)
    study = dict(
        output_dir=str(Path(request["output_dir"])), preset=request["preset"], data=str(Path(request["output_dir"]) / "data"),
        sources=["builtin"], tokenizer_vocab_size=request["vocab_size"], seq_len=seq,
        train_tokens=tokens[TEACHER_ARM], arm_tokens=tokens, batch_tokens=bt, micro_batch_size=bt // seq,
        lr=request["lr"], seeds=1, arms=arms, model_overrides=dict(request["model_overrides"]),
        explicit_first_layer=True, held_out_tokens=held_out, eval_batches=eval_batches, evals_per_run=EVALS_PER_RUN,
        influence_segments=segments, distill_fraction=DISTILL_FRACTION, students=[STUDENT],
        adaptive_tolerance=request["adaptive_tolerance"], draft=request["draft"], bench=True, bench_batch_sizes=[1], device=request["device"],
        tier="demo",
    )
    return {"minutes": minutes, "budget": request["budget"], "speeds": speeds, "tokens": tokens, "phase_seconds": phase_seconds,
            "planned_s": sum(phase_seconds.values()), "study": study}


def _steps(tokens: float, batch_tokens: int) -> int:
    return max(2, math.floor(tokens / batch_tokens))


def _phases(plan: dict[str, Any], root: Path) -> list[Phase]:
    steps = {arm: tokens // plan["study"]["batch_tokens"] for arm, tokens in plan["tokens"].items()}
    labels = {"data": "data: tokenizer + packing", "evaluate": "held-out scoring",
              "iiad/influence": "iteration influence", f"distill/{STUDENT}": f"distil {arm_label(STUDENT)}",
              f"evaluate/{STUDENT}": f"score {arm_label(STUDENT)}", f"evaluate/{ADAPTIVE_RUN}": "score IIET adaptive",
              "bench": "decode benchmark", "results": "table, figure, reading"}
    phases = []
    for key, seconds in plan["phase_seconds"].items():
        if key.startswith("pretrain/"):
            arm = key.split("/", 1)[1]
            phases.append(Phase(f"{key}-s0", f"pretrain {arm_label(arm)}", seconds, root / "runs" / f"{arm}-s0",
                                steps[arm]))
        elif key.startswith("distill/"):
            name = key.split("/", 1)[1]
            distill_steps = max(1, int(plan["tokens"][TEACHER_ARM] * DISTILL_FRACTION) // plan["study"]["batch_tokens"])
            phases.append(Phase(key, labels[key], seconds, root / "runs" / name, distill_steps))
        else:
            phases.append(Phase(key, labels[key], seconds))
    return phases


def _print_plan(plan: dict[str, Any]) -> None:
    tokens = ", ".join(f"{arm} {count:,}" for arm, count in plan["tokens"].items())
    speeds = ", ".join(f"{arm} {plan['study']['batch_tokens'] / s['train_step_s']:,.0f}"
                       for arm, s in plan["speeds"].items())
    print(f"[demo] training speed (tokens/s, probe): {speeds}", flush=True)
    print(f"[demo] plan: pretraining tokens {tokens}; distillation {DISTILL_FRACTION:.2f} x; planned wall time "
          f"{plan['planned_s'] / 60:.1f} min", flush=True)


def _load_plan(root: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The saved plan of an earlier demo with the same options (to continue it), or None for a fresh directory."""
    path = root / PLAN_FILE
    if not path.is_file():
        if root.exists() and any(root.iterdir()):
            raise IIETError(f"{root} is not empty and holds no demo; pass another --output_dir or delete it.")
        return None
    saved = json.loads(path.read_text())
    if saved["request"] != json.loads(json.dumps(request)):
        changed = sorted(k for k in request if saved["request"].get(k) != json.loads(json.dumps(request[k])))
        raise IIETError(f"{root} holds a demo run with other options ({', '.join(changed)}); rerun with the same "
                        "options to continue it, or pass another --output_dir.")
    return saved["plan"]


def _prepare_data(request: dict[str, Any], data_dir: Path) -> None:
    """Tokenizer and packed data from the first ``documents`` files of the built-in corpus (skipped when present)."""
    tokenizer_dir = data_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        train_tokenizer(["builtin"], tokenizer_dir, vocab_size=request["vocab_size"], max_documents=request["documents"])
    # 5% of the documents are held out: enough held-out text to score every model on.
    prepare_data(["builtin"], str(tokenizer_dir), data_dir, seq_len=request["seq_len"], val_fraction=0.05,
                 max_documents=request["documents"])
