"""Reference shower simulation: builtin Monte Carlo engine, pion model, outputs.

>>> from caloforge.simulation import simulate
>>> batch = simulate("ild-ecal", "photon", 1000.0, n=2, seed=1)  # 1 GeV photons
>>> len(batch)
2
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
