"""The axis calibration's second passes, on showers read out with every table: the
occupancy targets of the cuts scaled by training over read-out hits
(``calibration_occupancy_refine``) and the response table refitted
(``calibration_response_refine``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.axis_calibration_fit import readout_occupancy_scale
from caloforge.models.toy import toy_geometry

THR = toy_geometry().readout_threshold_mev


def _calibration() -> AxisCalibration:
    return AxisCalibration(toy_geometry(), n_theta_bins=1, inner_rings=1, n_knots=9,
                           n_energy_bins=3)


def _synthetic(rng: np.random.Generator, n: int = 3000):
    """Training showers with a 40 % occupancy in every cell, generated features N(0, 1.5),
    responses lognormal around 0.02 (training) at 2-50 GeV."""
    v = toy_geometry().n_voxels
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    hit = rng.random((n, v)) < 0.4
    x = np.where(hit, THR * np.exp(rng.exponential(1.0, (n, v))), 0.0).astype(np.float32)
    feats = torch.as_tensor(rng.normal(0.0, 1.5, (n, v)), dtype=torch.float32)
    gen_ratio = torch.as_tensor(0.02 * np.exp(rng.normal(0.0, 0.1, n)))
    return torch.as_tensor(x), torch.as_tensor(e, dtype=torch.float32), feats, gen_ratio


def test_readout_scale_is_training_over_read_out_hits():
    cal = _calibration()
    g, n, v = cal.n_groups, 400, toy_geometry().n_voxels
    x = torch.full((n, v), 2 * THR)  # every cell hit in training
    read = torch.full((n, v), 2 * THR)
    read[:, ::2] = 0.5 * THR  # half the cells read out below the threshold
    scale = readout_occupancy_scale(cal, x, torch.zeros(n, 2), [read[:150], read[150:]], THR)
    rows = cal.groups(torch.zeros(1, 2), slice(None))[0]
    per_group = torch.bincount(rows, minlength=g).float()
    kept = torch.bincount(rows[1::2], minlength=g).float()
    used = per_group * n >= 50
    expect = (per_group / kept.clamp_min(1)).clamp(1 / 1.5, 1.5)
    torch.testing.assert_close(scale[used & (kept > 0)], expect[used & (kept > 0)])
    assert (scale[~used] == 1).all()
    # the factors of the fit that generated the read-out multiply in
    again = readout_occupancy_scale(cal, x, torch.zeros(n, 2), [read], THR,
                                    previous=torch.full((g,), 0.8))
    torch.testing.assert_close(again[used & (kept > 0)],
                               (0.8 * per_group / kept.clamp_min(1))[used & (kept > 0)]
                               .clamp(1 / 1.5, 1.5))


@pytest.mark.parametrize("seed", [0, 1])
def test_occupancy_scale_moves_the_cuts_to_draw_that_many_more_hits(seed):
    x, e, feats, gen_ratio = _synthetic(np.random.default_rng(seed))
    angles = torch.zeros(len(e), 2)
    fractions = {}
    for factor in (1.0, 1.25):
        cal = _calibration()
        scale = torch.full((cal.n_groups,), factor)
        cal.fit(x, e, angles, feats, gen_ratio, THR, zero_width=2.0, occupancy_scale=scale)
        group = cal.groups(angles[:1], slice(None)).expand_as(feats)
        _, cut = cal.read_out(feats, group)
        fractions[factor] = (feats >= cut).float().mean().item()
    assert fractions[1.0] == pytest.approx(0.4, abs=0.01)
    assert fractions[1.25] == pytest.approx(0.5, abs=0.01)


def _mu_sigma_per_energy_third(ratio: torch.Tensor, e: torch.Tensor) -> np.ndarray:
    from caloforge.evaluation.observables import mu90_sigma90

    edges = torch.quantile(e.double(), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    b = torch.bucketize(e.double(), edges[1:-1])
    return np.array([mu90_sigma90(ratio[b == k].double().numpy()) for k in range(3)])


@pytest.mark.parametrize("seed", [0, 1])
def test_refined_response_gives_the_read_out_showers_the_training_response(seed):
    """A read-out that keeps 95 % of the sampled energy: after the refit the read-out
    showers have the training median and width in every third of the energy range."""
    rng = np.random.default_rng(seed)
    _, e, feats, _ = _synthetic(rng)
    n = len(e)
    # training response 0.02 +- 10 % at every energy (one cell carries it); the flow's
    # 5 % high and 50 % wider
    x = torch.zeros_like(feats)
    x[:, 0] = torch.as_tensor(0.02 * np.exp(rng.normal(0.0, 0.1, n)), dtype=torch.float32) * e
    gen_ratio = torch.as_tensor(0.021 * np.exp(rng.normal(0.0, 0.15, n)))
    angles = torch.zeros(n, 2)
    cal = _calibration()
    cal.fit(x, e, angles, feats, gen_ratio, THR, zero_width=2.0)
    real = _mu_sigma_per_energy_third(x[:, 0] / e, e)

    def read_out() -> torch.Tensor:  # the calibrated response, 5 % of it lost
        return 0.95 * cal.calibrated_ratio(e, gen_ratio.float(), angles[:, 0]).double()

    before = _mu_sigma_per_energy_third(read_out(), e)
    cal.refine_response(x, e, angles, read_out(), THR)
    after = _mu_sigma_per_energy_third(read_out(), e)
    assert np.abs(before[:, 0] / real[:, 0] - 0.95).max() < 0.01
    assert np.abs(after[:, 0] / real[:, 0] - 1).max() < 0.01, (real, after)
    assert np.abs(after[:, 1] / real[:, 1] - 1).max() < 0.06, (real, after)


@pytest.mark.parametrize("n_theta_bins", [1, 3])
def test_width_smoothing_is_the_least_squares_surface_every_time(n_theta_bins):
    """Width ratios already on a surface quadratic in log E and linear in theta come back
    unchanged, call after call — also with one theta bin, where the theta columns of the
    fit are zero (LAPACK's default driver got that case wrong in about half the calls)."""
    from caloforge.models.axis_calibration_fit import smooth_resolution

    cal = AxisCalibration(toy_geometry(), n_theta_bins=n_theta_bins, inner_rings=1,
                          n_knots=9, n_energy_bins=3)
    log_e = torch.linspace(7.6, 11.5, cal.resp_log_e.shape[1], dtype=torch.float64)
    cal.resp_log_e[:] = log_e.to(cal.resp_log_e)
    theta = torch.linspace(0.0, 0.6, n_theta_bins, dtype=torch.float64)
    u = log_e - 9.5
    surface = torch.exp(-0.2 + 0.05 * u - 0.03 * u * u + 0.1 * theta[:, None] * (1 + 0.2 * u))
    scratch = torch.arange(30.0, dtype=torch.float64).reshape(6, 5)
    for i in range(30):
        # other LAPACK work in between, as a fit does (the wrong answers depended on it)
        torch.linalg.lstsq(scratch, scratch[:, :1] * i, driver="gelsd")
        cal.resp_k[:] = surface.to(cal.resp_k)
        smooth_resolution(cal, theta)
        torch.testing.assert_close(cal.resp_k.double(), surface, rtol=1e-5, atol=0)


def _read_out(cal: AxisCalibration, feats: torch.Tensor, e: torch.Tensor, angles: torch.Tensor,
              response: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Hit energies as generation reads them out, each shower's hits then scaled by
    ``factor`` (the rescale to the sampled layer energy)."""
    rows = cal.groups(angles, slice(None))
    energy = cal.energy_offsets(e, response, angles[:, 0])
    mapped, cut = cal.read_out(feats, rows, energy)
    hits = torch.where(feats >= cut, THR * torch.exp(mapped), torch.zeros_like(feats))
    return torch.where(hits * factor[:, None] >= THR, hits * factor[:, None], 0.0)


@pytest.mark.parametrize("bins,scale", [((1, 1), 1.2), ((2, 2), 1.25)])
def test_hit_refine_brings_the_read_out_spectrum_back_to_the_training_one(bins, scale):
    """A read-out that scales every hit by ``scale`` +- 3 %: its hits come out that much
    hot; after the hit-map refine their median and quartiles are the training ones.
    (A cold read-out tests nothing here: hits lost below the threshold leave the
    exponential spectrum of ``_synthetic`` unchanged.)"""
    from caloforge.models.axis_calibration_fit import refine_hit_maps

    rng = np.random.default_rng(3)
    x, e, feats, gen_ratio = _synthetic(rng)
    angles = torch.zeros(len(e), 2)
    # two theta bins, every shower at normal incidence: the second bin is a copy
    cal = AxisCalibration(toy_geometry(), n_theta_bins=2, inner_rings=1, n_knots=9,
                          n_energy_bins=3, n_hit_energy_bins=bins[0], n_response_bins=bins[1])
    cal.fit(x, e, angles, feats, gen_ratio, THR, zero_width=2.0)
    response = cal.calibrated_ratio(e, gen_ratio.float(), angles[:, 0])
    factor = torch.as_tensor(scale * np.exp(rng.normal(0.0, 0.03, len(e))), dtype=torch.float32)

    def log_quartiles(showers: torch.Tensor) -> torch.Tensor:
        v = torch.log(showers[showers >= THR] / THR).double()
        return torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))

    real = log_quartiles(x)
    before = log_quartiles(_read_out(cal, feats, e, angles, response, factor))
    assert (before - real).abs().min() > 0.1
    chunks = [_read_out(cal, feats[i:i + 700], e[i:i + 700], angles[i:i + 700],
                        response[i:i + 700], factor[i:i + 700]) for i in range(0, len(e), 700)]
    refine_hit_maps(cal, x, e, angles, chunks, THR)
    after = log_quartiles(_read_out(cal, feats, e, angles, response, factor))
    assert (after - real).abs().max() < 0.05, (real, before, after)
    per_bin = cal.hit_map.view(2, -1, cal.hit_map.shape[1])
    assert torch.equal(per_bin[1], per_bin[0])  # the empty bin copied the refined tables
    steps = cal.hit_map[:, 1:] - cal.hit_map[:, :-1]
    assert (steps >= 0).all() and (cal.hit_map >= 0).all()
