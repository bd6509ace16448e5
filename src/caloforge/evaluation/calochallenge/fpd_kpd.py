"""FPD and KPD with the estimator settings of the CaloChallenge evaluation.

The challenge's ``evaluate.py --mode fpd/kpd`` calls jetnet (``jetnet.evaluation``,
Kansal et al., arXiv:2211.10295) on its high-level feature vector (see
:mod:`.features`) as ``fpd(reference, generated, min_samples=10000)`` and
``kpd(reference, generated, batch_size=10000)``.  With jetnet's other defaults that is:

- both samples divided by the per-feature maximum of ``|reference|`` (features that are 0
  everywhere are left as they are);
- FPD: 10 batch sizes ``N = int(1 / linspace(1/10000, 1/50000, 10))`` (evenly spaced in
  1/N), for each the Frechet distance averaged over 20 pairs of batches drawn *with
  replacement*; a straight line ``FPD(N) = a + b/N`` fitted by least squares with
  ``a, b >= 0``; the value is ``a`` and the error ``sqrt(cov[a, a])`` with the residual
  variance ``SSR / (10 - 2)`` (``scipy.optimize.curve_fit``'s convention);
- KPD: 10 pairs of batches of 10000 drawn with replacement (generator seeded
  ``seed + 1000 i`` for batch i), the unbiased MMD^2 with the polynomial kernel of
  degree **4**, ``k(x, y) = (x.y / d + 1)^4``; the value is the median over batches and
  the error half the 16.275-83.725 percentile range.

Seeds follow jetnet's default (42) unless given.  Own implementation, no jetnet import;
the covariance and kernel cross products are computed in float32 on features scaled to
``|x| <= 1`` (a relative rounding of ~1e-7, far below the quoted errors).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from caloforge.errors import InputError
from caloforge.evaluation.metrics import (
    DistanceResult,
    _mean_cov,
    _normalise_features,
    _poly_kernel_sums,
    frechet_distance,
)

FPD_MIN_SAMPLES = 10_000
FPD_MAX_SAMPLES = 50_000
FPD_NUM_BATCHES = 20
FPD_NUM_POINTS = 10
KPD_BATCH_SIZE = 10_000
KPD_NUM_BATCHES = 10
KPD_DEGREE = 4
JETNET_SEED = 42


def fpd_batch_sizes(min_samples: int = FPD_MIN_SAMPLES, max_samples: int = FPD_MAX_SAMPLES,
                    num_points: int = FPD_NUM_POINTS) -> np.ndarray:
    """jetnet's batch sizes: evenly spaced in 1/N, truncated to integers."""
    return (1.0 / np.linspace(1.0 / min_samples, 1.0 / max_samples, num_points)
            ).astype(np.int32)


def fit_intercept(inv_n: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares line ``a + b x`` with ``a, b >= 0``; returns ``(a, sqrt(cov_aa))``
    with the covariance ``(J^T J)^-1 SSR / (n - 2)`` as ``curve_fit`` reports it."""
    x = np.asarray(inv_n, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)
    sol = optimize.lsq_linear(design, y, bounds=([0.0, 0.0], [np.inf, np.inf]),
                              method="bvls").x
    ssr = float(np.sum((y - design @ sol) ** 2))
    cov = np.linalg.inv(design.T @ design) * ssr / max(len(x) - 2, 1)
    return float(sol[0]), float(math.sqrt(max(cov[0, 0], 0.0)))


def _moments(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of the rows ``x[idx]`` (indices with repeats).

    A batch larger than the sample repeats rows; then the moments are computed once per
    distinct row, weighted by its multiplicity (same numbers, N instead of n rows)."""
    if len(idx) <= len(x):
        return _mean_cov(x[idx])
    c = np.bincount(idx, minlength=len(x)).astype(np.float64)
    n = float(len(idx))
    mu = c @ x / n
    xc = (x - mu).astype(np.float32)
    cov = ((xc * c[:, None].astype(np.float32)).T @ xc).astype(np.float64) / (n - 1)
    return mu, cov


def _kernel_sum(x: np.ndarray, ix: np.ndarray, y: np.ndarray, iy: np.ndarray, degree: int,
                same: bool) -> float:
    """Sum of ``(x_a.y_b/d + 1)^degree`` over all position pairs of the batches ``x[ix]``
    and ``y[iy]`` (the diagonal i = j excluded if ``same``); by multiplicities when the
    batches repeat rows."""
    if len(ix) <= len(x):
        return _poly_kernel_sums(x[ix], y[iy], degree, 1.0, same)
    cx = np.bincount(ix, minlength=len(x)).astype(np.float64)
    cy = np.bincount(iy, minlength=len(y)).astype(np.float64)
    d = x.shape[1]
    x32, y32 = (x / math.sqrt(d)).astype(np.float32), (y / math.sqrt(d)).astype(np.float32)
    total = 0.0
    for lo in range(0, len(x), 2048):
        k = (x32[lo:lo + 2048] @ y32.T).astype(np.float64) + 1.0
        total += float(cx[lo:lo + 2048] @ (k ** degree) @ cy)
    if same:
        diag = (np.einsum("ij,ij->i", x, x) / d + 1.0) ** degree
        total -= float(cx @ diag)
    return total


def _check(real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(real, dtype=np.float64)
    y = np.asarray(gen, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise InputError(f"FPD/KPD need two non-empty (N, d) feature arrays with equal d, "
                         f"got {x.shape} and {y.shape}")
    return _normalise_features(x, y)


def fpd_official(real: np.ndarray, gen: np.ndarray, min_samples: int = FPD_MIN_SAMPLES,
                 max_samples: int = FPD_MAX_SAMPLES, num_batches: int = FPD_NUM_BATCHES,
                 num_points: int = FPD_NUM_POINTS, seed: int = JETNET_SEED) -> DistanceResult:
    """Frechet physics distance extrapolated to N -> infinity (jetnet's estimator)."""
    x, y = _check(real, gen)
    sizes = fpd_batch_sizes(min_samples, max_samples, num_points)
    rng = np.random.default_rng(seed)
    means = []
    for n in sizes:
        vals = []
        for _ in range(num_batches):
            ix = rng.choice(len(x), size=int(n))
            iy = rng.choice(len(y), size=int(n))
            vals.append(frechet_distance(*_moments(x, ix), *_moments(y, iy)))
        means.append(float(np.mean(vals)))
    value, error = fit_intercept(1.0 / sizes, np.asarray(means))
    return DistanceResult(value, error)


def mmd_poly_unbiased(x: np.ndarray, y: np.ndarray, degree: int = KPD_DEGREE) -> float:
    """Unbiased MMD^2 with ``k(x, y) = (x.y/d + 1)^degree``: off-diagonal means of the
    within-sample kernels minus twice the mean cross kernel."""
    m, n = len(x), len(y)
    sxx = _poly_kernel_sums(x, x, degree, 1.0, True) / (m * (m - 1))
    syy = _poly_kernel_sums(y, y, degree, 1.0, True) / (n * (n - 1))
    sxy = _poly_kernel_sums(x, y, degree, 1.0, False) / (m * n)
    return float(sxx + syy - 2.0 * sxy)


def kpd_official(real: np.ndarray, gen: np.ndarray, batch_size: int = KPD_BATCH_SIZE,
                 num_batches: int = KPD_NUM_BATCHES, seed: int = JETNET_SEED,
                 degree: int = KPD_DEGREE) -> DistanceResult:
    """Kernel physics distance: median over batches of the unbiased MMD^2 (jetnet)."""
    x, y = _check(real, gen)
    vals = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        ix = rng.choice(len(x), size=batch_size)
        iy = rng.choice(len(y), size=batch_size)
        m = n = batch_size
        vals.append(_kernel_sum(x, ix, x, ix, degree, True) / (m * (m - 1))
                    + _kernel_sum(y, iy, y, iy, degree, True) / (n * (n - 1))
                    - 2.0 * _kernel_sum(x, ix, y, iy, degree, False) / (m * n))
    lo, hi = np.percentile(vals, [16.275, 83.725])
    return DistanceResult(float(np.median(vals)), float(0.5 * (hi - lo)))
