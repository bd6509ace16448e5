"""Write-to-temporary-then-rename, so that a failed run never leaves a partial file."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from caloforge.errors import InputError, OutputExistsError


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing output unless ``overwrite``; refuse a missing parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError("output exists (use --overwrite to replace it)", path)
    if path.exists() and path.is_dir():
        raise InputError("output path is a directory", path)
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist", path)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = check_output_path(path, overwrite)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
