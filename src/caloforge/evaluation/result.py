"""The result of an evaluation, shared by :mod:`.api` (which makes it) and
:mod:`.report` (which draws it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.evaluation.observables import GeometryFeatures
from caloforge.evaluation.stream import SampleSummary


@dataclass
class Evaluation:
    """Result of :func:`~caloforge.evaluation.evaluate`: ``metrics`` is exactly what
    ``metrics.json`` holds."""

    metrics: dict[str, Any]
    reference: SampleSummary
    generated: list[SampleSummary | None]
    report_dir: Path | None = None
    figures: list[str] = field(default_factory=list)
    geometry_features: GeometryFeatures | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """True when every requested comparison was made (``not_compared`` is empty)."""
        return not self.metrics.get("not_compared")


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
