"""Pretraining: typed run config, one extensible ``Trainer``, atomic resumable checkpoints, DDP/FSDP2 (docs/training.md)."""

from iiet.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, load_config
from iiet.train.trainer import Trainer

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "Trainer", "load_config"]
