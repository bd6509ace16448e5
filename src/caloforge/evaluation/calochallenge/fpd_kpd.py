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
from numba import njit, prange
from scipy import optimize

from caloforge.errors import InputError
from caloforge.evaluation.metrics import (
    DistanceResult,
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


class _BatchMoments:
    """Means and covariances (ddof 1) of batches ``x[idx]`` drawn with replacement.

    The sample is centred once on its own mean and kept in float32; a batch is gathered
    into a reused buffer (fresh 10^7-element arrays per batch cost more in page faults
    than the product itself) and its cross product ``B^T B`` is one float32 ``syrk``:
    ``cov = (B^T B - N m m^T) / (N - 1)`` with ``m`` the batch mean offset, tiny against
    the spread, so nothing cancels.  A batch larger than the sample is summed once per
    distinct row, weighted by its multiplicity (same numbers, n instead of N rows)."""

    def __init__(self, x: np.ndarray, max_rows: int, scale: np.ndarray | float = 1.0,
                 block: int = 8192) -> None:
        # x / scale block by block: no float64 copy of the whole (normalised) sample.
        total = np.zeros(x.shape[1])
        for lo in range(0, len(x), block):
            total += (x[lo:lo + block] / scale).sum(axis=0)
        self.centre = total / len(x)
        self.xc = np.empty(x.shape, dtype=np.float32)
        for lo in range(0, len(x), block):
            self.xc[lo:lo + block] = x[lo:lo + block] / scale - self.centre
        self.buf = np.empty((min(max_rows, len(x)), x.shape[1]), dtype=np.float32)

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from threadpoolctl import threadpool_limits

        n = len(idx)
        # One BLAS thread: a 362 x 362 syrk gains little from two, and on a loaded
        # machine the second thread's spin-waits make it several times slower (measured).
        with threadpool_limits(1):
            if n <= len(self.xc):
                b = np.take(self.xc, idx, axis=0, out=self.buf[:n])
                offset = b.sum(axis=0, dtype=np.float64) / n
                gram = (b.T @ b).astype(np.float64)
            else:
                c = np.bincount(idx, minlength=len(self.xc)).astype(np.float32)
                offset = c.astype(np.float64) @ self.xc / n
                gram = ((self.xc * c[:, None]).T @ self.xc).astype(np.float64)
        cov = (gram - n * np.outer(offset, offset)) / (n - 1)
        return self.centre + offset, cov


def _moments(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of the rows ``x[idx]`` (indices with repeats)."""
    return _BatchMoments(x, len(idx))(idx)


@njit(cache=True, parallel=True)
def _sum_powers(dots: np.ndarray, coef0: float, degree: int) -> float:  # pragma: no cover
    """``sum((dots + coef0)^degree)`` of a float32 matrix, each term in float64."""
    total = 0.0
    for i in prange(dots.shape[0]):
        row = 0.0
        for j in range(dots.shape[1]):
            row += (np.float64(dots[i, j]) + coef0) ** degree
        total += row
    return total


def _kernel_sums(x: np.ndarray, y: np.ndarray, degree: int, same: bool,
                 block: int = 2048) -> float:
    """Sum of ``(x_a.y_b/d + 1)^degree`` over all pairs (diagonal excluded if ``same``,
    where ``y`` is ``x``).  The dot products are float32 ``sgemm`` into one reused buffer
    (rounding ~1e-7 per pair, averaging out over 10^8 pairs); the powers and sums are
    float64, fused in one compiled pass.  Within one sample only the blocks on and above
    the diagonal are computed, those above counted twice."""
    d = x.shape[1]
    x32 = (x / math.sqrt(d)).astype(np.float32)
    y32 = x32 if same else (y / math.sqrt(d)).astype(np.float32)
    buf = np.empty(min(block, len(x32)) * len(y32), dtype=np.float32)
    total = 0.0
    for lo in range(0, len(x32), block):
        rows = x32[lo:lo + block]
        cols = y32[lo:] if same else y32
        k = np.matmul(rows, cols.T, out=buf[:len(rows) * len(cols)].reshape(len(rows), -1))
        if same:
            total += (_sum_powers(k[:, :len(rows)], 1.0, degree)
                      + 2.0 * _sum_powers(k[:, len(rows):], 1.0, degree))
        else:
            total += _sum_powers(k, 1.0, degree)
    if same:
        xs = x / math.sqrt(d)
        total -= float(np.sum((np.einsum("ij,ij->i", xs, xs) + 1.0) ** degree))
    return total


def _kernel_sum(x: np.ndarray, ix: np.ndarray, y: np.ndarray, iy: np.ndarray, degree: int,
                same: bool, scale: np.ndarray | float = 1.0) -> float:
    """Sum of ``(x_a.y_b/d + 1)^degree`` over all position pairs of the batches ``x[ix]``
    and ``y[iy]`` (the diagonal i = j excluded if ``same``); by multiplicities when the
    batches repeat rows (then ``scale`` must be 1: the samples already divided)."""
    if len(ix) <= len(x):
        return _kernel_sums(x[ix] / scale, y[iy] / scale, degree, same)
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


def _check(real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both samples as float64 and jetnet's normalisation: the per-feature max |real|
    (1 where that is 0), by which the features are divided."""
    x = np.asarray(real, dtype=np.float64)
    y = np.asarray(gen, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise InputError(f"FPD/KPD need two non-empty (N, d) feature arrays with equal d, "
                         f"got {x.shape} and {y.shape}")
    scale = np.max(np.abs(x), axis=0)
    return x, y, np.where(scale > 0, scale, 1.0)


def fpd_official(real: np.ndarray, gen: np.ndarray, min_samples: int = FPD_MIN_SAMPLES,
                 max_samples: int = FPD_MAX_SAMPLES, num_batches: int = FPD_NUM_BATCHES,
                 num_points: int = FPD_NUM_POINTS, seed: int = JETNET_SEED) -> DistanceResult:
    """Frechet physics distance extrapolated to N -> infinity (jetnet's estimator)."""
    x, y, scale = _check(real, gen)
    sizes = fpd_batch_sizes(min_samples, max_samples, num_points)
    rng = np.random.default_rng(seed)
    moments_x = _BatchMoments(x, int(sizes.max()), scale)
    moments_y = _BatchMoments(y, int(sizes.max()), scale)
    means = []
    for n in sizes:
        vals = []
        for _ in range(num_batches):
            ix = rng.choice(len(x), size=int(n))
            iy = rng.choice(len(y), size=int(n))
            vals.append(frechet_distance(*moments_x(ix), *moments_y(iy)))
        means.append(float(np.mean(vals)))
    value, error = fit_intercept(1.0 / sizes, np.asarray(means))
    return DistanceResult(value, error)


def mmd_poly_unbiased(x: np.ndarray, y: np.ndarray, degree: int = KPD_DEGREE) -> float:
    """Unbiased MMD^2 with ``k(x, y) = (x.y/d + 1)^degree``: off-diagonal means of the
    within-sample kernels minus twice the mean cross kernel."""
    m, n = len(x), len(y)
    sxx = _kernel_sums(x, x, degree, True) / (m * (m - 1))
    syy = _kernel_sums(y, y, degree, True) / (n * (n - 1))
    sxy = _kernel_sums(x, y, degree, False) / (m * n)
    return float(sxx + syy - 2.0 * sxy)


def kpd_official(real: np.ndarray, gen: np.ndarray, batch_size: int = KPD_BATCH_SIZE,
                 num_batches: int = KPD_NUM_BATCHES, seed: int = JETNET_SEED,
                 degree: int = KPD_DEGREE) -> DistanceResult:
    """Kernel physics distance: median over batches of the unbiased MMD^2 (jetnet)."""
    x, y, scale = _check(real, gen)
    if batch_size > min(len(x), len(y)):  # by multiplicities: the whole samples, once
        x, y, scale = x / scale, y / scale, 1.0
    vals = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        ix = rng.choice(len(x), size=batch_size)
        iy = rng.choice(len(y), size=batch_size)
        m = n = batch_size
        vals.append(_kernel_sum(x, ix, x, ix, degree, True, scale) / (m * (m - 1))
                    + _kernel_sum(y, iy, y, iy, degree, True, scale) / (n * (n - 1))
                    - 2.0 * _kernel_sum(x, ix, y, iy, degree, False, scale) / (m * n))
    lo, hi = np.percentile(vals, [16.275, 83.725])
    return DistanceResult(float(np.median(vals)), float(0.5 * (hi - lo)))
