"""Evaluation per incidence angle: the PCA shower axis on exact lines, and on simulated
ILD ECAL photons at theta = 0 and 30 degrees."""

import math

import numpy as np
import pytest

from caloforge.data.batch import Conditions, ShowerBatch
from caloforge.evaluation import evaluate
from caloforge.evaluation.angles import angle_bins
from caloforge.evaluation.observables import shower_axis_angles


def test_pca_axis_of_straight_lines():
    """Hits on straight lines (random angles, weights, order) give back the angles."""
    rng = np.random.default_rng(5)
    n = 50
    theta = rng.uniform(0.05, 1.4, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    rows, pos = [], []
    for i in range(n):
        t = rng.uniform(0, 200, rng.integers(3, 40))
        d = np.array([math.sin(theta[i]) * math.cos(phi[i]),
                      math.sin(theta[i]) * math.sin(phi[i]), math.cos(theta[i])])
        pos.append(rng.uniform(-50, 50, 3) + t[:, None] * d)
        rows.append(np.full(len(t), i))
    rows, pos = np.concatenate(rows), np.concatenate(pos)
    order = rng.permutation(len(rows))
    weights = rng.exponential(1.0, len(rows))
    th, ph = shower_axis_angles(rows[order], pos[order], weights[order], n + 1)
    np.testing.assert_allclose(th[:n], theta, atol=1e-7)
    np.testing.assert_allclose(np.angle(np.exp(1j * (ph[:n] - phi))), 0, atol=1e-7)
    assert math.isnan(th[n]) and math.isnan(ph[n])  # a shower without hits


def test_single_hit_has_no_axis():
    th, ph = shower_axis_angles(np.array([0, 1, 1]), np.array([[0, 0, 1.0], [0, 0, 1.0],
                                                                [1, 0, 2.0]]),
                                np.ones(3), 2)
    assert math.isnan(th[0]) and th[1] == pytest.approx(math.pi / 4)


def test_angle_bins_discrete_and_continuous():
    e = angle_bins(np.radians([0, 0, 30, 30, 30]))
    assert len(e) == 3 and e[0] == 0 and e[1] == pytest.approx(math.radians(15))
    c = angle_bins(np.random.default_rng(1).uniform(0, 0.7, 1000))
    assert len(c) == 6


N_PER_ANGLE = 25
THETAS_DEG = (0.0, 30.0)


def _simulate(seed: int) -> ShowerBatch:
    from caloforge.simulation import simulate

    parts = [simulate("ild-ecal", "photon", 20e3, n=N_PER_ANGLE, seed=seed + k,
                      theta=math.radians(th), phi=(0.0, 2 * math.pi))
             for k, th in enumerate(THETAS_DEG)]
    cond = Conditions(np.concatenate([p.conditions.incident_energy for p in parts]),
                      theta=np.concatenate([p.conditions.theta for p in parts]),
                      phi=np.concatenate([p.conditions.phi for p in parts]))
    return ShowerBatch("ild-ecal", np.concatenate([p.energies for p in parts]), cond)


@pytest.fixture(scope="module")
def simulated():
    return _simulate(1), _simulate(11)


def _swap_angle_labels(b: ShowerBatch) -> ShowerBatch:
    theta = b.conditions.theta.copy()
    swapped = np.where(theta > 0, 0.0, math.radians(30.0))
    cond = Conditions(b.conditions.incident_energy, theta=swapped, phi=b.conditions.phi)
    return ShowerBatch(b.geometry, b.energies, cond)


def test_reconstructed_angle_of_simulated_showers(simulated, tmp_path):
    ref, gen = simulated
    res = evaluate(ref, [gen, _swap_angle_labels(gen)], ["same", "swapped"],
                   classifier=False, progress_bar=False, report_dir=tmp_path / "rep",
                   figure_formats=("png",))
    same, swapped = (g["reconstructed_angle"] for g in res.metrics["generated"])
    for key in ("reference", "generated"):
        r = same[key]
        for true, mean, rms, n in zip(THETAS_DEG, r["mean_deg"], r["rms_deg"], r["n"]):
            # PCA bias (a polar angle is never negative; coarse cells) is about 2 degrees
            # on this detector; allow 3 plus five standard errors of the mean.
            assert n == N_PER_ANGLE
            assert abs(mean - true) < 3.0 + 5 * rms / math.sqrt(n), (key, true, mean)
    r, g = same["reference"], same["generated"]
    for k in range(2):  # same physics: means agree within their statistical errors
        err = math.hypot(r["rms_deg"][k], g["rms_deg"][k]) / math.sqrt(N_PER_ANGLE)
        assert abs(r["mean_deg"][k] - g["mean_deg"][k]) < 5 * err + 1e-9
    assert same["true_theta_deg"] == pytest.approx(list(THETAS_DEG))
    assert swapped["max_abs_mean_diff_deg"] > 20 and swapped["verdict"] == "red"
    bins = res.metrics["generated"][0]["angle_bins"]
    assert [b["n_reference"] for b in bins["theta"]["bins"]] == [N_PER_ANGLE] * 2
    for b in bins["theta"]["bins"]:  # one energy (20 GeV): mu90 per theta bin
        resp = b["response"]
        assert 0 < resp["reference"]["mu90"][0] < 1 and 0 < resp["generated"]["mu90"][0] < 1
        assert resp["mu90_max_rel_dev"] is not None
    assert "phi" in bins  # phi varies at theta = 30 degrees
    assert sum(b["n_reference"] for b in bins["phi"]["bins"]) == N_PER_ANGLE
    assert "angles_reco_theta" in res.figures and "angles_response" in res.figures
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Incidence angle (seed 000)" in html and "reconstructed θ" in html


def test_no_angle_metrics_without_angles():
    from caloforge.evaluation.toy import toy_showers

    m = evaluate(toy_showers(100, "calogan", seed=1), [toy_showers(100, "calogan", seed=2)],
                 classifier=False, progress_bar=False).metrics
    g = m["generated"][0]
    assert "reconstructed_angle" not in g and "angle_bins" not in g
