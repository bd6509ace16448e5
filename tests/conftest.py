"""Shared fixtures: small synthetic showers on any geometry."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from caloforge.models.toy import toy_geometry, toy_showers

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


# ---- models and training: a registered 6x6x6 toy geometry and toy showers ----------
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks run as fast on one thread, and the test machine's 2 cores are shared
    (two threads under load were 10x slower); restore the setting for other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_geo():
    return toy_geometry()


@pytest.fixture(scope="session")
def toy_data(toy_geo):
    """256 toy showers, incident energies log-uniform in 1-100 GeV."""
    rng = np.random.default_rng(1)
    return toy_showers(toy_geo, np.exp(rng.uniform(np.log(1e3), np.log(1e5), 256)), rng)


@pytest.fixture(scope="session")
def two_energy_data():
    """Toy showers at 2 GeV and 80 GeV only, on a 6x4x4 grid (conditioning tests)."""
    rng = np.random.default_rng(2)
    e = np.where(rng.random(512) < 0.5, 2e3, 80e3)
    return toy_showers(toy_geometry("toy-6x4x4", 6, 4), e, rng)


ANGLED_THETA_MAX_DEG = 30.0


@pytest.fixture(scope="session")
def angled_file(toy_geo, tmp_path_factory):
    """A toy shower file (192 showers, 2-50 GeV) with theta uniform in 0-30 degrees and any
    phi, for the angle-conditioned model and training tests."""
    from caloforge.data.io import write_showers

    rng = np.random.default_rng(3)
    n = 192
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    theta = np.radians(rng.uniform(0, ANGLED_THETA_MAX_DEG, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    path = tmp_path_factory.mktemp("angles") / "angled.h5"
    with write_showers(path, "caloforge", toy_geo.name) as w:
        w.append(toy_showers(toy_geo, e, rng, theta=theta, phi=phi))
    return path


@pytest.fixture(scope="session")
def toy_file(toy_data, tmp_path_factory):
    """``toy_data`` as a caloforge file (read only by the tests that use it)."""
    from caloforge.data.io import write_showers

    path = tmp_path_factory.mktemp("data") / "toy.h5"
    with write_showers(path, "caloforge", toy_data.geometry) as w:
        w.append(toy_data)
    return path


@pytest.fixture(scope="session")
def write_toy_points(toy_geo):
    """``write(path, n, seed)``: ``n`` toy showers of 2-50 GeV (log-uniform, from
    ``default_rng(seed)``) as point clouds in the ``pointcloud`` format; returns ``path``."""
    from caloforge.data.io import write_showers

    def write(path, n, seed):
        rng = np.random.default_rng(seed)
        e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
        with write_showers(path, "pointcloud", toy_geo.name) as w:
            w.append(toy_showers(toy_geo, e, rng).to_points())
        return path
    return write
