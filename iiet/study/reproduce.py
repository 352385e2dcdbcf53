"""``iiet reproduce``: the paper's whole study at any scale, one command, resumable step by step.

Steps (each writes under ``output_dir`` and is skipped when its result is already there; an interrupted training run
resumes from its last checkpoint):

1. pretrain every arm — Transformer++, DLCL (IIET r=0), PCformer, Trans WS (k=4), IIET r in {1, 2, 3} — on the same
   data, order, seed and token count (Transformer++ and IIET r=3 over several seeds);
2. evaluate each: token perplexity and bits per byte on the held-out split of the training corpus and on extra text
   files (e.g. WikiText-2 valid/test), and the zero-shot suite through lm-evaluation-harness (``iiet eval``);
3. IIAD on IIET r=3 (seed 0): influence -> E-IIET and Lower Bound plans -> distillation of each for a third of the
   pretraining tokens; and Distil PCformer (PCformer teacher -> Euler student);
4. the inference benchmark over the trained models;
5. ``results.md``: tables shaped like the paper's Tables 1, 3 and 5, the figures (perplexity vs r, influence heatmap,
   loss curves), seeds, tokens, wall time, machine and the command.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from transformers import AutoModelForCausalLM, AutoTokenizer

from iiet.bench.commands import render, run_benchmark
from iiet.data.packed import META_FILE, load_meta
from iiet.eval.harness import evaluate
from iiet.iiad.distill import DistillConfig, DistillTrainConfig, distill
from iiet.iiad.influence import Influence
from iiet.iiad.measure import INFLUENCE_FILE, measure_influence
from iiet.iiad.plan import make_plan
from iiet.models.costs import training_flops_per_token
from iiet.models.loading import resolve_device
from iiet.models.names import resolve
from iiet.models.presets import PRESETS
from iiet.study.compute import matched_depth, matched_tokens
from iiet.study.heldout import document_bits_per_byte, held_out_split, text_perplexity
from iiet.study.report import write_report
from iiet.study.study import (ADAPTIVE_RUN, COMPUTE_MATCHED, COMPUTE_REFERENCE, DISTIL_PCFORMER, MULTI_SEED_ARMS,
                              PCFORMER_E_IIET, PCFORMER_TEACHERS, Study, StudyConfig)
from iiet.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from iiet.train.metrics import read_metrics
from iiet.train.trainer import build_model_config, prepare_run_data, run_training

BENCH_RUNS = ("transformer++-s0", "dlcl-s0", "pcformer-s0", "pcformer-fl-s0", "iiet-r3-s0", ADAPTIVE_RUN, "e-iiet",
              "lower-bound", PCFORMER_E_IIET)
TEACHER_RUN = "iiet-r3-s0"  # IIAD's teacher, and the weights decoded self-speculatively


def _done(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def reproduce(**settings) -> Path:
    """Run the paper's study end to end (train, evaluate, IIAD, benchmark, report); skips what is already done.

    Every option is a field of ``iiet.study.study.StudyConfig``; ``run_study`` is the same from Python.
    """
    command = "iiet " + " ".join(shlex.quote(a) for a in regenerating_arguments(sys.argv[1:]))
    path = run_study(StudyConfig(**settings), command=command)
    print(f"study report: {path}")
    return path


def regenerating_arguments(argv: list[str]) -> list[str]:
    """The command line that regenerates a report: ``argv`` without ``--report_only`` (the report of a study in
    progress names the command that finishes it)."""
    out, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--report_only":
            skip = True
        elif not argument.startswith("--report_only="):
            out.append(argument)
    return out


def run_study(config: StudyConfig, command: str | None = None, observer=None) -> Path:
    """Run every step of the study in ``config.output_dir`` that is not done yet; return the path of results.md.

    ``command`` is recorded in the report (the CLI passes its command line).
    """
    config.validate()
    study = Study(config, command, observer)
    if config.report_only:
        study.timed("evaluate", _evaluate, study, _finished(study, config.seeds))
        return write_report(study)
    # Seed 0 of every arm first, then IIAD and the benchmark, then the extra seeds: a study cut short still has
    # one complete pass through every step (and the report is rewritten after each phase). Without those steps
    # nothing waits for seed 0: every seed trains in one pass (the workers stay busy).
    first_seeds = 1 if config.iiad or config.bench else config.seeds
    trained = study.timed("pretrain", _pretrain, study, first_seeds)
    study.timed("evaluate", _evaluate, study, trained)
    _iiad_if_taught(study)
    if config.bench:
        study.timed("bench", _bench, study)
    path = write_report(study)
    if config.seeds > first_seeds:
        trained = study.timed("pretrain", _pretrain, study, config.seeds)
        study.timed("evaluate", _evaluate, study, trained)
        _iiad_if_taught(study)  # a teacher whose seed 0 was merged (no checkpoint here) is a later seed: now trained
        path = write_report(study)
    return path


def _iiad_if_taught(study: Study) -> None:
    """IIAD (``_iiad``, each step skipped once done) when the study has a teacher: the lowest seed of IIET r=3 or
    of a PCformer arm with a checkpoint here (seed 0, unless it was merged from another study's record, whose
    checkpoints are elsewhere or gone)."""
    teachers = _finished(study, study.config.seeds) if study.config.iiad else {}
    if "iiet-r3" in teachers or any(arm in teachers for arm in PCFORMER_TEACHERS):
        study.timed("iiad", _iiad, study, teachers)


def _device_name(device: str) -> str:
    return str(resolve_device(device))


def _cadence(steps: int, evals: int, checkpoints: int, logs: int) -> dict[str, int]:
    return dict(eval_every=max(1, steps // evals), checkpoint_every=max(1, steps // checkpoints),
                log_every=max(1, steps // logs))


def train_config(study: Study, arm: str, seed: int) -> TrainConfig:
    """The pretraining run of ``arm`` with ``seed`` (the same data, order and length for every arm; the
    compute-matched Transformer++ runs take their tokens or depth from ``COMPUTE_REFERENCE``)."""
    c = study.config
    if arm in COMPUTE_MATCHED:
        return _compute_matched_config(study, arm, seed)
    num_layers = PRESETS[c.preset]["num_hidden_layers"]
    scheme = resolve(arm, num_layers).scheme_config
    if scheme.has_history:
        scheme = dataclasses.replace(scheme, history=c.history)
    # The IIET arms (PCformer's variant is the pcformer-fl arm); an arm named by its plan (e-iiet=3,3,3,3) keeps it.
    if c.explicit_first_layer and scheme.corrections(num_layers) is not None and not scheme.has_explicit_plan:
        scheme = scheme.explicit_first_layer(num_layers)
    steps = max(1, c.tokens_of(arm) // c.batch_tokens)
    return TrainConfig(
        model=ModelConfig(preset=c.preset, scheme=scheme.to_dict(), overrides=dict(c.model_overrides)),
        data=DataConfig(path=str(study.data_dir), sources=list(c.sources), tokenizer=c.tokenizer,
                        tokenizer_vocab_size=c.tokenizer_vocab_size, seq_len=c.seq_len),
        optim=OptimConfig(lr=c.lr, warmup_ratio=c.warmup_ratio, batch_tokens=c.batch_tokens,
                          micro_batch_size=c.micro_batch_size, max_steps=steps),
        run=RunConfig(output_dir=str(study.run_dir(f"{arm}-s{seed}")), seed=seed, device=c.device,
                      eval_batches=c.eval_batches, max_minutes=c.max_minutes_per_run, progress_bar=False,
                      **_cadence(steps, c.evals_per_run, 5, 50)),
    )


def _compute_matched_config(study: Study, arm: str, seed: int) -> TrainConfig:
    """Transformer++ at the reference arm's training FLOPs (``-flops``: more tokens) or inference FLOPs (``-deep``)."""
    c = study.config
    base = train_config(study, "transformer++", seed)
    reference = train_config(study, COMPUTE_REFERENCE, seed)
    meta = load_meta(study.data_dir)
    ref_config = build_model_config(reference.model.preset, reference.model.scheme, meta["vocab_size"],
                                    dict(reference.model.overrides), meta)
    if arm == "transformer++-flops":
        euler = build_model_config(base.model.preset, base.model.scheme, meta["vocab_size"],
                                   dict(base.model.overrides), meta)
        tokens = matched_tokens(ref_config, euler, c.tokens_of(COMPUTE_REFERENCE), c.seq_len)
        steps = max(1, tokens // c.batch_tokens)
        base.optim.max_steps = steps
        for key, value in _cadence(steps, c.evals_per_run, 5, 50).items():
            setattr(base.run, key, value)
    else:
        layers = matched_depth(ref_config, c.preset, c.seq_len, meta["vocab_size"])
        base.model.overrides = {**base.model.overrides, "num_hidden_layers": layers}
    base.run.output_dir = str(study.run_dir(f"{arm}-s{seed}"))
    return base


def _pretraining_runs(study: Study, seeds: int) -> list[tuple[str, int, TrainConfig]]:
    """Seeds ``0 .. seeds-1`` of the multi-seed arms and seed 0 of the others, in the study's order; the
    compute-matched Transformer++ runs (``compute_matched``) after the arms."""
    arms = list(study.config.arms)
    if study.config.compute_matched:
        arms += [arm for arm in COMPUTE_MATCHED if arm not in arms]
    return [(arm, seed, train_config(study, arm, seed))
            for arm in arms for seed in (range(seeds) if arm in MULTI_SEED_ARMS else range(1))]


def _finished(study: Study, seeds: int) -> dict[str, list[Path]]:
    trained: dict[str, list[Path]] = {}
    for arm, _, config in _pretraining_runs(study, seeds):
        final = Path(config.run.output_dir) / "final"
        if _done(final):
            trained.setdefault(arm, []).append(final)
    return trained


def _pretrain(study: Study, seeds: int) -> dict[str, list[Path]]:
    """Train the pretraining runs that are neither finished nor merged from another study (``workers`` at a time);
    return the finished ones."""
    if not (study.data_dir / META_FILE).is_file():  # once, before any run (the runs may start at once)
        first = train_config(study, study.config.arms[0], 0)
        print(f"[reproduce] prepare the data -> {study.data_dir}", flush=True)
        study.timed("prepare", prepare_run_data, first.data)
    pending = [(f"{arm}-s{seed}", config) for arm, seed, config in _pretraining_runs(study, seeds)
               if not _done(Path(config.run.output_dir) / "final") and f"{arm}-s{seed}" not in study.merged]
    if study.config.workers > 1 and len(pending) > 1:
        _pretrain_parallel(study, pending)
    else:
        for name, config in pending:
            print(f"[reproduce] pretrain {name} -> {config.run.output_dir}", flush=True)
            study.timed(f"pretrain/{name}", run_training, config)
    return _finished(study, seeds)


def _training_cost(config: TrainConfig, vocab_size: int) -> float:
    model = build_model_config(config.model.preset, config.model.scheme, vocab_size, dict(config.model.overrides))
    return training_flops_per_token(model, config.data.seq_len) * config.optim.max_steps


def _pretrain_parallel(study: Study, pending: list[tuple[str, TrainConfig]]) -> None:
    """Train ``pending`` in ``workers`` processes, the costliest first (so the last to start are the short ones),
    each process with its share of the CPU threads; a failed run stops the study with its own error."""
    workers = min(study.config.workers, len(pending))
    threads = max(1, torch.get_num_threads() // workers)
    vocab_size = load_meta(study.data_dir)["vocab_size"]
    pending = sorted(pending, key=lambda item: -_training_cost(item[1], vocab_size))
    print(f"[reproduce] pretrain {len(pending)} runs, {workers} at a time ({threads} CPU thread(s) each): "
          + ", ".join(name for name, _ in pending), flush=True)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or CUDA state
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_train_in_worker, config, threads): name for name, config in pending}
        failure = None
        for future in as_completed(futures):
            if future.cancelled():
                continue
            name, error = futures[future], future.exception()
            if error is not None:  # the runs under way finish (or checkpoint); the queued ones do not start
                failure = failure or error
                for queued in futures:
                    queued.cancel()
                continue
            key = f"pretrain/{name}"
            study.state["wall_s"][key] = study.state["wall_s"].get(key, 0.0) + future.result()
            study.save()
            print(f"[reproduce] pretrained {name}", flush=True)
    if failure is not None:
        raise failure


def _train_in_worker(config: TrainConfig, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.time()
    run_training(config)
    return time.time() - start


def _evaluate(study: Study, trained: dict[str, list[Path]]) -> None:
    for finals in trained.values():
        for final in finals:
            _evaluate_one(study, final.parent.name, final)


def _evaluate_one(study: Study, key: str, final: Path) -> None:
    entry = study.state.setdefault("eval", {}).setdefault(key, {})
    c = study.config
    if "val" not in entry and (final.parent / "metrics.jsonl").is_file():  # derived without training: no curves
        records = [r for r in read_metrics(final.parent) if "val_loss" in r]
        entry["val"] = {"loss": records[-1]["val_loss"], "perplexity": math.exp(records[-1]["val_loss"]),
                        "tokens": records[-1].get("tokens")} if records else None
    if c.held_out_tokens and "held_out" not in entry:
        entry["held_out"] = held_out_split(final, study.data_dir, c.held_out_tokens, c.seq_len, _device_name(c.device))
    for text in c.eval_texts:
        if text not in entry.setdefault("texts", {}):
            entry["texts"][text] = text_perplexity(final, text, c.seq_len, _device_name(c.device))
    for corpus in c.eval_corpora:
        if corpus not in entry.setdefault("corpora", {}):
            entry["corpora"][corpus] = document_bits_per_byte(final, corpus, c.seq_len, max_documents=c.eval_documents,
                                                              device=_device_name(c.device))
    if c.eval_data_dir and "zero_shot" not in entry:
        out = evaluate([str(final)], tasks=c.eval_tasks, data_dir=c.eval_data_dir, limit=c.eval_limit,
                       device=_device_name(c.device), output_dir=study.root / "eval" / key)
        entry["zero_shot"] = next(iter(out.values()))["results"]
    study.save()


def _influence(study: Study, trained: dict[str, list[Path]], teacher: Path, folder: str) -> Path:
    """influence.json of ``teacher`` in ``iiad/folder``, with Transformer++'s block influence beside it when there
    is one."""
    c, iiad = study.config, study.root / "iiad"
    path = iiad / folder / INFLUENCE_FILE
    if path.is_file():
        return path
    # The held-out split, unless the data holds none (every document went to training: a corpus of a few documents).
    meta = load_meta(study.data_dir)
    split = "val" if meta.get("splits", {}).get("val", {}).get("num_sequences") else "train"
    if split == "train":
        print(f"[reproduce] {study.data_dir} has no held-out sequences: influence measured on the training split",
              flush=True)
    compare = []
    if "transformer++" in trained:
        reference = iiad / "influence-transformer++" / INFLUENCE_FILE
        if not reference.is_file():
            measure_influence(str(trained["transformer++"][0]), str(study.data_dir), num_segments=c.influence_segments,
                              output_dir=str(reference.parent), split=split, device=c.device, progress_bar=False)
        compare.append(str(reference))
    measure_influence(str(teacher), str(study.data_dir), num_segments=c.influence_segments,
                      output_dir=str(path.parent), split=split, device=c.device, compare=compare, progress_bar=False)
    return path


def _plan_file(study: Study, influence_file: Path, rule: str, name: str) -> Path:
    path = study.root / "iiad" / f"plan-{name}.json"
    if not path.is_file():
        make_plan(Influence.load(influence_file), rule, influence_file=str(influence_file)).save(path)
    return path


def distill_config(study: Study, name: str, teacher: Path, plan: Path | None, student_scheme: str | None):
    """The distillation run ``name``: ``distill_fraction`` of the pretraining tokens at 2/3 of its learning rate."""
    c = study.config
    teacher_arm = teacher.parent.name.rsplit("-s", 1)[0]
    steps = max(1, int(c.tokens_of(teacher_arm) * c.distill_fraction) // c.batch_tokens)
    return DistillTrainConfig(
        distill=DistillConfig(teacher=str(teacher), plan=None if plan is None else str(plan),
                              student_scheme=student_scheme),
        data=DataConfig(path=str(study.data_dir)),
        optim=OptimConfig(lr=c.lr * 2 / 3, warmup_ratio=c.warmup_ratio, batch_tokens=c.batch_tokens,
                          micro_batch_size=c.micro_batch_size, max_steps=steps),
        run=RunConfig(output_dir=str(study.run_dir(name)), device=c.device, max_minutes=c.max_minutes_per_run,
                      eval_batches=c.eval_batches, progress_bar=False,
                      **_cadence(steps, max(1, c.evals_per_run // 2), 2, 20)),
    )


def _iiad(study: Study, trained: dict[str, list[Path]]) -> None:
    """Influence of IIET r=3 -> E-IIET and Lower Bound plans -> distillation; the same for PCformer (its Lower
    Bound is the explicit-Euler student: Distil PCformer). ``trained``: the finished runs of each arm, lowest seed
    first; the first is the teacher."""
    students = {}
    teacher = trained["iiet-r3"][0] if "iiet-r3" in trained else None
    rules = [rule for rule in study.config.students if rule not in study.merged]  # a merged student: not again
    if teacher is not None and rules:
        influence_file = study.timed("iiad/influence", _influence, study, trained, teacher, "influence")
        for rule in rules:
            students[rule] = (teacher, _plan_file(study, influence_file, rule, rule), None)
    pcformer = next((trained[arm][0] for arm in PCFORMER_TEACHERS if arm in trained), None)
    if pcformer is not None:
        if DISTIL_PCFORMER not in study.merged:
            students[DISTIL_PCFORMER] = (pcformer, None, resolve("transformer++", 1).scheme)
        if "e-iiet" in study.config.students and PCFORMER_E_IIET not in study.merged:
            influence_file = study.timed("iiad/influence-pcformer", _influence, study, trained, pcformer,
                                         "influence-pcformer")
            students[PCFORMER_E_IIET] = (pcformer, _plan_file(study, influence_file, "e-iiet", PCFORMER_E_IIET), None)
    distilled: dict[str, str] = {}  # the student made by each (teacher, plan, student scheme), once
    for name, (teacher_dir, plan_file, student_scheme) in students.items():
        plan = None if plan_file is None else json.loads(plan_file.read_text())["iteration_plan"]
        same = distilled.setdefault(json.dumps([str(teacher_dir), plan, student_scheme], sort_keys=True), name)
        if same != name:  # e.g. E-IIET's plan is the Lower Bound's: the same student, distilled once
            study.state.setdefault("same_student", {})[name] = same  # its evaluation is that one's (Study.evaluations)
            study.save()
            continue
        study.state.get("same_student", {}).pop(name, None)  # (a plan that has changed since)
        final = study.run_dir(name) / "final"
        if not _done(final):
            print(f"[reproduce] distill {name} -> {final.parent}", flush=True)
            study.timed(f"distill/{name}", distill, distill_config(study, name, teacher_dir, plan_file, student_scheme))
        if _done(final):
            study.timed(f"evaluate/{name}", _evaluate_one, study, name, final)
    if study.config.adaptive_tolerance is not None and teacher is not None:
        final = study.run_dir(ADAPTIVE_RUN) / "final"
        if not _done(final):
            _export_adaptive(teacher, final, study.config.adaptive_tolerance)
        study.timed(f"evaluate/{ADAPTIVE_RUN}", _evaluate_one, study, ADAPTIVE_RUN, final)


def _export_adaptive(teacher: Path, out: Path, tolerance: float) -> None:
    """The same weights as ``teacher`` with adaptive corrections in the config: a checkpoint every tool can load."""
    scheme = json.loads((teacher / "config.json").read_text())["scheme"]
    model = AutoModelForCausalLM.from_pretrained(teacher, scheme={**scheme, "adaptive_tolerance": tolerance})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)


def _bench(study: Study) -> None:
    out = study.root / "bench" / "bench.json"
    if out.is_file():
        return
    finals = [str(study.run_dir(name) / "final") for name in BENCH_RUNS if _done(study.run_dir(name) / "final")]
    teacher = study.run_dir(TEACHER_RUN) / "final"
    if study.config.draft and _done(teacher):  # the same weights, decoded by exact self-speculative decoding
        finals.append(f"{teacher}+draft={study.config.draft}")
    device = _device_name(study.config.device)
    batch_sizes = study.config.bench_batch_sizes or (None if device == "cuda" else [1, 4])
    result = run_benchmark(finals, preset=study.config.preset, batch_sizes=batch_sizes,
                           prompt_len=32, new_tokens=16, repeats=3, device=device, compile=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "bench.md").write_text(render(result))
    out.write_text(json.dumps(result, indent=2, default=str))
