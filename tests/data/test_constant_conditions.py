"""Conditions constant over a file survive formats without per-shower columns for them;
the ILD layout writes the original files' data types."""

import h5py
import numpy as np
import pytest

from caloforge.data.io import open_showers, read_showers, write_showers
from caloforge.errors import FormatError, LossyConversionError

FOREIGN = [("calochallenge", "ild-ecal"), ("ild", "ild-ecal"), ("calogan", "calogan"),
           ("pointcloud", "ild-ecal")]


@pytest.mark.parametrize("fmt,geometry", FOREIGN)
def test_constant_conditions_round_trip(tmp_path, showers, fmt, geometry):
    n = 5
    b = showers(geometry, n, theta=np.zeros(n), phi=np.full(n, 0.25), particle=np.full(n, 22),
                impact=np.tile([1.5, -2.0], (n, 1)))
    path = tmp_path / "c.h5"
    with write_showers(path, fmt, geometry) as w:  # no lossy needed
        w.append(b[:2])
        w.append(b[2:])
    r = read_showers(path)
    for name in ("theta", "phi", "particle", "impact"):
        assert np.array_equal(getattr(r.conditions, name), getattr(b.conditions, name)), name
    with open_showers(path) as f:
        assert "dropped_conditions" not in f.metadata
        part = f.read(1, 3)
    assert part.conditions.impact.shape == (2, 2)
    part.conditions.theta[0] = 1.0  # the arrays are writable copies


@pytest.mark.parametrize("fmt,geometry", FOREIGN)
def test_condition_varying_in_a_later_batch_needs_lossy(tmp_path, showers, fmt, geometry):
    b = showers(geometry, 4, particle=[22, 22, 22, 11])
    path = tmp_path / "v.h5"
    with pytest.raises(LossyConversionError, match=r"particle \(e.g. 22 and 11\).*--lossy"):
        with write_showers(path, fmt, geometry) as w:
            w.append(b[:3])  # constant so far
            w.append(b[3:])
    assert list(tmp_path.iterdir()) == []
    with write_showers(path, fmt, geometry, lossy=True) as w:
        w.append(b[:3])
        w.append(b[3:])
    with h5py.File(path) as h5:
        assert not any(k.startswith("caloforge_condition_") for k in h5.attrs)
    with open_showers(path) as f:
        assert f.metadata["dropped_conditions"] == ["particle"]
        assert f.read().conditions.particle is None


def test_condition_present_in_some_batches_only(tmp_path, showers):
    b = showers("calogan", 2, theta=np.zeros(2))
    with pytest.raises(LossyConversionError, match="theta \\(set for some showers only\\)"):
        with write_showers(tmp_path / "s.h5", "calochallenge", "calogan") as w:
            w.append(b)
            w.append(showers("calogan", 2))


@pytest.mark.parametrize("value,match", [
    (np.array([1.0, 2.0]), "must be a finite number"),
    (np.nan, "must be a finite number"),
    ("zero", "must be a finite number"),
])
def test_hostile_constant_attribute(tmp_path, showers, value, match):
    path = tmp_path / "h.h5"
    with write_showers(path, "calochallenge", "calogan") as w:
        w.append(showers("calogan", 2))
    with h5py.File(path, "r+") as h5:
        h5.attrs["caloforge_condition_theta"] = value
    with pytest.raises(FormatError, match=f"caloforge_condition_theta.*{match}"):
        open_showers(path)


@pytest.mark.parametrize("geometry,group", [("ild-ecal", "30x30"), ("ild-ahcal", "hcal_only")])
def test_ild_writes_original_dtypes(tmp_path, showers, geometry, group):
    """float32 incident energies (the BIB-AE critic takes them uncast) and float64 layers,
    as the original ILD production scripts wrote them -- also for empty files."""
    for n in (3, 0):
        path = tmp_path / f"i{n}.h5"
        with write_showers(path, "ild", geometry) as w:
            w.append(showers(geometry, n))
        with h5py.File(path) as h5:
            assert h5[f"{group}/energy"].dtype == np.float32
            assert h5[f"{group}/layers"].dtype == np.float64
            assert h5[f"{group}/energy"].shape == (n, 1)
