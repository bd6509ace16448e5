"""Hand-computed checks of every observable."""

import math

import numpy as np
import pytest

from caloforge.evaluation.observables import (
    GeometryFeatures,
    apply_threshold,
    calogan_shapes,
    energy_bins,
    layer_features,
    mu90_sigma90,
    shower_scalars,
    shower_start_layer,
)
from caloforge.geometry import get_geometry


@pytest.fixture(scope="module")
def gf():
    return GeometryFeatures.of(get_geometry("calogan"))


def _two_cell_shower(gf, e1=30.0, e2=10.0):
    geo = gf.geometry
    c = geo.cell_centres
    # Two cells in layer 1 (12 x 12 cells of 40 mm): (i=5, j=5) and (i=6, j=5).
    v1, v2 = geo.voxel_index(1, 5, 5), geo.voxel_index(1, 6, 5)
    e = np.zeros((1, geo.n_voxels), np.float32)
    e[0, v1], e[0, v2] = e1, e2
    return e, c[v1], c[v2]


def test_scalars_two_cells(gf):
    e, c1, c2 = _two_cell_shower(gf)
    s = shower_scalars(e, np.array([1000.0]), gf)
    assert s["e_vis"][0] == pytest.approx(40.0)
    assert s["e_ratio"][0] == pytest.approx(0.04)
    assert s["n_hits"][0] == 2
    x_mean = (30 * c1[0] + 10 * c2[0]) / 40
    assert s["cog_x"][0] == pytest.approx(x_mean, abs=1e-4)
    assert s["cog_y"][0] == pytest.approx(c1[1], abs=1e-4)
    assert s["cog_z"][0] == pytest.approx(c1[2], abs=1e-3)
    # Two-point weighted standard deviation: |dx| sqrt(w1 w2) with w = 3/4, 1/4.
    assert s["width_x"][0] == pytest.approx(abs(c2[0] - c1[0]) * math.sqrt(0.75 * 0.25),
                                            rel=1e-4)
    assert s["width_y"][0] == pytest.approx(0.0, abs=1e-2)
    # calogan has 3 layers: one per third; everything is in the middle one.
    assert (s["frac_first"][0], s["frac_second"][0], s["frac_last"][0]) == (0.0, 1.0, 0.0)


def test_empty_shower_gives_zeros(gf):
    s = shower_scalars(np.zeros((2, 504), np.float32), np.array([1e3, 2e3]), gf)
    for k in ("e_vis", "cog_x", "width_z", "frac_first", "n_hits"):
        assert np.all(s[k] == 0)
    assert np.all(s["shower_start"] == gf.n_layers)  # never starts: punch-through


def test_threshold_removes_low_cells():
    e = np.array([[0.1, 0.5, 0.49, 2.0]], np.float32)
    assert apply_threshold(e, 0.5).tolist() == [[0.0, 0.5, 0.0, 2.0]]
    assert apply_threshold(e, 0.0).tolist() == e.tolist()


def test_layer_features(gf):
    e, c1, c2 = _two_cell_shower(gf)
    f = layer_features(e, gf)
    assert f["e_layer"][0].tolist() == pytest.approx([0.0, 40.0, 0.0])
    assert f["hits_layer"][0].tolist() == [0, 2, 0]
    assert f["cx_layer"][0, 1] == pytest.approx((30 * c1[0] + 10 * c2[0]) / 40, abs=1e-3)
    assert f["wx_layer"][0, 1] == pytest.approx(40.0 * math.sqrt(0.75 * 0.25), rel=1e-3)
    r1, r2 = math.hypot(*c1[:2]), math.hypot(*c2[:2])
    assert f["cr_layer"][0, 1] == pytest.approx((30 * r1 + 10 * r2) / 40, rel=1e-4)
    assert f["sparsity_layer"][0].tolist() == pytest.approx([1.0, 1 - 2 / 144, 1.0])
    assert f["cx_layer"][0, 0] == 0.0  # empty layer: centre defined as 0


def test_calogan_shapes(gf):
    geo = gf.geometry
    e = np.zeros((1, 504), np.float32)
    e[0, geo.voxel_index(0, 1, 10)] = 6.0
    e[0, geo.voxel_index(0, 1, 11)] = 2.0
    e[0, geo.voxel_index(1, 3, 3)] = 12.0
    s = calogan_shapes(e, gf)
    assert (s["E_0"][0], s["E_1"][0], s["E_2"][0], s["E_tot"][0]) == (8.0, 12.0, 0.0, 20.0)
    assert s["f_0"][0] == pytest.approx(0.4)
    assert s["E_ratio_0"][0] == pytest.approx((6 - 2) / 8)
    assert s["E_ratio_1"][0] == pytest.approx(1.0)  # single cell: (I1 - 0)/(I1 + 0)
    assert s["E_ratio_2"][0] == 0.0
    assert s["d"][0] == 1
    assert s["l_d"][0] == pytest.approx(12.0)
    assert s["s_d"][0] == pytest.approx(0.6)
    assert s["sigma_sd"][0] == pytest.approx(math.sqrt(12 / 20 - 0.36))


def test_shower_start_two_layer_criterion():
    # 10 GeV: energy limit 7 MIP, hit limit round(3.77 + 1.44 ln 10) = 7.
    e = np.array([[1, 1, 1, 5, 5, 10, 10], [1, 1, 1, 1, 1, 1, 1]], float)
    n = np.array([[1, 1, 1, 4, 4, 8, 8], [1, 1, 1, 1, 1, 1, 1]], float)
    start = shower_start_layer(e, n, np.array([10.0, 10.0]))
    assert start.tolist() == [3, 7]


def test_mu90_sigma90():
    v = np.concatenate([np.full(90, 1.0), np.full(10, 100.0)])
    assert mu90_sigma90(v) == (1.0, 0.0)
    v = np.arange(100.0)
    m, s = mu90_sigma90(v)
    assert m == pytest.approx(np.arange(90).mean()) and s == pytest.approx(np.arange(90).std())
    assert all(math.isnan(x) for x in mu90_sigma90(np.arange(5.0)))


def test_energy_bins():
    edges, discrete = energy_bins(np.repeat([10e3, 20e3, 50e3], 5))
    assert discrete and np.searchsorted(edges, [10e3, 20e3, 50e3], side="right").tolist() \
        == [1, 2, 3]
    edges, discrete = energy_bins(np.random.default_rng(0).uniform(1e4, 1e5, 1000), n_bins=4)
    assert not discrete and len(edges) == 5


def test_ild_profile_edges_are_cells():
    gf = GeometryFeatures.of(get_geometry("ild-ecal"))
    assert len(gf.x_edges) == 31 and gf.x_edges[1] - gf.x_edges[0] == pytest.approx(5.088)
    # every column of cells is one profile bin
    assert np.bincount(gf.x_bin).tolist() == [900] * 30


def test_cylindrical_features_run():
    gf = GeometryFeatures.of(get_geometry("calochallenge-1-photons"))
    e = np.random.default_rng(0).exponential(1.0, (4, gf.geometry.n_voxels)).astype(np.float32)
    f = layer_features(e, gf)
    empty = np.setdiff1d(np.arange(gf.n_layers), gf.nonempty_layers)
    assert np.all(f["e_layer"][:, empty] == 0)
    assert np.all(f["sparsity_layer"][:, gf.nonempty_layers] == 0)


@pytest.mark.parametrize("name", ["calogan", "ild-ecal", "calochallenge-1-pions"])
def test_sparse_equals_dense(name):
    from caloforge.evaluation.observables import sparse_observables
    from caloforge.evaluation.toy import toy_showers

    gf = GeometryFeatures.of(get_geometry(name))
    b = toy_showers(20, name, seed=1)
    e = apply_threshold(b.energies, 0.5 * gf.geometry.mip_mev)
    r, c = np.nonzero(e > 0)
    sc, lf = sparse_observables(r, c, e[r, c], 20, b.incident_energy, gf)
    lf2 = layer_features(e, gf)
    sc2 = shower_scalars(e, b.incident_energy, gf)
    for k in sc2:
        np.testing.assert_allclose(sc[k], sc2[k], rtol=1e-4, atol=1e-3, err_msg=k)
    for k in lf2:
        np.testing.assert_allclose(lf[k], lf2[k], rtol=1e-4, atol=1e-3, err_msg=k)
