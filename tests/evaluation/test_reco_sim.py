"""Reconstruction level end to end on small ild-ahcal pion samples from caloforge's own
simulation (40 showers at 20 and 60 GeV per sample, made once per module)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caloforge.data.batch import ShowerBatch
from caloforge.errors import GeometryMismatchError, InputError
from caloforge.evaluation import evaluate
from caloforge.evaluation.reco import RecoCalibration, min_showers
from caloforge.simulation import simulate

N = 40  # per energy; reco_max_rel_error 0.15 needs 30
LOOSE = {"reco_max_rel_error": 0.15, "classifier": False, "progress_bar": False}


def _pions(seed: int) -> ShowerBatch:
    parts = [simulate("ild-ahcal", "pi+", e, N, seed=seed + k)
             for k, e in enumerate((20e3, 60e3))]
    return ShowerBatch.concatenate(parts)


@pytest.fixture(scope="module")
def samples():
    return _pions(100), _pions(200)


@pytest.fixture(scope="module")
def report(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("reco") / "report"
    ref, gen = samples
    ev = evaluate(ref, [gen], report_dir=out, reco=True, figure_formats=("png",), **LOOSE)
    return ev, out


def test_reco_section_in_metrics_json_with_noise_floors(report):
    ev, out = report
    m = json.loads((out / "metrics.json").read_text())
    reco = m["generated"][0]["reco"]
    assert ev.complete and reco["verdict"] in ("green", "yellow", "red")
    for variant in ("uncompensated", "compensated"):
        sec = reco[variant]
        assert sec["reference"]["n"] == [N, N] and sec["generated"]["n"] == [N, N]
        assert sec["reference"]["e_inc"] == pytest.approx([20.0, 60.0])
        for key in ("mu90", "sigma90_over_mu90"):
            assert sec[f"{key}_max_rel_dev"] >= 0 and sec[f"{key}_max_rel_dev_floor"] > 0
        # calibrated so that the hit sum is the incident energy: linearity near 1
        assert np.allclose(sec["reference"]["linearity"], 1.0, atol=0.15)
        assert sec["resolution_fit_reference"]["stochastic"] > 0
    assert {"reco_linearity", "reco_resolution", "reco_energy_compensated"} <= \
        set(m["figures"])
    assert "Reconstruction level" in (out / "index.html").read_text()
    assert m["reco_calibration"]["geometry"] == "ild-ahcal"


def test_software_compensation_fitted_on_the_reference_improves_it(report):
    reco = report[0].metrics["generated"][0]["reco"]
    unc = reco["uncompensated"]["reference"]["sigma90_over_mu90"]
    comp = reco["compensated"]["reference"]["sigma90_over_mu90"]
    assert all(c < u for c, u in zip(comp, unc))


def test_saved_calibration_is_reused_and_gives_the_same_result(report, samples):
    ev, out = report
    cal = RecoCalibration.load(out / "reco_calibration.json", "ild-ahcal")
    assert cal.n_showers == 2 * N
    again = evaluate(*samples[:1], [samples[1]], reco=True,
                     reco_calibration=str(out / "reco_calibration.json"), **LOOSE)
    a = ev.metrics["generated"][0]["reco"]["compensated"]
    b = again.metrics["generated"][0]["reco"]["compensated"]
    assert a["generated"] == b["generated"] and a["reference"] == b["reference"]


def test_reco_does_not_depend_on_the_chunk_size(report, samples):
    again = evaluate(samples[0], [samples[1]], reco=True, batch_size=7, **LOOSE)
    a = report[0].metrics["generated"][0]["reco"]["compensated"]["generated"]
    assert again.metrics["generated"][0]["reco"]["compensated"]["generated"] == a


def test_calibration_of_another_geometry_is_refused(report, samples, tmp_path):
    data = json.loads((report[1] / "reco_calibration.json").read_text())
    data["geometry"] = "ild-ecal"
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GeometryMismatchError, match="not ild-ahcal"):
        evaluate(samples[0], [samples[1]], reco_calibration=str(path), **LOOSE)


def test_small_reference_skips_default_reco_but_fails_explicit(samples):
    """40 showers per energy are below the default minimum (68 for 10%)."""
    need = min_showers(0.10)
    ev = evaluate(samples[0], [samples[1]], classifier=False, progress_bar=False)
    assert "reco" not in ev.metrics["generated"][0]
    assert any("reconstruction level skipped" in w and f"at least {need}" in w
               for w in ev.metrics["warnings"])
    assert ev.complete
    with pytest.raises(InputError, match=f"reference sample is too small.*at least {need}"):
        evaluate(samples[0], [samples[1]], reco=True, classifier=False, progress_bar=False)


def test_small_generated_sample_is_not_compared_at_reco_level(samples):
    ref, gen = samples
    small = gen[np.r_[0:20, N:N + 20]]
    ev = evaluate(ref, [small], reco=True, **LOOSE)
    assert ev.metrics["generated"][0]["reco"]["status"] == "not computed"
    assert not ev.complete
    assert any("generated sample is too small" in s and "at least 30" in s
               for s in ev.metrics["not_compared"])
