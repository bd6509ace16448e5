"""The contract between shower engines (builtin Monte Carlo, Geant4) and the rest.

An engine turns one primary particle into energy deposits in the active media of a
geometry.  Voxelisation, point clouds, thresholds and file writing are shared code
on top of :class:`Deposits`, so every engine produces the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from caloforge.geometry import Geometry


@dataclass
class Deposits:
    """Energy deposits of one shower in the active layers.

    x, y, z in mm (geometry frame: front face at z = 0, beam axis x = y = 0), energy in
    MeV, layer = readout layer index of the active slice the deposit is in.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    energy: np.ndarray
    layer: np.ndarray
    # Engine bookkeeping (MeV): energy escaped, deposited in passive material, invisible.
    info: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(self.energy.sum())


@dataclass(frozen=True)
class Primary:
    """The incident particle: PDG-style name, energy (MeV), impact (mm) and direction (rad)."""

    particle: str
    energy_mev: float
    x_mm: float = 0.0
    y_mm: float = 0.0
    theta: float = 0.0
    phi: float = 0.0


class Engine(Protocol):
    """A shower engine bound to one geometry."""

    name: str
    geometry: Geometry

    def simulate(self, primary: Primary, rng: np.random.Generator) -> Deposits:
        """Transport one primary; deterministic given the state of ``rng``."""
        ...
