"""Student training: patch sampling from the teacher cache, losses, chains, DDP."""

from distill.train.chain import TrainResult, train_student
from distill.train.config import TrainConfig, TrainConfigError

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "train_student"]
