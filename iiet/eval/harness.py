"""Zero-shot evaluation of causal LMs on the paper's Table 1 suite through lm-evaluation-harness (§3.3).

The suite: WikiText-2 word perplexity, LAMBADA (OpenAI) perplexity and accuracy, PiQA / HellaSwag / ARC-Challenge
length-normalised accuracy, SciQ and WinoGrande accuracy. With ``data_dir`` the tasks are our ``iiet_*`` YAMLs
(``iiet/eval/tasks``) reading the original public files offline; without it they are lm-eval's own hub tasks
(``wikitext``, ``lambada_openai``, ...), which download their data sets.

Each model goes through the standard route: ``lm_eval.simple_evaluate(model=HFLM(pretrained=<model object>, ...),
task_manager=TaskManager(...))``. A checkpoint directory is loaded with ``AutoModelForCausalLM``; IIET checkpoints are
found because importing ``iiet`` registers their Auto classes (``iiet.models.loading.load_model``).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from iiet.errors import IIETError
from iiet.eval.report import write_reports
from iiet.eval.tasks import HUB_TASKS, LOCAL_TASKS, PAPER_TASKS, TASK_DIR
from iiet.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype

ALL = PAPER_TASKS


def paper_task_names(tasks: str | Sequence[str]) -> list[str]:
    """Normalise task names to the paper's names; also accepts the ``iiet_*`` and lm-eval hub names."""
    aliases = {name: name for name in PAPER_TASKS}
    aliases |= {local: name for name, local in LOCAL_TASKS.items()}
    aliases |= {hub: name for name, hub in HUB_TASKS.items()}
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if tasks in (["all"], ["iiet_table1"]):
        return list(PAPER_TASKS)
    unknown = [task for task in tasks if task not in aliases]
    if unknown or not tasks:
        raise IIETError(f"unknown task(s) {unknown or tasks}; valid tasks: {', '.join(PAPER_TASKS)} (or all)")
    return list(dict.fromkeys(aliases[task] for task in tasks))


def lm_eval_task_names(tasks: Sequence[str], data_dir: str | Path | None) -> dict[str, str]:
    """Paper task name -> the lm-eval task that runs it: local ``iiet_*`` with a data_dir, else the hub task."""
    table = LOCAL_TASKS if data_dir is not None else HUB_TASKS
    return {name: table[name] for name in paper_task_names(tasks)}


def check_data_files(tasks: Sequence[str], data_dir: str | Path) -> None:
    """Fail before any model is loaded if a file a task needs is missing (IIETError names it and the layout)."""
    from iiet.eval.tasks.utils import DATA_FILES, data_file  # imports lm-eval and datasets: only when needed

    if not Path(data_dir).expanduser().is_dir():
        raise IIETError(f"data_dir {data_dir} is not a directory")
    for name in paper_task_names(tasks):
        for relative in DATA_FILES[name]:
            data_file(data_dir, relative)


def task_manager(data_dir: str | Path | None):
    """The lm-eval TaskManager for the local suite (our YAMLs only, data_dir in the task metadata) or the hub."""
    from lm_eval.tasks import TaskManager

    if data_dir is None:
        return TaskManager()
    data_dir = str(Path(data_dir).expanduser().resolve())
    return TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": data_dir})


def scheme_overrides(
    num_iterations: int | None = None,
    iteration_plan: Sequence[int] | None = None,
    adaptive_tolerance: float | None = None,
) -> dict[str, Any] | None:
    """The ``model_overrides`` that run an IIET checkpoint with other corrections than it was saved with.

    ``num_iterations`` corrections in every layer (clears a saved per-layer plan, which would take precedence),
    a per-layer ``iteration_plan``, or adaptive corrections to ``adaptive_tolerance``; the checkpoint's other
    scheme settings are kept (``override_config`` merges the scheme dict key by key). ``None`` when nothing is set.
    """
    scheme: dict[str, Any] = {}
    if num_iterations is not None:
        if num_iterations < 0:
            raise IIETError(f"num_iterations must be >= 0, got {num_iterations}")
        scheme["num_iterations"] = num_iterations
        scheme["iteration_plan"] = None
    if iteration_plan is not None:
        scheme["iteration_plan"] = list(iteration_plan)
    if adaptive_tolerance is not None:
        scheme["adaptive_tolerance"] = adaptive_tolerance
    return {"scheme": scheme} if scheme else None


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    items = []
    for key, value in overrides.items():
        if isinstance(value, Mapping) and value:
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value}".replace(" ", ""))
    return items


def _display_name(model, overrides: Mapping[str, Any] | None, taken: set[str]) -> str:
    name = str(model) if isinstance(model, (str, Path)) else getattr(model.config, "_name_or_path", "") or ""
    name = name or f"{type(model).__name__}"
    if overrides:  # a table row must say that it is not the checkpoint as saved
        name = f"{name} [{', '.join(_flatten(overrides))}]"
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name} #{n}", n + 1
    return unique


def evaluate(
    models: Sequence[str | Path | Any],
    tokenizer=None,
    tasks: str | Sequence[str] = ALL,
    data_dir: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    output_dir: str | Path | None = None,
    model_overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict]:
    """Evaluate each model zero-shot on the Table 1 tasks with lm-eval; optionally write the reports.

    Args:
        models: checkpoint directories (loaded with ``AutoModelForCausalLM`` and ``AutoTokenizer`` from the same
            directory) and/or ``PreTrainedModel`` objects (moved and cast in place).
        tokenizer: the tokenizer for model objects; for directories it replaces the saved one when given.
        tasks: paper task names (``wikitext lambada piqa hellaswag sciq arc_challenge winogrande``) or ``"all"``.
        data_dir: local data directory with the layout of ``iiet/eval/tasks/utils.py``; None: lm-eval's hub tasks
            (needs network).
        limit: at most this many documents per task (a float < 1 is a fraction); for smoke tests only.
        batch_size: lm-eval batch size.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (CUDA when available).
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU) or a torch dtype name.
        output_dir: when given, write ``results.json``, ``results.csv`` and ``table.md`` there.
        model_overrides: config fields set before each checkpoint's model is built (dict fields merge key by key),
            e.g. ``{"scheme": {"num_iterations": 2}}`` to run an IIET checkpoint with 2 iterations.

    Returns:
        model name -> lm-eval's result dict (``results``, ``versions``, ``n-samples``, ``configs``, ...), each with
        an added ``"iiet"`` entry recording the checkpoint, overrides, data_dir, device, dtype and task names.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    task_names = lm_eval_task_names(tasks, data_dir)
    if data_dir is not None:
        check_data_files(list(task_names), data_dir)
    if isinstance(models, (str, Path)) or not isinstance(models, Sequence):
        models = [models]
    if not models:
        raise IIETError("no models to evaluate")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    manager = task_manager(data_dir)

    results: dict[str, dict] = {}
    for spec in models:
        name = _display_name(spec, model_overrides, set(results))
        if isinstance(spec, (str, Path)):
            model = load_model(spec, torch_device, torch_dtype, model_overrides)
            model_tokenizer = tokenizer or load_tokenizer(spec)
        else:
            if model_overrides:
                raise IIETError("model_overrides apply to checkpoint directories, not to model objects")
            if tokenizer is None:
                raise IIETError(f"pass tokenizer= to evaluate the model object {name}")
            model, model_tokenizer = spec, tokenizer
        _check_vocabulary(model, model_tokenizer, name)
        model.to(device=torch_device, dtype=torch_dtype)

        lm = HFLM(pretrained=model, tokenizer=model_tokenizer, backend="causal", batch_size=batch_size)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(task_names.values()),
            task_manager=manager,
            limit=limit,
            batch_size=batch_size,  # recorded in the output; HFLM already holds it
            device=str(torch_device),
            log_samples=False,
        )
        output["iiet"] = {
            "model": name,
            "checkpoint": str(spec) if isinstance(spec, (str, Path)) else None,
            "model_class": type(model).__name__,
            "model_overrides": dict(model_overrides or {}),
            "data_dir": None if data_dir is None else str(Path(data_dir).expanduser().resolve()),
            "device": str(torch_device),
            "dtype": str(torch_dtype).removeprefix("torch."),
            "limit": limit,
            "tasks": task_names,
            "lm_eval_version": lm_eval.__version__,
        }
        results[name] = output
        del lm, model
        gc.collect()
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()

    if output_dir is not None:
        write_reports(results, output_dir)
    return results


def _check_vocabulary(model, tokenizer, name: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise IIETError(f"{name}: tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}")
