"""The registry of architectures: names -> :class:`~caloforge.models.base.GenerativeModel`
subclasses.  Built-in architectures are imported on first use, so that
``import caloforge.models`` (and the CLI) stay cheap.

>>> from caloforge.models.registry import list_models
>>> "l2lflows" in list_models()
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from caloforge.errors import ConfigError

if TYPE_CHECKING:
    from caloforge.models.base import GenerativeModel

_BUILTIN: dict[str, str] = {
    "wgan": "caloforge.models.wgan",
    "bibae": "caloforge.models.bibae",
    "l2lflows": "caloforge.models.l2lflows",
    "caloclouds": "caloforge.models.caloclouds",
    "caloclouds2": "caloforge.models.caloclouds2",
    "caloclouds2-cm": "caloforge.models.caloclouds2_cm",
    "calogan": "caloforge.models.calogan",
    "caloflow": "caloforge.models.caloflow",
    "caloflow-student": "caloforge.models.caloflow_student",
}
_REGISTRY: dict[str, type[GenerativeModel]] = {}


def register(name: str) -> Callable[[type[GenerativeModel]], type[GenerativeModel]]:
    """Class decorator: make an architecture available under ``name``."""

    def deco(cls: type[GenerativeModel]) -> type[GenerativeModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"model name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    """Names of all known architectures."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_model_class(name: str) -> type[GenerativeModel]:
    """The architecture registered as ``name``; unknown names raise :class:`ConfigError`."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
