"""caloforge amplify: quantile-MSE amplification study (Butter et al. 2020)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caloforge.cli import main
from caloforge.errors import InputError
from caloforge.evaluation.amplify import QuantileBins, amplification, geometric_grid

T, K, N, M_MAX = 20000, 4, 100, 8000


def _gamma(rng, n, scale=1.0):
    return rng.gamma(3.0, 1.0, (n, K)) * scale


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_truth_as_model_keeps_amplifying(seed):
    """Generated = more draws of the truth: N_eq grows like M, no early plateau."""
    rng = np.random.default_rng(seed)
    res = amplification(_gamma(rng, T), _gamma(rng, M_MAX), n_train=N, seed=seed)
    n_eq = np.array(res.n_equivalent)
    assert n_eq[-1] > 20 * n_eq[0]
    assert res.plateau_m is None or res.plateau_m >= M_MAX // 2
    assert res.factor > 10
    # the reference curve falls like 1/n: (1 - 1/q) / q per shower for q quantiles
    assert res.fit_a == pytest.approx((1 - 1 / res.quantiles) / res.quantiles, rel=0.2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_biased_model_plateaus_early_and_is_worth_little(seed):
    rng = np.random.default_rng(seed)
    res = amplification(_gamma(rng, T), _gamma(rng, M_MAX, scale=1.3), n_train=N, seed=seed)
    assert res.plateau_m is not None and res.plateau_m <= 8 * N
    assert not res.n_eq_lower_bound and res.factor < 1.5
    assert res.plateau_mse > res.train_ref_mse / 1.5
    per = res.per_observable  # every observable is scaled by 1.3: all of them off
    assert all(v["generated_mse_at_max_m"] > v["reference_mse_at_n"] for v in per.values())


def test_quantile_mse_of_the_truth_itself_is_zero_and_ties_are_handled():
    rng = np.random.default_rng(0)
    truth = np.stack([rng.normal(size=1000), rng.integers(0, 3, 1000)], 1)  # discrete col
    bins = QuantileBins(truth, 10)
    assert bins.mse(truth) == pytest.approx(0.0, abs=1e-15)
    assert len(bins.edges[1]) <= 3  # three values: nine edges collapse to the distinct ones
    assert bins.expected[1].sum() == pytest.approx(1.0)


def test_bad_grids_and_sizes_are_one_clear_error():
    rng = np.random.default_rng(0)
    truth, gen = _gamma(rng, 1000), _gamma(rng, 500)
    with pytest.raises(InputError, match="at least 4 N"):
        amplification(truth, gen, n_train=300)
    with pytest.raises(InputError, match="M grid"):
        geometric_grid(100, 10)
    with pytest.raises(InputError, match="M grid"):
        amplification(truth, gen, n_train=10, m_grid=[100, 50])
    with pytest.raises(InputError, match="M grid"):
        amplification(truth, gen, n_train=10, m_grid=[10, 1000])
    with pytest.raises(InputError, match="quantiles"):
        amplification(truth, gen, n_train=10, quantiles=1000)
    assert geometric_grid(25, 400) == [25, 50, 100, 200, 400]


# ---- end to end through the CLI on toy showers ---------------------------------------------
@pytest.fixture(scope="module")
def toy_setup(toy_data, tmp_path_factory):
    """A truth file of 1200 toy showers and a tiny fitted wgan on the same geometry."""
    from caloforge.data.io import write_showers
    from caloforge.models import build
    from caloforge.models.toy import toy_showers

    folder = tmp_path_factory.mktemp("amplify")
    rng = np.random.default_rng(4)
    truth = toy_showers(toy_data.geometry, rng.uniform(5e3, 5e4, 1200), rng)
    with write_showers(folder / "truth.h5", geometry=truth.geometry) as w:
        w.append(truth)
    model = build("wgan", toy_data.geometry, preset="tiny", seed=1)
    model.fit_preprocessing(torch.from_numpy(toy_data.energies).float(),
                            torch.from_numpy(toy_data.incident_energy).float())
    model.fit_conditions(toy_data.conditions)
    model.save(folder / "model")
    return folder


def test_cli_writes_json_and_plot(toy_setup, tmp_path, capsys):
    out, fig = tmp_path / "a.json", tmp_path / "a.png"
    argv = ["amplify", str(toy_setup / "truth.h5"), "--model", str(toy_setup / "model"),
            "-N", "50", "--max-generated", "400", "--quantiles", "5", "--json", str(out),
            "--plot", str(fig)]
    assert main(argv) == 0
    assert "amplification factor" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["m_grid"] == [12, 24, 48, 96, 192, 384, 400]
    assert len(res["observables"]) == 10 + 6 and res["n_train"] == 50
    assert res["factor"] > 0 and fig.stat().st_size > 1000
    assert set(res["per_observable"]) == set(res["observables"])


def test_cli_bad_input_one_line_nothing_written(toy_setup, tmp_path, capsys):
    from caloforge.data.io import write_showers
    from caloforge.models.toy import toy_geometry, toy_showers

    other = toy_geometry("toy-6x4x4", 6, 4)
    rng = np.random.default_rng(5)
    with write_showers(tmp_path / "other.h5", geometry=other.name) as w:
        w.append(toy_showers(other, rng.uniform(5e3, 5e4, 50), rng))
    truth, model = str(toy_setup / "truth.h5"), str(toy_setup / "model")
    out = tmp_path / "a.json"
    cases = [
        ([truth, "-N", "400"], "at least 4 N"),
        ([str(tmp_path / "other.h5"), "-N", "5"], "toy-6x4x4"),
        ([truth, "-N", "50", "--min-generated", "500", "--max-generated", "400"],
         "--min-generated"),
        ([truth, "-N", "50", "--tolerance", "2"], "--tolerance"),
        ([truth, "--train", str(tmp_path / "other.h5")], "toy-6x4x4"),
    ]
    for extra, message in cases:
        assert main(["amplify", *extra, "--model", model, "--json", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5"]


def test_interrupt_leaves_nothing(toy_setup, tmp_path, monkeypatch, capsys):
    from caloforge.evaluation import amplify as amplify_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(amplify_module, "generated_observables", interrupted)
    argv = ["amplify", str(toy_setup / "truth.h5"), "--model", str(toy_setup / "model"),
            "-N", "50", "--max-generated", "400", "--json", str(tmp_path / "a.json"),
            "--plot", str(tmp_path / "a.png")]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
