"""FPD / KPD with jetnet's estimator settings, pinned by hand and closed forms."""

import numpy as np
import pytest

from caloforge.errors import InputError
from caloforge.evaluation.calochallenge.fpd_kpd import (
    KPD_DEGREE,
    fit_intercept,
    fpd_batch_sizes,
    fpd_official,
    kpd_official,
    mmd_poly_unbiased,
)
from caloforge.evaluation.metrics import frechet_distance


def test_batch_sizes_even_in_inverse_n():
    sizes = fpd_batch_sizes()
    # 1/N evenly spaced from 1/10000 to 1/50000, truncated (the last is 49999)
    assert sizes.tolist() == [10000, 10975, 12162, 13636, 15517, 18000, 21428, 26470,
                              34615, 49999]


def test_intercept_fit_bounded_like_curve_fit():
    x = np.array([1.0, 2.0, 3.0, 4.0]) * 1e-5
    a, err = fit_intercept(x, 0.5 + 3e4 * x)
    assert a == pytest.approx(0.5) and err == pytest.approx(0.0, abs=1e-9)
    # a falling line would need a negative slope: bounded at 0 -> intercept = mean
    y = np.array([4.0, 3.0, 2.0, 1.0])
    a, err = fit_intercept(x, y)
    assert a == pytest.approx(2.5)
    ssr = np.sum((y - 2.5) ** 2)
    design = np.stack([np.ones(4), x], 1)
    assert err == pytest.approx(np.sqrt(np.linalg.inv(design.T @ design)[0, 0] * ssr / 2))
    # a negative intercept is bounded at 0
    assert fit_intercept(x, -1.0 + 1e5 * x)[0] == 0.0


def test_frechet_closed_form_diagonal_gaussians():
    # diagonal: |mu1 - mu2|^2 + sum (s1 - s2)^2
    mu1, mu2 = np.array([0.0, 1.0]), np.array([0.5, -1.0])
    s1, s2 = np.array([1.0, 2.0]), np.array([3.0, 0.5])
    fd = frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert fd == pytest.approx(0.25 + 4.0 + 4.0 + 2.25)


def test_fpd_recovers_gaussian_distance():
    rng = np.random.default_rng(5)
    n = 60_000
    x = rng.normal(0.0, 1.0, (n, 3))
    y = rng.normal([0.3, 0.0, 0.0], [1.0, 1.5, 1.0], (n, 3))
    scale = np.abs(x).max(axis=0)  # the estimator divides both by max |reference|
    mu = np.array([0.3, 0.0, 0.0]) / scale
    s_x, s_y = 1.0 / scale, np.array([1.0, 1.5, 1.0]) / scale
    expected = mu @ mu + np.sum((s_x - s_y) ** 2)
    r = fpd_official(x, y, min_samples=2000, max_samples=10000, num_batches=4)
    assert r.value == pytest.approx(expected, rel=0.05, abs=3 * r.error)
    same = fpd_official(x[: n // 2], x[n // 2:], min_samples=2000, max_samples=10000,
                        num_batches=4)
    assert same.value >= 0 and same.value < 0.05 * expected


def test_mmd_polynomial_kernel_by_hand():
    # d = 1, k(a, b) = (a b + 1)^4: XX 81, YY 1, XY mean (1 + 16 + 1 + 81)/4
    x, y = np.array([[1.0], [2.0]]), np.array([[0.0], [1.0]])
    assert mmd_poly_unbiased(x, y) == pytest.approx(81 + 1 - 2 * 24.75)
    # d = 2: k = (x.y / 2 + 1)^4
    x, y = np.array([[1.0, 1.0], [1.0, -1.0]]), np.array([[0.0, 0.0], [2.0, 0.0]])
    assert mmd_poly_unbiased(x, y) == pytest.approx(1 + 1 - 2 * 8.5)
    assert KPD_DEGREE == 4


def test_kpd_separates_and_is_seeded():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4000, 4))
    y = rng.normal(size=(4000, 4))
    z = y + np.array([0.4, 0, 0, 0])
    same = kpd_official(x, y, batch_size=1000)
    diff = kpd_official(x, z, batch_size=1000)
    assert abs(same.value) < 3 * same.error + 1e-4
    assert diff.value > 10 * max(same.error, 1e-5)
    assert kpd_official(x, z, batch_size=1000).value == diff.value


def test_bad_shapes():
    with pytest.raises(InputError, match="equal d"):
        kpd_official(np.zeros((10, 2)), np.zeros((10, 3)))


def test_repeated_rows_by_multiplicity_equal_direct_sums():
    from caloforge.evaluation.calochallenge.fpd_kpd import _kernel_sum, _moments
    from caloforge.evaluation.metrics import _mean_cov, _poly_kernel_sums

    rng = np.random.default_rng(7)
    x, y = rng.uniform(-1, 1, (50, 6)), rng.uniform(-1, 1, (40, 6))
    ix, iy = rng.choice(50, size=300), rng.choice(40, size=300)
    for a, b in zip(_moments(x, ix), _mean_cov(x[ix])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for args, direct in (((x, ix, x, ix, 4, True), (x[ix], x[ix], 4, 1.0, True)),
                         ((x, ix, y, iy, 4, False), (x[ix], y[iy], 4, 1.0, False))):
        assert _kernel_sum(*args) == pytest.approx(_poly_kernel_sums(*direct), rel=1e-6)
