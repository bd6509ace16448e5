"""Bad input of the reconstruction level through ``caloforge evaluate`` (issue 13): one
stderr line naming the problem, exit 1, no traceback, and no report written."""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.evaluation.reco import DigitisationConfig, fit_calibration, min_showers
from caloforge.evaluation.reco.calibration import DENSITY_EDGES_MIP

NEED = min_showers(0.10)  # 68 showers per incident energy for a 10% error of sigma90/mu90


def _evaluate(ref, gen, out, capsys, *extra):
    config = out.parent / "eval.yaml"
    config.write_text("figure_formats: [png]\n")
    rc = main(["evaluate", ref, gen, "--report", str(out), "--config", str(config),
               "--no-classifier", "--no-progress", *extra])
    captured = capsys.readouterr()
    return rc, captured.err.strip()


def _assert_refused(rc, err, out, *needles):
    assert rc == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("caloforge evaluate: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name)]  # no staging


@pytest.fixture(scope="module")
def silicon_files(toy_geo, tmp_path_factory):
    """A silicon-tungsten geometry (no SiPM-on-tile calorimeter, so no calibration)."""
    from caloforge.data.io import write_showers
    from caloforge.models.toy import toy_showers

    folder = tmp_path_factory.mktemp("si")
    paths = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        path = folder / f"si{seed}.h5"
        with write_showers(path, "caloforge", toy_geo.name) as w:
            w.append(toy_showers(toy_geo, np.repeat([20e3, 50e3], 80), rng))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def pion_files(ahcal_like, tmp_path_factory):
    """Single-energy AHCAL-like samples at 20 and 50 GeV: a reference with enough showers
    per energy, and the same with 30 per energy (too few for a stable sigma90)."""
    folder = tmp_path_factory.mktemp("ahcal")
    return {"ok": ahcal_like(folder / "ok.h5", np.repeat([20.0, 50.0], NEED), 1),
            "ok2": ahcal_like(folder / "ok2.h5", np.repeat([20.0, 50.0], NEED), 2),
            "small": ahcal_like(folder / "small.h5", np.repeat([20.0, 50.0], 30), 3)}


def test_reco_on_a_geometry_without_a_calibration(silicon_files, toy_geo, tmp_path, capsys):
    out = tmp_path / "report"
    rc, err = _evaluate(*silicon_files, out, capsys, "--reco")
    _assert_refused(rc, err, out, f"geometry {toy_geo.name} has no reconstruction calibration",
                    "Si active layers", "--reco-calibration")


def test_calibration_file_of_another_geometry(pion_files, tmp_path, capsys):
    rng = np.random.default_rng(4)
    e = np.repeat([20.0, 60.0], 100)
    sums = np.zeros((len(e), len(DENSITY_EDGES_MIP) + 1))
    sums[:, 0] = e / 0.03 * rng.normal(1, 0.05, len(e))
    cal = tmp_path / "ecal_cal.json"
    fit_calibration(e * 1e3, sums, "ild-ecal", 0.15, DigitisationConfig(sipm=False)).save(cal)
    out = tmp_path / "report"
    rc, err = _evaluate(pion_files["ok"], pion_files["ok2"], out, capsys,
                        "--reco-calibration", str(cal))
    _assert_refused(rc, err, out, str(cal), "made for geometry ild-ecal, not toy-ahcal-hadron")


def test_reference_too_small_for_a_stable_sigma90_states_the_minimum(pion_files, tmp_path,
                                                                      capsys):
    out = tmp_path / "report"
    rc, err = _evaluate(pion_files["small"], pion_files["ok"], out, capsys, "--reco")
    _assert_refused(rc, err, out, "reference sample is too small for a stable sigma90",
                    "20 GeV: 30", f"at least {NEED} per incident energy",
                    "--reco-max-rel-error")


def test_generated_sample_too_small_is_not_compared(pion_files, tmp_path, capsys):
    """A generated sample too small for the reco level: exit 1 with one error line naming
    it and the minimum; what could be compared is still reported (evaluate's rule for
    requested comparisons that could not be made)."""
    out = tmp_path / "report"
    rc, err = _evaluate(pion_files["ok"], pion_files["small"], out, capsys, "--reco")
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("caloforge evaluate: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "generated sample is too small" in errors[0]
    assert f"at least {NEED} per incident energy" in errors[0]
    assert (out / "metrics.json").is_file()
