import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caloforge.data import Conditions, PointCloudBatch, ShowerBatch
from caloforge.errors import GeometryMismatchError, InputError
from caloforge.geometry import get_geometry


def test_shape_must_fit_geometry():
    with pytest.raises(GeometryMismatchError, match="27000 voxels"):
        ShowerBatch("ild-ecal", np.zeros((2, 100)), Conditions([1.0, 2.0]))
    with pytest.raises(InputError, match="2 showers but 3"):
        ShowerBatch("calogan", np.zeros((2, 504)), Conditions([1.0, 2.0, 3.0]))


def test_validate_reports_nan_negative_and_bad_energy(showers):
    b = showers("calogan", 4)
    b.energies[2, 7] = np.nan
    with pytest.raises(InputError, match="1 showers contain NaN/inf.*shower 2"):
        b.validate("f.h5")
    b = showers("calogan", 4)
    b.energies[1, 0] = -1
    with pytest.raises(InputError, match="negative voxel energies"):
        b.validate("f.h5")
    b = showers("calogan", 4)
    b.conditions.incident_energy[3] = 0
    with pytest.raises(InputError, match="incident energies are <= 0"):
        b.validate("f.h5")


def test_hits_and_back(showers):
    b = showers("ild-ecal", 3)
    h = b.hits()
    assert len(h.energy) == np.count_nonzero(b.energies)
    back = ShowerBatch.from_hits("ild-ecal", h, b.conditions)
    assert np.array_equal(back.energies, b.energies)
    pos = h.positions(get_geometry("ild-ecal"))
    assert pos.shape == (len(h.energy), 3)


def test_threshold(showers):
    b = showers("ild-ahcal", 3)
    t = b.with_threshold()
    assert t.energies[(t.energies > 0)].min() >= 0.25
    assert np.all(t.energies[b.energies >= 0.25] == b.energies[b.energies >= 0.25])


def test_layer_energies_sum(showers):
    b = showers("calochallenge-1-photons", 5)
    assert np.allclose(b.layer_energies().sum(axis=1), b.total_energy(), rtol=1e-6)
    assert b.layer_energies().shape == (5, 24)


def test_slicing_and_concatenate(showers):
    b = showers("calogan", 6, theta=np.linspace(0, 0.1, 6))
    parts = [b[:2], b[2:5], b[5]]
    c = ShowerBatch.concatenate(parts)
    assert np.array_equal(c.energies, b.energies)
    assert np.array_equal(c.conditions.theta, b.conditions.theta)
    with pytest.raises(GeometryMismatchError):
        ShowerBatch.concatenate([b, showers("ild-ecal", 1)])


def test_points_round_trip_exact(showers):
    b = showers("ild-ecal", 4)
    pts = b.to_points()
    v, outside = pts.to_voxels()
    assert np.array_equal(v.energies, b.energies) and not outside.any()
    sub = pts[1:3]
    assert len(sub) == 2 and sub.offsets[0] == 0
    assert np.array_equal(sub.to_voxels()[0].energies, b.energies[1:3])


def test_calogan_outside_goes_to_overflow():
    pts = PointCloudBatch(offsets=[0, 2], x=[0.0, 1000.0], y=[0.0, 0.0], z=[10.0, 100.0],
                          energy=[5.0, 7.0], conditions=Conditions([1e4]))
    v, outside = pts.to_voxels("calogan")
    assert v.total_energy()[0] == pytest.approx(5.0)
    assert v.overflow.sum() == pytest.approx(7.0) and outside[0] == pytest.approx(7.0)
    assert v.overflow[0, 1] == pytest.approx(7.0)  # z = 100 mm is in layer 1


@settings(max_examples=50, deadline=None)
@given(
    geometry=st.sampled_from(["ild-ecal", "ild-ahcal", "calogan", "calochallenge-2",
                              "calochallenge-1-pions"]),
    n_showers=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    realistic=st.booleans(),
)
def test_points_to_voxels_conserves_energy(geometry, n_showers, seed, realistic):
    rng = np.random.default_rng(seed)
    g = get_geometry(geometry)
    counts = rng.integers(0, 50, n_showers)
    m = int(counts.sum())
    extent = 1.3 * float(np.abs(g.cell_centres[:, :2]).max() + 1)
    pts = PointCloudBatch(
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        x=rng.uniform(-extent, extent, m), y=rng.uniform(-extent, extent, m),
        z=rng.uniform(0, g.layer_z_mm[-1] + 5, m), energy=rng.exponential(2.0, m),
        conditions=Conditions(rng.uniform(1e3, 1e5, n_showers)))
    v, outside = pts.to_voxels(geometry, realistic=realistic)
    per_shower = np.bincount(pts.shower_index, weights=pts.energy, minlength=n_showers)
    assert np.allclose(v.total_energy() + outside, per_shower, rtol=1e-5, atol=1e-4)
    if v.overflow is not None:
        assert np.allclose(v.overflow.sum(axis=1), outside, rtol=1e-5, atol=1e-4)
    assert (v.energies >= 0).all()


def test_point_cloud_validation():
    with pytest.raises(InputError, match="offsets"):
        PointCloudBatch(offsets=[0, 3], x=[0.0], y=[0.0], z=[0.0], energy=[1.0],
                        conditions=Conditions([1.0]))
    pts = PointCloudBatch(offsets=[0, 1], x=[np.nan], y=[0.0], z=[0.0], energy=[1.0],
                          conditions=Conditions([1.0]))
    with pytest.raises(InputError, match="NaN"):
        pts.validate("p.h5")
