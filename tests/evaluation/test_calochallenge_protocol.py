"""run_calochallenge_protocol end to end on toys, and its errors on bad input."""

import json

import h5py
import numpy as np
import pytest

from caloforge.data.io import write_showers
from caloforge.errors import GeometryError, InputError
from caloforge.evaluation.calochallenge import (
    METRICS_FILE,
    format_summary,
    run_calochallenge_protocol,
)
from caloforge.evaluation.calochallenge.classifier import OfficialClassifierConfig
from caloforge.evaluation.classifier import VERDICT_FAIL
from caloforge.evaluation.toy import toy_showers

SMALL = OfficialClassifierConfig(n_hidden=64, epochs=10, batch_size=100, learning_rate=1e-3)


def _toys(n, seed, **kw):
    return toy_showers(n, "calochallenge-2", seed=seed, energy_range_gev=(1, 100),
                       sampling_fraction=0.033, zero_below_mip=0.3, **kw)


@pytest.fixture(scope="module")
def toys():
    return {"ref": _toys(600, 1), "same": _toys(600, 2), "wide": _toys(600, 3, width_scale=1.3)}


def test_protocol_end_to_end(tmp_path, toys):
    res = run_calochallenge_protocol(toys["ref"], toys["wide"], "2", tmp_path / "out", seed=0,
                                     classifiers=("high_level",), fpd_kpd=False,
                                     classifier_config=SMALL, control=False)
    saved = json.loads((tmp_path / "out" / METRICS_FILE).read_text())
    assert saved["dataset"] == "2" and saved["n_reference"] == 600
    assert (tmp_path / "out" / "calochallenge_separation_power.png").exists()
    h = res["histograms"]
    assert 0 < h["Etot / Einc"]["entries_in_range"][0] <= 600
    assert h["EC Eta layer 10"]["official"] and not h["Sparsity layer 10"]["official"]
    assert h["Voxel distribution"]["separation_power"] >= 0
    assert any("seeded" in d for d in res["deviations_from_official"])
    same = run_calochallenge_protocol(toys["ref"], toys["same"], "2", seed=0, classifiers=(),
                                      fpd_kpd=False)
    # wider showers: every width histogram separates more than for an independent sample
    for k in (10, 20):
        assert h[f"Width Eta layer {k}"]["separation_power"] > \
            3 * same["histograms"][f"Width Eta layer {k}"]["separation_power"]
    cls = res["classifiers"]["high_level"]
    assert cls["power_verdict"] == VERDICT_FAIL and cls["auc"] > 0.8
    assert {"auc", "jsd", "learned", "min_detectable_auc", "power_reason"} <= set(cls)
    summary = "\n".join(format_summary(res))
    assert "separation power Width Eta" in summary and "classifier high_level" in summary
    again = run_calochallenge_protocol(toys["ref"], toys["wide"], "2", seed=0,
                                       classifiers=("high_level",), fpd_kpd=False,
                                       classifier_config=SMALL, control=False)
    assert again["classifiers"]["high_level"]["auc"] == cls["auc"]  # seeded


def test_file_inputs_and_conventions(tmp_path, toys):
    ref = tmp_path / "ref.h5"
    with write_showers(ref, "calochallenge", "calochallenge-2") as w:
        w.append(toys["ref"])
    with h5py.File(ref) as f:  # written in the challenge convention: sum ~ E_inc
        ratio = np.median(f["showers"][:].sum(1) / f["incident_energies"][:, 0])
    assert 0.3 < ratio < 3
    res = run_calochallenge_protocol(ref, toys["same"], "calochallenge-2", classifiers=(),
                                     fpd_kpd=False)
    direct = run_calochallenge_protocol(toys["ref"], toys["same"], "2", classifiers=(),
                                        fpd_kpd=False)
    for k in ("Etot / Einc", "E layer 12", "Width Phi layer 30"):
        assert res["histograms"][k]["separation_power"] == pytest.approx(
            direct["histograms"][k]["separation_power"], abs=2e-3)
    # a file of raw deposits (written by caloforge before the convention)
    raw = tmp_path / "raw.h5"
    with h5py.File(raw, "w") as f:
        f["incident_energies"] = toys["ref"].incident_energy[:, None]
        f["showers"] = toys["ref"].energies
        f.attrs["geometry"] = "calochallenge-2"
    with pytest.raises(InputError, match="raw silicon deposits.*caloforge convert"):
        run_calochallenge_protocol(raw, toys["same"], "2", classifiers=(), fpd_kpd=False)
    # the same numbers without any metadata (as an official file) but 30x too small
    with h5py.File(raw, "a") as f:
        del f.attrs["geometry"]
    with pytest.raises(InputError, match="E_tot/E_inc.*sampling fraction 0.033"):
        run_calochallenge_protocol(raw, toys["same"], "2", classifiers=(), fpd_kpd=False)


def test_bad_inputs(toys):
    with pytest.raises(GeometryError, match="CaloChallenge dataset"):
        run_calochallenge_protocol(toys["ref"], toys["same"], "ild-ecal")
    with pytest.raises(GeometryError, match="asked for CaloChallenge dataset 3"):
        run_calochallenge_protocol(toys["ref"], toys["same"], "3")
    with pytest.raises(InputError, match="at least 500"):
        run_calochallenge_protocol(toys["ref"], toys["same"][:400], "2")
