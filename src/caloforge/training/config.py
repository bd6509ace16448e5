"""The training configuration (:class:`TrainConfig`) and run YAML files.

>>> TrainConfig(steps=10).batch_size
64
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caloforge.errors import ConfigError
from caloforge.models.config import Config, positive, read_yaml


@dataclass
class TrainConfig(Config):
    """How long and how to train (the model's own config is separate)."""

    steps: int = 0  # total optimisation steps; 0 = derive from epochs
    epochs: int = 10
    batch_size: int = 64  # per process
    checkpoint_every: int = 500  # steps; the end of training always checkpoints
    validate_every: int = 500  # steps; 0 = never
    validation_showers: int = 500  # held out from training for validation
    keep_checkpoints: int = 2
    amp: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; none on CPU) | bf16 | fp16 | none
    max_showers: int = 0  # 0 = all showers of the file
    stop_after: int = 0  # stop this run after so many steps (resume later); 0 = no limit
    finalize_showers: int = 50000  # training showers for fit_preprocessing() and finalize()
    fit_memory_mb: float = 1024.0  # ... at most this much memory of dense float32 showers
    chunk_showers: int = 256  # consecutive showers read from the file at once
    shuffle_buffer_mb: float = 512.0  # showers shuffled together (a whole small file: all)
    ema_decay: float = 0.0  # exponential moving average of the weights; 0 = none
    use_ema: bool = True  # sample and export with the averaged weights (if ema_decay > 0)
    grad_clip: float = 0.0  # max gradient norm per optimiser step; 0 = no clipping
    grad_clip_by_optimizer: dict[str, float] = field(default_factory=dict)  # overrides
    frozen_models: dict[str, str] = field(default_factory=dict)  # role -> model folder
    copy_frozen_models: bool = False  # store copies in every checkpoint (self-contained)

    def validate(self) -> None:
        super().validate()
        positive(self, "batch_size", "keep_checkpoints", "finalize_showers", "fit_memory_mb",
                 "chunk_showers", "shuffle_buffer_mb")
        for key in ("steps", "epochs", "checkpoint_every", "validate_every",
                    "validation_showers", "max_showers", "stop_after"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError("give a positive number of steps or epochs")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"config key 'ema_decay' must lie in [0, 1), got {self.ema_decay}")
        clips = {"grad_clip": self.grad_clip, **{
            f"grad_clip_by_optimizer.{k}": v for k, v in _mapping(
                self.grad_clip_by_optimizer, "grad_clip_by_optimizer").items()}}
        for key, value in clips.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"config key {key!r} must be a number >= 0, got {value!r}")
        for role, path in _mapping(self.frozen_models, "frozen_models").items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"config key 'frozen_models.{role}' must be a model folder "
                                  f"path, got {path!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ConfigError(f"config key 'amp' must be auto|bf16|fp16|none, got {self.amp!r}")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"config key {key!r} must be a mapping of names to values, "
                          f"got {value!r}")
    return value


def load_run_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Read a run YAML with optional sections ``model`` (model config, may hold
    ``preset``) and ``training`` (:class:`TrainConfig`); other keys are an error."""
    data = read_yaml(path)
    unknown = sorted(set(data) - {"model", "training", "preset"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)} (known: model, training, "
                          f"preset)", path)
    model = dict(data.get("model") or {})
    preset = model.pop("preset", None) or data.get("preset")
    return model, dict(data.get("training") or {}), preset


__all__ = ["TrainConfig", "load_run_config"]
