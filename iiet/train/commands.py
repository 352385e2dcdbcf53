"""``iiet train``, ``iiet plot`` and ``iiet demo``: the training commands of the CLI (docs/training.md)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM

from iiet.data.packed import load_meta
from iiet.data.prepare import prepare_data
from iiet.data.tokenizer import train_tokenizer

from iiet.errors import IIETError
from iiet.models.names import label_of, resolve
from iiet.models.presets import build_config
from iiet.outputs import check_writable
from iiet.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from iiet.train.parallel import is_main_process
from iiet.train.plots import plot_loss_curves
from iiet.train.trainer import Trainer, build_model_config, run_training

# The demo's two runs: folder -> model name (``iiet.models.names``; ``{r}`` is ``num_iterations``).
DEMO_RUNS = {"transformer++": "transformer++", "iiet": "iiet={r}"}


def train(
    model: ModelConfig = ModelConfig(),
    data: DataConfig = DataConfig(),
    optim: OptimConfig = OptimConfig(),
    run: RunConfig = RunConfig(),
) -> dict[str, Any]:
    """Pretrain a model from scratch (or resume a run): AdamW, warm-up + cosine, checkpoints, HF export.

    Recipes: ``iiet train --config configs/iiet-r3-55M.yaml --data.path DIR``. Multi-GPU:
    ``torchrun --nproc_per_node 8 -m iiet.cli train --config ... --run.parallel fsdp``.

    Args:
        model: which network (preset, scheme, overrides).
        data: prepared data directory, or the sources to prepare it from.
        optim: optimizer, schedule, batch size and run length.
        run: output directory, resume, parallelism, precision, logging/eval/checkpoint cadence.
    """
    summary = run_training(TrainConfig(model=model, data=data, optim=optim, run=run))
    if is_main_process():
        shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in summary.items()}
        print("  ".join(f"{k}={v}" for k, v in shown.items()))
    return summary


def plot(
    runs: list[str],
    output: str = "loss_curves.png",
    labels: list[str] | None = None,
    x_axis: Literal["tokens", "step", "time"] = "tokens",
) -> None:
    """Draw the training and validation loss of several runs side by side, from their metrics.jsonl.

    Args:
        runs: run directories (or metrics.jsonl files), e.g. ``--runs [runs/euler,runs/iiet]``.
        output: image file to write (PNG, PDF or SVG by its suffix).
        labels: legend names, one per run (default: the paper's name of each run's model, e.g. Transformer++ or
            IIET (r=3), with the directory name where names repeat; the directory name for a bare metrics.jsonl).
        x_axis: "tokens" seen, optimizer "step", or "time": the wall time each run spent training (from the
            elapsed_s field of metrics.jsonl; seconds, minutes or hours by the longest run).
    """
    print(f"wrote {plot_loss_curves(runs, output, labels, x_axis)}")


def demo(
    output_dir: str = "runs/demo",
    minutes: float = 3.0,
    num_iterations: int = 2,
    preset: str = "cpu-small",
    seq_len: int = 128,
    vocab_size: int = 4096,
    micro_batch_size: int = 16,
    lr: float = 1e-3,
) -> None:
    """Offline demo: tokenizer + data from the Python standard library, then Transformer++ vs IIET on the CPU.

    Trains a byte-level BPE on the stdlib source ("builtin"), packs it into sequences, trains a Transformer++
    (euler) and an IIET for about ``minutes`` each, and prints their held-out perplexity, the checkpoints and a
    loss plot. Both models see the same data in the same order; IIET does ``num_iterations + 1`` block
    evaluations per layer, so in equal time it sees fewer tokens.

    Args:
        output_dir: where data/, the two runs and loss_curves.png go (must not hold an earlier demo's runs).
        minutes: training time per model.
        num_iterations: IIET corrections per layer ``r``.
        preset: model size preset for both models.
        seq_len: tokens per training sequence.
        vocab_size: size of the tokenizer trained on the stdlib.
        micro_batch_size: sequences per step (one micro-batch per optimizer step).
        lr: peak learning rate (small models take a larger one than Table 4's).
    """
    root = check_writable(output_dir, "--output_dir")
    for name in DEMO_RUNS:
        if (root / name).exists():
            raise IIETError(f"{root / name} already exists (an earlier demo); pass another --output_dir or delete it.")
    data_dir, tokenizer_dir = root / "data", root / "data" / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        print(f"training a {vocab_size}-token tokenizer on the Python standard library ...")
        train_tokenizer(["builtin"], tokenizer_dir, vocab_size=vocab_size)
    prepare_data(["builtin"], str(tokenizer_dir), data_dir, seq_len=seq_len, val_fraction=0.02)

    configs = {}
    num_layers = build_config(preset).num_hidden_layers
    for name, model_name in DEMO_RUNS.items():
        scheme = resolve(model_name.format(r=num_iterations), num_layers).scheme
        configs[name] = TrainConfig(
            model=ModelConfig(preset=preset, scheme=scheme),
            data=DataConfig(path=str(data_dir)),
            optim=OptimConfig(lr=lr, warmup_ratio=0.05, batch_tokens=micro_batch_size * seq_len,
                              micro_batch_size=micro_batch_size, max_steps=1),
            # The schedule's length comes from a speed estimate; max_minutes holds each run to the budget.
            run=RunConfig(output_dir=str(root / name), resume="none", device="cpu", eval_batches=None,
                          checkpoint_every=0, max_minutes=minutes),
        )
    results = []
    for (name, config), seconds in zip(configs.items(), _seconds_per_step(list(configs.values()))):
        config.optim.max_steps = max(10, int(60 * minutes / seconds))
        config.run.eval_every = max(1, config.optim.max_steps // 4)
        config.run.log_every = max(1, config.optim.max_steps // 100)
        print(f"\n{name} {config.model.scheme}: ~{seconds:.2f} s/step -> at most {config.optim.max_steps} steps")
        trainer = Trainer(config)
        started = time.perf_counter()
        try:
            summary = trainer.fit()
            if "final" not in summary:  # stopped by the time limit: evaluate and export what there is
                summary.update(trainer.evaluate(), final=str(trainer.export()))
        finally:
            trainer.close()
        elapsed = time.perf_counter() - started
        parameters = sum(p.numel() for p in trainer.model.parameters())
        results.append((name, config.model.scheme, parameters, summary, elapsed))

    plot_loss_curves([str(root / name) for name in DEMO_RUNS], output=str(root / "loss_curves.png"))
    print(f"\nheld-out perplexity on the Python standard library (val split of {data_dir}):\n")
    print("| model | scheme | params | steps | tokens | minutes | val loss | val ppl |")
    print("|---|---|---|---|---|---|---|---|")
    for name, scheme, parameters, summary, elapsed in results:
        print(f"| {name} | {label_of(scheme, num_layers)} | {parameters / 1e6:.2f}M | {summary['step']} | "
              f"{summary['tokens']:,} | {elapsed / 60:.1f} | {summary.get('val_loss', math.nan):.3f} | "
              f"{summary.get('val_ppl', math.nan):.1f} |")
    print(f"\ncheckpoints: {', '.join(str(root / n / 'checkpoints') for n in DEMO_RUNS)}")
    print(f"HF models:   {', '.join(str(root / n / 'final') for n in DEMO_RUNS)}")
    print(f"loss plot:   {root / 'loss_curves.png'}")


def _seconds_per_step(configs: list[TrainConfig], rounds: int = 3) -> list[float]:
    """Wall time of one optimizer step of each config's model on a random batch, measured in turns.

    Each model takes one step per round (after a warm-up round) and keeps its fastest: on a shared machine the
    others are slowed by whatever else runs, and taking turns exposes every model to the same background load.
    """
    meta = load_meta(configs[0].data.path)
    steps = []
    for config in configs:
        model_config = build_model_config(config.model.preset, config.model.scheme, meta["vocab_size"],
                                          config.model.overrides, meta)
        model = AutoModelForCausalLM.from_config(model_config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
        batch = torch.randint(meta["vocab_size"], (config.optim.micro_batch_size, meta["seq_len"]))
        steps.append((model, optimizer, batch))
    fastest = [math.inf] * len(configs)
    for round_index in range(rounds + 1):
        for i, (model, optimizer, batch) in enumerate(steps):
            started = time.perf_counter()
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if round_index:
                fastest[i] = min(fastest[i], time.perf_counter() - started)
    return fastest
