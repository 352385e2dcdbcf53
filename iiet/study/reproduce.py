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

import json
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch

from iiet.errors import IIETError

ARMS: dict[str, dict[str, Any]] = {
    "transformer++": {"name": "euler"},
    "dlcl": {"name": "dlcl"},
    "pcformer": {"name": "pcformer", "order": 2},
    "trans-ws": {"name": "weight_shared", "repeats": 4},
    "iiet-r1": {"name": "iiet", "num_iterations": 1},
    "iiet-r2": {"name": "iiet", "num_iterations": 2},
    "iiet-r3": {"name": "iiet", "num_iterations": 3},
}
LABELS = {
    "transformer++": "Transformer++", "dlcl": "DLCL (IIET r=0)", "pcformer": "PCformer", "trans-ws": "Trans WS (k=4)",
    "iiet-r1": "IIET r=1", "iiet-r2": "IIET r=2", "iiet-r3": "IIET r=3", "e-iiet": "E-IIET (IIAD)",
    "lower-bound": "Lower Bound (IIAD)", "distil-pcformer": "Distil PCformer",
}
MULTI_SEED_ARMS = ("transformer++", "iiet-r3")


def _done(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def text_perplexity(
    model_dir: str | Path, text_file: str | Path, seq_len: int, device: str = "cpu", batch_size: int = 16
) -> dict[str, float]:
    """Token perplexity and bits per byte of a whole text file, in non-overlapping windows of ``seq_len`` tokens.

    Bits per byte (total nats / ln 2 / UTF-8 bytes) is comparable across tokenizers; token perplexity only within one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = Path(text_file).read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    usable = (len(ids) - 1) // seq_len * seq_len  # whole windows; each predicts seq_len tokens
    inputs = ids[:usable].view(-1, seq_len)
    targets = ids[1 : usable + 1].view(-1, seq_len)
    nll = 0.0
    with torch.no_grad():
        for x, y in zip(inputs.split(batch_size), targets.split(batch_size)):
            logits = model(x.to(device), use_cache=False).logits.float()
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten().to(device), reduction="sum").item()
    count = targets.numel()
    scored_bytes = len(tokenizer.decode(ids[1 : usable + 1]).encode("utf-8"))
    return {"tokens": count, "token_perplexity": math.exp(nll / count), "bits_per_byte": nll / math.log(2) / scored_bytes}


class Study:
    """One study directory: the steps share its paths, settings and the log."""

    def __init__(self, output_dir: str, settings: dict[str, Any]):
        self.root = Path(output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.state_file = self.root / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"wall_s": {}}
        self.state["settings"] = settings

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=2, default=str))

    def timed(self, key: str, fn, *args, **kwargs):
        start = time.time()
        out = fn(*args, **kwargs)
        self.state["wall_s"][key] = self.state["wall_s"].get(key, 0.0) + time.time() - start
        self.save()
        return out

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name


def reproduce(
    output_dir: str = "runs/reproduce",
    preset: str = "tiny",
    sources: list[str] = ["builtin"],
    data: str | None = None,
    tokenizer: str | None = None,
    tokenizer_vocab_size: int = 2048,
    seq_len: int = 128,
    train_tokens: int = 200_000,
    batch_tokens: int = 4096,
    micro_batch_size: int = 8,
    lr: float = 1e-3,
    warmup_ratio: float = 0.05,
    seeds: int = 2,
    arms: list[str] = list(ARMS),
    history: Literal["residual", "normalized"] = "residual",
    model_overrides: dict[str, Any] = {},
    explicit_first_layer: bool = False,
    eval_texts: list[str] = [],
    eval_data_dir: str | None = None,
    eval_tasks: list[str] = ["lambada", "piqa", "hellaswag", "sciq", "arc_challenge", "winogrande"],
    eval_limit: int | None = 100,
    influence_segments: int = 500,
    distill_fraction: float = 1 / 3,
    bench: bool = True,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    max_minutes_per_run: float | None = None,
    tier: str = "pipeline",
) -> Path:
    """Run the paper's study end to end (train, evaluate, IIAD, benchmark, report); skips what is already done.

    Args:
        output_dir: study directory: runs/, eval/, iiad/, bench/, figures and results.md.
        preset: model size preset for every arm (tiny, cpu-small, 55M, 340M, 740M).
        sources: training text to prepare the data from when ``data`` is not given ("builtin" = Python stdlib).
        data: an already prepared data directory (iiet data-prepare); overrides ``sources``.
        tokenizer: tokenizer for preparing ``sources`` (default: train a byte-level BPE).
        tokenizer_vocab_size: vocabulary of the trained tokenizer.
        seq_len: training sequence length.
        train_tokens: pretraining tokens per model (every arm sees the same tokens in the same order).
        batch_tokens: tokens per optimizer step.
        micro_batch_size: sequences per forward/backward.
        lr: peak learning rate (cosine schedule, AdamW, weight decay 0.01, clipping 1.0 as Appendix B.1).
        warmup_ratio: warm-up fraction of the steps.
        seeds: seeds for Transformer++ and IIET r=3 (the other arms use seed 0).
        arms: which arms to train, from transformer++, dlcl, pcformer, trans-ws, iiet-r1, iiet-r2, iiet-r3.
        history: layer-history reading of DLCL/IIET/PCformer ("residual" or "normalized").
        model_overrides: model config values applied to every arm, e.g. ``{residual_init_scale: 0.1}`` (the
            initialisation that shortens the slow start of the multi-pass models, docs/training.md).
        explicit_first_layer: the IIET arms keep layer 0 explicit (iteration plan ``[0, r, ..., r]``). At small
            token budgets the corrections of the first layer, whose input is the small token embedding, hold IIET
            at the unigram plateau; without them it learns from the start (docs/training.md, "The slow start of IIET").
        eval_texts: raw text files to report perplexity and bits per byte on (e.g. WikiText-2 valid.raw, test.raw).
        eval_data_dir: directory of the zero-shot benchmark files (see docs/evaluation.md); none skips zero-shot.
        eval_tasks: zero-shot tasks to run through lm-eval.
        eval_limit: documents per zero-shot task (null = all).
        influence_segments: segments for the iteration influence of IIET r=3.
        distill_fraction: distillation tokens as a fraction of ``train_tokens`` (the paper: one third).
        bench: run the inference benchmark over the trained models.
        device: auto, cpu or cuda.
        max_minutes_per_run: stop each training run after this many minutes (checkpointed; rerun to continue).
        tier: label written into the report ("pipeline" = smoke run, "evidence" = a run meant as evidence).
    """
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise IIETError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}.")
    settings = {k: v for k, v in locals().items() if k != "unknown"}
    study = Study(output_dir, settings)
    study.state["command"] = "iiet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data_dir = Path(data) if data else study.root / "data"

    from iiet.study.report import write_report

    # Seed 0 of every arm first, then IIAD and the benchmark, then the extra seeds: a study cut short still has
    # one complete pass through every step (and the report is rewritten after each phase).
    trained = study.timed("pretrain", _pretrain, study, data_dir, 1)
    study.timed("evaluate", _evaluate, study, trained, data_dir)
    if "iiet-r3" in trained:
        study.timed("iiad", _iiad, study, trained, data_dir)
    if bench:
        study.timed("bench", _bench, study)
    path = write_report(study)
    if study.settings["seeds"] > 1:
        trained = study.timed("pretrain", _pretrain, study, data_dir, study.settings["seeds"])
        study.timed("evaluate", _evaluate, study, trained, data_dir)
        path = write_report(study)
    print(f"study report: {path}")
    return path


def _train_config(study: Study, data_dir: Path, scheme: dict, seed: int, out: Path, tokens: int, lr: float):
    from iiet.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig

    s = study.settings
    scheme = {**scheme, "history": s["history"]} if scheme["name"] in ("dlcl", "iiet", "pcformer") else scheme
    if s.get("explicit_first_layer"):
        from iiet.models.presets import PRESETS, explicit_first_layer

        scheme = explicit_first_layer(scheme, PRESETS[s["preset"]]["num_hidden_layers"])
    steps = max(1, tokens // s["batch_tokens"])
    return dict(
        model=ModelConfig(preset=s["preset"], scheme=scheme, overrides=dict(s.get("model_overrides") or {})),
        data=DataConfig(path=str(data_dir), sources=list(s["sources"]), tokenizer=s["tokenizer"],
                        tokenizer_vocab_size=s["tokenizer_vocab_size"], seq_len=s["seq_len"]),
        optim=OptimConfig(lr=lr, warmup_ratio=s["warmup_ratio"], batch_tokens=s["batch_tokens"],
                          micro_batch_size=s["micro_batch_size"], max_steps=steps),
        run=RunConfig(output_dir=str(out), seed=seed, device=s["device"], eval_every=max(1, steps // 10),
                      checkpoint_every=max(1, steps // 5), log_every=max(1, steps // 50),
                      max_minutes=s["max_minutes_per_run"], progress_bar=False),
    )


def _pretrain(study: Study, data_dir: Path, seeds: int) -> dict[str, list[Path]]:
    """Train (or find) seeds ``0 .. seeds-1`` of the multi-seed arms and seed 0 of the others."""
    from iiet.train.commands import train

    trained: dict[str, list[Path]] = {}
    for arm in study.settings["arms"]:
        seeds_of_arm = range(seeds) if arm in MULTI_SEED_ARMS else range(1)
        for seed in seeds_of_arm:
            out = study.run_dir(f"{arm}-s{seed}")
            if not _done(out / "final"):
                print(f"[reproduce] pretrain {arm} seed {seed} -> {out}", flush=True)
                config = _train_config(study, data_dir, ARMS[arm], seed, out, study.settings["train_tokens"],
                                       study.settings["lr"])
                study.timed(f"pretrain/{arm}-s{seed}", train, **config)
            if _done(out / "final"):
                trained.setdefault(arm, []).append(out / "final")
    return trained


def _evaluate(study: Study, trained: dict[str, list[Path]], data_dir: Path) -> None:
    for finals in trained.values():
        for final in finals:
            _evaluate_one(study, final.parent.name, final, data_dir)


def _evaluate_one(study: Study, key: str, final: Path, data_dir: Path) -> None:
    results = study.state.setdefault("eval", {})
    entry = results.setdefault(key, {})
    s = study.settings
    if "val" not in entry:
        from iiet.train.metrics import read_metrics

        records = [r for r in read_metrics(final.parent / "metrics.jsonl") if "val_loss" in r]
        entry["val"] = {"loss": records[-1]["val_loss"], "perplexity": math.exp(records[-1]["val_loss"]),
                        "tokens": records[-1].get("tokens")} if records else None
    for text in s["eval_texts"]:
        if text not in entry.setdefault("texts", {}):
            entry["texts"][text] = text_perplexity(final, text, s["seq_len"], _device(s["device"]))
    if s["eval_data_dir"] and "zero_shot" not in entry:
        from iiet.eval.harness import evaluate

        out = evaluate([str(final)], tasks=s["eval_tasks"], data_dir=s["eval_data_dir"], limit=s["eval_limit"],
                       device=_device(s["device"]), output_dir=study.root / "eval" / key)
        entry["zero_shot"] = next(iter(out.values()))["results"]
    study.save()


def _device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _iiad(study: Study, trained: dict[str, list[Path]], data_dir: Path) -> None:
    from iiet.iiad.commands import distill, influence, plan
    from iiet.train.config import DataConfig, OptimConfig, RunConfig

    s = study.settings
    teacher = trained["iiet-r3"][0]
    iiad = study.root / "iiad"
    if not (iiad / "influence" / "influence.json").is_file():
        compare = []
        if "transformer++" in trained:
            influence(model=str(trained["transformer++"][0]), data=str(data_dir), num_segments=s["influence_segments"],
                      output_dir=str(iiad / "influence-transformer++"), device=s["device"], progress_bar=False)
            compare.append(str(iiad / "influence-transformer++" / "influence.json"))
        influence(model=str(teacher), data=str(data_dir), num_segments=s["influence_segments"],
                  output_dir=str(iiad / "influence"), device=s["device"], compare=compare, progress_bar=False)
    influence_file = str(iiad / "influence" / "influence.json")
    for rule in ("e-iiet", "lower-bound"):
        if not (iiad / f"plan-{rule}.json").is_file():
            plan(influence=influence_file, rule=rule, output=str(iiad / f"plan-{rule}.json"))
    tokens = int(s["train_tokens"] * s["distill_fraction"])
    steps = max(1, tokens // s["batch_tokens"])
    students = {"e-iiet": (str(teacher), str(iiad / "plan-e-iiet.json"), None),
                "lower-bound": (str(teacher), str(iiad / "plan-lower-bound.json"), None)}
    if "pcformer" in trained:
        students["distil-pcformer"] = (str(trained["pcformer"][0]), None, "euler")
    for name, (teacher_dir, plan_file, student_scheme) in students.items():
        out = study.run_dir(name)
        if not _done(out / "final"):
            print(f"[reproduce] distill {name} -> {out}", flush=True)
            study.timed(
                f"distill/{name}", distill, teacher=teacher_dir, plan=plan_file, student_scheme=student_scheme,
                data=DataConfig(path=str(data_dir)),
                optim=OptimConfig(lr=s["lr"] * 2 / 3, warmup_ratio=s["warmup_ratio"], batch_tokens=s["batch_tokens"],
                                  micro_batch_size=s["micro_batch_size"], max_steps=steps),
                run=RunConfig(output_dir=str(out), device=s["device"], eval_every=max(1, steps // 5),
                              checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 20),
                              max_minutes=s["max_minutes_per_run"], progress_bar=False),
            )
        if _done(out / "final"):
            _evaluate_one(study, name, out / "final", data_dir)


def _bench(study: Study) -> None:
    from iiet.bench.commands import run_benchmark

    out = study.root / "bench" / "bench.json"
    if out.is_file():
        return
    finals = [study.run_dir(name) / "final" for name in
              ("transformer++-s0", "pcformer-s0", "iiet-r3-s0", "e-iiet", "lower-bound")]
    finals = [str(f) for f in finals if _done(f)]
    device = _device(study.settings["device"])
    result = run_benchmark(finals, preset=study.settings["preset"], batch_sizes=None if device == "cuda" else [1, 4],
                           prompt_len=32, new_tokens=16, repeats=3, device=device, compile=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    from iiet.bench.commands import render

    (out.parent / "bench.md").write_text(render(result))
    out.write_text(json.dumps(result, indent=2, default=str))


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and spread (max - min) over seeds."""
    return statistics.mean(values), (max(values) - min(values)) if len(values) > 1 else 0.0
