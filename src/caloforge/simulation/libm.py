"""Elementwise transcendental functions that give the same bits on every x86-64 CPU.

numpy picks its ``exp``, ``log``, ``log10``, ``log1p``, ``power``, ``arctan2``... loops at
run time by CPU (AVX-512 / AVX2 / baseline kernels); they agree to ~1 ulp but not bit for
bit, and one ulp in a cross-section table or an emission angle changes every later
random decision of a shower.  Measured: the ild-ecal tables, and so the showers of a
seed, changed with ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"`` (see
"Reproducibility" in :mod:`caloforge.simulation`).  Python's :mod:`math` calls the C
library's scalar functions -- the same ones the compiled kernel calls -- whose results
did not change with the CPU features (nor with glibc's FMA variants disabled).  The
arrays handled here are small (table grids, a shower's secondaries), so the scalar loop
costs nothing measurable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _elementwise(fn: Callable[..., float]) -> Callable[..., np.ndarray]:
    def safe(*args: float) -> float:
        try:
            return fn(*args)
        except ValueError:  # outside the domain (log(0), ...): numpy's nan, warnings aside
            return math.nan

    vec = np.vectorize(safe, otypes=[np.float64])

    def apply(*args: np.ndarray | float) -> np.ndarray:
        return vec(*(np.asarray(a, np.float64) for a in args))

    apply.__doc__ = f"Elementwise :func:`math.{fn.__name__}` (float64 arrays)."
    return apply


exp = _elementwise(math.exp)
log = _elementwise(math.log)
log10 = _elementwise(math.log10)
log1p = _elementwise(math.log1p)
power = _elementwise(math.pow)
sin = _elementwise(math.sin)
cos = _elementwise(math.cos)
arctan2 = _elementwise(math.atan2)
