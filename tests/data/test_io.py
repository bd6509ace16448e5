import tracemalloc

import h5py
import numpy as np
import pytest

from caloforge.data import Conditions, ShowerBatch
from caloforge.data.io import FORMATS, detect_format, open_showers, read_showers, write_showers
from caloforge.errors import (
    FormatError,
    GeometryError,
    GeometryMismatchError,
    InputError,
    LossyConversionError,
    OutputExistsError,
)

CASES = [
    ("caloforge", "ild-ecal"), ("caloforge", "calogan"), ("calochallenge", "calochallenge-1-photons"),
    ("calochallenge", "calochallenge-1-pions"), ("calochallenge", "calochallenge-2"),
    ("calochallenge", "ild-ahcal"), ("ild", "ild-ecal"), ("ild", "ild-ahcal"),
    ("calogan", "calogan"), ("pointcloud", "ild-ecal"), ("pointcloud", "ild-ahcal"),
]


@pytest.mark.parametrize("fmt,geometry", CASES)
def test_round_trip(tmp_path, showers, fmt, geometry):
    b = showers(geometry, 7)
    path = tmp_path / "out.h5"
    with write_showers(path, fmt, geometry, metadata={"seed": 3}) as w:
        w.append(b[:3])
        w.append(b[3:])
    assert detect_format(path) == fmt
    with open_showers(path) as f:
        assert f.geometry == geometry and f.n_showers == 7 and f.format == fmt
        assert f.metadata["seed"] == 3
        r = f.read()
        parts = list(f.iter_batches(3))
    assert [len(p) for p in parts] == [3, 3, 1]
    if fmt == "pointcloud" or geometry in ("calochallenge-2", "calochallenge-3"):
        # GeV float32 on disk / deposits divided by the sampling fraction on disk:
        # exact to float32 rounding
        np.testing.assert_allclose(r.energies, b.energies, rtol=1e-6)
    else:
        assert np.array_equal(r.energies, b.energies)
    if fmt == "ild":  # float32 GeV on disk, as in the original ILD files
        np.testing.assert_allclose(r.incident_energy, b.incident_energy, rtol=1.2e-7)
    else:
        assert np.array_equal(r.incident_energy, b.incident_energy)
    assert np.array_equal(ShowerBatch.concatenate(parts).energies, r.energies)


@pytest.mark.parametrize("sparse", [True, False])
def test_native_keeps_all_conditions(tmp_path, showers, sparse):
    b = showers("calogan", 5, theta=np.linspace(0, 0.2, 5), phi=np.zeros(5),
                particle=[22, 11, -11, 211, -211], impact=np.ones((5, 2)))
    b.overflow = np.arange(15, dtype=np.float32).reshape(5, 3)
    path = tmp_path / "n.h5"
    with write_showers(path, "caloforge", "calogan", sparse=sparse) as w:
        w.append(b)
    with h5py.File(path) as h5:
        assert h5.attrs["layout"] == ("sparse" if sparse else "dense")
    r = read_showers(path)
    for name in ("theta", "phi", "particle", "impact"):
        assert np.array_equal(getattr(r.conditions, name), getattr(b.conditions, name))
    assert np.array_equal(r.overflow, b.overflow)
    assert np.array_equal(r.energies, b.energies)


def test_native_points_layout(tmp_path, showers):
    b = showers("ild-ecal", 3)
    pts = b.to_points()
    pts.x = pts.x + 0.3  # sub-cell positions survive in the native format
    path = tmp_path / "p.h5"
    with write_showers(path, "caloforge", "ild-ecal") as w:
        w.append(pts)
    with open_showers(path) as f:
        assert f.is_point_cloud
        back = f.read_points()
        assert np.allclose(back.x, pts.x)
        assert np.array_equal(f.read().energies, b.energies)


def test_calogan_overflow_round_trip(tmp_path, showers):
    b = showers("calogan", 4)
    b.overflow = np.full((4, 3), 2.5, np.float32)
    with write_showers(tmp_path / "c.h5", "calogan", "calogan") as w:
        w.append(b)
    assert np.array_equal(read_showers(tmp_path / "c.h5").overflow, b.overflow)


def test_units_on_disk(tmp_path):
    b = ShowerBatch("ild-ecal", np.zeros((1, 27000), np.float32), Conditions([50_000.0]))
    b.energies[0, 5] = 1.5
    with write_showers(tmp_path / "i.h5", "ild", "ild-ecal") as w:
        w.append(b)
    with h5py.File(tmp_path / "i.h5") as h5:
        assert h5["30x30/energy"][0, 0] == pytest.approx(50.0)  # GeV
        assert h5["30x30/layers"].shape == (1, 30, 30, 30)
        assert h5["30x30/layers"][0, 0, 0, 5] == pytest.approx(1.5)  # MeV
    with write_showers(tmp_path / "p.h5", "pointcloud", "ild-ecal") as w:
        w.append(b)
    with h5py.File(tmp_path / "p.h5") as h5:
        ev = h5["events"][0]
        assert ev.shape == (4, 6000)  # CaloClouds: 6000 slots, the point in the last one
        assert ev[3, -1] == pytest.approx(1.5e-3) and not ev[:, :-1].any()  # GeV
        assert ev[1, -1] == pytest.approx(1811.34020996 + 0.5250244140625 / 2)  # layer 0, mm
        assert h5["energy"][0, 0] == pytest.approx(50.0)


# ---- bad input -------------------------------------------------------------------------

def _write_raw(path, **datasets):
    with h5py.File(path, "w") as h5:
        for k, v in datasets.items():
            h5[k] = v
    return path


def test_missing_key(tmp_path):
    p = _write_raw(tmp_path / "m.h5", showers=np.zeros((2, 368)))
    with pytest.raises(FormatError, match="not a known shower format.*showers"):
        open_showers(p)
    with pytest.raises(FormatError, match="missing dataset 'incident_energies'"):
        open_showers(p, format="calochallenge")


def test_wrong_shapes(tmp_path):
    p = _write_raw(tmp_path / "s.h5", showers=np.zeros((2, 368)), incident_energies=np.ones((3, 1)))
    with pytest.raises(FormatError, match="2 showers but 3 incident energies"):
        open_showers(p)
    p = _write_raw(tmp_path / "i.h5", energy=np.ones((2, 1)), **{"30x30/layers": np.zeros((2, 30, 30, 29))})
    with pytest.raises(FormatError, match=r"expected \(N, 30, 30, 30\)"):
        open_showers(p)


def test_voxel_count_without_geometry(tmp_path):
    p = _write_raw(tmp_path / "v.h5", showers=np.zeros((2, 1000)), incident_energies=np.ones((2, 1)))
    with pytest.raises(GeometryError, match="1000 voxels per shower match no known geometry"):
        open_showers(p)
    p = _write_raw(tmp_path / "w.h5", showers=np.zeros((2, 368)), incident_energies=np.ones((2, 1)))
    with pytest.raises(GeometryMismatchError, match="368 voxels.*6480"):
        open_showers(p, geometry="calochallenge-2")


@pytest.mark.parametrize("bad,match", [
    (np.nan, "NaN/inf voxel energies"), (-1.0, "negative voxel energies"),
])
def test_bad_energies(tmp_path, bad, match):
    s = np.zeros((3, 368), np.float32)
    s[1, 4] = bad
    p = _write_raw(tmp_path / "e.h5", showers=s, incident_energies=np.ones((3, 1)))
    with pytest.raises(InputError, match=match) as exc:
        read_showers(p)
    assert str(p) in str(exc.value) and "shower 1" in str(exc.value)
    # without validation the data is returned as is (evaluation reports NaN itself)
    assert read_showers(p, validate=False).energies.shape == (3, 368)


@pytest.mark.parametrize("value", [0.0, -5.0, np.inf])
def test_bad_incident_energy(tmp_path, value):
    p = _write_raw(tmp_path / "e.h5", showers=np.zeros((2, 368)),
                   incident_energies=np.array([[1.0], [value]]))
    with pytest.raises(InputError, match="incident energies"):
        read_showers(p)


def test_not_hdf5_and_truncated(tmp_path, showers):
    txt = tmp_path / "a.h5"
    txt.write_text("hello")
    with pytest.raises(FormatError, match="not an HDF5 file"):
        open_showers(txt)
    good = tmp_path / "g.h5"
    with write_showers(good, "calochallenge", "calochallenge-2") as w:
        w.append(showers("calochallenge-2", 50))
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated|corrupt|cannot"):
        read_showers(cut)
    with pytest.raises(InputError, match="does not exist"):
        open_showers(tmp_path / "missing.h5")


def test_output_exists_and_no_partial_output(tmp_path, showers):
    p = tmp_path / "o.h5"
    p.write_text("keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with write_showers(p, "calochallenge", "calogan"):
            pass
    assert p.read_text() == "keep me"
    q = tmp_path / "q.h5"
    with pytest.raises(RuntimeError):
        with write_showers(q, "calochallenge", "calogan") as w:
            w.append(showers("calogan", 2))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [p]  # no partial file, no temp file


def test_lossy_conversions(tmp_path, showers):
    b = showers("calogan", 3, theta=np.array([0.0, 0.1, 0.0]))
    with pytest.raises(LossyConversionError, match=r"cannot store theta \(e.g. 0. and 0.1\)"):
        with write_showers(tmp_path / "l.h5", "calogan", "calogan") as w:
            w.append(b)
    assert not (tmp_path / "l.h5").exists()
    with write_showers(tmp_path / "l.h5", "calogan", "calogan", lossy=True) as w:
        w.append(b)
    with open_showers(tmp_path / "l.h5") as f:
        assert f.metadata["dropped_conditions"] == ["theta"]
        assert f.read().conditions.theta is None
    b = showers("calogan", 2)
    b.overflow = np.ones((2, 3), np.float32)
    with pytest.raises(LossyConversionError, match="overflow"):
        with write_showers(tmp_path / "m.h5", "calochallenge", "calogan") as w:
            w.append(b)
    pts = showers("ild-ecal", 2).to_points()
    pts.x = pts.x + 1.0
    with pytest.raises(LossyConversionError, match="point positions inside the cells"):
        with write_showers(tmp_path / "n.h5", "calochallenge", "ild-ecal") as w:
            w.append(pts)


def test_wrong_geometry_for_format(tmp_path, showers):
    with pytest.raises(GeometryError, match="ILD format holds"):
        with write_showers(tmp_path / "x.h5", "ild", "calogan"):
            pass
    with pytest.raises(GeometryMismatchError, match="cannot write ild-ecal showers"):
        with write_showers(tmp_path / "y.h5", "calochallenge", "calogan") as w:
            w.append(showers("ild-ecal", 1))


def test_pointcloud_bad_layer_row(tmp_path):
    ev = np.zeros((1, 4, 3), np.float32)
    ev[0, :, 0] = [0.0, 45.0, 0.0, 1e-3]  # neither a layer number nor an ILD layer in mm
    p = _write_raw(tmp_path / "pc.h5", events=ev, energy=np.ones((1, 1)))
    with pytest.raises(InputError, match="1 points lie outside the layers"):
        read_showers(p)


def test_formats_listed():
    assert set(FORMATS) == {"caloforge", "calochallenge", "ild", "calogan", "pointcloud"}


def test_streaming_large_file_bounded_memory(tmp_path):
    """A dataset-3 file read in batches never holds more than a few batches in memory."""
    rng = np.random.default_rng(1)
    path = tmp_path / "big.h5"
    n, batch = 1200, 100  # 1200 x 40500 float32 = 194 MB on disk
    with write_showers(path, "calochallenge", "calochallenge-3") as w:
        for _ in range(n // batch):
            e = rng.random((batch, 40500), dtype=np.float32)
            w.append(ShowerBatch("calochallenge-3", e, Conditions(rng.uniform(1e3, 1e6, batch))))
    tracemalloc.start()
    total = 0.0
    with open_showers(path) as f:
        for b in f.iter_batches(batch):
            total += float(b.energies.sum(dtype=np.float64))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 0
    batch_bytes = batch * 40500 * 4
    assert peak < 4 * batch_bytes, f"peak {peak / 1e6:.0f} MB for {batch_bytes / 1e6:.0f} MB batches"


def test_sparse_file_with_repeated_cells_sums_them(tmp_path, showers):
    b = showers("calogan", 2)
    path = tmp_path / "s.h5"
    with write_showers(path, "caloforge", "calogan", sparse=True) as w:
        w.append(b)
    with h5py.File(path, "r+") as h5:  # append a duplicate entry for shower 1, cell 0
        off = h5["hits/offsets"][:]
        cell, energy = h5["hits/cell"][:], h5["hits/energy"][:]
        cell = np.insert(cell, off[2], 0)
        energy = np.insert(energy, off[2], 1.0)
        off[2] += 1
        for key, val in (("offsets", off), ("cell", cell), ("energy", energy)):
            del h5[f"hits/{key}"]
            h5[f"hits/{key}"] = val
    r = read_showers(path)
    assert r.energies[1, 0] == pytest.approx(b.energies[1, 0] + 1.0)
    assert np.array_equal(r.energies[0], b.energies[0])
