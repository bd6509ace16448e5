"""Shared fixtures: small synthetic showers on any geometry."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("CALOFORGE_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def make_showers(geometry: str, n: int = 6, seed: int = 0, occupancy: float = 0.05,
                 **conditions):
    """Random sparse showers (MeV) with incident energies 10-100 GeV."""
    from caloforge.data import Conditions, ShowerBatch
    from caloforge.geometry import get_geometry

    rng = np.random.default_rng(seed)
    g = get_geometry(geometry)
    mask = rng.random((n, g.n_voxels)) < occupancy
    energies = (rng.exponential(1.0, (n, g.n_voxels)) * mask).astype(np.float32)
    return ShowerBatch(geometry, energies,
                       Conditions(rng.uniform(1e4, 1e5, n), **conditions))


@pytest.fixture
def showers():
    return make_showers
