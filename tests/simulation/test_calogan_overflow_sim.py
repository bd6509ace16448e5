"""Simulated CaloGAN showers record the per-layer overflow that the CaloGAN format stores:
the active-layer energy outside the cells, so that cells + overflow = all deposits."""

from __future__ import annotations

import numpy as np

from caloforge.data.io import read_showers, write_showers
from caloforge.geometry import get_geometry
from caloforge.simulation import simulate
from caloforge.simulation.api import _one_shower, make_config, make_engine


def test_simulated_calogan_overflow_closes_the_energy_sum(tmp_path):
    kwargs = {"impact": (0.0, 220.0)}  # near the edge of the 480 mm wide layers
    batch = simulate("calogan", "positron", (5e3, 20e3), 3, seed=4, **kwargs)
    assert batch.overflow is not None and batch.overflow.shape == (3, 3)
    assert (batch.overflow >= 0).all() and (batch.overflow.sum(1) > 0).all()
    cfg = make_config("calogan", "positron", (5e3, 20e3), 3, 4, **kwargs)
    geo = get_geometry("calogan")
    engine = make_engine("builtin", geo)
    for i in range(3):
        _, deposits, _ = _one_shower(cfg, engine, geo, i)
        np.testing.assert_allclose(batch.energies[i].sum(dtype=np.float64)
                                   + batch.overflow[i].sum(dtype=np.float64),
                                   deposits.energy.sum(), rtol=1e-5)
    out = tmp_path / "cg.h5"
    with write_showers(out, "calogan", "calogan") as writer:
        writer.append(batch)
    np.testing.assert_allclose(read_showers(out).overflow, batch.overflow)
    assert simulate("ild-ecal", "photon", 2e3, 1, seed=1).overflow is None
