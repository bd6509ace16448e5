"""The axis calibration's tables that follow the incident energy (occupancy cuts and hit
maps per energy bin, interpolated in log E), the hit maps' grid uniform in sqrt(h), and the
weights that give every (layer, ring) group its training share of the layer energy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_models import assert_same_showers  # same folder: on sys.path under pytest

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.axis_calibration_fit import fit_hit_maps, smooth_resolution
from caloforge.models.toy import toy_geometry

THR = toy_geometry().readout_threshold_mev


def _calibration(n_e: int = 1, shares: bool = False, knots: int = 9) -> AxisCalibration:
    return AxisCalibration(toy_geometry(), n_theta_bins=1, inner_rings=1, n_knots=knots,
                           n_energy_bins=2, n_hit_energy_bins=n_e, layer_shares=shares)


def test_energy_offsets_interpolate_in_log_energy_and_hold_beyond_the_ends():
    cal = _calibration(n_e=3)
    cal.energy_knots.copy_(torch.log(torch.tensor([10e3, 30e3, 90e3])))
    e = torch.tensor([5e3, 10e3, math.sqrt(10e3 * 30e3), 90e3, 200e3])
    lo, hi, w = cal.energy_offsets(e)
    g = cal.n_groups
    assert lo[:, 0].tolist() == [0, 0, 0, g, g]
    assert hi[:, 0].tolist() == [g, g, g, 2 * g, 2 * g]
    torch.testing.assert_close(w[:, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert _calibration(n_e=1).energy_offsets(e) is None


def test_read_out_blends_the_cuts_and_maps_of_the_two_energy_bins():
    cal = _calibration(n_e=2, knots=65)  # identity maps exact to 1e-3 between grid points
    g = cal.n_groups
    cal.cut[0, 4], cal.cut[1, 4] = 0.0, 1.0
    cal.hit_map[g + 4] = 2.0 * cal.hit_map[4]  # the upper bin's map doubles h
    f = torch.tensor([[3.0]])
    group = torch.tensor([[4]])
    for w, cut, out in ((0.0, 0.0, 3.0), (1.0, 1.0, 4.0), (0.5, 0.5, 0.5 * 2.5 + 0.5 * 5.0)):
        energy = (torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), g), torch.tensor([[w]]))
        got, got_cut = cal.read_out(f, group, energy)
        assert float(got_cut) == pytest.approx(cut)
        assert float(got) == pytest.approx(out, rel=2e-3)


def _fit_synthetic(n_e: int, shares: bool, rng: np.random.Generator):
    """Training showers whose occupancy grows with the energy (every cell hit with
    probability 0.15 at 2 GeV up to 0.6 at 50 GeV) and generated features that do not
    know the energy; normal incidence."""
    geo = toy_geometry()
    n, v = 3000, geo.n_voxels
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    p = 0.15 + 0.45 * (np.log(e) - np.log(2e3)) / (np.log(5e4) - np.log(2e3))
    hit = rng.random((n, v)) < p[:, None]
    x = np.where(hit, THR * np.exp(rng.exponential(1.0, (n, v))), 0.0).astype(np.float32)
    feats = torch.as_tensor(rng.normal(0.0, 1.5, (n, v)), dtype=torch.float32)
    cal = _calibration(n_e=n_e, shares=shares)
    e_t = torch.as_tensor(e, dtype=torch.float32)
    cal.fit(torch.as_tensor(x), e_t, torch.zeros(n, 2), feats, torch.ones(n, dtype=torch.float64),
            THR, zero_width=2.0)
    return cal, e, p


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_bins_follow_an_energy_dependent_occupancy(seed):
    rng = np.random.default_rng(seed)
    errors = {}
    for n_e in (1, 4):
        cal, _, _ = _fit_synthetic(n_e, False, np.random.default_rng(seed))
        e = torch.tensor([2.5e3, 1e4, 4e4])
        want = 0.15 + 0.45 * (np.log(e.numpy()) - np.log(2e3)) / (np.log(5e4) - np.log(2e3))
        f = torch.as_tensor(rng.normal(0.0, 1.5, (3, 20000)), dtype=torch.float32)
        # the group of a cell that every shower has (a corner of layer 0)
        group = torch.full_like(f, int(cal.groups(torch.zeros(1, 2), slice(0, 1))), dtype=torch.long)
        _, cut = cal.read_out(f, group, cal.energy_offsets(e))
        got = (f >= cut).float().mean(1).numpy()
        errors[n_e] = np.abs(got - want).max()
    assert errors[4] < 0.04, errors  # per energy (binned + interpolated)
    assert errors[1] > 0.15, errors  # pooled over energies: the average occupancy


def test_layer_shares_weights_give_the_training_shares():
    """Generated halos that grow with their shower (one random factor for all halo cells
    of a shower) match the training halo hit by hit after the quantile maps, but carry
    too small a share of the layer on average; the weights restore the share."""
    geo, rng = toy_geometry(), np.random.default_rng(5)
    n, v = 2000, geo.n_voxels
    cal = _calibration(n_e=1, shares=True, knots=33)
    group = cal.groups(torch.zeros(1, 2), slice(None))[0]
    ring = (group - cal.cell_offset).numpy()
    core = ring <= 1
    # training: core cells ~ e^(4 +- 0.3) thresholds, halo cells ~ e^(1 +- 0.8), independent
    x = np.where(core, np.exp(rng.normal(4.0, 0.3, (n, v))), np.exp(rng.normal(1.0, 0.8, (n, v))))
    x = (THR * x).astype(np.float32)
    # generated features: the same marginals, but the halo of a shower moves as a whole
    common = rng.normal(0.0, 1.0, (n, 1))
    halo = 1.0 + 0.8 * (0.9 * common + math.sqrt(1 - 0.81) * rng.normal(0.0, 1.0, (n, v)))
    feats = np.where(core, rng.normal(4.0, 0.3, (n, v)), halo)
    feats = torch.as_tensor(feats, dtype=torch.float32)

    def mean_halo_share(cells: np.ndarray) -> float:
        shares = []
        for k in range(geo.n_layers):
            s = slice(geo.layer_offsets[k], geo.layer_offsets[k + 1])
            layer = cells[:, s]
            shares.append((layer * ~core[s]).sum(1) / layer.sum(1))
        return float(np.mean(shares))

    def generated() -> np.ndarray:
        g, cut = cal.read_out(feats, group.expand(n, -1))
        return torch.where(feats >= cut, THR * torch.exp(g), torch.zeros_like(g)).numpy()

    e = torch.full((n,), 1e4)
    angles, ones = torch.zeros(n, 2), torch.ones(n, dtype=torch.float64)
    cal.fit_layer_shares = False
    cal.fit(torch.as_tensor(x), e, angles, feats, ones, THR, zero_width=2.0)
    ref, before = mean_halo_share(x), mean_halo_share(generated())
    cal.fit_layer_shares = True
    cal.fit(torch.as_tensor(x), e, angles, feats, ones, THR, zero_width=2.0)
    after = mean_halo_share(generated())
    assert abs(before / ref - 1) > 0.05, (ref, before)
    assert abs(after / ref - 1) < 0.02, (ref, before, after)
    assert cal.weighted


def test_sqrt_grid_resolves_the_hits_just_above_the_cut():
    """A third of a group's generated excesses lie below 0.05 (the flow's hits pile up
    at the cut) while its hottest reaches 20: a grid uniform in h (step 0.3) put them
    all on its first step; uniform in sqrt(h) keeps their quantile map."""
    rng = np.random.default_rng(3)
    n = 6000
    gen = np.concatenate([rng.uniform(0, 0.05, n // 3), rng.uniform(0.05, 20.0, n - n // 3)])
    ref = np.log1p(np.sort(gen) * 4.0)  # a steep monotone map near 0
    gen = np.sort(gen)
    cal = _calibration(knots=65)
    m = cal.hit_map.shape[1]
    step, table = fit_hit_maps(torch.as_tensor(ref, dtype=torch.float32), torch.full((n,), 3),
                               torch.as_tensor(gen, dtype=torch.float32), torch.full((n,), 3),
                               cal.hit_map.shape[0], m, 50)
    cal.hit_step.copy_(step)
    cal.hit_map.copy_(table)
    h = torch.tensor([[0.005, 0.02, 0.04, 1.0, 10.0]])
    out, _ = cal.read_out(h, torch.full_like(h, 3, dtype=torch.long))
    torch.testing.assert_close(out, torch.log1p(4.0 * h), atol=0.02, rtol=0.0)


def test_hit_energy_bins_must_be_positive():
    with pytest.raises(ConfigError, match="calibration_hit_energy_bins"):
        build("l2lflows", toy_geometry(), config={"calibration_hit_energy_bins": 0})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resolution_ratios_are_smoothed_over_energy_and_theta(seed):
    """Width ratios measured per (theta, energy) bin scatter by ~5 %; the fitted surface
    is closer to the slowly varying truth than the bins are."""
    rng = np.random.default_rng(seed)
    cal = AxisCalibration(toy_geometry(), n_theta_bins=4, inner_rings=1, n_knots=5,
                          n_energy_bins=8)
    log_e = torch.linspace(math.log(1.2e4), math.log(9e4), 8, dtype=torch.float64)
    cal.resp_log_e.copy_(log_e.expand(4, 8))
    theta = torch.tensor([0.09, 0.26, 0.44, 0.61], dtype=torch.float64)
    truth = 1.0 + 0.04 * (log_e[None] - 10.5) - 0.1 * theta[:, None]
    cal.resp_k.copy_(truth * torch.exp(torch.as_tensor(rng.normal(0, 0.05, (4, 8)))))
    raw = (cal.resp_k.double() / truth - 1).pow(2).mean().sqrt()
    smooth_resolution(cal, theta)
    smooth = (cal.resp_k.double() / truth - 1).pow(2).mean().sqrt()
    assert smooth < 0.6 * raw, (float(raw), float(smooth))


def test_an_empty_theta_bin_takes_every_table_of_its_neighbour():
    from caloforge.models.axis_calibration_fit import _fill_empty_bins

    cal = AxisCalibration(toy_geometry(), n_theta_bins=2, inner_rings=1, n_knots=5,
                          n_energy_bins=2, n_hit_energy_bins=2)
    cal.theta_edges.fill_(0.3)  # calibration showers all at theta 0: bin 1 is empty
    rows = 2 * cal.n_groups  # two energy tables per theta bin
    cal.cut[:2], cal.hit_log_weight[:2] = 1.5, 0.5
    cal.hit_step[:rows], cal.hit_map[:rows] = 0.25, 7.0
    _fill_empty_bins(cal, torch.zeros(10))
    assert (cal.cut[2:] == 1.5).all() and (cal.hit_log_weight[2:] == 0.5).all()
    assert (cal.hit_step[rows:] == 0.25).all() and (cal.hit_map[rows:] == 7.0).all()


def test_few_hits_are_mapped_alone_with_the_same_bits():
    """At batch 1 only the hits are mapped; they get the same values as when every cell
    is (element-wise operations only)."""
    rng = np.random.default_rng(4)
    cal = _calibration(n_e=3, shares=True, knots=17)
    cal.energy_knots.copy_(torch.log(torch.tensor([10e3, 30e3, 90e3])))
    cal.cut.copy_(torch.as_tensor(rng.normal(1.0, 0.3, cal.cut.shape), dtype=torch.float32))
    cal.hit_step.uniform_(0.1, 0.3)
    cal.hit_map.copy_(torch.sort(torch.rand(cal.hit_map.shape) * 8, 1).values)
    cal.hit_log_weight.uniform_(-0.3, 0.3)
    cal.weighted = True
    f = torch.as_tensor(rng.normal(-1.0, 1.2, (3, 216)), dtype=torch.float32)
    group = cal.groups(torch.tensor([[0.1, 0.5], [0.3, 2.0], [0.6, 4.0]]), slice(None))
    energy = cal.energy_offsets(torch.tensor([12e3, 41e3, 95e3]))
    few, cut = cal.read_out(f, group, energy)
    hit = f >= cut
    assert 0 < int(hit.sum()) * 4 < hit.numel()  # the few-hits path was taken
    every = cal._mapped(f, cut, group, energy)
    assert torch.equal(few[hit], every[hit])


@pytest.fixture(scope="module")
def energy_calibrated_model(tmp_path_factory):
    from caloforge.models.toy import toy_showers
    from caloforge.training import TrainConfig, train

    rng = np.random.default_rng(12)
    n = 500
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    data = toy_showers(toy_geometry(), e, rng, theta=np.radians(rng.uniform(0, 40, n)),
                       phi=rng.uniform(0, 2 * np.pi, n))
    torch.manual_seed(0)
    config = {"conditions": ["theta", "phi"], "cell_feature": "log_threshold",
              "hidden": [32], "context_embedding": 8, "transforms": 2,
              "energy_transforms": 2, "energy_bins": 4, "energy_hidden": [32],
              "calibration_showers": 500, "calibration_hit_energy_bins": 3,
              "calibration_layer_shares": True, "calibration_core_divisions": 4}
    return train("l2lflows", data, tmp_path_factory.mktemp("ecal") / "run", preset="tiny",
                 model_config=config, progress=False,
                 train_config=TrainConfig(steps=60, batch_size=64, validate_every=0))


def test_energy_calibrated_model_generates_the_same_showers_at_any_batch_size(
        energy_calibrated_model, tmp_path):
    from caloforge.data import Conditions
    from caloforge.models import load

    model = energy_calibrated_model
    cal = model.axis_cal
    assert cal.is_fitted and cal.n_e == 3 and cal.core_divisions == 4
    assert torch.all(torch.diff(cal.energy_knots) > 0)
    cond = Conditions(np.geomspace(2.5e3, 4.5e4, 9), theta=np.radians(np.linspace(0, 39, 9)),
                      phi=np.radians(np.linspace(0, 350, 9)))
    one = model.sample(cond, seed=3, batch_size=1).energies
    # equal up to the rounding of batched matrix products
    assert_same_showers(one, model.sample(cond, seed=3, batch_size=7).energies)
    model.save(tmp_path / "m")  # the tables survive a save and load
    np.testing.assert_array_equal(one, load(tmp_path / "m").sample(cond, seed=3, batch_size=1).energies)
