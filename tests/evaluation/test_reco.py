"""Reconstruction level on synthetic inputs: digitisation, calibration, software
compensation, calibration files and the bad-input errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from caloforge.errors import ConfigError, GeometryError, GeometryMismatchError, InputError
from caloforge.evaluation import EvaluationConfig
from caloforge.evaluation.observables import mu90_sigma90
from caloforge.evaluation.reco import (
    DigitisationConfig,
    RecoCalibration,
    density_sums,
    desaturate,
    digitise,
    fit_calibration,
    min_showers,
    saturation_curve,
)
from caloforge.evaluation.reco.calibration import DENSITY_EDGES_MIP
from caloforge.evaluation.reco.digitise import digitise_shower
from caloforge.evaluation.reco.stage import is_hadron_calorimeter, prepare, resolution_fit
from caloforge.geometry import get_geometry

K = len(DENSITY_EDGES_MIP) + 1
DIGI = DigitisationConfig()


# ---- digitisation ----------------------------------------------------------------------
def test_saturation_curve_and_its_inverse():
    n_pe = np.array([1.0, 100.0, 2000.0, 10000.0])
    fired = saturation_curve(n_pe, 2000)
    assert np.all(fired < n_pe) and np.all(np.diff(fired) > 0)
    assert fired[2] == pytest.approx(2000 * (1 - math.exp(-1)))
    np.testing.assert_allclose(desaturate(fired, 2000), n_pe, rtol=1e-9)


@pytest.mark.parametrize("amplitude_mip", [1.0, 50.0, 400.0])
def test_sipm_saturation_reduces_large_hits_as_the_formula_says(amplitude_mip):
    """Without desaturation the mean read-out amplitude is N_pix (1 - exp(-N_pe/N_pix))
    divided by the light yield, which is well below the deposit for large hits."""
    cfg = DigitisationConfig(noise_mip=0.0, desaturate=False)
    rng = np.random.default_rng(1)
    a = digitise_shower(np.full(4000, amplitude_mip), cfg, rng)
    expected = saturation_curve(amplitude_mip * cfg.light_yield, cfg.sipm_pixels) / \
        cfg.light_yield
    assert a.mean() == pytest.approx(expected, abs=6 * a.std() / math.sqrt(len(a)) + 1e-9)
    if amplitude_mip >= 50:
        assert expected < 0.9 * amplitude_mip  # saturation is visible
    # desaturation restores the scale on average (to the curve's slope-limited precision)
    b = digitise_shower(np.full(4000, amplitude_mip), DigitisationConfig(noise_mip=0.0), rng)
    assert b.mean() == pytest.approx(amplitude_mip, rel=0.02)


def test_digitisation_is_seeded_per_shower_not_per_chunk():
    rng = np.random.default_rng(3)
    rows = np.sort(rng.integers(0, 10, 300))
    vals = rng.exponential(2.0, 300)
    idx = np.arange(100, 110)
    whole = digitise(rows, vals, idx, 0.5, DIGI, seed=7)
    cut = np.searchsorted(rows, 4)
    parts = np.concatenate([digitise(rows[:cut], vals[:cut], idx[:4], 0.5, DIGI, 7),
                            digitise(rows[cut:] - 4, vals[cut:], idx[4:], 0.5, DIGI, 7)])
    np.testing.assert_array_equal(whole, parts)
    assert not np.array_equal(whole, digitise(rows, vals, idx, 0.5, DIGI, seed=8))


def test_density_sums_bins_hits_by_amplitude():
    rows = np.array([0, 0, 1, 1])
    amp = np.array([0.8, 30.0, 1.5, 1.0])
    s = density_sums(rows, amp, 2)
    assert s.shape == (2, K)
    assert s[0, 0] == pytest.approx(0.8) and s[0, -1] == pytest.approx(30.0)
    assert s[1, 0] == pytest.approx(1.0) and s[1, 1] == pytest.approx(1.5)


# ---- calibration -----------------------------------------------------------------------
def _showers(n_per_energy, energies_gev, rng, gev_per_mip=0.03, h_dense=1.0, h_sparse=1.0):
    """Synthetic (E_inc MeV, sums): a fraction f ~ U(0.1, 0.7) of the energy in dense hits
    (last density bin) with response h_dense, the rest in sparse hits (first bin)."""
    e = np.repeat(np.asarray(energies_gev, float), n_per_energy)
    f = rng.uniform(0.1, 0.7, len(e))
    sums = np.zeros((len(e), K))
    sums[:, -1] = f * e * h_dense / gev_per_mip
    sums[:, 0] = (1 - f) * e * h_sparse / gev_per_mip
    sums *= rng.normal(1, 0.02, (len(e), 1))  # a little sampling noise
    return e * 1e3, sums


def _fit(e, sums, **kw):
    return fit_calibration(e, sums, "ild-ahcal", 0.5, DIGI, **kw)


def test_calibration_recovers_a_known_linear_scale():
    rng = np.random.default_rng(5)
    e, sums = _showers(200, [20, 50, 80], rng, gev_per_mip=0.0275)
    cal = _fit(e, sums)
    assert cal.gev_per_mip == pytest.approx(0.0275, rel=0.01)
    e_reco = cal.energy(sums)
    for energy in (20, 50, 80):
        assert mu90_sigma90(e_reco[e == energy * 1e3])[0] == pytest.approx(energy, rel=0.01)


def test_software_compensation_recovers_a_known_response_ratio():
    """Dense hits answer 1.0, sparse ones 0.6 (a non-compensating calorimeter): the
    uncompensated resolution is dominated by the fluctuating dense fraction, the fitted
    weights undo it (sparse / dense weight = 1 / 0.6) and the resolution improves."""
    rng = np.random.default_rng(11)
    e, sums = _showers(300, [20, 40, 60, 80], rng, h_dense=1.0, h_sparse=0.6)
    cal = _fit(e, sums)
    unc, comp = cal.energy(sums), cal.compensated(sums)
    for energy in (20, 80):
        sel = e == energy * 1e3
        mu_u, s_u = mu90_sigma90(unc[sel])
        mu_c, s_c = mu90_sigma90(comp[sel])
        assert s_c / mu_c < 0.5 * s_u / mu_u
        assert mu_c == pytest.approx(energy, rel=0.02)
    w = cal.weights(np.array([50.0]))[0]
    assert w[0] / w[-1] == pytest.approx(1 / 0.6, rel=0.05)


def test_fit_refuses_a_sample_too_small_and_states_the_minimum():
    rng = np.random.default_rng(2)
    e, sums = _showers(30, [20, 50], rng)
    with pytest.raises(InputError, match=f"at least {min_showers(0.10)} per incident energy"):
        _fit(e, sums)
    assert _fit(e, sums, max_rel_error=0.2).n_showers == 60


def test_minimum_follows_from_the_sigma90_statistical_error():
    """At n = min_showers(0.1) the relative spread of sigma90/mu90 of Gaussian samples is
    about 10% (0.82/sqrt(n)); 400 seeded repetitions give it to ~4%."""
    n = min_showers(0.10)
    assert n == 68 and min_showers(0.03) == 748
    rng = np.random.default_rng(0)
    r = []
    for _ in range(400):
        m, s = mu90_sigma90(rng.normal(10.0, 1.0, n))
        r.append(s / m)
    assert np.std(r) / np.mean(r) == pytest.approx(0.10, rel=0.15)


def test_resolution_fit_recovers_stochastic_and_constant_terms():
    e = np.array([10.0, 20.0, 50.0, 90.0])
    r = np.sqrt(0.5 ** 2 / e + 0.03 ** 2)
    fit = resolution_fit({"e_inc": list(e), "sigma90_over_mu90": list(r)})
    assert fit["stochastic"] == pytest.approx(0.5) and fit["constant"] == pytest.approx(0.03)


# ---- calibration files -----------------------------------------------------------------
@pytest.fixture(scope="module")
def calibration():
    e, sums = _showers(100, [20, 60], np.random.default_rng(4))
    return _fit(e, sums), sums


def test_calibration_file_round_trip(tmp_path, calibration):
    cal, sums = calibration
    path = tmp_path / "cal.json"
    cal.save(path)
    back = RecoCalibration.load(path, "ild-ahcal")
    np.testing.assert_allclose(back.compensated(sums), cal.compensated(sums))
    assert back.digitisation == cal.digitisation and back.geometry == "ild-ahcal"


def test_calibration_of_another_geometry_is_refused(tmp_path, calibration):
    path = tmp_path / "cal.json"
    calibration[0].save(path)
    with pytest.raises(GeometryMismatchError, match="made for geometry ild-ahcal, not ild-ecal"):
        RecoCalibration.load(path, "ild-ecal")


@pytest.mark.parametrize("damage", ["truncate", "not_json_object", "bad_shape", "negative",
                                    "other_format"])
def test_corrupt_calibration_file_is_one_clear_error(tmp_path, calibration, damage):
    path = tmp_path / "cal.json"
    calibration[0].save(path)
    data = json.loads(path.read_text())
    if damage == "truncate":
        path.write_text(path.read_text()[:50])
    else:
        if damage == "not_json_object":
            data = [1, 2]
        elif damage == "bad_shape":
            data["sc_coefficients"] = data["sc_coefficients"][:2]
        elif damage == "negative":
            data["gev_per_mip"] = -1.0
        else:
            data["format"] = "something-else"
        path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not a valid reco calibration file"):
        RecoCalibration.load(path, "ild-ahcal")


def test_missing_calibration_file(tmp_path):
    with pytest.raises(InputError, match="reco calibration file not found"):
        RecoCalibration.load(tmp_path / "nope.json")


# ---- configuration ---------------------------------------------------------------------
def test_reco_is_on_by_default_for_hadron_calorimeters_only():
    assert is_hadron_calorimeter(get_geometry("ild-ahcal"))
    assert not is_hadron_calorimeter(get_geometry("ild-ecal"))
    assert prepare(EvaluationConfig(), get_geometry("ild-ahcal")) is not None
    assert prepare(EvaluationConfig(), get_geometry("ild-ecal")) is None
    assert prepare(EvaluationConfig(reco=False), get_geometry("ild-ahcal")) is None


def test_reco_on_a_geometry_without_a_calibration_says_which_and_how():
    with pytest.raises(GeometryError, match=r"geometry ild-ecal has no reconstruction "
                                            r"calibration.*--reco-calibration"):
        prepare(EvaluationConfig(reco=True), get_geometry("ild-ecal"))


@pytest.mark.parametrize("field,value", [("reco_max_rel_error", 0.0),
                                         ("reco_light_yield", -1.0),
                                         ("reco_noise_mip", math.nan),
                                         ("reco_sipm_pixels", 0)])
def test_bad_reco_options_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
        EvaluationConfig.from_dict({field: value})


def test_cli_reco_options_reach_the_config():
    import argparse

    from caloforge.cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "r.h5", "g.h5", "--report", "out", "--reco",
                              "--reco-calibration", "c.json", "--reco-noise-mip", "0.1"])
    cfg = cli._config(args)
    assert cfg.reco is True and cfg.reco_calibration == "c.json" and cfg.reco_noise_mip == 0.1
    args = parser.parse_args(["evaluate", "r.h5", "g.h5", "--report", "out", "--no-reco"])
    assert cli._config(args).reco is False


def test_calibration_made_for_another_geometry_enables_reco_there(tmp_path):
    """The way out that the 'no reconstruction calibration' error names: a calibration
    fitted with calibrate_file (no SiPM model for silicon) passed as reco_calibration."""
    from caloforge.evaluation import evaluate
    from caloforge.evaluation.reco import calibrate_file
    from caloforge.evaluation.toy import toy_showers

    energies = np.repeat([20.0, 50.0], 40)
    ref = toy_showers(80, "ild-ecal", seed=1, energies_gev=energies)
    gen = toy_showers(80, "ild-ecal", seed=2, energies_gev=energies)
    path = tmp_path / "ecal.json"
    cal = calibrate_file(ref, path, DigitisationConfig(sipm=False), max_rel_error=0.15)
    assert cal.geometry == "ild-ecal" and not cal.digitisation.sipm
    ev = evaluate(ref, [gen], classifier=False, progress_bar=False,  # file given: reco on
                  reco_calibration=str(path), reco_max_rel_error=0.15)
    reco = ev.metrics["generated"][0]["reco"]
    assert reco["calibration"]["fitted_on"] == "<in-memory reference>"
    assert reco["compensated"]["generated"]["n"] == [40, 40]


def test_response_in_bins_of_a_continuous_spectrum_is_not_widened_by_the_bin():
    """Uniform 10-100 GeV with a 5% Gaussian resolution: each of the 8 quantile bins
    (about 11 GeV wide) shows 5% (sigma90 of it), not the spread of E_inc inside the bin."""
    from caloforge.evaluation.observables import energy_bins
    from caloforge.evaluation.reco.stage import response

    rng = np.random.default_rng(9)
    e_mev = rng.uniform(10e3, 100e3, 8000)
    e_reco = e_mev / 1e3 * rng.normal(1.0, 0.05, len(e_mev))
    edges, discrete = energy_bins(e_mev)
    assert not discrete
    bins = np.clip(np.searchsorted(edges, e_mev, side="right") - 1, 0, len(edges) - 2)
    table = response(e_reco, e_mev, bins, len(edges) - 1)
    # the 90% core of a Gaussian has an RMS of 0.789 sigma
    np.testing.assert_allclose(table["sigma90_over_mu90"], 0.789 * 0.05, rtol=0.1)
    np.testing.assert_allclose(table["linearity"], 1.0, atol=0.01)
