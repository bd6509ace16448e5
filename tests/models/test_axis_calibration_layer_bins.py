"""Axis-calibration tables per bin of each layer's own energy
(``calibration_layer_energy_bins``): the hits of a layer follow training layers of like
energy (a pion's layers before its interaction: one MIP on the beam line)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import (  # same folder: on sys.path under pytest
    SMALL_AXIS_TOY,
    assert_batch_independent_and_reloads,
    assert_tables_change_only_the_hits,
    train_compact_toy,
)

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.toy import toy_geometry

GEO = toy_geometry()
THR = GEO.readout_threshold_mev
CENTRAL = np.flatnonzero(np.hypot(*np.asarray(GEO.cell_centres)[:, :2].T) < 8.0)  # 4 per layer


def _calibration(n_le: int) -> AxisCalibration:
    return AxisCalibration(GEO, n_theta_bins=1, inner_rings=1, n_knots=9, n_energy_bins=3,
                           n_layer_energy_bins=n_le)


def test_a_cell_s_group_is_its_layer_energy_bin_of_its_ring():
    cal = _calibration(3)
    assert cal.n_groups == GEO.n_layers * 3 * cal.ring_count
    cal.layer_energy_edges.copy_(torch.log(torch.tensor([1.0, 10.0])).expand(GEO.n_layers, 2))
    el = torch.tensor([[0.0, 0.5, 1.5, 9.0, 20.0, 100.0]])
    assert cal.layer_energy_bin(el).tolist() == [[0, 0, 1, 1, 2, 2]]
    plain = _calibration(1).groups(torch.zeros(1, 2), slice(None))[0]
    got = cal.groups(torch.zeros(1, 2), slice(None), el)[0]
    layer = torch.as_tensor(np.asarray(GEO.layer_of_voxel))
    ring = plain - layer * cal.ring_count
    expect = layer * 3 * cal.ring_count + torch.tensor([0, 0, 1, 1, 2, 2])[layer] \
        * cal.ring_count + ring
    assert torch.equal(got, expect)


def test_groups_need_the_layer_energies_with_layer_bins():
    with pytest.raises(ValueError, match="layer energies"):
        _calibration(2).groups(torch.zeros(2, 2), slice(None))


def test_one_bin_loads_folders_saved_before_layer_bins():
    cal = _calibration(1)
    state = {k: v for k, v in cal.state_dict().items() if k != "layer_energy_edges"}
    cal.load_state_dict(state)
    with pytest.raises(RuntimeError, match="layer_energy_edges"):
        _calibration(2).load_state_dict(state)


def _quiet_and_busy(rng: np.random.Generator, n: int = 3000):
    """Training showers whose layers are either quiet (one hit of ~1.5 thresholds in one
    of the four cells on the axis) or busy (40 % of the cells hit, anywhere), half each;
    generated features N(0, 1.5) whatever the layer energy (a flow that does not tell
    the two apart) at the training layer energies."""
    v, n_l = GEO.n_voxels, GEO.n_layers
    layer = np.asarray(GEO.layer_of_voxel)
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    # exactly half of each layer's showers quiet: the median splits them
    quiet = np.stack([rng.permutation(n) < n // 2 for _ in range(n_l)], 1)
    busy_hits = rng.random((n, v)) < 0.4
    x = np.where(busy_hits, THR * np.exp(rng.exponential(1.0, (n, v)) + 0.2), 0.0)
    one = np.zeros((n, v), bool)
    for k in range(n_l):
        cells = CENTRAL[layer[CENTRAL] == k]
        one[np.arange(n), rng.choice(cells, n)] = True
    mip = np.where(one, THR * rng.uniform(1.3, 1.7, (n, v)), 0.0)
    x = np.where(quiet[:, layer], mip, x).astype(np.float32)
    feats = torch.as_tensor(rng.normal(0.0, 1.5, (n, v)), dtype=torch.float32)
    xt = torch.as_tensor(x)
    gen_ratio = (xt.double().sum(1) / torch.as_tensor(e)).double()
    return xt, torch.as_tensor(e, dtype=torch.float32), feats, gen_ratio, quiet


@pytest.mark.parametrize("seed", [0, 1])
def test_quiet_layers_read_out_their_one_hit_on_the_axis(seed):
    x, e, feats, gen_ratio, quiet = _quiet_and_busy(np.random.default_rng(seed))
    angles = torch.zeros(len(e), 2)
    layer = torch.as_tensor(np.asarray(GEO.layer_of_voxel))
    outside = torch.ones(GEO.n_voxels, dtype=torch.bool)
    outside[CENTRAL] = False
    quiet_cells = torch.as_tensor(quiet)[:, layer]
    result = {}
    for n_le in (1, 2):
        cal = _calibration(n_le)
        el = cal.layer_energies(x, THR)
        cal.fit(x, e, angles, feats, gen_ratio, THR, zero_width=2.0, gen_layer_energy=el)
        group = cal.groups(angles, slice(None), el)
        _, cut = cal.read_out(feats, group)
        hit = feats >= cut
        q_hits = (hit & quiet_cells).sum().item() / quiet.sum()
        q_out = (hit & quiet_cells & outside).sum().item() \
            / max((hit & quiet_cells).sum().item(), 1)
        busy_occ = (hit & ~quiet_cells).float().sum().item() / (~quiet_cells).sum().item()
        result[n_le] = (q_hits, q_out, busy_occ)
    # per layer-energy bin: about one hit per quiet layer, on the axis; busy layers 40 %
    q_hits, q_out, busy_occ = result[2]
    assert q_hits == pytest.approx(1.0, abs=0.1)
    assert q_out < 0.02
    assert busy_occ == pytest.approx(0.4, abs=0.02)
    # pooled over layer energies the quiet layers get the busy layers' scattered hits
    assert result[1][0] > 4.0 and result[1][1] > 0.5


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_bad_layer_energy_bins_are_refused(bad):
    with pytest.raises(ConfigError, match="calibration_layer_energy_bins"):
        build("l2lflows", GEO, config={"calibration_axis_tables": True,
                                       "calibration_layer_energy_bins": bad}, preset="compact")


def test_layer_energy_bins_need_the_axis_tables():
    with pytest.raises(ConfigError, match="axis tables"):
        build("l2lflows", GEO, config={"calibration_axis_tables": False,
                                       "calibration_layer_energy_bins": 2}, preset="compact")


CONFIG = {**SMALL_AXIS_TOY,
          "calibration_hit_energy_bins": 2, "calibration_response_bins": 2,
          "calibration_layer_energy_bins": 3, "calibration_energy_bins": 4,
          "calibration_showers": 500, "calibration_response_refine": True,
          "calibration_occupancy_refine": True, "thin_starved_layers": True,
          "calibration_hit_refine": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_compact_toy(tmp_path_factory.mktemp("layer_bins") / "run", CONFIG, 22)


def test_layer_energy_edges_split_each_layer_s_training_energies(trained):
    model, data, _ = trained
    cal = model.axis_cal
    assert cal.is_fitted and cal.n_le == 3
    el = cal.layer_energies(torch.as_tensor(data.energies), THR)
    for k in range(GEO.n_layers):
        v = el[:, k][el[:, k] >= THR]
        counts = torch.bincount(cal.layer_energy_bin(v[:, None].expand(-1, GEO.n_layers))[:, k],
                                minlength=3)
        assert counts.min() >= 0.3 * len(v), (k, counts)


def test_generation_with_layer_bins_is_batch_independent_and_reloads(trained):
    model, _, out = trained
    assert_batch_independent_and_reloads(model, out / "model", 4,
                                         "calibration_layer_energy_bins")


def test_layer_bins_change_the_hits_not_the_layer_energies(trained):
    """Same draws, every layer in its lowest layer-energy bin vs its own: the layer
    energies are the energy flow's either way; the hits differ."""
    model, _, _ = trained
    assert_tables_change_only_the_hits(model, model.axis_cal.layer_energy_edges, 5)
