"""Metrics: hand-computed values, zero for identical samples, noise floors, verdicts."""

import math

import numpy as np
import pytest

from caloforge.errors import InputError
from caloforge.evaluation import metrics as M


def test_separation_power_hand_values():
    assert M.separation_power([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.separation_power([3, 4, 5], [6, 8, 10]) == pytest.approx(0.0)
    # normalised: (0.5, 0.5) vs (0.25, 0.75) -> 1/2 (0.0625/0.75 + 0.0625/1.25)
    assert M.separation_power([1, 1], [1, 3]) == pytest.approx(0.5 * (0.0625 / 0.75
                                                                      + 0.0625 / 1.25))


def test_chi2_ndf_hand_value():
    # N1 = N2 = 30: chi2 = (300^2/30 + 300^2/30)/900 = 6.667, ndf = 1
    assert M.chi2_ndf([10, 20], [20, 10]) == pytest.approx(6000 / 900)
    assert M.chi2_ndf([10, 20, 0], [10, 20, 0]) == 0.0
    assert math.isnan(M.chi2_ndf([5, 0], [5, 0]))  # one filled bin: ndf = 0


def test_chi2_ndf_is_about_one_for_same_distribution():
    rng = np.random.default_rng(1)
    edges = np.linspace(-4, 4, 41)
    vals = [M.chi2_ndf(np.histogram(rng.normal(size=20000), edges)[0],
                       np.histogram(rng.normal(size=20000), edges)[0]) for _ in range(20)]
    assert 0.8 < np.mean(vals) < 1.2


def test_wasserstein_normalised():
    assert M.wasserstein_normalised(np.array([0.0, 1.0]), np.array([1.0, 2.0])) \
        == pytest.approx(2.0)  # W1 = 1, std(ref) = 0.5
    with pytest.raises(InputError):
        M.wasserstein_normalised(np.array([]), np.array([1.0]))


def test_chi2_profile():
    assert M.chi2_profile([1, 2], [1, 1], [2, 2], [0, 0]) == pytest.approx(0.5)


def test_frechet_distance_1d():
    # |dmu|^2 + var1 + var2 - 2 sqrt(var1 var2) = 1 + 1 + 4 - 4
    fd = M.frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([1.0]),
                            np.array([[4.0]]))
    assert fd == pytest.approx(2.0)
    c = np.array([[2.0, 0.3], [0.3, 1.0]])
    assert M.frechet_distance(np.zeros(2), c, np.zeros(2), c) == pytest.approx(0, abs=1e-9)


def test_mmd_matches_direct_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(0.3, 1, size=(50, 4))
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    direct = ((kxx.sum() - np.trace(kxx)) / (60 * 59) + (kyy.sum() - np.trace(kyy)) / (50 * 49)
              - 2 * k(x, y).mean())
    # float32 dot products: agreement to ~1e-9 on kernel values of order 1
    assert M.mmd_poly_unbiased(x, y) == pytest.approx(direct, abs=1e-8)


def test_fpd_kpd_zero_for_same_and_large_for_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3000, 5)), rng.normal(size=(3000, 5))
    c = rng.normal(0.5, 1.0, size=(3000, 5))
    f_same = M.fpd(a, b, min_samples=500, max_samples=3000, num_batches=3, seed=1)
    f_diff = M.fpd(a, c, min_samples=500, max_samples=3000, num_batches=3, seed=1)
    assert abs(f_same.value) < 5 * f_same.error + 2e-3
    assert f_diff.value > 50 * max(abs(f_same.value), f_same.error)
    k_same = M.kpd(a, b, num_batches=5, batch_size=1000, seed=1)
    k_diff = M.kpd(a, c, num_batches=5, batch_size=1000, seed=1)
    assert abs(k_same.value) < 5 * k_same.error + 1e-4
    assert k_diff.value > 20 * (abs(k_same.value) + k_same.error)
    # seeded: same seed, same number
    assert M.kpd(a, c, num_batches=2, batch_size=500, seed=7).value == \
        M.kpd(a, c, num_batches=2, batch_size=500, seed=7).value


def test_fpd_needs_enough_showers():
    x = np.zeros((50, 3))
    with pytest.raises(InputError, match=f"at least {M.MIN_SHOWERS_FPD}"):
        M.fpd(x, x)
    with pytest.raises(InputError, match=f"at least {M.MIN_SHOWERS_KPD}"):
        M.kpd(x, x)


def test_histogram_metrics_floor_and_shift():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=20000)
    splits = [rng.integers(0, 2, 20000) for _ in range(3)]
    edges = M.hist_edges(ref)
    same = M.histogram_metrics(ref, splits, rng.normal(size=20000), edges)
    shifted = M.histogram_metrics(ref, splits, rng.normal(0.2, 1, size=20000), edges)
    assert M.observable_verdict(same) != "red"
    assert M.observable_verdict(shifted) == "red"
    assert shifted["wasserstein"] == pytest.approx(0.2, rel=0.2)
    with pytest.raises(InputError, match="at least"):
        M.histogram_metrics(ref[:10], [splits[0][:10]], ref[:10], edges)


def test_histogram_folds_overflow():
    edges = np.array([0.0, 1.0, 2.0])
    assert M.histogram(np.array([-5.0, 0.5, 1.5, 9.0]), edges).tolist() == [2, 2]


def test_verdict():
    assert M.verdict(1.0, 1.0) == "green"
    assert M.verdict(3.0, 1.0) == "yellow"
    assert M.verdict(6.0, 1.0) == "red"
    assert M.verdict(float("nan"), 1.0) == "grey"
    assert M.worst(["green", "red", "grey"]) == "red"


def test_log_bins_for_quantities_spanning_decades():
    rng = np.random.default_rng(8)
    # layer energies with log-uniform incident energies (1 GeV - 1 TeV), some layers empty
    e = 10 ** rng.uniform(0, 3, 20000) * rng.uniform(0.5, 1.5, 20000)
    e[:2000] = 0.0
    assert M.spans_decades(e) and not M.spans_decades(rng.normal(size=100))
    edges = M.hist_edges(e)
    assert edges[0] == 0.0 and len(edges) == 52  # zero bin + 50 log bins
    ratios = edges[2:] / edges[1:-1]
    np.testing.assert_allclose(ratios, ratios[0])
    h = M.histogram(e, edges)
    assert h[0] == 2000 and h[1:].max() < 0.05 * len(e)
    # linear binning would put most showers into one bin
    lin = M.histogram(e, M.hist_edges(e, log=False))
    assert lin.max() > 0.3 * len(e)
    assert np.all(np.diff(M.hist_edges(rng.normal(size=500))) > 0)


def test_noise_floor_uses_several_splits():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=4000)
    given = [rng.integers(0, 2, 4000).astype(np.int8)]
    splits = M.reference_splits(4000, given)
    assert len(splits) == M.MIN_FLOOR_SPLITS and splits[0] is given[0]
    assert all(abs(int(s.sum()) - 2000) <= 1 for s in splits[1:])
    assert np.array_equal(M.reference_splits(4000, given)[3], splits[3])  # seeded
    edges = M.hist_edges(ref)
    one = M.histogram_metrics(ref, given, ref[::-1].copy(), edges, min_splits=1)
    five = M.histogram_metrics(ref, given, ref[::-1].copy(), edges)
    # the floor is the mean over the splits
    floors = [M.separation_power(M.histogram(ref[s == 0], edges), M.histogram(ref[s == 1], edges))
              for s in splits]
    assert five["separation_power_floor"] == pytest.approx(np.mean(floors))
    assert one["separation_power_floor"] == pytest.approx(floors[0])
