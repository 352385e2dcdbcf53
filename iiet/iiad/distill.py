"""Iteration Influence-Aware Distillation (IIAD, paper §4.1 Eq. 13-15, Appendix B.2): continued pretraining of an
efficient student against its full teacher.

The student is the teacher's weights under a cheaper scheme (warm start): an IIET teacher with an iteration plan
(E-IIET, Lower Bound), or a PCformer teacher as an explicit-Euler model ("Distil PCformer"). Block and history
parameters keep their names across schemes, so every block weight is copied; scheme parameters the student lacks
are dropped and ones the teacher lacks start at their initial values. Both models have the same layers, so their
per-layer outputs align. On a batch of ``N`` tokens, with ``h_i`` the output of block ``i`` (``hidden_states[i]``,
before the final norm; ``n`` = number of blocks, ``d`` = hidden size) and ``z`` the logits:

    L_MSE = 1/n sum_{i=1..n} 1/(N d) sum_t || h_{i,t}^T - h_{i,t}^S ||_2^2                      (Eq. 13)
    L_KL  = 1/N sum_t KL( softmax(z_t^T / tau) || softmax(z_t^S / tau) )                          (Eq. 14)
    L     = L_CE + alpha L_MSE + beta L_KL                                                         (Eq. 15)

Normalisation choices (the paper does not state them): the squared norm is divided by ``d`` (PyTorch's
``MSELoss``, a per-element mean), so ``alpha`` does not have to shrink with the width; the KL is summed over the
vocabulary and averaged over tokens, and *not* multiplied by ``tau^2`` (Eq. 14 as written; Hinton et al.'s
convention is ``beta * tau^2``). ``L_CE`` is the usual next-token loss. The teacher runs frozen, in eval mode, under
``torch.no_grad``; with ``alpha = beta = 0`` it is not run at all and distillation is exactly continued pretraining.

``DistillationTrainer`` extends the pretraining ``Trainer`` (same loop, checkpoints, resume, DDP/FSDP2) through its
hooks: ``build_model_config`` (the student's config from the teacher's), ``build_model`` (``build_student``) and
``compute_loss`` (``iiad_loss``). Under DDP/FSDP2 every rank holds a full teacher copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iiet.data.packed import tokenizer_hash
from iiet.errors import IIETError
from iiet.iiad.identity import check_identity
from iiet.iiad.plan import Plan, plan_scheme
from iiet.models.comparison import config_values
from iiet.models.configuration_iiet import IIETConfig, parse_scheme
from iiet.models.export import special_token_ids
from iiet.models.loading import load_model
from iiet.models.modeling_iiet import IIETForCausalLM
from iiet.train.config import ModelConfig, TrainConfig
from iiet.train.metrics import CROSS_ENTROPY
from iiet.train.trainer import Trainer, run_training

SCHEME_PREFIX = "model.scheme."  # parameters of the scheme module (history weights, norms, EMA coefficient)


# -- the loss terms (pure functions) --------------------------------------------------------------------------------


def _masked_token_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-token values (B, T) over the tokens where ``mask`` (B, T) is true (all when None)."""
    if mask is None:
        return values.mean()
    mask = mask.bool()
    return values[mask].mean()


def hidden_state_mse(
    teacher_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
    student_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 13: mean over blocks of ``||h^T - h^S||^2 / d``, averaged over (masked) tokens; states are (B, T, d)."""
    if len(teacher_states) != len(student_states):
        raise IIETError(f"the teacher has {len(teacher_states)} block outputs and the student {len(student_states)}; "
                        "the hidden-state loss needs the same number of layers (or alpha = 0).")
    per_block = [
        _masked_token_mean((t.float() - s.float()).pow(2).mean(dim=-1), mask)  # (B, T) -> scalar
        for t, s in zip(teacher_states, student_states)
    ]
    return torch.stack(per_block).mean()


def kl_divergence(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 14: ``KL(softmax(z^T / tau) || softmax(z^S / tau))`` summed over the vocabulary, averaged over tokens."""
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise IIETError(f"teacher vocabulary {teacher_logits.shape[-1]} != student vocabulary "
                        f"{student_logits.shape[-1]}; distil between models with the same tokenizer.")
    log_p = F.log_softmax(teacher_logits.float() / tau, dim=-1)  # (B, T, V)
    log_q = F.log_softmax(student_logits.float() / tau, dim=-1)
    per_token = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(dim=-1)  # (B, T)
    return _masked_token_mean(per_token, mask)


def iiad_loss(ce: torch.Tensor, mse: torch.Tensor | float, kl: torch.Tensor | float, alpha: float, beta: float):
    """Eq. 15: ``L_CE + alpha L_MSE + beta L_KL``."""
    return ce + alpha * mse + beta * kl


# -- the student ----------------------------------------------------------------------------------------------------


def student_scheme(teacher, plan: Plan | None = None, scheme: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """The student's scheme: the teacher's IIET scheme with ``plan``, or an explicit ``scheme`` (exactly one)."""
    if (plan is None) == (scheme is None):
        raise IIETError("give exactly one of --distill.plan (an iteration plan for an IIET teacher) and "
                        "--distill.student_scheme (e.g. euler to distil a PCformer).")
    if scheme is not None:
        return parse_scheme(scheme).to_dict()
    config = teacher.config
    if plan.model:
        check_identity(plan.model, teacher, "the plan's influence file")
    if len(plan.iteration_plan) != config.num_hidden_layers:
        raise IIETError(f"the plan has {len(plan.iteration_plan)} entries but the teacher has "
                        f"{config.num_hidden_layers} layers; give one number of corrections per layer.")
    scheme = config.scheme_config
    if not scheme.accepts_plan:
        raise IIETError(f"plans apply to teachers whose layers run several passes (IIET, PCformer); this teacher's "
                        f"scheme is {scheme.name!r} (use --distill.student_scheme instead).")
    runs = scheme.plan(config.num_hidden_layers)
    over = [n for n, (k, r) in enumerate(zip(plan.iteration_plan, runs)) if k > r]
    if over:
        raise IIETError(f"the plan keeps more corrections than the teacher runs in layer(s) {over} (teacher: {runs}); "
                        "a plan can only remove corrections.")
    return plan_scheme(dict(config.scheme), plan.iteration_plan)


def student_config(config: IIETConfig, scheme: dict[str, Any], **changes: Any) -> IIETConfig:
    """``config`` with another scheme and any other ``changes`` (everything else kept)."""
    return IIETConfig(**{**config_values(config), **changes, "scheme": scheme})


def check_pair(teacher_config: IIETConfig, student_config: IIETConfig, alpha: float) -> None:
    """The student must share the teacher's vocabulary, and for ``alpha > 0`` its number of layers and width."""
    t, s = teacher_config, student_config
    if t.vocab_size != s.vocab_size:
        raise IIETError(f"teacher vocabulary ({t.vocab_size}) != student vocabulary ({s.vocab_size}); the KL and CE "
                        "terms need one tokenizer: distil into a student with the teacher's vocabulary.")
    if alpha > 0 and (t.num_hidden_layers, t.hidden_size) != (s.num_hidden_layers, s.hidden_size):
        raise IIETError(f"the hidden-state loss aligns block outputs layer by layer, but the teacher has "
                        f"{t.num_hidden_layers} layers of width {t.hidden_size} and the student "
                        f"{s.num_hidden_layers} of width {s.hidden_size}; use alpha = 0 or a matching student.")


def warm_start(student: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``state_dict`` into ``student``; every non-scheme parameter must be there with its shape.

    Returns the scheme parameters left at their initial values (the source lacks them or has another shape).
    """
    own = student.state_dict()
    loadable = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in loadable and not k.startswith(SCHEME_PREFIX)]
    if missing:
        raise IIETError(f"the source weights do not fit the student (missing or mis-shaped: {missing[:3]}); the "
                        "student must have the teacher's sizes.")
    student.load_state_dict(loadable, strict=False)
    return sorted(k for k in own if k not in loadable)


def build_student(source: nn.Module, config: IIETConfig) -> tuple[nn.Module, list[str]]:
    """An ``IIETForCausalLM`` of ``config`` (``student_config``) with the weights of ``source``, in train mode.

    Returns the student and its scheme parameters left at their initial values (``warm_start``).
    """
    student = IIETForCausalLM(config)
    reinitialised = warm_start(student, source.state_dict())
    return student.train(), reinitialised


def check_same_tokenizer(teacher: str, meta: dict[str, Any], data_path: str) -> None:
    """``IIETError`` if the data was prepared with a tokenizer other than the one saved with the teacher.

    Token ids mean different strings under another tokenizer, so the teacher's targets would be noise, and the
    student would be exported with the data's tokenizer. A teacher saved without a tokenizer cannot be checked.
    """
    from transformers import AutoTokenizer

    if not any((Path(teacher) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return
    try:
        expected = tokenizer_hash(AutoTokenizer.from_pretrained(teacher))
    except Exception as error:  # a broken tokenizer in the teacher folder: say which
        raise IIETError(f"cannot read the tokenizer saved with the teacher {teacher} ({str(error).splitlines()[0]}); "
                        "save the teacher with its tokenizer.") from None
    if meta.get("tokenizer_hash") != expected:
        raise IIETError(
            f"the data in {data_path} was prepared with another tokenizer ({meta.get('tokenizer')}) than the "
            f"teacher's ({teacher}); prepare it with the teacher's: `iiet data-prepare --tokenizer {teacher} ...`."
        )


# -- the trainer ----------------------------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """Teacher, student and loss weights of a distillation run (Eq. 15).

    Args:
        teacher: the full model, a directory saved with save_pretrained (e.g. a training run's final/).
        plan: plan.json from ``iiet plan``: the student is the teacher's IIET scheme with that iteration plan.
        student_scheme: instead of a plan, the student's scheme, e.g. euler (Distil PCformer) or
            {name: iiet, iteration_plan: [0, 1, 2, 0]}.
        student: initialise the student from this checkpoint instead of the teacher's weights (its scheme is used
            unless plan or student_scheme is given).
        alpha: weight of the per-block hidden-state MSE (Eq. 13).
        beta: weight of the logit KL divergence (Eq. 14).
        tau: distillation temperature of the KL term (no tau^2 factor is applied).
    """

    teacher: str = ""
    plan: str | None = None
    student_scheme: dict[str, Any] | str | None = None
    student: str | None = None
    alpha: float = 1.0
    beta: float = 1.0
    tau: float = 1.0

    def validate(self) -> None:
        if not self.teacher:
            raise IIETError("no teacher given; pass --distill.teacher DIR (a full IIET or PCformer checkpoint).")
        if self.alpha < 0 or self.beta < 0:
            raise IIETError(f"alpha={self.alpha} and beta={self.beta} must be >= 0.")
        if not self.tau > 0:
            raise IIETError(f"tau={self.tau} must be > 0.")


@dataclass
class DistillTrainConfig(TrainConfig):
    """A pretraining run plus the ``distill`` section; the student's model config comes from the teacher."""

    model: ModelConfig | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        super().validate()
        self.distill.validate()


class DistillationTrainer(Trainer):
    """The pretraining ``Trainer`` with a frozen teacher, a warm-started student and the IIAD loss (Eq. 15).

    Two hooks change: ``build_model_config`` (the student's config: the teacher's, or ``distill.student``'s, with
    the student scheme and the data's special tokens) and ``build_model`` (``build_student``); ``compute_loss`` is
    Eq. 15 (``iiad_loss``).
    """

    def __init__(self, config: DistillTrainConfig):
        config.validate()
        d = config.distill
        self.teacher = load_model(d.teacher, require_iiet=True).requires_grad_(False)
        self.source = load_model(d.student, require_iiet=True) if d.student else self.teacher  # the weights the student starts from
        plan = Plan.load(d.plan) if d.plan else None
        if d.student and plan is None and d.student_scheme is None:
            self.student_scheme = dict(self.source.config.scheme)
        else:
            self.student_scheme = student_scheme(self.teacher, plan, d.student_scheme)
        self.alpha, self.beta, self.tau = d.alpha, d.beta, d.tau
        self.reinitialised: list[str] = []
        super().__init__(config)
        self.source = None  # its weights are in the student now
        self.teacher.to(self.device).eval()
        if self.dist.is_main:
            print(f"teacher {d.teacher}: {self.teacher.config.num_block_evaluations} block evaluations per token; "
                  f"student {self.student_scheme}: {self.model_config.num_block_evaluations}"
                  + (f"; left at their initial values: {self.reinitialised}" if self.reinitialised else ""))

    def build_data(self):
        """The training data, after checking it was tokenized by the teacher's tokenizer (the student ships it)."""
        train, val = super().build_data()
        check_same_tokenizer(self.config.distill.teacher, train.meta, self.config.data.path)
        return train, val

    def build_model_config(self) -> IIETConfig:
        """The source's config with the student scheme; its special-token ids are the data's tokenizer's, not what
        an older teacher checkpoint recorded."""
        config = student_config(self.source.config, self.student_scheme, **special_token_ids(self.train_data.meta))
        check_pair(self.teacher.config, config, self.alpha)
        return config

    def build_model(self, model_config: IIETConfig) -> nn.Module:
        """The student: ``model_config`` with the source's weights copied in (``build_student``)."""
        student, self.reinitialised = build_student(self.source, model_config)
        return student

    def compute_loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 15 on one micro-batch; logs ``loss`` (the total), ``ce`` and the distillation terms in use."""
        need_states = self.alpha > 0
        out = model(input_ids=batch, labels=batch, use_cache=False, output_hidden_states=need_states)
        metrics = {CROSS_ENTROPY: out.loss.detach()}
        mse = kl = 0.0
        if self.alpha > 0 or self.beta > 0:  # with alpha = beta = 0 the teacher is not run at all
            with torch.no_grad():
                target = self.teacher(input_ids=batch, use_cache=False, output_hidden_states=need_states)
            if self.alpha > 0:
                mse = hidden_state_mse(target.hidden_states[1:], out.hidden_states[1:])  # block outputs only
                metrics["mse"] = mse.detach()
            if self.beta > 0:
                kl = kl_divergence(target.logits, out.logits, self.tau)
                metrics["kl"] = kl.detach()
        loss = iiad_loss(out.loss, mse, kl, self.alpha, self.beta)
        metrics["loss"] = loss.detach()
        return loss, metrics

    def fit(self, until_step: int | None = None) -> dict[str, Any]:
        """The ``Trainer``'s summary plus the teacher's and the student's block evaluations and the student scheme."""
        summary = super().fit(until_step)
        return {**summary, "teacher_block_evaluations": self.teacher.config.num_block_evaluations,
                "student_block_evaluations": self.model_config.num_block_evaluations,
                "student_scheme": dict(self.model_config.scheme)}


def distill(config: DistillTrainConfig) -> dict[str, Any]:
    """Run a distillation to the end (or ``run.max_minutes``) and return the Trainer's summary."""
    return run_training(config, DistillationTrainer)
