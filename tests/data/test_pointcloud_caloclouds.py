"""The `pointcloud` format against an independent re-implementation of the CaloClouds II
layout (written here with plain h5py/numpy, from the peers' dataset reader and projection:
FLC-QU-hep/CaloClouds-2 utils/dataset.py and utils/plotting.py)."""

import h5py
import numpy as np
import pytest

from caloforge.data import Conditions, PointCloudBatch
from caloforge.data.io import open_showers, read_showers, write_showers

# The peers' numbers, typed in again on purpose (not imported from caloforge).
BOTTOM = np.array([
    1811.34020996, 1814.46508789, 1823.81005859, 1826.93505859, 1836.2800293, 1839.4050293,
    1848.75, 1851.875, 1861.2199707, 1864.3449707, 1873.68994141, 1876.81494141,
    1886.16003418, 1889.28503418, 1898.63000488, 1901.75500488, 1911.09997559, 1914.22497559,
    1923.56994629, 1926.69494629, 1938.14001465, 1943.36499023, 1954.81005859, 1960.03503418,
    1971.47998047, 1976.70495605, 1988.15002441, 1993.375, 2004.81994629, 2010.04504395])
THICKNESS = 0.5250244140625
AXIS_Z = 40.0
P = 6000
CELL = 5.088


def peer_read(path, max_ds_seq_len=P):
    """What CaloClouds II's PointCloudDataset keeps of each shower: the last
    ``max_len`` slots, E in MeV; returns a list of (x, y, z, E) arrays, one per shower."""
    with h5py.File(path, "r") as f:
        events = f["events"][:]
        energy = f["energy"][:]
    max_len = (events[:, -1] > 0).sum(axis=1).max()
    events = events[:, :, max_ds_seq_len - max_len:]
    out = []
    for ev in events:
        real = ev[3] != 0
        out.append(np.stack([ev[0][real], ev[1][real], ev[2][real], ev[3][real] * 1000]))
    return out, energy


def peer_project(points):
    """The projection's layer selection (bottom - 0.5 <= y <= bottom + 1) and a 30 x 30
    grid of 5.088 mm cells centred on the photon axis (x = 0, z = 40 mm): (30, 30, 30) MeV."""
    x, y, z, e = points
    out = np.zeros((30, 30, 30))
    edges_x = (np.arange(31) - 15) * CELL
    edges_z = edges_x + AXIS_Z
    for k in range(30):
        sel = (y <= BOTTOM[k] + 1) & (y >= BOTTOM[k] - 0.5)
        out[k] += np.histogram2d(x[sel], z[sel], bins=(edges_x, edges_z), weights=e[sel])[0]
    return out


def peer_write(path, showers, energy_gev, y_in_layer_units=False):
    """A file as the peers write it: (N, 4, 6000) float32, points right-aligned."""
    events = np.zeros((len(showers), 4, P), np.float32)
    for i, (x, layer, z, e) in enumerate(showers):
        n = len(e)
        y = layer + 0.5 if y_in_layer_units else BOTTOM[layer] + THICKNESS / 2
        events[i, :, P - n:] = np.stack([x, y, z + AXIS_Z, e / 1000])
    with h5py.File(path, "w") as f:
        f["events"] = events
        f["energy"] = np.asarray(energy_gev, np.float32).reshape(-1, 1)


def _cloud(rng, n_showers=4):
    counts = rng.integers(20, 200, n_showers)
    m = int(counts.sum())
    # positions at cell centres, so that the grid comparison is exact
    i, j = rng.integers(0, 30, m), rng.integers(0, 30, m)
    return PointCloudBatch(
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        x=(i - 14.5) * CELL, y=(j - 14.5) * CELL, z=np.zeros(m),
        energy=rng.uniform(0.01, 5.0, m), layer=rng.integers(0, 30, m),
        conditions=Conditions(rng.uniform(1e4, 9e4, n_showers)), geometry="ild-ecal")


def test_caloforge_file_reads_with_the_peer_layout(tmp_path):
    pts = _cloud(np.random.default_rng(1))
    path = tmp_path / "cc.h5"
    with write_showers(path, "pointcloud", "ild-ecal") as w:
        w.append(pts[:2])
        w.append(pts[2:])
    clouds, energy = peer_read(path)
    np.testing.assert_allclose(energy[:, 0], pts.conditions.incident_energy / 1000, rtol=1e-6)
    with h5py.File(path) as f:
        ev = f["events"][:]
    assert ev.shape == (4, 4, P) and ev.dtype == np.float32
    for i, cloud in enumerate(clouds):
        lo, hi = pts.offsets[i], pts.offsets[i + 1]
        n = hi - lo
        assert cloud.shape[1] == n  # no point lost by the reader's cut
        assert not ev[i, :, :P - n].any() and (ev[i, 3, P - n:] > 0).all()  # padding first
        # y is the layer's position in mm in the ILD frame, z is shifted to the axis
        np.testing.assert_allclose(cloud[1], BOTTOM[pts.layer[lo:hi]] + THICKNESS / 2)
        np.testing.assert_allclose(cloud[0], pts.x[lo:hi], atol=1e-4)
        np.testing.assert_allclose(cloud[2], pts.y[lo:hi] + AXIS_Z, atol=1e-4)
        np.testing.assert_allclose(cloud[3], pts.energy[lo:hi], rtol=1e-6)
        # the peers' projection finds every MeV, in the cells caloforge puts it in
        voxels, outside = pts[i:i + 1].to_voxels("ild-ecal")
        assert outside.sum() == 0
        np.testing.assert_allclose(peer_project(cloud).ravel(), voxels.energies[0], rtol=1e-5)


@pytest.mark.parametrize("layer_units", [False, True])
def test_peer_file_reads_in_caloforge(tmp_path, layer_units):
    rng = np.random.default_rng(2)
    showers = []
    for n in (5, 40, 300):
        showers.append((rng.uniform(-70, 70, n), rng.integers(0, 30, n),
                        rng.uniform(-70, 70, n), rng.uniform(0.1, 3.0, n)))
    path = tmp_path / "peer.h5"
    peer_write(path, showers, [10.0, 50.0, 90.0], y_in_layer_units=layer_units)
    with open_showers(path) as f:
        assert f.geometry == "ild-ecal" and f.is_point_cloud
        pts = f.read_points()
    np.testing.assert_allclose(pts.conditions.incident_energy, [1e4, 5e4, 9e4])
    assert pts.n_points.tolist() == [5, 40, 300]
    for i, (x, layer, z, e) in enumerate(showers):
        sl = slice(pts.offsets[i], pts.offsets[i + 1])
        assert pts.layer[sl].tolist() == layer.tolist()
        np.testing.assert_allclose(pts.x[sl], x, atol=1e-4)
        np.testing.assert_allclose(pts.y[sl], z, atol=1e-4)  # caloforge y = file z - 40
        np.testing.assert_allclose(pts.energy[sl], e, rtol=1e-6)


def test_round_trip_through_both(tmp_path):
    """peer writer -> caloforge reader -> caloforge writer -> peer reader: unchanged."""
    rng = np.random.default_rng(3)
    showers = [(rng.uniform(-60, 60, n), rng.integers(0, 30, n), rng.uniform(-60, 60, n),
                rng.uniform(0.1, 3.0, n)) for n in (7, 70)]
    peer_write(tmp_path / "a.h5", showers, [20.0, 80.0])
    with open_showers(tmp_path / "a.h5") as f:
        pts = f.read_points()
    with write_showers(tmp_path / "b.h5", "pointcloud", "ild-ecal") as w:
        w.append(pts)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_allclose(b["events"][:], a["events"][:], atol=2e-4)


def test_more_points_than_slots_moves_old_rows(tmp_path):
    pts = _cloud(np.random.default_rng(4), 3)
    n = pts.n_points
    with write_showers(tmp_path / "g.h5", "pointcloud", "ild-ecal", slots=int(n[0])) as w:
        w.append(pts[:1])
        w.append(pts[1:])
    with h5py.File(tmp_path / "g.h5") as f:
        ev = f["events"][:]
    assert ev.shape[2] == n.max()
    for i in range(3):  # every shower still right-aligned after the resize
        assert (ev[i, 3, ev.shape[2] - n[i]:] > 0).all() and not ev[i, :, :-n[i]].any()
    back = read_showers(tmp_path / "g.h5")
    np.testing.assert_allclose(back.total_energy(), pts.to_voxels("ild-ecal")[0].total_energy(),
                               rtol=1e-5)


def test_earlier_caloforge_files_still_read(tmp_path):
    """Left-aligned, integer layer index in y, grid-centred transverse origin."""
    ev = np.zeros((1, 4, 5), np.float32)
    ev[0, :, :2] = [[1.0, -2.0], [3.0, 29.0], [4.0, 5.0], [1e-3, 2e-3]]
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f["events"] = ev
        f["energy"] = np.full((1, 1), 10.0)
        f.attrs["geometry"] = "ild-ecal"
    with open_showers(tmp_path / "old.h5") as f:
        pts = f.read_points()
    assert pts.layer.tolist() == [3, 29]
    np.testing.assert_allclose(pts.x, [1.0, -2.0])
    np.testing.assert_allclose(pts.y, [4.0, 5.0])
    np.testing.assert_allclose(pts.energy, [1.0, 2.0], rtol=1e-6)
