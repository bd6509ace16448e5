"""Model folders and training checkpoints, written atomically and read without unpickling.

A *model folder* holds ``model.yaml`` (architecture, geometry, config, trained energy
range, caloforge version) and ``model.safetensors`` (weights and fitted preprocessing).
A *checkpoint* is a model folder plus ``training_state.pt`` (optimisers, schedulers,
grad scaler, RNG states, step; plain tensors and numbers, read with
``torch.load(weights_only=True)``) and ``run.yaml`` (the run configuration).

Training output layout::

    OUT/config.yaml                 run configuration (model + training + data)
    OUT/checkpoints/step-000100/    one folder per checkpoint
    OUT/checkpoints/latest.json     pointer to the newest complete checkpoint
    OUT/model/                      the final model folder
    OUT/metrics.jsonl               losses and validation observables

Every folder is built under a temporary name and renamed into place, and the pointer is
replaced only after that, so an interrupted write never loses the previous checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from caloforge.errors import FormatError
from caloforge.models.base import GenerativeModel

# The model-folder format lives in caloforge.models.folder; re-exported for callers here.
from caloforge.models.folder import load_model_dir, save_model_dir  # noqa: F401
from caloforge.models.folder import write_model_files as _write_model_files
from caloforge.utils import atomic_dir, atomic_path

STATE_FILE = "training_state.pt"
RUN_FILE = "run.yaml"
LATEST = "latest.json"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(out_dir: str | Path, step: int, model: GenerativeModel,
                    training_state: dict[str, Any], run_config: dict[str, Any],
                    keep: int = 2, write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint ``step-NNNNNNNN`` atomically, update ``latest.json``, prune old ones.

    ``training_state`` holds plain tensors / numbers / lists / dicts only (it is read back
    with ``torch.load(weights_only=True)``); ``write_extra(folder)`` may add files (copies
    of frozen models) inside the checkpoint before it is renamed into place.
    """
    ckdir = Path(out_dir) / "checkpoints"
    name = f"step-{step:08d}"
    existed = (ckdir / name).exists()
    ckdir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(ckdir / name, overwrite=True) as tmp:
        _write_model_files(model, tmp)
        torch.save({**training_state, "global_rng": _rng_state()}, tmp / STATE_FILE)
        (tmp / RUN_FILE).write_text(yaml.safe_dump(run_config, sort_keys=False))
        if write_extra is not None:
            write_extra(tmp)
    try:
        with atomic_path(ckdir / LATEST, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"checkpoint": name, "step": step}))
    except BaseException:
        if not existed:  # the pointer still names the previous checkpoint: drop the orphan
            shutil.rmtree(ckdir / name, ignore_errors=True)
        raise
    existing = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
    for old in existing[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return ckdir / name


def remove_stale_parts(out_dir: str | Path) -> list[Path]:
    """Remove the temporary folders (``.*.part``, ``.*.old``) that a killed run left in
    ``OUT/checkpoints``; returns what was removed."""
    ckdir = Path(out_dir) / "checkpoints"
    stale = [p for pattern in (".*.part", ".*.old") for p in ckdir.glob(pattern)]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a training output, or None."""
    pointer = Path(out_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError):
        raise FormatError("corrupt checkpoint pointer", pointer) from None
    path = pointer.parent / str(name)
    if not path.is_dir():
        raise FormatError(f"checkpoint pointer names a missing folder {name!r}", pointer)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[GenerativeModel, dict[str, Any], dict[str, Any]]:
    """(model, training_state, run_config) of a checkpoint folder."""
    path = Path(path)
    model = load_model_dir(path, device, weights="live")
    spath = path / STATE_FILE
    if not spath.is_file():
        raise FormatError("training state is missing (a model folder, not a checkpoint)", spath)
    try:
        state = torch.load(spath, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise FormatError(f"corrupt or foreign training state ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})", spath) from None
    if not isinstance(state, dict) or "step" not in state:
        raise FormatError("training state lacks the step counter", spath)
    try:
        run = yaml.safe_load((path / RUN_FILE).read_text())
    except (OSError, yaml.YAMLError):
        raise FormatError("run configuration is missing or corrupt", path / RUN_FILE) from None
    return model, state, run or {}


def restore_global_rng(state: dict[str, Any]) -> None:
    rng = state.get("global_rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
