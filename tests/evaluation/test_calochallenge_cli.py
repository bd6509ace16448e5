"""``caloforge evaluate --protocol calochallenge``: the CLI path and its errors."""

import json

import pytest

from caloforge.cli import main
from caloforge.data.io import write_showers
from caloforge.evaluation.calochallenge import METRICS_FILE
from caloforge.evaluation.toy import toy_showers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ccli")
    out = {}
    for name, seed, width in (("ref", 1, 1.0), ("wide", 3, 1.3)):
        b = toy_showers(600, "calochallenge-2", seed=seed, energy_range_gev=(1, 100),
                        sampling_fraction=0.033, zero_below_mip=0.3, width_scale=width)
        out[name] = d / f"{name}.h5"
        with write_showers(out[name], "calochallenge", geometry="calochallenge-2") as w:
            w.append(b)
    ild = toy_showers(600, "ild-ecal", seed=2)
    out["ild"] = d / "ild.h5"
    with write_showers(out["ild"], "caloforge", geometry="ild-ecal") as w:
        w.append(ild)
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_protocol_writes_metrics(files, tmp_path, capsys):
    rc = main(["evaluate", str(files["ref"]), str(files["wide"]), "--protocol",
               "calochallenge", "--no-classifier", "--no-fpd-kpd", "--no-progress",
               "--report", str(tmp_path / "rep")])
    assert rc == 0
    res = json.loads((tmp_path / "rep" / METRICS_FILE).read_text())
    assert res["dataset"] == "2" and res["n_generated"] == 600
    assert "separation power" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--classifier-epochs", "0"], "--classifier-epochs"),
    (["--device", "nonsense"], "nonsense"),
])
def test_cli_protocol_bad_options(files, tmp_path, capsys, extra, needle):
    rc = main(["evaluate", str(files["ref"]), str(files["wide"]), "--protocol",
               "calochallenge", "--report", str(tmp_path / "rep"), *extra])
    assert rc != 0 and needle in _one_error_line(capsys)
    assert not (tmp_path / "rep").exists()


def test_cli_protocol_refuses_other_geometry(files, tmp_path, capsys):
    rc = main(["evaluate", str(files["ild"]), str(files["ild"]), "--protocol",
               "calochallenge", "--report", str(tmp_path / "rep")])
    assert rc == 1 and "ild-ecal" in _one_error_line(capsys)


def test_cli_protocol_options_need_the_protocol(files, tmp_path, capsys):
    rc = main(["evaluate", str(files["ref"]), str(files["wide"]), "--dataset", "2",
               "--report", str(tmp_path / "rep")])
    assert rc == 1 and "--protocol calochallenge" in _one_error_line(capsys)
