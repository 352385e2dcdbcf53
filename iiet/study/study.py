"""What a reproduction study is: its typed config (``StudyConfig``), its arms, and its directory (``Study``).

A study directory holds ``study.json`` (the config, the wall time of every step, the evaluation results) next to
``runs/``, ``eval/``, ``iiad/``, ``bench/``, ``figures/`` and ``results.md``. Every step records what it finished
there, so running the same config on the same directory again skips the finished steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from iiet.data.packed import META_FILE
from iiet.errors import IIETError
from iiet.models.names import resolve
from iiet.models.presets import PRESETS
from iiet.outputs import check_writable

# The default arms: names of the table of named models (``iiet.models.names``), which gives their schemes and labels.
ARMS = ("transformer++", "dlcl", "pcformer", "trans-ws", "iiet-r1", "iiet-r2", "iiet-r3")
PLAN_RULES = ("e-iiet", "lower-bound")  # IIAD plans of IIET r=3, each distilled into a student of that name
ADAPTIVE_RUN = "iiet-r3-adaptive"  # IIET r=3 (seed 0) with adaptive corrections: the same weights
DISTIL_PCFORMER = "distil-pcformer"  # the Transformer++ distilled from the PCformer arm
# IIAD of PCformer: the explicit-first-layer variant is the teacher when the study trains it (it leaves the plateau
# that the paper's PCformer is stuck on at small scale); its E-IIET plan keeps the predictor orders that matter.
PCFORMER_TEACHERS = ("pcformer-fl", "pcformer")
PCFORMER_E_IIET = "pcformer-e-iiet"
# Transformer++ at the compute of COMPUTE_REFERENCE (StudyConfig.compute_matched; iiet.study.compute).
COMPUTE_REFERENCE = "iiet-r3"
COMPUTE_MATCHED = {
    "transformer++-flops": "Transformer++ at IIET r=3's training FLOPs (more tokens)",
    "transformer++-deep": "Transformer++, deeper: IIET r=3's inference FLOPs per token",
}
MULTI_SEED_ARMS = ("transformer++", COMPUTE_REFERENCE, *COMPUTE_MATCHED)  # the arms of every verdict: every seed
ZERO_SHOT_TASKS = ("lambada", "piqa", "hellaswag", "sciq", "arc_challenge", "winogrande")


def arm_label(arm: str, preset: str = "tiny") -> str:
    """The paper's label of an arm or of a model the study makes from one: an IIAD student (``PLAN_RULES``,
    ``DISTIL_PCFORMER``, ``PCFORMER_E_IIET``) or a compute-matched Transformer++ (``COMPUTE_MATCHED``)."""
    if arm in COMPUTE_MATCHED:
        return COMPUTE_MATCHED[arm]
    num_layers = PRESETS[preset]["num_hidden_layers"]
    if arm == DISTIL_PCFORMER:
        return f"Distil {resolve('pcformer', num_layers).label}"
    if arm == PCFORMER_E_IIET:
        return f"{resolve('pcformer', num_layers).label}, E-IIET plan (IIAD)"
    try:
        label = resolve(arm, num_layers).label
    except IIETError:
        return arm  # a run the table does not name
    return f"{label.split(' (')[0]} (IIAD)" if arm in PLAN_RULES else label


@dataclass
class StudyConfig:
    """The paper's study at one scale: which arms, on which data, for how many tokens, evaluated how.

    Args:
        output_dir: study directory: runs/, eval/, iiad/, bench/, figures and results.md.
        preset: model size preset for every arm (tiny, cpu-small, 55M, 340M, 740M).
        sources: training text to prepare the data from when ``data`` is not given ("builtin" = Python stdlib).
        data: an already prepared data directory (iiet data-prepare); overrides ``sources``.
        tokenizer: tokenizer for preparing ``sources`` (default: train a byte-level BPE).
        tokenizer_vocab_size: vocabulary of the trained tokenizer.
        seq_len: training sequence length.
        train_tokens: pretraining tokens per model (every arm sees the same tokens in the same order).
        arm_tokens: pretraining tokens of particular arms instead of ``train_tokens``, e.g. an equal-time
            comparison (``{transformer++: 400000, iiet-r3: 150000}``); distillation counts from its teacher's.
        batch_tokens: tokens per optimizer step.
        micro_batch_size: sequences per forward/backward.
        lr: peak learning rate (cosine schedule, AdamW, weight decay 0.01, clipping 1.0 as Appendix B.1).
        warmup_ratio: warm-up fraction of the steps.
        seeds: seeds for Transformer++, IIET r=3 and the compute-matched Transformer++ arms (the other arms use
            seed 0).
        arms: which arms to train: names of the table of named models (``iiet bench --help`` lists them), by
            default transformer++, dlcl, pcformer, trans-ws, iiet-r1, iiet-r2, iiet-r3; e.g. ``pcformer-fl`` adds the
            PCformer with an explicit first layer.
        history: layer-history reading of DLCL/IIET/PCformer ("residual" or "normalized").
        model_overrides: model config values applied to every arm, e.g. ``{residual_init_scale: 0.1}`` (the
            initialisation that shortens the slow start of the multi-pass models, docs/training.md).
        explicit_first_layer: the IIET arms keep layer 0 explicit (iteration plan ``[0, r, ..., r]``). At small
            token budgets the corrections of the first layer, whose input is the small token embedding, hold IIET
            at the unigram plateau; without them it learns from the start (docs/training.md, "The slow start of IIET").
            An arm whose name gives its plan keeps it: ``"e-iiet=3,3,3,3"`` is the paper's IIET r=3 (every layer
            iterating) beside the explicit-first-layer arms, in the same study.
        compute_matched: also train Transformer++ at IIET r=3's compute: on as many training FLOPs (more tokens,
            ``transformer++-flops``) and, deeper, with its inference FLOPs per token (``transformer++-deep``, same
            tokens); see ``iiet.study.compute``. The report then plots validation loss against training FLOPs.
        eval_texts: raw text files to report perplexity and bits per byte on (e.g. WikiText-2 valid.raw, test.raw).
        eval_corpora: held-out corpora scored document by document (bits per byte, median and quartiles over
            documents), as sources ``iiet data-prepare`` takes: ``builtin`` (Python source: another domain), a
            file, directory or glob; never the training corpus.
        eval_documents: documents scored per held-out corpus (the first ones, each cut to 2048 tokens).
        held_out_tokens: also score the first this-many tokens of the data's own held-out split (perplexity, bits
            per byte, and the block evaluations per token actually run); 0 skips.
        eval_batches: micro-batches of the held-out split per validation during training (null = all of it).
        evals_per_run: validations during each pretraining run (the points of the validation loss curves).
        eval_data_dir: directory of the zero-shot benchmark files (see docs/evaluation.md); none skips zero-shot.
        eval_tasks: zero-shot tasks to run through lm-eval.
        eval_limit: documents per zero-shot task (null = all).
        influence_segments: segments for the iteration influence of IIET r=3.
        distill_fraction: distillation tokens as a fraction of the teacher's pretraining tokens (the paper: 1/3).
        students: IIAD plans to distil IIET r=3 into, from e-iiet and lower-bound (Distil PCformer comes with the
            pcformer arm).
        adaptive_tolerance: also evaluate and benchmark IIET r=3 with adaptive corrections at this tolerance
            (docs/adaptive.md; the same weights, no training); null skips.
        draft: also benchmark IIET r=3 decoded by exact self-speculative decoding with this draft, as after
            ``+draft=`` in an ``iiet bench`` spec (e.g. ``lower-bound:k=4``); null skips.
        iiad: run IIAD on the trained IIET r=3 and PCformer arms (iteration influence, plans, distillation: a third of
            the teacher's pretraining tokens per student). With neither ``iiad`` nor ``bench`` nothing waits for the
            first seeds, so every seed of every arm trains in one pass (``workers`` at a time).
        bench: run the inference benchmark over the trained models.
        bench_batch_sizes: decode batch sizes of the benchmark (default: 1 and 4 on CPU, 1, 8 and 32 on GPU).
        device: auto, cpu or cuda.
        max_minutes_per_run: stop each training run after this many minutes (checkpointed; rerun to continue).
        workers: pretraining runs trained at once, each in its own process with ``threads // workers`` CPU threads
            (on a CPU, one run per core trains the study fastest: a small model does not use many threads well).
        report_only: evaluate the finished pretraining runs and write the report, training nothing (no
            pretraining, no distillation, no benchmark): a report of a study in progress.
        tier: label written into the report ("pipeline" = smoke run, "evidence" = a run meant as evidence).
        merge_results: ``results.json`` files of other studies with the same training settings (runs trained on
            another machine, or the record of runs whose checkpoints are gone): their finished runs join this report's
            tables, verdict, compute figure and ``results.json``, each marked with where it came from, unless this
            study has a finished run of the same name. Nothing is trained or evaluated for them.
    """

    output_dir: str = "runs/reproduce"
    preset: str = "tiny"
    sources: list[str] = field(default_factory=lambda: ["builtin"])
    data: str | None = None
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 2048
    seq_len: int = 128
    train_tokens: int = 200_000
    arm_tokens: dict[str, int] = field(default_factory=dict)
    batch_tokens: int = 4096
    micro_batch_size: int = 8
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    seeds: int = 2
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    history: Literal["residual", "normalized"] = "residual"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    explicit_first_layer: bool = False
    compute_matched: bool = False
    eval_texts: list[str] = field(default_factory=list)
    eval_corpora: list[str] = field(default_factory=list)
    eval_documents: int = 200
    held_out_tokens: int = 0
    eval_batches: int | None = 50
    evals_per_run: int = 10
    eval_data_dir: str | None = None
    eval_tasks: list[str] = field(default_factory=lambda: list(ZERO_SHOT_TASKS))
    eval_limit: int | None = 100
    influence_segments: int = 500
    distill_fraction: float = 1 / 3
    students: list[str] = field(default_factory=lambda: list(PLAN_RULES))
    adaptive_tolerance: float | None = None
    draft: str | None = None
    iiad: bool = True
    bench: bool = True
    bench_batch_sizes: list[int] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_minutes_per_run: float | None = None
    workers: int = 1
    report_only: bool = False
    tier: str = "pipeline"
    merge_results: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Check what needs no data or model; raise ``IIETError`` naming the field and the fix."""
        if self.preset not in PRESETS:
            raise IIETError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}.")
        if not self.arms:
            raise IIETError("--arms is empty; name at least one arm, e.g. --arms '[transformer++, iiet-r3]'.")
        for arm in self.arms:
            try:
                resolve(arm, PRESETS[self.preset]["num_hidden_layers"])
            except IIETError as error:
                raise IIETError(f"unknown arm {arm!r}: {error}") from None
        unknown = sorted(set(self.students) - set(PLAN_RULES))
        if unknown:
            raise IIETError(f"unknown student(s) {unknown}; choose from {list(PLAN_RULES)}.")
        unknown = sorted(set(self.arm_tokens) - set(self.arms))
        if unknown:
            raise IIETError(f"arm_tokens names {unknown}, which are not among the arms {self.arms}.")
        if self.report_only and not (self.data_dir / META_FILE).is_file():
            raise IIETError(f"--report_only true: {self.data_dir} holds no prepared data, so no run of this study has "
                            "finished; run the command without --report_only first.")
        if self.workers < 1:
            raise IIETError(f"--workers must be at least 1, got {self.workers}.")
        for path in self.merge_results:
            merged_runs(path, self)
        check_writable(self.output_dir, "--output_dir")  # before hours of data preparation and training

    @property
    def data_dir(self) -> Path:
        """The prepared data of the study: ``data``, or ``output_dir/data`` prepared from ``sources``."""
        return Path(self.data) if self.data else Path(self.output_dir) / "data"

    def tokens_of(self, arm: str) -> int:
        """Pretraining tokens of ``arm``."""
        return int(self.arm_tokens.get(arm, self.train_tokens))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The settings two studies must share for their runs to be compared in one report (``merge_results``); where a run
# happened (directory, device, workers) and how it is evaluated or reported do not matter.
TRAINING_SETTINGS = ("preset", "seq_len", "train_tokens", "arm_tokens", "batch_tokens", "lr", "warmup_ratio",
                     "history", "model_overrides", "explicit_first_layer", "evals_per_run", "eval_batches")


def training_settings(config: StudyConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in TRAINING_SETTINGS}


def data_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What makes two prepared data directories the same data, from their ``meta.json`` (not where they are)."""
    return {"tokenizer_hash": meta.get("tokenizer_hash"), "vocab_size": meta.get("vocab_size"),
            "seq_len": meta.get("seq_len"), "val_fraction": meta.get("val_fraction"), "seed": meta.get("seed"),
            "sources": [source.get("sha256") for source in meta.get("sources", [])]}


def merged_runs(path: str | Path, config: StudyConfig) -> list[dict[str, Any]]:
    """The finished runs of another study's ``results.json`` (``merge_results``), checked against ``config``; each gets
    ``merged_from``. Raises ``IIETError`` naming the file and what differs."""
    path = Path(path)
    flag = f"--merge_results {path}"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise IIETError(f"{flag}: no such file; name the results.json of a study (written next to its results.md).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IIETError(f"{flag}: not a readable results.json ({type(error).__name__}); name the results.json "
                        "of a study.") from None
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list):
        raise IIETError(f"{flag}: not a study's results.json (it has no list of runs); name the results.json of a "
                        "study (written next to its results.md).")
    if results.get("seq_len") != config.seq_len:
        raise IIETError(f"{flag}: its runs were trained at sequence length {results.get('seq_len')}, this study's "
                        f"is {config.seq_len}; merge only studies with the same settings.")
    for key, theirs in (results.get("settings") or {}).items():  # older results.json files record no settings
        ours = getattr(config, key, None)
        if key in TRAINING_SETTINGS and theirs != ours:
            raise IIETError(f"{flag}: its {key} is {theirs!r}, this study's is {ours!r}; merge only studies with "
                            "the same training settings.")
    meta_file = config.data_dir / META_FILE
    if results.get("data") and meta_file.is_file():
        ours = data_identity(json.loads(meta_file.read_text()))
        differs = [key for key, value in results["data"].items() if ours.get(key) != value]
        if differs:
            raise IIETError(f"{flag}: its runs were trained on other data ({', '.join(differs)} differ from "
                            f"{meta_file}); merge only studies of the same prepared data.")
    # Its finished runs only: a run it had under way is no result (and this study may train it).
    return [{**row, "merged_from": str(path)} for row in results["runs"]
            if isinstance(row, dict) and "run" in row and row.get("finished")]


class Study:
    """One study directory: the steps share its config, paths and state (``study.json``)."""

    def __init__(self, config: StudyConfig, command: str | None = None, observer: Any = None):
        self.config = config
        # ``observer.start(key)`` / ``observer.finish(key)`` around every timed step (the demo's progress lines).
        self.observer = observer
        self.root = Path(config.output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file = self.root / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"wall_s": {}}
        self.state["settings"] = config.to_dict()
        if command is not None:
            self.state["command"] = command

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @functools.cached_property
    def merged(self) -> dict[str, dict[str, Any]]:
        """The runs of ``merge_results`` this study does not have finished itself, by run name (the later file wins)."""
        rows = {}
        for path in self.config.merge_results:
            for row in merged_runs(path, self.config):
                if not (self.run_dir(row["run"]) / "final" / "config.json").is_file():
                    rows[row["run"]] = row
        return rows

    @property
    def evaluations(self) -> dict[str, Any]:
        """Evaluation results by run: this study's (``study.json``), those of the merged runs and of the students
        named twice."""
        merged = {name: row["evaluation"] for name, row in self.merged.items() if row.get("evaluation")}
        evaluations = {**self.state.get("eval", {}), **merged}
        # A student distilled once for two plans (``same_student``): the other name shares its evaluation.
        for name, same in self.state.get("same_student", {}).items():
            if same in evaluations:
                evaluations[name] = evaluations[same]
        return evaluations

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=2, default=str))

    def timed(self, key: str, fn, *args, **kwargs):
        """Run ``fn`` and add its wall time to ``wall_s[key]`` (a resumed step adds to what it took before)."""
        start = time.time()
        if self.observer is not None:
            self.observer.start(key)
        out = fn(*args, **kwargs)
        if self.observer is not None:
            self.observer.finish(key)
        self.state["wall_s"][key] = self.state["wall_s"].get(key, 0.0) + time.time() - start
        self.save()
        return out

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and spread (max - min) over seeds."""
    return statistics.mean(values), (max(values) - min(values)) if len(values) > 1 else 0.0
