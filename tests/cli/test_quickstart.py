"""``caloforge quickstart`` end to end on a tiny sample (no classifier: fast)."""

import json

import pytest

from caloforge.cli import main


def test_quickstart_tiny(tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(["quickstart", "--out", str(out), "--n", "40", "--no-classifier", "--seed", "3",
               "--workers", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "report" / "index.html") in printed
    assert (out / "reference.h5").is_file() and (out / "generated.h5").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    gen = metrics["generated"][0]
    assert gen["status"] == "ok" and gen["n_showers"] == 40
    assert "classifier" not in gen


def test_quickstart_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("keep me")
    assert main(["quickstart", "--out", str(tmp_path), "--n", "40", "--no-classifier"]) == 1
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.parametrize("n", ["0", "5"])
def test_quickstart_rejects_tiny_n(tmp_path, n):
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--n", n, "--no-classifier"]) == 1
