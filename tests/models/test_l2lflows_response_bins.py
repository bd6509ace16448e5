"""Axis-calibration tables per bin of the shower's calibrated response
(``calibration_response_bins``): the hit spectrum of a shower follows the training
showers of like visible energy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_models import (  # same folder: on sys.path under pytest
    assert_batch_independent_and_reloads,
    assert_tables_change_only_the_hits,
    train_compact_toy,
)

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.toy import toy_geometry

# the compact preset (shared lean flow: bit-identical at any batch size), made small
CONFIG = {"hidden": [32], "context_embedding": 8, "transforms": 2, "energy_transforms": 2,
          "energy_bins": 4, "energy_hidden": [32], "calibration_axis_tables": True,
          "calibration_hit_energy_bins": 2, "calibration_response_bins": 3,
          "calibration_energy_bins": 4, "calibration_showers": 500,
          "calibration_response_refine": True, "calibration_occupancy_refine": True,
          "thin_starved_layers": True, "calibration_hit_refine": 2}


def _table(n_e: int, n_r: int) -> AxisCalibration:
    cal = AxisCalibration(toy_geometry(), n_theta_bins=1, inner_rings=1, n_knots=5,
                          n_energy_bins=2, n_hit_energy_bins=n_e, n_response_bins=n_r)
    cal.resp_log_e.copy_(torch.tensor([[math.log(1e3), math.log(1e5)]]))
    cal.resp_mu_ref.fill_(0.02)
    cal.energy_knots.copy_(torch.linspace(math.log(2e3), math.log(5e4), n_e))
    cal.response_edges.copy_(torch.tensor([-0.05, 0.05]).expand(n_e, 2))
    return cal


def test_tables_per_energy_and_response_bin():
    cal = _table(2, 3)
    assert cal.cut.shape[0] == 6 and cal.hit_log_weight.shape[0] == 6
    assert cal.hit_map.shape[0] == 6 * cal.n_groups


@pytest.mark.parametrize("n_e", [1, 2])
def test_offsets_select_the_response_bin_of_each_shower(n_e):
    cal = _table(n_e, 3)
    e = torch.full((3,), 2e3)  # at the first energy knot: weight 0 on the upper table
    response = torch.tensor([0.0185, 0.020, 0.0215])  # -7.5 %, 0, +7.5 % of the median
    lower, upper, w = cal.energy_offsets(e, response, torch.zeros(3))
    g = cal.n_groups
    assert lower[:, 0].tolist() == [0, g, 2 * g]
    assert upper[:, 0].tolist() == ([3 * g, 4 * g, 5 * g] if n_e == 2 else [0, g, 2 * g])
    assert w.abs().max() == 0


def test_offsets_need_the_response_with_response_bins():
    with pytest.raises(ValueError, match="response"):
        _table(2, 3).energy_offsets(torch.full((2,), 5e3))


def test_one_bin_keeps_the_tables_and_offsets_of_before():
    cal = AxisCalibration(toy_geometry(), 1, 1, 5, 2, n_hit_energy_bins=1)
    assert cal.energy_offsets(torch.full((2,), 5e3)) is None
    state = {k: v for k, v in cal.state_dict().items() if k != "response_edges"}
    cal.load_state_dict(state)  # a folder saved before response bins


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_compact_toy(tmp_path_factory.mktemp("resp") / "run", CONFIG, 21)


def test_response_edges_split_the_training_showers_evenly(trained):
    model, data, _ = trained
    cal = model.axis_cal
    assert cal.is_fitted and cal.n_r == 3
    edges = cal.response_edges
    assert torch.isfinite(edges).all() and (edges[:, 1] > edges[:, 0]).all()
    thr = model.geometry.readout_threshold_mev
    e = torch.as_tensor(data.incident_energy, dtype=torch.float32)
    r = torch.as_tensor(np.where(data.energies >= thr, data.energies, 0).sum(1),
                        dtype=torch.float32) / e
    counts = torch.bincount(cal.response_bin(e, r, torch.zeros(len(e))), minlength=3)
    assert counts.min() >= 150, counts  # 200 each, up to the interpolation of the edges


def test_generation_with_response_bins_is_batch_independent_and_reloads(trained):
    model, _, out = trained
    assert model.config.calibration_response_bins == 3
    assert_batch_independent_and_reloads(model, out / "model", 3, "calibration_response_bins")


def test_response_bins_change_only_the_hit_tables(trained):
    """Same draws, tables of one response bin for every shower vs their own: the layer
    energies are the response table's either way; the hits differ."""
    model, _, _ = trained
    assert_tables_change_only_the_hits(model, model.axis_cal.response_edges, 4)


def test_each_hit_refine_pass_is_followed_by_a_response_refit(trained, monkeypatch):
    import copy

    from caloforge.models import l2lflows_calibration

    model, data, _ = trained
    calls = []
    monkeypatch.setattr(l2lflows_calibration, "refine_hit_maps",
                        lambda *a, **k: calls.append("hits"))
    monkeypatch.setattr(AxisCalibration, "refine_response",
                        lambda *a, **k: calls.append("response"))
    again = copy.deepcopy(model)
    again.finalize(torch.as_tensor(data.energies), torch.as_tensor(data.incident_energy,
                                                                   dtype=torch.float32),
                   torch.Generator().manual_seed(0))
    assert calls == ["hits", "response", "hits", "response"]
    calls.clear()
    again.config = dataclasses.replace(again.config, calibration_hit_refine=0)
    again.finalize(torch.as_tensor(data.energies), torch.as_tensor(data.incident_energy,
                                                                   dtype=torch.float32),
                   torch.Generator().manual_seed(0))
    assert calls == ["response"]


@pytest.mark.parametrize("bad", [{"calibration_response_bins": 0},
                                 {"calibration_response_bins": 2,
                                  "calibration_energy_bins": 0}])
def test_bad_response_bins_are_refused(bad):
    with pytest.raises(ConfigError, match="calibration_response_bins"):
        build("l2lflows", toy_geometry(), config={**CONFIG, **bad}, preset="compact")


@pytest.mark.parametrize("bad", [-1, 1.5, "two"])
def test_bad_hit_refine_passes_are_refused(bad):
    with pytest.raises(ConfigError, match="calibration_hit_refine"):
        build("l2lflows", toy_geometry(), config={**CONFIG, "calibration_hit_refine": bad}, preset="compact")
