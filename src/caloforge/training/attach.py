"""Frozen pretrained models (a teacher, a constrainer) attached to a training by reference.

A student run names its frozen models by role in the training config
(``frozen_models: {teacher: PATH}``).  The run records each one's folder and the SHA-256
of its files (``model.yaml``, the weights) in ``config.yaml`` and in every checkpoint's
``run.yaml`` — not the weights themselves, which would be copied into every checkpoint
(unless ``copy_frozen_models`` asks for self-contained checkpoints).  On resume the
recorded hash is checked: a frozen model that went missing or changed is one clear error,
because the student would otherwise continue against another teacher.  Frozen models are
loaded in eval mode with gradients off and handed to ``training_step`` as
``ctx.frozen[role]``.

>>> import hashlib
>>> len(hashlib.sha256(b"").hexdigest())
64
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from caloforge.errors import CaloforgeError, InputError
from caloforge.models.base import GenerativeModel, resolve_model_dir
from caloforge.models.folder import (  # noqa: F401 - part of this module's API
    META_FILE,
    MODEL_FILES,
    folder_hash,
    load_referenced,
)


def reference(path: str | Path, role: str) -> dict[str, str]:
    """``{"path", "sha256"}`` of a model folder (or training folder / shipped model)."""
    try:
        directory = resolve_model_dir(path)
    except CaloforgeError as exc:
        raise InputError(f"frozen {role} model: {exc}") from None
    return {"path": str(Path(directory).resolve()), "sha256": folder_hash(directory)}


def load_frozen(role: str, ref: dict[str, str], device: torch.device | str = "cpu",
                copy: Path | None = None) -> GenerativeModel:
    """Load the frozen model recorded in ``ref`` after checking its hash; ``copy`` is a
    checkpoint's own copy, used when the original folder is gone."""
    return load_referenced(ref, role, device, copy, consequence=(
        f": resuming against another {role} would not continue the same training"))


def copy_frozen(refs: dict[str, dict[str, str]], target: Path) -> None:
    """Copy the frozen models' files into ``target/ROLE/`` (self-contained checkpoints)."""
    for role, ref in refs.items():
        dst = target / role
        dst.mkdir(parents=True)
        for name in MODEL_FILES:
            src = Path(ref["path"]) / name
            if src.is_file():
                shutil.copy2(src, dst / name)


def attach_all(config_paths: dict[str, str], recorded: dict[str, Any] | None,
               device: torch.device | str, copies: Path | None = None
               ) -> tuple[dict[str, dict[str, str]], dict[str, GenerativeModel]]:
    """(references, loaded models): new references for a new run (``recorded`` None), the
    recorded ones, checked, for a resumed run."""
    refs = dict(recorded) if recorded is not None else {
        role: reference(path, role) for role, path in config_paths.items()}
    models = {role: load_frozen(role, ref, device, copies / role if copies else None)
              for role, ref in refs.items()}
    return refs, models
