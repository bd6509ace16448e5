"""Axis-calibration rings around each shower's own core (``calibration_core_window``):
a hadron shower's core wanders off the beam line and follows from layer to layer; rings
around the fixed axis cut it away layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import (  # same folder: on sys.path under pytest
    SMALL_AXIS_TOY,
    assert_batch_independent_and_reloads,
    train_compact_toy,
)

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.toy import toy_geometry

GEO = toy_geometry()  # 6 layers of 6 x 6 cells, 10 mm pitch
THR = GEO.readout_threshold_mev
XY = np.asarray(GEO.cell_centres)[:, :2]
LAYER = np.asarray(GEO.layer_of_voxel)


def _calibration(window: int) -> AxisCalibration:
    return AxisCalibration(GEO, n_theta_bins=1, inner_rings=1, n_knots=9, n_energy_bins=3,
                           core_window=window)


def _one_hit_per_layer(cells: list[int]) -> torch.Tensor:
    w = torch.zeros(1, GEO.n_voxels)
    w[0, cells] = 1.0
    return w


def test_core_centres_are_the_weighted_centroids_of_the_window():
    first = [int(np.flatnonzero(LAYER == k)[0]) for k in range(GEO.n_layers)]
    hits = [first[k] + (7 if k % 2 else 0) for k in range(GEO.n_layers)]
    w = _one_hit_per_layer(hits)
    angles = torch.zeros(1, 2)
    own = _calibration(0).core_centres(w, angles)[0]
    assert torch.allclose(own, torch.as_tensor(XY[hits], dtype=torch.float32))
    # window 1: layers k-1..k+1 (those that exist), each hit weighing 1
    wide = _calibration(1).core_centres(w, angles)[0]
    for k in range(GEO.n_layers):
        near = [hits[j] for j in range(max(k - 1, 0), min(k + 2, GEO.n_layers))]
        assert torch.allclose(wide[k], torch.as_tensor(XY[near].mean(0), dtype=torch.float32))


def test_an_empty_window_falls_back_to_the_direction_s_axis():
    cal = _calibration(0)
    cal.impact = (3.0, -2.0)
    w = _one_hit_per_layer([int(np.flatnonzero(LAYER == 0)[0])])
    theta, phi = 0.3, 1.0
    centre = cal.core_centres(w, torch.tensor([[theta, phi]]))[0]
    z = np.asarray(GEO.cell_centres)[:, 2]
    for k in range(1, GEO.n_layers):
        zk = float(z[LAYER == k][0])
        expect = [3.0 + zk * np.tan(theta) * np.cos(phi), -2.0 + zk * np.tan(theta) * np.sin(phi)]
        assert centre[k].tolist() == pytest.approx(expect, abs=1e-4)


def test_a_cell_s_ring_is_its_distance_from_the_core():
    cal = _calibration(0)
    cells = [int(np.flatnonzero(LAYER == k)[14]) for k in range(GEO.n_layers)]  # off-axis
    w = _one_hit_per_layer(cells)
    angles = torch.zeros(1, 2)
    groups = cal.groups(angles, slice(None), centre=cal.core_centres(w, angles))[0]
    ring = groups - torch.as_tensor(LAYER) * cal.layer_rows
    assert ring[cells].tolist() == [0] * GEO.n_layers  # the core: the innermost ring
    d = np.hypot(*(XY - XY[np.asarray(cells)[LAYER]]).T) / 10.0
    assert torch.equal(ring == 0, torch.as_tensor(d < 0.5))
    with pytest.raises(ValueError, match="centres"):
        cal.groups(angles, slice(None))


def _wandering_cores(rng: np.random.Generator, n: int = 3000):
    """Showers whose core sits at one of 16 off-axis cells, the same in every layer:
    training showers with a hot core and soft neighbours; generated features that put
    the core and its neighbours where the training showers do, plus noise elsewhere that
    passes the threshold in a quarter of the cells (a leaky flow)."""
    v = GEO.n_voxels
    core = rng.choice([-15.0, -5.0, 5.0, 15.0], (n, 2))
    d = np.hypot(XY[None, :, 0] - core[:, :1], XY[None, :, 1] - core[:, 1:])
    is_core, is_nb = d < 1.0, np.abs(d - 10.0) < 1.0
    soft = is_nb & (rng.random((n, v)) < 0.8)
    x = np.where(is_core, THR * np.exp(3.0 + rng.normal(0, 0.2, (n, v))),
                 np.where(soft, THR * np.exp(0.5 + rng.normal(0, 0.2, (n, v))), 0.0))
    f = np.where(is_core, 1.0 + rng.normal(0, 0.1, (n, v)),
                 np.where(is_nb, 0.5 + rng.normal(0, 0.1, (n, v)), rng.normal(-1.0, 1.5, (n, v))))
    return (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(f, dtype=torch.float32),
            core)


@pytest.mark.parametrize("seed", [0, 1])
def test_rings_around_the_core_keep_the_read_out_on_the_core(seed):
    x, feats, core = _wandering_cores(np.random.default_rng(seed))
    e, angles = torch.full((len(x),), 2e4), torch.zeros(len(x), 2)
    ratio = x.double().sum(1) / e.double()
    in_layer = torch.as_tensor(LAYER == 2)
    corr, hits = {}, {}
    for window in (-1, 1):
        cal = _calibration(window)
        cal.fit(x, e, angles, feats, ratio, THR, zero_width=2.0)
        centre = None if window < 0 else cal.core_centres(cal.core_weights(feats), angles)
        _, cut = cal.read_out(feats, cal.groups(angles, slice(None), None, centre))
        hit = (feats >= cut).float()
        h = hit[:, in_layer]
        cx = (h * torch.as_tensor(XY[in_layer, 0], dtype=torch.float32)).sum(1) \
            / h.sum(1).clamp_min(1)
        corr[window] = np.corrcoef(cx.numpy(), core[:, 0])[0, 1]
        hits[window] = hit.sum(1).mean().item()
    train_hits = (x > 0).float().sum(1).mean().item()
    # both read out about the training number of hits; around the fixed axis the noise
    # that passes an outer ring's cut drags the centroid away from the core
    assert hits[-1] == pytest.approx(train_hits, rel=0.1)
    assert hits[1] == pytest.approx(train_hits, rel=0.1)
    assert corr[1] > corr[-1] + 0.25, corr


@pytest.mark.parametrize("bad", [-2, 1.5])
def test_bad_core_windows_are_refused(bad):
    with pytest.raises(ConfigError, match="calibration_core_window"):
        build("l2lflows", GEO, config={"calibration_axis_tables": True,
                                       "calibration_core_window": bad}, preset="compact")


def test_core_rings_need_the_axis_tables():
    with pytest.raises(ConfigError, match="axis tables"):
        build("l2lflows", GEO, config={"calibration_axis_tables": False,
                                       "calibration_core_window": 1}, preset="compact")


CONFIG = {**SMALL_AXIS_TOY,
          "calibration_hit_energy_bins": 2, "calibration_response_bins": 2,
          "calibration_layer_energy_bins": 2, "calibration_core_window": 1,
          "calibration_energy_bins": 4, "calibration_showers": 500,
          "calibration_response_refine": True, "calibration_occupancy_refine": True,
          "thin_starved_layers": True, "calibration_hit_refine": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_compact_toy(tmp_path_factory.mktemp("core_rings") / "run", CONFIG, 23)


def test_generation_with_core_rings_is_batch_independent_and_reloads(trained):
    model, _, out = trained
    assert model.axis_cal.is_fitted and model.axis_cal.core_window == 1
    assert_batch_independent_and_reloads(model, out / "model", 6, "calibration_core_window")


def test_core_rings_change_the_hits_not_the_layer_energies(trained):
    """Same draws with the rings around the axis instead of the core: the layer
    energies are the energy flow's either way (within 2 %), the hits differ."""
    model, _, _ = trained
    e = np.full(200, 2e4)
    own = model.sample(e, 5).energies
    model.axis_cal.core_window = -1
    try:
        axis = model.sample(e, 5).energies
    finally:
        model.axis_cal.core_window = 1
    np.testing.assert_allclose(own.sum(1), axis.sum(1), rtol=0.02)
    assert not np.array_equal(own, axis)


def test_a_model_with_core_rings_exports_to_onnx(trained, tmp_path):
    """The rings' per-layer sums are traced without index_add (which the ONNX exporter
    refuses with repeated indices): the runtime gives the showers of ``sample``."""
    ort = pytest.importorskip("onnxruntime")
    from caloforge.export import export_model
    from caloforge.export.graph import shower_normals

    model, _, _ = trained
    meta = export_model(model, tmp_path / "m.onnx", to="onnx", noise="input")
    e = np.array([4e3, 3e4])
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    names = [i.name for i in sess.get_inputs()]
    ins = [(e[:, None] / 1e3).astype(np.float32), np.zeros((2, 1), np.float32),
           np.zeros((2, 1), np.float32), shower_normals(4, range(2), meta["noise_width"]).numpy()]
    (out,) = sess.run(None, dict(zip(names, ins)))
    np.testing.assert_allclose(out, model.sample(e, seed=4).energies, rtol=1e-4, atol=1e-5)
