"""The training output folder: checks before work starts, clear errors for failed writes,
and what a resumed run takes over from its checkpoint (settings, metrics rows)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caloforge.errors import CaloforgeError, InputError, OutputExistsError
from caloforge.training import checkpoint as ckpt
from caloforge.training.config import TrainConfig
from caloforge.utils import atomic_path

METRICS_FILE = "metrics.jsonl"
# Settings that may differ between a run and its resumption without breaking exactness
# (run length and bookkeeping); ``stop_after`` applies to one invocation only.
RESUMABLE_SETTINGS = ("steps", "epochs", "checkpoint_every", "validate_every",
                      "keep_checkpoints")


def resumed_settings(run: dict[str, Any], given: TrainConfig | None, seed: int,
                     preset: str | None) -> tuple[TrainConfig, int, str | None]:
    """(training config, seed, preset) of a resumed run.

    The stored settings win, except run length and bookkeeping, which may change between
    invocations, and ``stop_after``, which never carries over (resuming with the original
    options runs to the end).  A setting given now that differs from the stored one (and
    from its default) is ignored with a warning; unchanged options do not warn."""
    stored = dict(run.get("training", {}))
    given = given or TrainConfig()
    default = TrainConfig()
    merged = {**stored, "stop_after": given.stop_after}
    ignored = []
    for key, value in given.to_dict().items():
        if key == "stop_after" or value == getattr(default, key):
            continue
        if key in RESUMABLE_SETTINGS:
            merged[key] = value
        elif key not in stored or value != stored[key]:
            ignored.append(key)
    stored_seed = int(run.get("seed", seed))
    if seed not in (0, stored_seed):
        ignored.append("seed")
    stored_preset = run.get("preset", preset)
    if preset is not None and preset != stored_preset:
        ignored.append("preset")
    if ignored:
        warnings.warn(f"resuming with the stored training settings; ignoring "
                      f"{', '.join(ignored)} (exact resume needs them unchanged)", stacklevel=3)
    return TrainConfig.from_dict(merged), stored_seed, stored_preset


def truncate_metrics(path: Path, step: int, finished: bool) -> None:
    """Drop the metrics rows written after the checkpoint a run resumes from (they will be
    written again), and a last line cut short by a kill."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            row_step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if row_step < step or (row_step == step and (finished or row.get("phase") != "final")):
            keep.append(line + "\n")
    with write_errors(path.parent, METRICS_FILE), atomic_path(path, overwrite=True) as tmp:
        tmp.write_text("".join(keep))


def prepare_output(out: Path, resume: bool) -> Path | None:
    """Check the output folder before any expensive work; returns the checkpoint to
    resume from (None for a new run).  The folder is created and probed for writing."""
    if out.exists() and not out.is_dir():
        raise InputError("training output path exists and is not a folder", out)
    latest = ckpt.latest_checkpoint(out) if out.is_dir() else None
    if resume and latest is None:
        raise InputError("nothing to resume: no checkpoint in the output folder", out)
    if not resume and out.is_dir() and any(out.iterdir()):
        raise OutputExistsError("training output folder is not empty (use --resume to "
                                "continue a run, or choose a new folder)", out)
    with write_errors(out, "output folder"):
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.part"
        probe.write_bytes(b"")
        probe.unlink()
    return latest


@contextlib.contextmanager
def write_errors(out: Path, what: str) -> Iterator[None]:
    """Turn a failed write (full disk, read-only folder, quota) into one clear error that
    says the last checkpoint is intact (writes are atomic: nothing half-written stays)."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        try:
            latest = ckpt.latest_checkpoint(out) if out.is_dir() else None
        except CaloforgeError:
            latest = None
        kept = f"; the last checkpoint {latest.name} is intact" if latest else ""
        raise CaloforgeError(f"cannot write the {what}: {reason}{kept}", out) from None
