"""Training: the shared loop, checkpoints (atomic, exact resume) and torchrun helpers.

>>> from caloforge.training import TrainConfig
>>> TrainConfig(steps=10).batch_size
64
"""

from caloforge.training.loop import TrainConfig, Trainer, load_run_config, train

__all__ = ["TrainConfig", "Trainer", "load_run_config", "train"]
