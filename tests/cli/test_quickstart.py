"""``caloforge quickstart`` end to end on a tiny sample (no classifier: fast).

The real evaluation needs about 500 showers per sample; here its minimum sample sizes
are lowered, which the quickstart reads, so that a few dozen showers exercise the whole
chain (every metric computed) in seconds.
"""

import json

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.cli.quickstart import minimum_showers
from caloforge.data.io import read_showers
from caloforge.errors import InputError
from caloforge.models import load


@pytest.fixture
def small_minimums(monkeypatch):
    from caloforge.evaluation import metrics

    monkeypatch.setattr(metrics, "MIN_SHOWERS_HIST", 5)
    monkeypatch.setattr(metrics, "MIN_SHOWERS_FPD", 10)
    monkeypatch.setattr(metrics, "MIN_SHOWERS_KPD", 10)
    return max(minimum_showers(classifier=False).values())


def test_quickstart_tiny(tmp_path, capsys, small_minimums):
    out = tmp_path / "qs"
    n = small_minimums
    rc = main(["quickstart", "--out", str(out), "--n", str(n), "--no-classifier", "--seed",
               "3", "--workers", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "report" / "index.html") in printed
    assert (out / "reference.h5").is_file() and (out / "generated.h5").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    gen = metrics["generated"][0]
    assert gen["status"] == "ok" and gen["n_showers"] == n
    assert "classifier" not in gen
    assert metrics["not_computed"] == []  # the up-front check sized the sample for all
    # the reference covers the model's trained directions; generation reuses its conditions
    ref, gen = read_showers(out / "reference.h5"), read_showers(out / "generated.h5")
    np.testing.assert_array_equal(gen.conditions.incident_energy, ref.conditions.incident_energy)
    ranges = load("ild-ecal-photons").condition_space.ranges
    for name in ("theta", "phi"):
        v = getattr(ref.conditions, name)
        if name in ranges:
            np.testing.assert_array_equal(getattr(gen.conditions, name), v)
            lo, hi = ranges[name]
            assert (v >= lo).all() and (v <= hi).all() and np.ptp(v) > 0.5 * (hi - lo)
        else:
            assert v is None or not v.any()


def test_minimum_showers_follow_the_evaluation():
    """Every test compares two halves of the reference: the reference needs at least
    twice each per-sample minimum (FPD 200, KPD 100, classifier 250, histograms 20)."""
    need = minimum_showers(classifier=True)
    assert need["classifier"] == 500
    assert 400 < need["FPD"] < 600 and 200 < need["KPD"] < 300
    assert 40 < need["histograms"] < 120
    assert "classifier" not in minimum_showers(classifier=False)


def test_quickstart_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("keep me")
    assert main(["quickstart", "--out", str(tmp_path), "--no-classifier"]) == 1
    assert (tmp_path / "x").read_text() == "keep me"


@pytest.mark.parametrize("n", ["1", "5", "508"])
def test_quickstart_rejects_small_n_before_anything(tmp_path, n, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--n", n]) == 1
    assert f"--n {n} is too small" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("failure", [InputError("simulation broke"), KeyboardInterrupt()])
def test_failed_quickstart_leaves_nothing_behind(tmp_path, monkeypatch, small_minimums,
                                                 failure, showers):
    """A step failing after files were written removes what the run created: a rerun is
    not blocked.  Entries that were there before (with --overwrite) stay."""
    import caloforge.models.generation
    import caloforge.simulation

    def fake_simulation(*args, **kwargs):  # fast stand-in: the reference file gets written
        yield showers("ild-ecal", small_minimums)

    def broken_generation(model, energies, output, *args, **kwargs):
        assert output.parent.joinpath("reference.h5").is_file()
        raise failure

    monkeypatch.setattr(caloforge.simulation, "iter_simulate", fake_simulation)
    monkeypatch.setattr(caloforge.models.generation, "generate_file", broken_generation)
    fresh = tmp_path / "a" / "qs"
    argv = ["--n", str(small_minimums), "--no-classifier", "--workers", "1", "--no-progress"]
    assert main(["quickstart", "--out", str(fresh), *argv]) in (1, 130)
    assert not (tmp_path / "a").exists()
    reused = tmp_path / "reused"
    reused.mkdir()
    (reused / "notes.txt").write_text("mine")
    assert main(["quickstart", "--out", str(reused), "--overwrite", *argv]) in (1, 130)
    assert [p.name for p in reused.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_quickstart_at_its_real_minimum_computes_everything(tmp_path):
    """With the evaluation's real minimums (about 500 showers, ~1.5 min on 2 busy cores)
    the smallest sample quickstart accepts leaves no metric uncomputed."""
    out = tmp_path / "qs"
    n = max(minimum_showers(classifier=False).values())
    assert main(["quickstart", "--out", str(out), "--n", str(n), "--no-classifier",
                 "--workers", "2", "--no-progress"]) == 0
    assert json.loads((out / "report" / "metrics.json").read_text())["not_computed"] == []
