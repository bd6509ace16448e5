"""Generative models: one module per architecture over a shared contract (:mod:`.base`).

>>> from caloforge.models import build
>>> model = build("l2lflows", "ild-ecal", preset="tiny")
>>> model.name
'l2lflows'
"""

from caloforge.models.base import (
    GenerativeModel,
    StepContext,
    TrainBatch,
    build,
    get_model_class,
    list_models,
    list_zoo,
    load,
    register,
    resolve_model_dir,
)
from caloforge.models.config import Config

__all__ = [
    "Config",
    "GenerativeModel",
    "StepContext",
    "TrainBatch",
    "build",
    "get_model_class",
    "list_models",
    "list_zoo",
    "load",
    "register",
    "resolve_model_dir",
]
