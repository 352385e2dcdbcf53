"""Typed configuration of a pretraining run (paper Appendix B.1, Table 4).

A run is four sections, each a documented dataclass; ``iiet train --help`` and the YAML recipes under ``configs/``
are generated from them::

    model: {preset, scheme, overrides}             which network (iiet.models.presets)
    data:  {path, sources, tokenizer, seq_len...}   prepared token data, or the text to prepare it from
    optim: {lr, betas, weight_decay, warmup_ratio, min_lr_ratio, grad_clip, batch_tokens, micro_batch_size,
            max_steps | max_tokens}
    run:   {output_dir, resume, parallel, precision, checkpointing/eval/log cadence, seed, ...}

The learning rate follows ``lr(t) = lr * t / W`` for ``t < W = ceil(warmup_ratio * S)`` and then a cosine from
``lr`` down to ``min_lr_ratio * lr`` at step ``S``; each optimizer step sees ``batch_tokens`` tokens, split into
micro-batches of ``micro_batch_size`` sequences per process (gradient accumulation makes up the rest).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iiet.errors import IIETError


@dataclass
class ModelConfig:
    """Which network to train.

    Args:
        preset: size preset of ``iiet.models.presets`` ("tiny", "cpu-small", "55M", "340M", "740M").
        scheme: numerical scheme and its parameters, e.g. ``{name: euler}``, ``{name: iiet, num_iterations: 3}``,
            ``{name: pcformer, order: 2}``, ``{name: dlcl}``, ``{name: weight_shared, repeats: 4}``.
        overrides: extra model config values that replace the preset's (e.g. ``{num_hidden_layers: 4}``). The
            vocabulary size defaults to the data's tokenizer.
    """

    preset: str = "tiny"
    scheme: dict[str, Any] = field(default_factory=lambda: {"name": "euler"})
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Training data: a directory of packed token sequences (``iiet.data``), prepared once.

    Args:
        path: the prepared data directory. If it holds no prepared data yet and ``sources`` is given, the data is
            prepared there first.
        sources: text to prepare the data from (files, directories, or "builtin" = the Python standard library's
            source, for an offline demo). Ignored when ``path`` already holds prepared data.
        tokenizer: tokenizer directory or name used for preparing; null trains a byte-level BPE of
            ``tokenizer_vocab_size`` tokens on ``sources`` (saved under ``path``/tokenizer).
        tokenizer_vocab_size: vocabulary size of a tokenizer trained on ``sources``.
        seq_len: tokens per training sequence when preparing (the paper's training_len is 2048).
        val_fraction: fraction of the sequences held out as the validation split when preparing.
    """

    path: str | None = None
    sources: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 8192
    seq_len: int = 2048
    val_fraction: float = 0.01


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (Appendix B.1).

    Args:
        lr: peak learning rate.
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: decoupled weight decay of the matrices (Linear and Embedding weights; norms, biases and the
            schemes' combination coefficients are not decayed).
        warmup_ratio: fraction of the steps spent warming the learning rate up linearly from 0.
        min_lr_ratio: the cosine ends at ``min_lr_ratio * lr``.
        grad_clip: clip the global gradient norm to this value; 0 switches clipping off.
        batch_tokens: tokens per optimizer step over all processes (a multiple of the sequence length).
        micro_batch_size: sequences per forward/backward on one process; gradients are accumulated over
            ``batch_tokens / (seq_len * micro_batch_size * world_size)`` micro-batches.
        max_steps: optimizer steps to train for (give this or ``max_tokens``).
        max_tokens: tokens to train for; converted to ``max_tokens // batch_tokens`` steps.
        skip_nonfinite_steps: optimizer steps with a non-finite gradient norm (NaN/inf loss) that may be skipped in
            a row (no update; the step still counts) before the run stops with an error; 0 stops at the first.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_ratio: float = 0.01
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    batch_tokens: int = 524288
    micro_batch_size: int = 8
    max_steps: int | None = None
    max_tokens: int | None = None
    skip_nonfinite_steps: int = 0


@dataclass
class RunConfig:
    """Where and how the run executes.

    Args:
        output_dir: run directory: checkpoints/, metrics.jsonl, tensorboard/, train_config.yaml, final/ (HF model).
        resume: "auto" continues from the newest valid checkpoint in ``output_dir`` (a fresh start if there is none);
            "none" starts fresh and refuses an ``output_dir`` that already holds checkpoints; or the path of one
            checkpoint directory to continue from.
        parallel: "none" (one process), "ddp" (replicated model) or "fsdp" (FSDP2: parameters, gradients and
            optimizer state sharded per decoder layer). ddp/fsdp need ``torchrun``.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        precision: "auto" = bf16 autocast on GPU, fp32 on CPU (bf16 matmuls are very slow on CPU); or "bf16",
            "fp32". Parameters and optimizer state stay fp32.
        activation_checkpointing: recompute every block evaluation in the backward pass (less memory, ~1/3 more
            compute).
        compile: ``torch.compile`` the model (slow first step; pays off on GPU).
        seed: seed of the initial weights, the data order and every random number generator.
        log_every: steps between training-metric records (loss, lr, grad norm, tokens/s).
        eval_every: steps between validation-loss evaluations on the held-out split; 0 evaluates only at the end.
        eval_batches: micro-batches per evaluation (null = the whole validation split).
        checkpoint_every: steps between checkpoints; 0 saves only at the end.
        keep_last_k: checkpoints kept on disk (older ones are deleted after a newer one is complete).
        max_minutes: stop (with a checkpoint) once this much wall time has passed; resume later with the same
            command. null = no limit.
        progress_bar: show a tqdm progress bar (rank 0).
    """

    output_dir: str = "runs/train"
    resume: str = "auto"
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int | None = 50
    checkpoint_every: int = 1000
    keep_last_k: int = 3
    max_minutes: float | None = None
    progress_bar: bool = True


@dataclass
class TrainConfig:
    """A complete pretraining run: ``model``, ``data``, ``optim`` and ``run`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the length of the learning-rate schedule)."""
        if self.optim.max_steps is not None:
            return self.optim.max_steps
        return self.optim.max_tokens // self.optim.batch_tokens

    def batch_sequences(self, seq_len: int) -> int:
        """Sequences per optimizer step over all processes."""
        return self.optim.batch_tokens // seq_len

    def accumulation_steps(self, seq_len: int, world_size: int) -> int:
        """Micro-batches each process runs per optimizer step."""
        return self.batch_sequences(seq_len) // (self.optim.micro_batch_size * world_size)

    def validate(self) -> None:
        """Check the values that need no data or model; raise ``IIETError`` naming the field and the fix."""
        o, r = self.optim, self.run
        if (o.max_steps is None) == (o.max_tokens is None):
            raise IIETError("give exactly one of optim.max_steps and optim.max_tokens (the run length).")
        if o.max_steps is not None and o.max_steps < 1:
            raise IIETError(f"optim.max_steps={o.max_steps} must be >= 1.")
        if self.total_steps() < 1:
            raise IIETError(
                f"the run has {self.total_steps()} steps (max_tokens={o.max_tokens} < batch_tokens={o.batch_tokens}); "
                "raise optim.max_steps/max_tokens."
            )
        positive = {"optim.lr": o.lr, "optim.batch_tokens": o.batch_tokens, "optim.micro_batch_size": o.micro_batch_size,
                    "run.log_every": r.log_every, "run.keep_last_k": r.keep_last_k, "data.seq_len": self.data.seq_len}
        for name, value in positive.items():
            if not value > 0:
                raise IIETError(f"{name}={value!r} must be > 0.")
        if not 0 <= o.warmup_ratio < 1:
            raise IIETError(f"optim.warmup_ratio={o.warmup_ratio} must be in [0, 1).")
        if not 0 <= o.min_lr_ratio <= 1:
            raise IIETError(f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1].")
        if o.grad_clip < 0 or o.weight_decay < 0:
            raise IIETError("optim.grad_clip and optim.weight_decay must be >= 0 (grad_clip 0 = no clipping).")
        if o.skip_nonfinite_steps < 0:
            raise IIETError(f"optim.skip_nonfinite_steps={o.skip_nonfinite_steps} must be >= 0 (0 = stop at the first).")
        if r.eval_every < 0 or r.checkpoint_every < 0:
            raise IIETError("run.eval_every and run.checkpoint_every must be >= 0 (0 = only at the end).")
        if self.data.path is None:
            raise IIETError("data.path is not set; give the prepared data directory (--data.path DIR).")

    def validate_batch(self, seq_len: int, world_size: int) -> None:
        """Check that the global batch splits evenly into micro-batches over ``world_size`` processes."""
        o = self.optim
        if o.batch_tokens % seq_len:
            fixed = max(1, round(o.batch_tokens / seq_len)) * seq_len
            raise IIETError(
                f"optim.batch_tokens={o.batch_tokens} is not a multiple of the data's seq_len={seq_len}; "
                f"use e.g. {fixed}."
            )
        sequences = self.batch_sequences(seq_len)
        per_step = o.micro_batch_size * world_size
        if sequences % per_step:
            raise IIETError(
                f"the batch of {sequences} sequences does not split into micro-batches of {o.micro_batch_size} "
                f"on {world_size} process(es); make optim.batch_tokens / seq_len a multiple of "
                f"micro_batch_size * world_size = {per_step}."
            )


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio``."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML recipe (the ``--config`` file of ``iiet train``) into a ``TrainConfig``.

    Parsed by jsonargparse from the same dataclasses as the CLI, so unknown keys and wrongly typed values fail the
    same way.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TrainConfig)
    try:
        namespace = parser.parse_path(str(path))
    except Exception as error:  # jsonargparse raises its own ArgumentError/ParserError types
        raise IIETError(f"recipe {path} does not parse: {error}") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    init = instantiate(namespace)
    return TrainConfig(model=init.model, data=init.data, optim=init.optim, run=init.run)
