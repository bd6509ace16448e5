"""CaloChallenge files: datasets 2/3 store deposits / sampling fraction, dataset 1 as is."""

import h5py
import numpy as np
import pytest

from caloforge.data import Conditions, ShowerBatch
from caloforge.data.io import open_showers, read_showers, write_showers
from caloforge.data.io.base import read_metadata
from caloforge.errors import LossyConversionError
from caloforge.geometry import get_geometry
from caloforge.geometry.calochallenge import SAMPLING_FRACTION


def _batch(geometry, n=4, seed=0, **meta):
    rng = np.random.default_rng(seed)
    e = rng.exponential(0.05, (n, get_geometry(geometry).n_voxels)).astype(np.float32)
    return ShowerBatch(geometry, e, Conditions(rng.uniform(1e3, 1e5, n)), metadata=meta)


@pytest.mark.parametrize("geometry", ["calochallenge-2", "calochallenge-3"])
def test_datasets_2_3_round_trip_in_challenge_convention(tmp_path, geometry):
    b = _batch(geometry, 3)
    path = tmp_path / "cc.h5"
    with write_showers(path, "calochallenge", geometry) as w:
        w.append(b)
    with h5py.File(path) as f:
        stored = f["showers"][:]
        meta = read_metadata(f)
    np.testing.assert_allclose(stored, b.energies / 0.033, rtol=1e-6)
    assert meta["energy_convention"] == "deposited / sampling fraction"
    assert meta["sampling_fraction"] == SAMPLING_FRACTION[geometry] == 0.033
    np.testing.assert_allclose(read_showers(path).energies, b.energies, rtol=1e-6)


def test_official_and_legacy_files(tmp_path):
    b = _batch("calochallenge-2", 2)
    official, legacy = tmp_path / "official.h5", tmp_path / "legacy.h5"
    for path in (official, legacy):
        with h5py.File(path, "w") as f:
            f["incident_energies"] = b.incident_energy[:, None]
            f["showers"] = b.energies
            if path == legacy:  # caloforge's files before the convention: raw deposits
                f.attrs["geometry"] = "calochallenge-2"
    with open_showers(official) as f:
        assert f.energy_convention == "deposited / sampling fraction"
        np.testing.assert_allclose(f.read().energies, b.energies * 0.033, rtol=1e-6)
        np.testing.assert_array_equal(f.read_file_energies(0, 2), b.energies)
    with open_showers(legacy) as f:
        assert f.energy_convention == "deposited"
        np.testing.assert_array_equal(f.read().energies, b.energies)


def test_dataset_1_unchanged_and_simulated_deposits_refused(tmp_path):
    b = _batch("calochallenge-1-photons", 2)
    path = tmp_path / "ds1.h5"
    with write_showers(path, "calochallenge", "calochallenge-1-photons") as w:
        w.append(b)
    with open_showers(path) as f:
        assert f.energy_convention == "calibrated cells (EM scale)"
        np.testing.assert_array_equal(f.read().energies, b.energies)
    sim = _batch("calochallenge-1-photons", 2, simulation={"engine": "caloforge"})
    with pytest.raises(LossyConversionError, match="calibrated to the electromagnetic scale"):
        with write_showers(tmp_path / "sim.h5", "calochallenge", "calochallenge-1-photons") as w:
            w.append(sim)
    assert not (tmp_path / "sim.h5").exists()
