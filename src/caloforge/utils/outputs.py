"""A result written as JSON and/or a figure, both complete or neither.

>>> plot_format("speed.pdf")
'pdf'
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caloforge.errors import InputError
from caloforge.utils.atomic import atomic_path, check_output_path

PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path: str | Path, option: str = "--plot") -> str:
    """The figure format named by the suffix of ``path`` (png, pdf or svg)."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in PLOT_FORMATS:
        raise InputError(f"{option}: name the file .png, .pdf or .svg (got "
                         f"{fmt or 'no suffix'!r})", path)
    return fmt


def check_outputs(json_path: str | Path | None, plot_path: str | Path | None,
                  overwrite: bool = False) -> None:
    """Refuse bad output paths before any work starts."""
    if plot_path is not None:
        plot_format(plot_path)
    for path in (json_path, plot_path):
        if path is not None:
            check_output_path(path, overwrite)
    if json_path is not None and plot_path is not None \
            and Path(json_path).resolve() == Path(plot_path).resolve():
        raise InputError("--json and --plot name the same file")


def write_outputs(result: dict[str, Any], json_path: str | Path | None,
                  plot: Callable[[Path, str], None] | None, plot_path: str | Path | None,
                  overwrite: bool = False) -> list[str]:
    """Write ``result`` as JSON and ``plot(tmp_path, format)``, each to a temporary file
    renamed only once both are complete; returns the paths written."""
    written = []
    with contextlib.ExitStack() as stack:
        if plot_path is not None and plot is not None:
            tmp = stack.enter_context(atomic_path(plot_path, overwrite))
            plot(tmp, plot_format(plot_path))
            written.append(str(plot_path))
        if json_path is not None:
            tmp = stack.enter_context(atomic_path(json_path, overwrite))
            tmp.write_text(json.dumps(result, indent=1))
            written.append(str(json_path))
    return written
