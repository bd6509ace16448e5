"""Reference shower simulation: builtin Monte Carlo engine, pion model, outputs.

>>> from caloforge.simulation import simulate
>>> batch = simulate("ild-ecal", "photon", 1000.0, n=2, seed=1)  # 1 GeV photons
>>> len(batch)
2

Reproducibility: shower ``i`` of a sample depends only on (seed, i), and is bit for bit
the same on every x86-64 CPU given the same numpy, numba and C library (glibc).
Measured (tests/simulation/test_reproducibility.py): numba's code for any
``NUMBA_CPU_NAME`` (generic, haswell, skylake-avx512, znver3, the host) and glibc's
libm with or without its FMA/AVX2 variants give the same bits (no fast-math, so no FMA
contraction); numpy's CPU-dispatched ``exp/log/power/arctan2`` loops do not, so the
physics tables and the pion model use the C library's scalar functions
(:mod:`caloforge.simulation.libm`).  Not covered: another C library (musl, macOS,
Windows) or another glibc release may round transcendental functions differently, and a
new numpy may change its Generator's sampling algorithms (NEP 19); both change showers
bit-wise, not their distributions.
"""

from caloforge.simulation.api import (
    Range,
    SimulationConfig,
    iter_simulate,
    make_engine,
    shard_range,
    shower_rng,
    simulate,
    simulate_range,
)
from caloforge.simulation.engine import Deposits, Engine, Primary

__all__ = [
    "Deposits",
    "Engine",
    "Primary",
    "Range",
    "SimulationConfig",
    "iter_simulate",
    "make_engine",
    "shard_range",
    "shower_rng",
    "simulate",
    "simulate_range",
]
