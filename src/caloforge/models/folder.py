"""The model-folder format: one trained model as files, and where to find them.

A *model folder* holds ``model.yaml`` (architecture, geometry, config, trained
conditions and their ranges, caloforge version) and ``model.safetensors`` (weights and
fitted preprocessing / calibration buffers).  Folders are written atomically and read
without unpickling.  Training checkpoints (:mod:`caloforge.training.checkpoint`) are
model folders plus the training state; they build on this module, never the reverse.

>>> from caloforge.models.folder import list_zoo
>>> "ild-ecal-photons" in list_zoo()
True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from caloforge.errors import CaloforgeError, FormatError, InputError
from caloforge.geometry import get_geometry
from caloforge.models.config import read_yaml
from caloforge.models.ema import EMA_FILE, apply_ema, write_ema
from caloforge.models.registry import get_model_class, list_models
from caloforge.utils import atomic_dir

if TYPE_CHECKING:
    from caloforge.models.base import GenerativeModel

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.yaml"
MODEL_FILES = (META_FILE, WEIGHTS_FILE, EMA_FILE)  # what a folder's hash covers


def write_model_files(model: GenerativeModel, directory: Path) -> None:
    """Write ``model.safetensors`` and ``model.yaml`` into an existing folder."""
    from safetensors.torch import save_file

    # Clone: safetensors refuses tensors that share storage (tied or viewed buffers).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"model": model.name})
    meta = model.metadata()
    write_ema(model, directory, meta)  # averaged weights, when the training loop keeps them
    (directory / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))


def save_model_dir(model: GenerativeModel, directory: str | Path) -> Path:
    """Write a model folder atomically (replacing an existing one only once the new one
    is complete); returns its path."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(directory, overwrite=True) as tmp:
        write_model_files(model, tmp)
    return directory


def read_model_meta(directory: Path) -> dict[str, Any]:
    """``model.yaml`` of a model folder, validated."""
    meta = read_yaml(directory / META_FILE)
    for key in ("model", "geometry", "config"):
        if key not in meta:
            raise FormatError(f"{META_FILE} lacks the key {key!r}", directory / META_FILE)
    return meta


def load_model_dir(directory: str | Path, device: str | torch.device = "cpu",
                   weights: str = "auto") -> GenerativeModel:
    """Rebuild a model from a model (or checkpoint) folder; clear errors for foreign or
    corrupt files.  ``weights``: ``auto`` (the averaged EMA weights if the folder says to
    sample with them), ``ema`` or ``live`` (the last trained weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_model_meta(directory)
    try:
        cls = get_model_class(meta["model"])
        model = cls.from_config(meta["config"], get_geometry(meta["geometry"]))
        model.load_metadata(meta)
    except CaloforgeError as exc:
        raise FormatError(f"cannot rebuild the model: {exc}", directory / META_FILE) from None
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise FormatError("model weights are missing", wpath)
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"corrupt or not a safetensors file ({exc})", wpath) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        raise FormatError(
            f"weights do not match a {meta['model']!r} model with the stored config: "
            f"{' '.join(s.strip() for s in first)}", wpath) from None
    apply_ema(model, directory, meta, weights)
    model.trained_version = str(meta.get("caloforge_version", "unknown"))
    return model.to(device).eval()


def folder_hash(directory: Path) -> str:
    """SHA-256 over the model files of a folder (names and contents, fixed order)."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_referenced(ref: dict[str, str], role: str, device: str | torch.device = "cpu",
                    copy: Path | None = None, since: str = "the run started",
                    consequence: str = "", relative_to: Path | None = None
                    ) -> GenerativeModel:
    """Load the model folder recorded as ``{"path", "sha256"}`` (a frozen teacher, a
    constrainer), frozen and in eval mode, after checking that its files are the ones
    recorded ``since`` then; ``copy`` is used when the original folder is gone; a relative
    path is taken relative to ``relative_to`` (e.g. the zoo for a shipped model).  A
    missing, changed or unreadable folder is one :class:`InputError` (``consequence``
    says why it matters)."""
    path = Path(ref["path"])
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not (path / META_FILE).is_file():
        if copy is not None and (copy / META_FILE).is_file():
            path = copy
        else:
            raise InputError(f"frozen {role} model is missing (recorded when {since}; "
                             f"restore it, sha256 {ref['sha256'][:12]}...)", path)
    found = folder_hash(path)
    if found != ref["sha256"]:
        raise InputError(f"frozen {role} model changed since {since} (sha256 {found[:12]}... "
                         f"instead of {ref['sha256'][:12]}...){consequence}", path)
    try:
        model = load_model_dir(path, device)
    except CaloforgeError as exc:
        raise InputError(f"cannot load the frozen {role} model: {exc}", path) from None
    model.requires_grad_(False)
    return model.eval()


def portable_reference(ref: dict[str, Any]) -> dict[str, Any]:
    """``ref`` with a shipped model's path replaced by its zoo name, so that a shipped
    student finds its shipped teacher wherever the package is installed (read back with
    ``load_referenced(..., relative_to=zoo_dir())``)."""
    path = Path(ref["path"])
    if path.resolve().parent == zoo_dir().resolve():
        return {**ref, "path": path.name}
    return dict(ref)


def zoo_dir() -> Path:
    """Folder of the models shipped inside the package."""
    import caloforge.zoo
    return Path(caloforge.zoo.__file__).parent


def list_zoo() -> list[str]:
    """Names of the shipped trained models."""
    return sorted(p.name for p in zoo_dir().iterdir() if (p / META_FILE).is_file())


def resolve_model_dir(path_or_name: str | Path) -> Path:
    """Folder holding ``model.yaml``: a model folder, a training output folder (its final
    model or latest checkpoint), a checkpoint folder, or the name of a shipped model."""
    p = Path(path_or_name)
    if p.is_dir():
        if (p / META_FILE).is_file():
            return p
        if (p / "model" / META_FILE).is_file():
            return p / "model"
        latest = p / "checkpoints" / "latest.json"
        if latest.is_file():
            try:
                name = json.loads(latest.read_text())["checkpoint"]
            except (ValueError, KeyError, TypeError):
                raise FormatError("corrupt checkpoint pointer", latest) from None
            return p / "checkpoints" / name
        raise FormatError(f"no {META_FILE} (not a caloforge model or training folder)", p)
    zoo = zoo_dir() / str(path_or_name)
    if (zoo / META_FILE).is_file():
        return zoo
    if str(path_or_name) in list_models():
        raise InputError(
            f"{path_or_name!r} is an architecture, not a trained model: give a folder written "
            f"by 'caloforge train' or a shipped model ({', '.join(list_zoo()) or 'none yet'})")
    raise InputError(
        f"no model folder or shipped model called {str(path_or_name)!r} (shipped: "
        f"{', '.join(list_zoo()) or 'none yet'})")


def load(path_or_name: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """Load a trained model from a folder (see :func:`resolve_model_dir`) or the zoo.

    Weights are read with safetensors only: nothing is unpickled.
    """
    return load_model_dir(resolve_model_dir(path_or_name), device)
