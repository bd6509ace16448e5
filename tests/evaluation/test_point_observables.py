"""Point-level observables and the projection of points into the detector, on small
synthetic point clouds whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.data import Conditions, PointCloudBatch
from caloforge.data.io import write_showers
from caloforge.data.projection import project_points
from caloforge.evaluation import evaluate
from caloforge.evaluation.points import SPECTRUM_EDGES_MEV, PointAccumulator
from caloforge.geometry import get_geometry

GEO = get_geometry("ild-ecal")
R_EDGES = np.array([0.0, 10.0, 20.0, 1000.0])


def _batch(x, y, layer, energy, counts, impact=None):
    counts = np.asarray(counts)
    return PointCloudBatch(np.concatenate([[0], np.cumsum(counts)]), x=x, y=y,
                           z=GEO.layer_z_mm[np.asarray(layer)], energy=energy, layer=layer,
                           conditions=Conditions(np.full(len(counts), 1e4), impact=impact),
                           geometry="ild-ecal")


def test_point_observables_by_hand():
    # shower 0: two points in layer 0 (r = 0 and 15 mm), one in layer 5 (r = 25 mm);
    # shower 1: one point in layer 29 at r = 5 mm
    pts = _batch(x=[0, 15, 0, 3], y=[0, 0, 25, 4], layer=[0, 0, 5, 29],
                 energy=[1.0, 2.0, 4.0, 0.5], counts=[3, 1])
    acc = PointAccumulator(GEO, R_EDGES)
    acc.add(pts, np.array([0, 1], np.int8), np.array([0.7, 0.0]))
    s = acc.finish()
    assert s.scalars["n_points"].tolist() == [3, 1]
    assert s.scalars["e_points"].tolist() == [7.0, 0.5]
    np.testing.assert_allclose(s.outside_fraction, [0.1, 0.0])
    assert s.layers["points_layer"][0, [0, 5]].tolist() == [2, 1]
    assert s.layers["points_layer"][1, 29] == 1 and s.layers["points_layer"].sum() == 4
    assert s.layers["e_points_layer"][0, [0, 5]].tolist() == [3.0, 4.0]
    # spectrum: every point once, in the half of its shower
    assert s.spectrum[0].sum() == 3 and s.spectrum[1].sum() == 1
    b = np.searchsorted(SPECTRUM_EDGES_MEV, 0.5, side="right")
    assert s.spectrum[1, b] == 1
    # radial: shower 0 (half 0) has 1 MeV in [0,10), 2 in [10,20), 4 in [20,1000)
    np.testing.assert_allclose(s.profiles["radial"][0, 0], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(s.profiles["radial"][0, 1], [1.0, 4.0, 16.0])
    np.testing.assert_allclose(s.profiles["radial"][1, 0], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(s.profiles["longitudinal"][1, 0, 29], 0.5)


def test_radial_centre_is_the_impact_point_and_skipped_showers_drop():
    pts = _batch(x=[30.0, 0.0], y=[0.0, 0.0], layer=[0, 0], energy=[1.0, 1.0],
                 counts=[1, 1], impact=[[30.0, 0.0], [0.0, 0.0]])
    acc = PointAccumulator(GEO, R_EDGES)
    acc.add(pts, np.array([0], np.int8), np.zeros(2), keep=np.array([True, False]))
    s = acc.finish()
    assert s.scalars["n_points"].tolist() == [1]  # shower 1 skipped
    np.testing.assert_allclose(s.profiles["radial"][0, 0], [1.0, 0.0, 0.0])  # r = 0


def test_projection_conserves_energy_and_reports_the_loss():
    rng = np.random.default_rng(0)
    m = 400
    pts = _batch(x=rng.normal(0, 40, m), y=rng.normal(0, 40, m), layer=rng.integers(0, 30, m),
                 energy=rng.uniform(0.1, 1.0, m), counts=[150, 250])
    per_shower = np.bincount(pts.shower_index, weights=pts.energy)
    for realistic in (False, True):
        voxels, lost = project_points(pts, GEO, realistic)
        np.testing.assert_allclose(voxels.total_energy() + lost, per_shower, rtol=1e-5)
        assert (lost > 0).all()  # the tails leave the 30 x 30 grid
    plain = project_points(pts, GEO)[1].sum()
    assert project_points(pts, GEO, True)[1].sum() > plain  # wafer gaps lose more
    inside = _batch(x=[0.1], y=[0.1], layer=[0], energy=[1.0], counts=[1])
    assert project_points(inside, GEO)[1].tolist() == [0.0]


def _clouds(n, seed, energy_scale=1.0, width=35.0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(30, 60, n)
    m = int(counts.sum())
    return PointCloudBatch(
        np.concatenate([[0], np.cumsum(counts)]), x=rng.normal(0, width, m),
        y=rng.normal(0, width, m), z=np.zeros(m),
        energy=energy_scale * rng.exponential(0.5, m), layer=rng.integers(0, 30, m),
        conditions=Conditions(rng.uniform(1e4, 9e4, n)), geometry="ild-ecal")


@pytest.fixture(scope="module")
def point_evaluation(tmp_path_factory):
    d = tmp_path_factory.mktemp("points_eval")
    files = {}
    for name, pts in (("ref", _clouds(300, 1)), ("same", _clouds(300, 2)),
                      ("hot", _clouds(300, 3, energy_scale=2.0))):
        files[name] = d / f"{name}.h5"
        with write_showers(files[name], "pointcloud", "ild-ecal") as w:
            w.append(pts)
    res = evaluate(files["ref"], [files["same"], files["hot"]], classifier=False,
                   progress_bar=False, reco=False)
    return res.metrics


def test_evaluate_point_files(point_evaluation):
    same, hot = point_evaluation["generated"]
    for g in (same, hot):
        assert g["status"] == "ok"
        pts = g["points"]
        assert set(pts) >= {"n_points", "e_points", "points_layer", "e_points_layer",
                            "point_spectrum", "radial_profile", "longitudinal_profile",
                            "outside_cells_fraction"}
        assert "e_vis" in g["observables"] and "profiles" in g  # voxel level after projection
    # same distribution: the point observables sit at their noise floors
    for key in ("n_points", "e_points", "point_spectrum"):
        assert same["points"][key]["verdict"] in ("green", "yellow"), key
    # twice the point energies: the energy observables are far beyond their floors
    assert hot["points"]["e_points"]["verdict"] == "red"
    assert hot["points"]["point_spectrum"]["verdict"] == "red"
    assert hot["points"]["n_points"]["verdict"] in ("green", "yellow")
    assert hot["observables"]["e_vis"]["verdict"] == "red"
    assert 0 < same["points"]["outside_cells_fraction"]["generated_mean"] < 0.5
    assert any(row["metric"] == "points" for row in point_evaluation["metric_table"])


def test_voxel_sample_against_point_reference_says_why(tmp_path):
    from caloforge.evaluation.toy import toy_showers

    ref = tmp_path / "ref.h5"
    with write_showers(ref, "pointcloud", "ild-ecal") as w:
        w.append(_clouds(100, 1))
    vox = toy_showers(100, "ild-ecal", seed=2)
    m = evaluate(ref, [vox], classifier=False, progress_bar=False, reco=False).metrics
    g = m["generated"][0]
    assert g["points"]["status"] == "not computed"
    assert "holds voxels, not points" in g["points"]["reason"]


def test_report_table_lists_the_point_rows(point_evaluation):
    from caloforge.evaluation.report import _summary_rows

    html = "".join(_summary_rows(point_evaluation["generated"]))
    assert "point-level observables" in html
    for name in ("n_points", "e_points_layer", "points: point_spectrum",
                 "points: radial_profile", "points: longitudinal_profile"):
        assert name in html, name
