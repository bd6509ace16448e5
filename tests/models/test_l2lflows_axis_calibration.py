"""The angle-aware calibration of direction-conditioned L2LFlows models (tables per theta
bin and per ring around each shower's axis) and the unchanged per-cell calibration of
models without angles."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from caloforge.data import Conditions
from caloforge.errors import ConfigError
from caloforge.models import build, load
from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.axis_calibration_fit import fit_hit_maps
from caloforge.models.toy import toy_geometry, toy_showers
from caloforge.training import TrainConfig, train

ANGLED = {"conditions": ["theta", "phi"], "cell_feature": "log_threshold",
          "hidden": [32], "context_embedding": 8, "transforms": 2, "energy_transforms": 2,
          "energy_bins": 4, "energy_hidden": [32]}
THETA_BINS_DEG = [(0, 10), (10, 20), (20, 30), (30, 40)]


@pytest.fixture(scope="module")
def oblique_data():
    """600 toy showers, 2-50 GeV, theta uniform in 0-40 deg, any phi."""
    rng = np.random.default_rng(11)
    n = 600
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    return toy_showers(toy_geometry(), e, rng, theta=np.radians(rng.uniform(0, 40, n)),
                       phi=rng.uniform(0, 2 * np.pi, n))


@pytest.fixture(scope="module")
def calibrated_both_ways(oblique_data, tmp_path_factory):
    """A briefly trained angled model with both calibrations fitted on the same generated
    showers: the per-cell tables pooled over all directions (what these models had
    before) and the per-(theta bin, ring around the axis) tables."""
    torch.manual_seed(0)
    model = train("l2lflows", oblique_data, tmp_path_factory.mktemp("axis") / "run",
                  preset="tiny", model_config={**ANGLED, "calibration_showers": 600},
                  train_config=TrainConfig(steps=120, batch_size=64, validate_every=0),
                  progress=False)
    x = torch.as_tensor(oblique_data.energies)
    e = torch.as_tensor(oblique_data.incident_energy, dtype=torch.float32)
    angles = model.angle_tensor(oblique_data.conditions, len(e))
    axis, model.axis_cal = model.axis_cal, None  # the per-cell path fits the pooled tables
    model.finalize(x, e, torch.Generator().manual_seed(0), angles)
    model.axis_cal = axis
    assert axis.is_fitted  # train() ended with the axis calibration
    return model


def _hits_per_theta_bin_and_layer(showers, theta, geo) -> np.ndarray:
    hit = showers >= geo.readout_threshold_mev
    out = np.zeros((len(THETA_BINS_DEG), geo.n_layers))
    for b, (lo, hi) in enumerate(THETA_BINS_DEG):
        rows = (theta >= math.radians(lo)) & (theta < math.radians(hi))
        for k in range(geo.n_layers):
            out[b, k] = hit[rows, geo.layer_offsets[k]:geo.layer_offsets[k + 1]].sum(1).mean()
    return out


def test_axis_calibration_reproduces_hits_per_theta_bin(calibrated_both_ways, oblique_data):
    """Pooled over angles, the per-cell cuts give showers of every theta about the same
    number of hits; per theta bin and ring around the axis they follow the training data
    (fewer hits in the window at oblique incidence)."""
    model, geo, theta = calibrated_both_ways, toy_geometry(), oblique_data.conditions.theta
    ref = _hits_per_theta_bin_and_layer(oblique_data.energies, theta, geo)
    err = {}
    for axis in (False, True):
        model.axis_cal.is_fitted = axis
        gen = model.sample(oblique_data.conditions, seed=5).energies
        err[axis] = np.abs(_hits_per_theta_bin_and_layer(gen, theta, geo) / ref - 1).mean()
    model.axis_cal.is_fitted = True
    assert err[True] < 0.75 * err[False], err
    assert err[True] < 0.08, err


def test_theta_bins_hold_equal_numbers_of_showers(calibrated_both_ways, oblique_data):
    cal = calibrated_both_ways.axis_cal
    theta = torch.tensor(oblique_data.conditions.theta, dtype=torch.float32)
    counts = torch.bincount(cal.theta_bin(theta), minlength=cal.n_bins)
    assert len(counts) == 4 and int(counts.min()) >= 140 and int(counts.max()) <= 160
    assert torch.isfinite(cal.theta_edges).all()


def test_ring_zero_is_the_cell_on_the_shower_axis():
    geo = toy_geometry()
    cal = AxisCalibration(geo, n_theta_bins=1, inner_rings=2, n_knots=4, n_energy_bins=2)
    theta, phi = math.radians(35.0), math.radians(120.0)
    groups = cal.groups(torch.tensor([[theta, phi]]), slice(None))[0]
    ring = groups - cal.cell_offset
    centres = np.asarray(geo.cell_centres)
    for k in range(geo.n_layers):
        s = slice(geo.layer_offsets[k], geo.layer_offsets[k + 1])
        axis = geo.layer_z_mm[k] * math.tan(theta) * np.array([math.cos(phi), math.sin(phi)])
        d = np.hypot(*(centres[s, :2] - axis).T)
        nearest = int(np.argmin(d))
        assert int(ring[s].min()) == int(ring[s][nearest])
        # rings grow with the distance from the axis (half a pitch wide in the core)
        order = np.argsort(d)
        assert (np.diff(ring[s].numpy()[order]) >= 0).all()


def test_folder_without_axis_tables_keeps_the_per_cell_calibration(calibrated_both_ways,
                                                                   tmp_path):
    """Angled models saved before the axis tables existed load and generate as before."""
    model = calibrated_both_ways
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if not k.startswith("axis_cal.")}, str(weights))
    old = load(tmp_path / "m")
    assert not old.axis_cal.is_fitted
    cond = Conditions(np.array([5e3, 3e4]), theta=np.radians([5.0, 35.0]),
                      phi=np.radians([10.0, 250.0]))
    model.axis_cal.is_fitted = False
    try:
        pooled = model.sample(cond, seed=3).energies
    finally:
        model.axis_cal.is_fitted = True
    np.testing.assert_array_equal(old.sample(cond, seed=3).energies, pooled)
    assert not np.array_equal(model.sample(cond, seed=3).energies, pooled)


def test_theta_bins_must_be_positive():
    with pytest.raises(ConfigError, match="calibration_theta_bins"):
        build("l2lflows", toy_geometry(), config={"calibration_theta_bins": 0})


def test_models_without_angles_have_no_axis_tables():
    model = build("l2lflows", "ild-ecal", preset="compact")
    assert model.axis_cal is None
    assert not [k for k in model.state_dict() if k.startswith("axis_cal")]


def test_normal_incidence_models_keep_their_per_cell_tables():
    """Models without angles keep the per-cell calibration unless their config asks for
    ring tables: the shipped ``ild-ahcal-pions-cuts``'s per-cell tables (its first
    calibration, kept in its folder; it now generates with ring tables,
    ``calibration_axis_tables``) give the values recorded before the axis frame and the
    per-group hit-map grid (recorded when it was the pion default)."""
    from caloforge import zoo

    model = zoo.load("ild-ahcal-pions-cuts")
    assert model.frame is None
    # recorded before the read-out kept layers that fell below their cuts, and the hits
    # of layers whose energy cannot carry them all
    model.config = dataclasses.replace(model.config, rescue_empty_layers=False,
                                       thin_starved_layers=False)
    if model.axis_cal is not None:  # the ring tables off: the per-cell path
        assert model.config.calibration_axis_tables
        model.axis_cal.is_fitted = False
    e = np.array([12e3, 35e3, 50e3, 71e3, 95e3, 20e3])
    x = model.sample(e, seed=11).energies
    sums = [220.20050048828125, 589.974365234375, 1006.9737548828125, 1035.84130859375,
            1671.0601806640625, 296.5234375]
    hits = [106, 223, 349, 275, 364, 145]
    # a cell rounding across the threshold on another CPU may flip a hit (~0.1 MeV)
    np.testing.assert_allclose(x.sum(1), sums, rtol=1e-3)
    assert np.abs((x > 0).sum(1) - np.array(hits)).max() <= 2


def test_hit_map_interpolates_its_table_and_stops_at_the_hottest_hit():
    cal = AxisCalibration(toy_geometry(), n_theta_bins=1, inner_rings=1, n_knots=5,
                          n_energy_bins=2)
    cal.hit_step.fill_(1.0)  # grid uniform in sqrt(h): h = 0, 1, 4, 9, 16
    cal.hit_map[3] = torch.tensor([0.0, 2.0, 3.0, 3.5, 6.0])
    cal.cut[0, 3] = 0.5
    f = torch.tensor([[0.0, 0.5, 1.0, 2.75, 4.5, 7.5, 20.5]])
    out, cut = cal.read_out(f, torch.full_like(f, 3, dtype=torch.long))
    assert torch.allclose(cut, torch.full_like(f, 0.5))
    # h = f - cut, clamped at 0: 0, 0, 0.5, 2.25, 4, 7, 20; sqrt(h) is the table position
    # beyond the table (h = 20 > 16): its last value, the group's hottest training hit
    want = [0.0, 0.0, 2.0 * 0.5 ** 0.5, 2.5, 3.0, 3.0 + 0.5 * (7 ** 0.5 - 2), 6.0]
    assert torch.allclose(out, torch.tensor([want]))


def test_tables_saved_uniform_in_h_still_load_and_map_as_before():
    cal = AxisCalibration(toy_geometry(), n_theta_bins=1, inner_rings=1, n_knots=5,
                          n_energy_bins=2)
    state = {k: v.clone() for k, v in cal.state_dict().items()}
    del state["hit_grid_sqrt"]  # a folder from before the sqrt grid
    state["ready"].fill_(1.0)
    state["hit_step"].fill_(1.0)  # grid 0, 1, 2, 3, 4
    state["hit_map"][3] = torch.tensor([0.0, 2.0, 3.0, 3.5, 6.0])
    state["cut"][0, 3] = 0.5
    cal.load_state_dict(state)
    f = torch.tensor([[0.0, 0.5, 1.0, 2.75, 4.5, 7.5]])
    out, _ = cal.read_out(f, torch.full_like(f, 3, dtype=torch.long))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 1.0, 3.125, 6.0, 9.0]]))


def test_hit_maps_keep_their_resolution_for_soft_groups():
    """Each group's table spans its own features: a halo group whose hits lie below 2
    keeps its quantile map to within a hundredth, while a core group reaches 60 (one
    grid shared by all groups had put a halo hit of 0.3 on a 0.9-wide step)."""
    cal = AxisCalibration(toy_geometry(), n_theta_bins=1, inner_rings=1, n_knots=65,
                          n_energy_bins=2)
    gen = torch.Generator().manual_seed(0)
    soft_gen = torch.rand(4000, generator=gen) * 2.0  # uniform 0..2
    soft_ref = (2.0 * soft_gen).sqrt()  # its quantile map: h -> sqrt(2 h)
    hard = torch.rand(4000, generator=gen) * 60.0
    g_soft, g_hard = 5, 9
    groups = torch.cat([torch.full((4000,), g_soft), torch.full((4000,), g_hard)])
    step, table = fit_hit_maps(torch.cat([soft_ref, hard]), groups, torch.cat([soft_gen, hard]),
                               groups, n_grp=cal.hit_map.shape[0], m=65, min_hits=50)
    cal.hit_step.copy_(step)
    cal.hit_map.copy_(table)
    h = torch.tensor([[0.1, 0.3, 0.8, 1.5]])
    out, _ = cal.read_out(h, torch.full_like(h, g_soft, dtype=torch.long))
    torch.testing.assert_close(out, (2.0 * h).sqrt(), atol=0.03, rtol=0.0)
    big, _ = cal.read_out(torch.tensor([[30.0]]), torch.full((1, 1), g_hard))
    assert abs(float(big) - 30.0) < 1.0  # identity-like map of the hard group
