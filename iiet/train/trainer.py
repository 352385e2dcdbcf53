"""The pretraining loop: one ``Trainer`` whose steps can be overridden (paper Appendix B.1).

Each optimizer step takes the next ``batch_tokens / seq_len`` sequences of a seeded, epoch-wise permutation of the
training split; rank ``r`` of ``W`` takes the ``r``-th of ``W`` equal slices and runs it in micro-batches. With
per-micro-batch mean losses ``l_k`` over ``K`` micro-batches per rank, the step minimises

    L = 1/W sum_r 1/K sum_k l_k        (= the mean token loss of the global batch: all sequences have equal length)

by accumulating ``grad(l_k / K)`` and averaging over ranks (DDP all-reduce / FSDP reduce-scatter), then clipping
the global gradient norm, an AdamW step, and a warm-up + cosine learning-rate step (``config.warmup_cosine``).

To change what is minimised (e.g. distillation: a teacher and extra losses) subclass and override
``compute_loss``; ``build_model_config`` / ``build_model`` / ``build_optimizer`` / ``train_step`` / ``evaluate`` /
``save_checkpoint`` are the other extension points. Everything a resumed run needs (weights, optimizer, scheduler, random states, data
position, step, tokens) is in the checkpoint, so ``kill -9`` + ``resume=auto`` continues the same trajectory.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import sys
import threading
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from iiet.data.packed import META_FILE, PackedDataset, check_compatible
from iiet.data.prepare import prepare_data
from iiet.data.tokenizer import train_tokenizer
from iiet.errors import IIETError
from iiet.models.comparison import config_difference
from iiet.models.export import special_token_ids, with_special_tokens
from iiet.models.presets import build_config
from iiet.outputs import atomic_write, check_writable
from iiet.train import checkpoint as ckpt
from iiet.train.config import TrainConfig, warmup_cosine
from iiet.train.lock import RunLock
from iiet.train.metrics import MetricsLogger
from iiet.train.parallel import gradient_sync, init_distributed, shutdown_distributed, wrap_model

FINAL_DIR = "final"
CONFIG_FILE = "train_config.yaml"
_EPOCH_SEED_STRIDE = 1 << 20  # epoch e of seed s uses generator seed s * stride + e


class TrainingDiverged(IIETError):
    """The loss or gradient norm became non-finite; the run stopped before saving anything non-finite."""

    exit_code = 1


class TrainingInterrupted(IIETError):
    """SIGINT/SIGTERM: the run saved a checkpoint and stopped; exit status 128 + the signal number."""

    def __init__(self, number: int, step: int, checkpoint: Path):
        self.exit_code = 128 + int(number)
        super().__init__(f"interrupted by {signal.Signals(number).name} at step {step}; saved {checkpoint}: rerun "
                         "the same command to resume.")


def build_model_config(
    preset: str, scheme: dict[str, Any], vocab_size: int, overrides: dict[str, Any], meta: dict[str, Any] | None = None
):
    """The HF config of the network to train (``vocab_size`` unless ``overrides`` names one).

    The bos/eos/pad ids are those of the data's tokenizer (as ``meta.json`` records them), so that the exported
    model's ``generate()`` stops at its ``</s>``; an override naming other ids is an ``IIETError``.
    """
    overrides = with_special_tokens(overrides, special_token_ids(meta or {}))
    return build_config(preset, scheme, vocab_size=overrides.pop("vocab_size", vocab_size), **overrides)


def prepare_run_data(data: DataConfig) -> None:
    """Tokenize ``data.sources`` into ``data.path`` (training a tokenizer first when none is given)."""
    tokenizer = data.tokenizer
    if tokenizer is None:
        tokenizer = str(Path(data.path) / "tokenizer")
        train_tokenizer(data.sources, tokenizer, vocab_size=data.tokenizer_vocab_size)
    prepare_data(data.sources, tokenizer, data.path, seq_len=data.seq_len, val_fraction=data.val_fraction)


class DataOrder:
    """Deterministic order of the training sequences: a fresh seeded permutation every epoch.

    The position ``(epoch, index)`` is all the state there is, so it goes into the checkpoint.
    """

    def __init__(self, num_sequences: int, seed: int):
        self.num_sequences, self.seed = num_sequences, seed
        self.epoch, self.index = 0, 0
        self._permutation = self._permute(0)

    def _permute(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + epoch)
        return torch.randperm(self.num_sequences, generator=generator)

    def take(self, count: int) -> list[int]:
        """The next ``count`` sequence indices, continuing into the next epoch when this one runs out."""
        taken: list[int] = []
        while len(taken) < count:
            if self.index == self.num_sequences:
                self.epoch, self.index = self.epoch + 1, 0
                self._permutation = self._permute(self.epoch)
            end = min(self.num_sequences, self.index + count - len(taken))
            taken += self._permutation[self.index : end].tolist()
            self.index = end
        return taken

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._permutation = self._permute(self.epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Set up a run from a ``TrainConfig`` (validating everything before writing anything), then ``fit()``."""

    def __init__(self, config: TrainConfig):
        config = copy.deepcopy(config)
        config.validate()
        self.config = config
        run = config.run
        self.dist = init_distributed(run.parallel, run.device)
        self.device = self.dist.device
        self.output_dir = Path(run.output_dir)
        check_writable(self.output_dir, "--run.output_dir")  # creates nothing: a refused run leaves no trace
        resume_from = self._on_main(lambda: ckpt.find_resume_checkpoint(self.output_dir, run.resume))

        self.train_data, self.val_data = self.build_data()
        self.seq_len = self.train_data.seq_len
        config.validate_batch(self.seq_len, self.dist.world_size)
        self.batch_sequences = config.batch_sequences(self.seq_len)
        self.total_steps = config.total_steps()
        self.model_config = self.build_model_config()
        check_compatible(self.train_data.meta, self.model_config.vocab_size, self.model_config.max_position_embeddings)
        checkpoint_state = self._check_resumable(resume_from) if resume_from else None

        seed_everything(run.seed)  # identical initial weights on every rank
        self.model = self.build_model(self.model_config)
        if run.activation_checkpointing:  # per block evaluation; non-reentrant so DDP/FSDP hooks fire once
            enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.module = wrap_model(self.model, run.parallel, self.dist)  # what the loop calls
        if run.compile:
            self.module = torch.compile(self.module)
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.data_order = DataOrder(len(self.train_data), run.seed)
        self.step, self.tokens_seen, self.skipped_steps, self.last_step_finite = 0, 0, 0, True
        self.elapsed_before = 0.0  # seconds spent in fit() by earlier sessions (and earlier calls) of this run
        self._fit_started: float | None = None
        if resume_from is not None:
            self.load_checkpoint(resume_from, checkpoint_state)

        # Everything is validated: from here on the run writes into output_dir, and is its only writer.
        self.logger, self.lock = None, None
        self._on_main(self._take_output_dir)
        if self.dist.is_main:
            atomic_write(self.output_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
            self.logger = MetricsLogger(self.output_dir, resume_step=self.step if resume_from else None)

    # -- set-up steps ---------------------------------------------------------------------------------------------

    def _take_output_dir(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.output_dir)

    def build_data(self):
        """The train and validation ``PackedDataset``; prepares ``data.path`` from ``data.sources`` if needed."""
        data = self.config.data
        path = Path(data.path)
        if not (path / META_FILE).is_file():
            if not data.sources:
                raise IIETError(
                    f"data.path {str(path)!r} holds no prepared data ({META_FILE} missing); run `iiet data-prepare` "
                    "into it, or give data.sources to prepare it from."
                )
            self._on_main(self.prepare_data)
        train, val = PackedDataset(path, "train"), PackedDataset(path, "val")
        if len(train) == 0:
            raise IIETError(f"data.path {str(path)!r} has no training sequences; prepare it from more text.")
        return train, val

    def prepare_data(self) -> None:
        """Tokenize ``data.sources`` into ``data.path`` (training a tokenizer first when none is given)."""
        prepare_run_data(self.config.data)

    def build_model_config(self):
        """The HF config of the network to train: ``model.preset`` with ``model.scheme`` and ``model.overrides``, and
        the data's vocabulary and special tokens (override to derive it elsewhere, e.g. from a teacher)."""
        m = self.config.model
        return build_model_config(m.preset, m.scheme, self.train_data.vocab_size, m.overrides, self.train_data.meta)

    def build_model(self, model_config) -> nn.Module:
        """A freshly initialised causal LM (fp32, on CPU; ``wrap_model`` moves it)."""
        return AutoModelForCausalLM.from_config(model_config)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; weight decay on Linear/Embedding weights only."""
        o = self.config.optim
        decay, no_decay, seen = [], [], set()
        for module in self.model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if not parameter.requires_grad or id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                is_matrix = isinstance(module, (nn.Linear, nn.Embedding)) and name == "weight"
                (decay if is_matrix else no_decay).append(parameter)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        o = self.config.optim
        schedule = partial(
            warmup_cosine, total_steps=self.total_steps, warmup_ratio=o.warmup_ratio, min_lr_ratio=o.min_lr_ratio
        )
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    # -- the loop -------------------------------------------------------------------------------------------------

    def autocast(self):
        """bf16 autocast when the run's precision asks for it ("auto": on GPU only), else nothing."""
        precision = self.config.run.precision
        if precision == "fp32" or (precision == "auto" and self.device.type != "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def get_batch(self, dataset, indices: list[int]) -> torch.Tensor:
        batch = torch.stack([dataset[i] for i in indices])  # (B, T)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def compute_loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss to minimise on one micro-batch, and the metrics to log (averaged over the step and the ranks).

        Override this to train with other objectives; ``model`` is the wrapped module (call it, don't unwrap it).
        """
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        return loss, {"loss": loss.detach()}

    def train_step(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """One optimizer step on the global batch ``indices``; returns this rank's metrics (not yet reduced)."""
        rank, world = self.dist.rank, self.dist.world_size
        per_rank = len(indices) // world
        mine = indices[rank * per_rank : (rank + 1) * per_rank]
        micro = self.config.optim.micro_batch_size
        chunks = [mine[i : i + micro] for i in range(0, per_rank, micro)]
        metrics: dict[str, torch.Tensor] = {}
        self.module.train()
        for k, chunk in enumerate(chunks):
            batch = self.get_batch(self.train_data, chunk)
            with gradient_sync(self.module, enabled=k == len(chunks) - 1):
                with self.autocast():
                    loss, step_metrics = self.compute_loss(self.module, batch)
                (loss / len(chunks)).backward()
            for name, value in step_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value.detach().float() / len(chunks)
        clip = self.config.optim.grad_clip or math.inf  # inf: measure the norm, clip nothing
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        # The norm of the averaged gradient is the same on every rank, so all ranks take the same decision. A
        # non-finite loss on any rank makes it non-finite. Checking costs one device sync per optimizer step.
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        self.scheduler.step()  # a skipped step still counts: the schedule stays aligned with the step number
        self.optimizer.zero_grad(set_to_none=True)
        metrics["grad_norm"] = grad_norm.detach().float()
        self.last_step_finite = finite
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token loss and perplexity on the validation split (``run.eval_batches`` micro-batches at most)."""
        data, micro = self.val_data, self.config.optim.micro_batch_size
        rank, world = self.dist.rank, self.dist.world_size
        limit = len(data)
        if self.config.run.eval_batches is not None:
            limit = min(limit, self.config.run.eval_batches * micro)
        if limit == 0:
            return {}
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        self.module.eval()
        # Every rank runs the same number of forwards (FSDP needs all ranks in each one); a rank without data left
        # evaluates sequence 0 with weight 0.
        for start in range(0, limit, micro * world):
            begin = start + rank * micro
            indices = list(range(begin, min(begin + micro, limit)))
            weight = 1.0 if indices else 0.0
            batch = self.get_batch(data, indices or [0])
            with self.autocast():
                loss = self.module(input_ids=batch, labels=batch, use_cache=False).loss
            predicted = batch.shape[0] * (batch.shape[1] - 1)  # the last position has no next token
            loss_sum += loss.double() * predicted * weight
            count += predicted * weight
        self.module.train()
        self.dist.all_reduce_sum(loss_sum)
        self.dist.all_reduce_sum(count)
        val_loss = (loss_sum / count).item()
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}

    def fit(self, until_step: int | None = None) -> dict[str, Any]:
        """Train to ``optim.max_steps`` (or stop early at ``until_step``, with a checkpoint); return a summary.

        At the end of the run: a last evaluation, a checkpoint, and the HF export in ``<output_dir>/final``.
        """
        run = self.config.run
        stop_at = min(self.total_steps, until_step if until_step is not None else self.total_steps)
        started, steps_this_session = time.perf_counter(), 0
        self._fit_started = started
        window: dict[str, torch.Tensor] = {}
        window_steps, window_seconds = 0, 0.0  # training time only: evaluations and checkpoints excluded
        summary: dict[str, Any] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and run.progress_bar))
        nonfinite_in_a_row = 0
        self._signal, handlers = None, self._catch_signals()
        try:
            while self.step < stop_at:
                step_start = time.perf_counter()
                indices = self.data_order.take(self.batch_sequences)
                lr = self.scheduler.get_last_lr()[0]
                metrics = self.train_step(indices)
                nonfinite_in_a_row = 0 if self.last_step_finite else nonfinite_in_a_row + 1
                if nonfinite_in_a_row > self.config.optim.skip_nonfinite_steps:
                    self._stop_diverged(metrics, lr)
                self.step += 1
                self.tokens_seen += self.batch_sequences * self.seq_len
                self.skipped_steps += not self.last_step_finite
                steps_this_session += 1
                bar.update(1)
                for name, value in metrics.items():
                    window[name] = window.get(name, 0.0) + value
                window_steps += 1
                window_seconds += time.perf_counter() - step_start

                if self.step % run.log_every == 0 or self.step == stop_at:
                    sync_start = time.perf_counter()  # .item() waits for the window's queued GPU work: count it
                    record = {name: self.dist.all_reduce_mean(value / window_steps).item()
                              for name, value in window.items()}
                    window_seconds += time.perf_counter() - sync_start
                    record.update(lr=lr, tokens_per_s=window_steps * self.batch_sequences * self.seq_len / window_seconds)
                    if self.skipped_steps:
                        record["skipped_steps"] = self.skipped_steps
                    self.log(record)
                    bar.set_postfix(loss=f"{record.get('loss', math.nan):.3f}", lr=f"{lr:.2e}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                    window, window_steps, window_seconds = {}, 0, 0.0

                finished = self.step == self.total_steps
                if (run.eval_every and self.step % run.eval_every == 0) or finished:
                    summary.update(self.evaluate())
                    self.log({k: v for k, v in summary.items() if k.startswith("val_")})
                out_of_time, interrupted = self._any_rank(
                    run.max_minutes is not None and time.perf_counter() - started > 60 * run.max_minutes,
                    self._signal is not None,
                )
                if ((run.checkpoint_every and self.step % run.checkpoint_every == 0) or self.step == stop_at
                        or out_of_time or interrupted):
                    saved = self.save_checkpoint()
                if interrupted:
                    raise TrainingInterrupted(self._signal or signal.SIGTERM, self.step, saved)
                if out_of_time:
                    break
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
        bar.close()
        if self.step == self.total_steps:
            if "val_loss" not in summary:  # the run was already complete when this session started
                summary.update(self.evaluate())
            if steps_this_session or not (self.output_dir / FINAL_DIR).exists():
                self.export()
        self.elapsed_before, self._fit_started = self.elapsed_seconds(), None
        summary.update(step=self.step, tokens=self.tokens_seen, output_dir=str(self.output_dir))
        if self.step == self.total_steps:
            summary["final"] = str(self.output_dir / FINAL_DIR)
        return summary

    def elapsed_seconds(self) -> float:
        """Wall time this run has spent in ``fit()``, over all its sessions (what a checkpoint carries on)."""
        running = time.perf_counter() - self._fit_started if self._fit_started is not None else 0.0
        return self.elapsed_before + running

    def log(self, record: dict[str, Any]) -> None:
        if self.logger is not None and record:
            self.logger.log({"step": self.step, "tokens": self.tokens_seen, "wall_time": round(time.time(), 3),
                             "elapsed_s": round(self.elapsed_seconds(), 3), **record})

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything besides weights, optimizer and random states that a resumed run needs (JSON)."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed_seconds": self.elapsed_seconds(),
            "data_order": self.data_order.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "model_config": self.model_config.to_dict(),
            "data": self._data_identity(),
            "train_config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        path = ckpt.checkpoint_dir(self.output_dir, self.step)
        ckpt.save_checkpoint(path, self.model, self.optimizer, self.checkpoint_state(), self.dist)
        if self.dist.is_main:
            ckpt.prune_checkpoints(self.output_dir, self.config.run.keep_last_k)
        return path

    def load_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        ckpt.load_checkpoint(path, self.model, self.optimizer, self.dist)
        self.scheduler.load_state_dict(state["scheduler"])
        self.data_order.load_state_dict(state["data_order"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        # Checkpoints from before wall time was recorded: this run's clock starts at the resume.
        self.elapsed_before = state.get("elapsed_seconds", 0.0)
        if self.dist.is_main:
            print(f"resumed from {path} (step {self.step}, {self.tokens_seen:,} tokens)")

    def _check_resumable(self, path: Path) -> dict[str, Any]:
        """The checkpoint's state, after checking it was made by this model on this data."""
        state = ckpt.read_checkpoint_state(path, verify=False)  # verified when it was chosen
        # Through the config class, so that fields added since the checkpoint was written compare at their defaults.
        saved = type(self.model_config).from_dict(state["model_config"]).to_dict()
        difference = config_difference(saved, self.model_config.to_dict())
        if difference:
            raise IIETError(
                f"checkpoint {path} was trained with a different model config ({difference}); resume with the "
                "original model settings, or start a new run in another --run.output_dir."
            )
        if state["data"] != self._data_identity():
            raise IIETError(
                f"checkpoint {path} was trained on different data ({state['data']} vs {self._data_identity()}); "
                "resume with the original data.path, or start a new run in another --run.output_dir."
            )
        if state["step"] > self.total_steps:
            raise IIETError(
                f"checkpoint {path} is at step {state['step']}, past this run's {self.total_steps} steps; "
                "raise optim.max_steps/max_tokens or use another --run.output_dir."
            )
        return state

    def _data_identity(self) -> dict[str, Any]:
        meta = self.train_data.meta
        return {"vocab_size": meta["vocab_size"], "seq_len": meta["seq_len"], "num_train_sequences": len(self.train_data),
                "tokenizer_hash": meta.get("tokenizer_hash")}

    def export(self) -> Path:
        """Write ``<output_dir>/final``: HF model (safetensors), tokenizer, and this run's config."""
        output = self.output_dir / FINAL_DIR
        tokenizer = self.train_data.meta.get("tokenizer")
        if tokenizer is None and self.dist.is_main:
            warnings.warn("the data's meta.json names no tokenizer; final/ holds the model only", stacklevel=2)
        ckpt.export_pretrained(self.model, output, tokenizer, self.dist,
                               {CONFIG_FILE: yaml.safe_dump(self.config.to_dict(), sort_keys=False)})
        return output

    # -- stopping early ---------------------------------------------------------------------------------------------

    def _catch_signals(self) -> dict[int, Any]:
        """On SIGINT (Ctrl-C) or SIGTERM, finish the step, save a checkpoint and stop (``TrainingInterrupted``).

        The first signal restores the previous handlers, so a second one stops at once (checkpoints are atomic).
        """
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(number, frame):
            self._signal = number
            for caught, previous in handlers.items():
                signal.signal(caught, previous)
            if self.dist.is_main:
                print(f"\niiet: {signal.Signals(number).name}: saving a checkpoint after this step (send it again to "
                      "stop at once)", file=sys.stderr, flush=True)

        handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in handlers:
            signal.signal(number, handler)
        return handlers

    def _stop_diverged(self, metrics: dict[str, torch.Tensor], lr: float) -> None:
        """Log the non-finite step and raise ``TrainingDiverged``; the weights are still the last finite ones."""
        record = {name: self.dist.all_reduce_mean(value).item() for name, value in metrics.items()}
        if self.logger is not None:
            self.logger.log({"step": self.step + 1, "tokens": self.tokens_seen, **record, "lr": lr})
        kept = ckpt.list_checkpoints(self.output_dir)
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: gradient norm {record['grad_norm']}, loss "
            f"{record.get('loss')} (learning rate {lr:.3g}); nothing after step {self.step} was saved"
            + (f", the last checkpoint is {kept[-1]}" if kept else "")
            + ". Lower --optim.lr, lengthen --optim.warmup_ratio or clip harder (--optim.grad_clip), or let "
            "--optim.skip_nonfinite_steps N skip up to N such steps in a row."
        )

    # -- helpers --------------------------------------------------------------------------------------------------

    def _any_rank(self, *flags: bool) -> list[bool]:
        """Each flag, true on every rank if it is true on any (so all ranks stop at the same step)."""
        if not self.dist.enabled:
            return list(flags)
        values = self.dist.all_reduce_sum(torch.tensor([float(f) for f in flags], device=self.device))
        return [bool(v > 0) for v in values.tolist()]

    def _on_main(self, fn):
        """Run ``fn`` on rank 0 while the others wait and return its result on every rank; if it fails there,
        every rank raises."""
        error, original, result = None, None, None
        if self.dist.is_main:
            try:
                result = fn()
            except Exception as caught:
                error, original = f"{caught}", caught
        error, result = self.dist.broadcast_object((error, result))
        if original is not None:
            raise original
        if error is not None:
            raise IIETError(f"rank 0 failed: {error}")
        return result


def run_training(config: TrainConfig, trainer_class: type[Trainer] = Trainer) -> dict[str, Any]:
    """Set up ``trainer_class(config)``, train to the end (or ``run.max_minutes``), and return its summary."""
    trainer = trainer_class(config)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        shutdown_distributed()
