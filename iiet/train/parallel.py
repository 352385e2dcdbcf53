"""Data parallelism for the trainer: one process, DDP, or FSDP2 (``fully_shard``), launched by ``torchrun``.

Kept outside the model (STYLE.md): the trainer hands a plain HF model to ``wrap_model`` and gets back the module to
call. Every rank takes a disjoint slice of each global batch and the gradients are averaged over ranks, so a step
computes ``mean over the global batch`` exactly as one process would (up to the order of floating-point sums).

- ``ddp``: replicated parameters; gradients all-reduced after each optimizer step's last micro-batch.
- ``fsdp``: FSDP2 ``fully_shard`` on each decoder layer (``model.model.layers``), then on the root (embeddings,
  final norm, LM head, the schemes' combination coefficients). Parameters become DTensors sharded over ranks.

NCCL on GPU, gloo on CPU. Rank 0 logs and writes run files and checkpoints (the full state, gathered from every rank).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from iiet.errors import IIETError
from iiet.models.loading import resolve_device

PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # long enough for rank 0 to prepare data or export


@dataclass
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over ranks (gloo has no AVG, so SUM then divide)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_object(self, value) -> list | None:
        """Every rank's ``value``, in rank order, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(parallel: str, device: str = "auto") -> Distributed:
    """Start the process group when launched by ``torchrun``; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise IIETError("run.device='cuda' but no CUDA device is visible; use run.device=auto or cpu.")
    use_cuda = resolve_device(device).type == "cuda"
    if parallel == "none":
        if world_size > 1:
            raise IIETError(
                f"launched with {world_size} processes but run.parallel='none' (every rank would train the same "
                "model and write the same files); pass --run.parallel ddp or fsdp."
            )
        return Distributed(device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"))
    if "RANK" not in os.environ:
        raise IIETError(
            f"run.parallel={parallel!r} needs a torchrun launch, e.g. "
            "`torchrun --standalone --nproc_per_node 2 -m iiet.cli train ...`; or use --run.parallel none."
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=PROCESS_GROUP_TIMEOUT,
            device_id=torch_device if use_cuda else None,
        )
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch, or the only process: the one that prints and writes reports."""
    return int(os.environ.get("RANK", "0")) == 0


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a LLaMA-style HF causal LM (``model.model.layers``)."""
    try:
        return model.model.layers
    except AttributeError:
        raise IIETError(
            f"{type(model).__name__} has no model.model.layers; FSDP wraps LLaMA-style decoders only."
        ) from None


def wrap_model(model: nn.Module, parallel: str, dist_info: Distributed) -> nn.Module:
    """Return the module the training loop calls. FSDP2 shards ``model`` in place; DDP wraps it."""
    model.to(dist_info.device)
    if parallel == "none":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist_info.local_rank] if dist_info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(dist_info.device.type, (dist_info.world_size,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise IIETError(f"run.parallel={parallel!r} is not one of none, ddp, fsdp.")


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Skip the gradient all-reduce/reduce-scatter on all but the last micro-batch of a step.

    ``module`` is what ``wrap_model`` returned (possibly under ``torch.compile``); plain modules ignore it.
    """
    module = getattr(module, "_orig_mod", module)
    if enabled:
        yield
    elif hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield
