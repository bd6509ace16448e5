"""Trained models shipped inside the package.

Each model is a folder ``caloforge/zoo/<name>/`` holding ``model.yaml`` (architecture,
geometry, config, trained energy range), ``model.safetensors`` (weights and fitted
preprocessing) and ``MODEL_CARD.md`` (training data, the command that reproduces it,
evaluation numbers, time per shower).  A folder written by ``caloforge train`` (its
``model/`` subfolder) can be copied here as it is.

>>> from caloforge import zoo
>>> isinstance(zoo.available(), list)
True
"""

from __future__ import annotations

from pathlib import Path

from caloforge.errors import InputError


def available() -> list[str]:
    """Names of the shipped models."""
    from caloforge.models.folder import list_zoo
    return list_zoo()


def path(name: str) -> Path:
    """Folder of shipped model ``name``."""
    from caloforge.models.folder import META_FILE, zoo_dir
    folder = zoo_dir() / name
    if not (folder / META_FILE).is_file():
        raise InputError(f"no shipped model {name!r}; shipped: "
                         f"{', '.join(available()) or 'none yet'}")
    return folder


def load(name: str, device: str = "cpu"):  # noqa: ANN201 - avoids importing torch here
    """Load shipped model ``name`` (a :class:`~caloforge.models.GenerativeModel`)."""
    from caloforge.models.folder import load as load_model
    return load_model(path(name), device)


def model_card(name: str) -> str:
    """The model card (Markdown) of shipped model ``name``."""
    card = path(name) / "MODEL_CARD.md"
    return card.read_text() if card.is_file() else ""


__all__ = ["available", "load", "model_card", "path"]
