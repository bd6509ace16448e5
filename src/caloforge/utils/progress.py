"""Progress bars (tqdm) that stay quiet when asked to or when nothing is long."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    """Bars are on unless disabled explicitly or by ``CALOFORGE_NO_PROGRESS=1``."""
    if enabled is not None:
        return enabled
    return os.environ.get("CALOFORGE_NO_PROGRESS", "0") not in ("1", "true", "yes")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None,
             desc: str = "", unit: str = "it", enabled: bool | None = None) -> Iterator[T] | tqdm:
    """A tqdm bar on stderr; ``progress(total=N)`` returns a bar to ``update()`` by hand."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                disable=not progress_enabled(enabled), mininterval=0.5)
