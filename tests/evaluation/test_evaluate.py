"""End-to-end: identical samples pass, distorted samples are flagged, bad input is
reported clearly, the report and the API agree."""

import json

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.errors import InputError
from caloforge.evaluation import ClassifierConfig, evaluate
from caloforge.evaluation.toy import toy_showers

N = 1200
FAST = ClassifierConfig(hidden=(64, 64), max_epochs=6, patience=2, learning_rate=1e-3)


@pytest.fixture(scope="module")
def samples():
    return {
        "ref": toy_showers(N, "calogan", seed=1),
        "same": toy_showers(N, "calogan", seed=2),
        "scale": toy_showers(N, "calogan", seed=3, energy_scale=1.15),
        "wide": toy_showers(N, "calogan", seed=4, width_scale=1.5),
        "nomip": toy_showers(N, "calogan", seed=5, mip_peak=False),
    }


@pytest.fixture(scope="module")
def result(samples):
    return evaluate(samples["ref"], [samples[k] for k in ("same", "scale", "wide", "nomip")],
                    ["same", "scale", "wide", "nomip"], threshold_mip=0.5, seed=0,
                    classifier=False, progress_bar=False)


def _gen(result, label):
    return next(g for g in result.metrics["generated"] if g["label"] == label)


def test_identical_sample_is_not_flagged(result):
    g = _gen(result, "same")
    verdicts = [v["verdict"] for v in g["observables"].values()]
    assert "red" not in verdicts
    assert g["cell_spectrum"]["above_threshold"]["verdict"] != "red"
    assert g["fpd"]["verdict"] != "red" and g["kpd"]["verdict"] != "red"
    assert g["correlations"]["verdict"] != "red"
    for v in g["observables"].values():  # metric within a few times its noise floor
        assert v["wasserstein"] < 3 * v["wasserstein_floor"] + 1e-9


def test_energy_scale_flagged(result):
    g = _gen(result, "scale")
    # E_vis is dominated by the flat 10-100 GeV incident spectrum; the response
    # E_vis/E_inc is the sharp probe of an energy scale.
    assert g["observables"]["e_vis"]["verdict"] != "green"
    assert g["observables"]["e_ratio"]["verdict"] == "red"
    assert g["response"]["mu90_max_rel_dev"] > 0.1
    assert g["observables"]["width_x"]["verdict"] != "red"  # shape unchanged


def test_widened_showers_flagged(result):
    g = _gen(result, "wide")
    assert g["observables"]["width_x"]["verdict"] == "red"
    assert g["observables"]["width_y"]["verdict"] == "red"
    assert g["profiles"]["r"]["verdict"] == "red"


def test_missing_mip_peak_flagged(result):
    g = _gen(result, "nomip")
    assert g["cell_spectrum"]["above_threshold"]["verdict"] == "red"
    # below-threshold cells are not read out: the full spectrum is information only
    full = g["cell_spectrum"]["all_cells"]
    assert full["verdict"] == "grey"
    assert full["separation_power"] > 5 * full["separation_power_floor"]


def test_calogan_shapes_present(result):
    g = _gen(result, "wide")
    assert set(g["calogan"]) >= {"E_0", "E_tot", "f_1", "E_ratio_2", "d", "l_d", "s_d",
                                 "sigma_sd"}


def test_classifier_flags_distortion_not_identity(samples):
    res = evaluate(samples["ref"], [samples["same"], samples["scale"]], ["same", "scale"],
                   threshold_mip=0.5, classifier_config=FAST, progress_bar=False,
                   lowlevel_memory_gib=0.01)
    same, scale = (res.metrics["generated"][i]["classifier"] for i in (0, 1))
    assert abs(same["high_level"]["auc"] - 0.5) < 0.06
    assert scale["high_level"]["auc"] > 0.6
    assert scale["high_level"]["verdict"] in ("yellow", "red")
    assert "auc_floor" in scale["high_level"]
    assert scale["low_level"]["auc"] > 0.6  # small low-level subsample (0.01 GiB)


def test_seeded_reproducible(samples):
    kw = dict(threshold_mip=0.5, classifier=False, progress_bar=False, seed=3)
    a = evaluate(samples["ref"][:400], [samples["wide"][:400]], **kw).metrics
    b = evaluate(samples["ref"][:400], [samples["wide"][:400]], **kw).metrics
    a.pop("seconds_metrics"), b.pop("seconds_metrics")
    assert a == b


# ---- bad input --------------------------------------------------------------------------
def test_nan_showers_skipped_and_reported(samples):
    bad = toy_showers(300, "calogan", seed=8)
    bad.energies[[5, 17], 3] = np.nan
    res = evaluate(samples["ref"][:300], [bad], ["bad"], classifier=False, progress_bar=False)
    g = res.metrics["generated"][0]
    assert g["skipped"]["count"] == 2 and g["skipped"]["indices"] == [5, 17]
    assert g["n_used"] == 298
    assert any("skipped 2 of 300" in w and "[5, 17]" in w for w in res.metrics["warnings"])


def test_geometry_mismatch_and_too_few(samples):
    other = toy_showers(50, "calochallenge-1-photons", seed=1)
    few = toy_showers(30, "calogan", seed=9)
    res = evaluate(samples["ref"][:300], [other, few], ["other", "few"], classifier=False,
                   progress_bar=False)
    g_other, g_few = res.metrics["generated"]
    assert g_other["status"] == "failed" and "differs" in g_other["reason"]
    assert g_few["status"] == "ok"
    assert g_few["fpd"]["status"] == "not computed"
    assert "at least 200" in g_few["fpd"]["reason"]
    assert any("fpd" in s for s in res.metrics["not_computed"])


def test_incident_energy_outside_range(samples):
    hi = toy_showers(300, "calogan", seed=10, energy_range_gev=(150.0, 200.0))
    res = evaluate(samples["ref"][:300], [hi], classifier=False, progress_bar=False)
    assert res.metrics["generated"][0]["incident_energy_outside_reference"] == 300
    assert any("outside the reference range" in w for w in res.metrics["warnings"])


def test_empty_reference_is_an_error():
    empty = toy_showers(0, "calogan", seed=1)
    with pytest.raises(InputError, match="no showers"):
        evaluate(empty, [toy_showers(10, "calogan")], classifier=False, progress_bar=False)


# ---- files, report, CLI ---------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, samples):
    from caloforge.data.io import write_showers

    d = tmp_path_factory.mktemp("eval")

    def write(name, batch, geo="calogan", meta=None):
        with write_showers(d / name, geometry=geo, metadata=meta or {}) as w:
            if batch is not None:
                w.append(batch)
        return d / name

    bad = samples["scale"][:400]
    bad.energies[[1, 250], 0] = np.inf
    return {
        "ref": write("ref.h5", samples["ref"][:400]),
        "gen": write("gen.h5", samples["same"][:400], meta={"time_per_shower_ms": 1.25}),
        "bad": write("bad.h5", bad),
        "empty": write("empty.h5", None),
        "train": write("train.h5", toy_showers(400, "calogan", seed=11)),
        "dir": d,
    }


def test_report_files_and_api_agree(files):
    out = files["dir"] / "report"
    res = evaluate(files["ref"], [files["gen"], files["bad"], files["empty"]],
                   ["gen", "bad", "empty"], threshold_mip=0.5, classifier=False,
                   train_reference=files["train"], report_dir=out, progress_bar=False,
                   n_memo=300)
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html and "src='figures" not in html
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(res.metrics))
    for name in ("obs_e_vis", "cell_spectrum_mip", "cell_spectrum_mev", "profile_r",
                 "response_mu90", "images_overlay", "correlation_reference", "memorisation",
                 "calogan_s_d", "ebinned_e_ratio"):
        assert (out / "figures" / f"{name}.png").exists(), name
        assert (out / "figures" / f"{name}.pdf").exists(), name
    gen, bad, empty = res.metrics["generated"]
    assert gen["time_per_shower_ms"] == 1.25 and "1.25 ms" in html
    assert bad["skipped"]["indices"] == [1, 250]
    assert empty["status"] == "failed" and "no showers" in empty["reason"]
    assert "no showers" in html
    assert gen["memorisation"]["verdict"] in ("green", "yellow")
    assert 0.7 < gen["memorisation"]["median_ratio"] < 1.3


@pytest.mark.slow
def test_cli(files, capsys):
    out = files["dir"] / "cli_report"
    rc = main(["evaluate", str(files["ref"]), str(files["gen"]), "--labels", "g",
               "--threshold-mip", "0.5", "--no-classifier", "--report", str(out),
               "--no-progress"])
    assert rc == 0 and (out / "index.html").exists()
    assert "report written" in capsys.readouterr().out


def test_cli_errors(files, capsys):
    out = files["dir"] / "existing"
    out.mkdir()
    (out / "index.html").write_text("old")
    # existing report refused before any work; label count checked
    assert main(["evaluate", str(files["ref"]), str(files["gen"]), "--no-classifier",
                 "--report", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["evaluate", str(files["ref"]), str(files["gen"]), "--labels", "a", "b",
                 "--report", str(out / "x")]) == 1
    assert "labels" in capsys.readouterr().err
    assert main(["evaluate", str(files["empty"]), str(files["gen"]), "--no-classifier",
                 "--report", str(files["dir"] / "r2")]) == 1
    assert "no showers" in capsys.readouterr().err
