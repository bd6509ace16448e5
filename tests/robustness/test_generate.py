"""Bad input to ``caloforge generate``: non-zero exit, one stderr line naming the option
or file and the problem, no traceback, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.cli import main

MODEL = "ild-ecal-photons"  # shipped: 10-100 GeV photons, theta 0-40 deg, any phi
NORMAL_MODEL = "ild-ahcal-pions"  # shipped: 10-100 GeV pions at normal incidence only


def _table(tmp_path, text, name="cond.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CASES = {
    "n zero": (["--energy", "50", "-n", "0"], "-n must be >= 1"),
    "n negative": (["--energy", "50", "-n", "-5"], "-n must be >= 1"),
    "n missing": (["--energy", "50"], "-n"),
    "batch size zero": (["--energy", "50", "-n", "2", "--batch-size", "0"], "--batch-size"),
    "batch size negative": (["--energy", "50", "-n", "2", "--batch-size", "-3"],
                            "--batch-size"),
    "threads zero": (["--energy", "50", "-n", "2", "--threads", "0"], "--threads"),
    "seed negative": (["--energy", "50", "-n", "2", "--seed", "-1"], "--seed"),
    "energy NaN": (["--energy", "nan", "-n", "2"], "--energy 'nan'"),
    "energy negative": (["--energy", "-10", "-n", "2"], "--energy '-10'"),
    "energy reversed": (["--energy", "90:20", "-n", "2"], "--energy '90:20'"),
    "energy outside range": (["--energy", "500", "-n", "2"],
                             "incident_energy values lie outside the trained range"),
    "unknown device": (["--energy", "50", "-n", "2", "--device", "tpu9"], "device 'tpu9'"),
    "unknown format": (["--energy", "50", "-n", "2", "--format", "root"], "--format 'root'"),
    "theta NaN": (["--energy", "50", "-n", "2", "--theta", "nan"], "--theta 'nan'"),
    "theta beyond trained": (["--energy", "50", "-n", "2", "--theta", "60"],
                             "theta values lie outside the trained range"),
    "theta beyond 90": (["--energy", "50", "-n", "2", "--theta", "95"], "--theta '95'"),
    "phi not a number": (["--energy", "50", "-n", "2", "--phi", "abc"], "--phi 'abc'"),
    "impact outside": (["--energy", "50", "-n", "2", "--impact", "1e6,0"],
                       "not trained on impact"),
    "impact malformed": (["--energy", "50", "-n", "2", "--impact", "3"], "--impact '3'"),
}


def _run(args, tmp_path, capsys):
    out = tmp_path / "gen.h5"
    rc = main(["generate", "--model", MODEL, "-o", str(out), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    return rc, err, out


def _assert_refused(rc, err, out, needle, tmp_path):
    assert rc == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("caloforge generate: error: ")
    assert needle in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_option(case, tmp_path, capsys):
    args, needle = CASES[case]
    _assert_refused(*_run(args, tmp_path, capsys), needle, tmp_path)


def test_cuda_when_absent(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _assert_refused(*_run(["--energy", "50", "-n", "2", "--device", "cuda"], tmp_path, capsys),
                    "no CUDA device", tmp_path)


def test_angles_refused_by_a_model_trained_at_normal_incidence(tmp_path, capsys):
    out = tmp_path / "gen.h5"
    rc = main(["generate", "--model", NORMAL_MODEL, "-o", str(out), "--no-progress",
               "--energy", "50", "-n", "2", "--theta", "20"])
    _assert_refused(rc, capsys.readouterr().err.strip(), out, "not trained on theta", tmp_path)


@pytest.mark.parametrize("text, extra, needle", [
    ("energy_gev\n20\n30\n40\n", ["-n", "5"], "-n 5 does not match the 3 showers"),
    ("energy_gev,theta_deg\n20,0\n30,nan\n", [], "line 3, column theta_deg: value is NaN"),
    ("energy_gev,theta_deg\n20,0\n30,55\n", [], "theta values lie outside the trained range"),
    ("energy_gev,height\n20,1\n", [], "unknown column 'height'"),
    ("energy_gev\n20\n-3\n", [], "incident energies are <= 0"),
    ("energy_gev\n20\n", ["--theta", "10"], "--theta cannot be combined with --conditions"),
])
def test_bad_conditions_table(text, extra, needle, tmp_path, capsys):
    table = _table(tmp_path, text)
    _assert_refused(*_run(["--conditions", table, *extra], tmp_path, capsys), needle, tmp_path)


def test_bad_conditions_and_energy_files(tmp_path, capsys):
    _assert_refused(*_run(["--conditions", str(tmp_path / "none.h5")], tmp_path, capsys),
                    "conditions file does not exist", tmp_path)
    bad = tmp_path / "e.txt"
    bad.write_text("20\n-5\n")
    _assert_refused(*_run(["--energies", str(bad)], tmp_path, capsys),
                    "energies must be positive", tmp_path)


def test_good_conditions_table_and_phi_at_normal_incidence(tmp_path, capsys):
    """The counterpart: a table at normal incidence with any azimuth is generated, with
    exactly the table's conditions."""
    from caloforge.data.io import open_showers

    table = _table(tmp_path, "energy_gev,theta_deg,phi_deg\n20,0,0\n55.5,0,123\n")
    rc, err, out = _run(["--conditions", table, "--batch-size", "1"], tmp_path, capsys)
    assert rc == 0, err
    with open_showers(out) as f:
        cond = f.read_conditions()
    np.testing.assert_allclose(cond.incident_energy, [20e3, 55.5e3])
    np.testing.assert_allclose(cond.phi, np.radians([0, 123]))
