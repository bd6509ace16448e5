"""Training: the shared loop, checkpoints (atomic, exact resume) and torchrun helpers.

>>> from caloforge.training import TrainConfig
>>> TrainConfig(steps=10).batch_size
64
"""

from caloforge.training.config import TrainConfig, load_run_config
from caloforge.training.interrupt import TrainingInterrupted
from caloforge.training.loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "load_run_config", "train"]
