"""Two-sample metrics with published definitions, each paired with a noise floor.

- :func:`wasserstein_normalised`: 1-D earth mover's distance between the samples divided
  by the standard deviation of the reference (dimensionless).
- :func:`separation_power`: the CaloChallenge histogram distance
  ``1/2 sum_i (h1_i - h2_i)^2 / (h1_i + h2_i)`` on histograms normalised to unit sum
  (Krause et al., arXiv:2410.21611, eq. (3); also CaloFlow, arXiv:2106.05285).  It lies in
  [0, 1]: 0 for identical, 1 for disjoint histograms.
- :func:`chi2_ndf`: the chi2 homogeneity test of two unweighted histograms
  (``chi2 = 1/(N1 N2) sum (N2 n1 - N1 n2)^2/(n1 + n2)``, ndf = filled bins - 1; as ROOT's
  ``TH1::Chi2Test`` "UU"), and :func:`chi2_profile` for mean profiles with their standard
  errors.
- :func:`fpd` and :func:`kpd`: Frechet and kernel physics distances of Kansal et al.,
  "Evaluating generative models in high energy physics", Phys. Rev. D 107 (2023) 076017,
  arXiv:2211.10295.  Features are divided by the maximum absolute value of the
  reference, as in jetnet.  Unlike jetnet's defaults, this FPD uses 10 batch sizes evenly
  spaced in N (not 1/N) between ``min_samples`` and ``max_samples`` (capped at the
  sample size), draws batches without replacement and fits the 1/N line without bounds;
  this KPD uses the *cubic* kernel ``(x.y/d + 1)^3`` (jetnet: degree 4) and half the
  inter-quartile range as error (jetnet: half the 16-84 % range).  The estimator with
  jetnet's exact settings, as the CaloChallenge uses it, is
  :mod:`caloforge.evaluation.calochallenge.fpd_kpd`.
- Histogram bins (:func:`hist_edges`): the reference's 0.1-99.9 % range, log-spaced for
  non-negative quantities spanning more than two decades (energies, hit counts), with a
  first bin for exact zeros; under/overflow folded into the end bins.

The noise floor of a metric is its mean over several random splits of the reference
into halves (:func:`reference_splits`, at least ``MIN_FLOOR_SPLITS``).  With N
reference showers the halves have N/2 showers each, so the floor is slightly
*conservative* (larger) than the statistical spread of an N-vs-N comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, stats

from caloforge.errors import InputError

# Minimum sample sizes below which a metric is not computed (reported as skipped).
MIN_SHOWERS_HIST = 20  # per sample (so the reference needs 2 x 20 for its noise floor)
MIN_SHOWERS_FPD = 200
MIN_SHOWERS_KPD = 100


def wasserstein_normalised(reference: np.ndarray, other: np.ndarray,
                           scale: float | None = None) -> float:
    """W1(reference, other) / std(reference) (or / ``scale``); NaN if the scale is 0."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise InputError("Wasserstein distance needs two non-empty samples")
    s = float(np.std(a)) if scale is None else float(scale)
    w = float(stats.wasserstein_distance(a, b))
    if s <= 0:
        return 0.0 if w == 0 else math.inf
    return w / s


def _normalised(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    s = h.sum()
    return h / s if s > 0 else h


def separation_power(h1: np.ndarray, h2: np.ndarray) -> float:
    """CaloChallenge separation power 1/2 sum (h1 - h2)^2/(h1 + h2) of unit-sum histograms."""
    a, b = _normalised(h1), _normalised(h2)
    den = a + b
    num = (a - b) ** 2
    return float(0.5 * np.sum(np.divide(num, den, out=np.zeros_like(num), where=den > 0)))


def chi2_ndf(n1: np.ndarray, n2: np.ndarray) -> float:
    """chi2/ndf of two unweighted histograms of counts (homogeneity test).

    ``chi2 = 1/(N1 N2) sum_i (N2 n1_i - N1 n2_i)^2 / (n1_i + n2_i)`` over bins with
    entries, ndf = (filled bins) - 1.  Expectation ~1 for samples from one distribution.
    """
    a = np.asarray(n1, dtype=np.float64)
    b = np.asarray(n2, dtype=np.float64)
    na, nb = a.sum(), b.sum()
    filled = (a + b) > 0
    ndf = int(filled.sum()) - 1
    if na <= 0 or nb <= 0 or ndf < 1:
        return math.nan
    chi2 = np.sum((nb * a[filled] - na * b[filled]) ** 2 / (a[filled] + b[filled])) / (na * nb)
    return float(chi2 / ndf)


def chi2_profile(mean1: np.ndarray, err1: np.ndarray, mean2: np.ndarray,
                 err2: np.ndarray) -> float:
    """chi2/ndf between two mean profiles with standard errors (bins with an error)."""
    m1, m2 = np.asarray(mean1, float), np.asarray(mean2, float)
    var = np.asarray(err1, float) ** 2 + np.asarray(err2, float) ** 2
    ok = var > 0
    if ok.sum() < 1:
        return math.nan
    return float(np.sum((m1[ok] - m2[ok]) ** 2 / var[ok]) / ok.sum())


LOG_SPAN = 100.0  # positive values spanning more than 2 decades get log-spaced bins
MIN_FLOOR_SPLITS = 5  # noise floors average at least this many reference splits


def spans_decades(values: np.ndarray, span: float = LOG_SPAN) -> bool:
    """True for a non-negative quantity whose positive values span more than ``span``
    (0.1 to 99.9 % quantiles): energies with log-uniform incident energies, hit counts."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    pos = a[a > 0]
    if len(pos) < 2 or (a < 0).any():
        return False
    lo, hi = np.quantile(pos, [0.001, 0.999])
    return bool(lo > 0 and hi / lo > span)


def hist_edges(reference: np.ndarray, n_bins: int = 50, integer: bool = False,
               log: bool | None = None) -> np.ndarray:
    """Fixed binning from the reference: its 0.1-99.9% quantile range plus 5% margins.

    Quantities spanning decades (:func:`spans_decades`, or ``log=True``) get ``n_bins``
    log-spaced bins over the positive values (5 % margins in log) and, if the reference
    has zeros, a first bin [0, lowest edge) for them, so that no single linear bin holds
    most of the showers.  Other integer-valued observables get unit-width bins when
    their range is small."""
    a = np.asarray(reference, dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return np.linspace(0.0, 1.0, n_bins + 1)
    if log is None:
        log = spans_decades(a)
    if log and (a > 0).sum() >= 2:
        lo, hi = np.log(np.quantile(a[a > 0], [0.001, 0.999]))
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        edges = np.exp(np.linspace(lo - pad, hi + pad, n_bins + 1))
        return np.concatenate([[0.0], edges]) if (a <= 0).any() else edges
    lo, hi = np.quantile(a, [0.001, 0.999])
    if integer:
        lo, hi = math.floor(a.min()), math.ceil(a.max())
        if hi - lo <= 2 * n_bins:
            return np.arange(lo - 0.5, hi + 1.5, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
    pad = 0.05 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def reference_splits(n: int, given: list[np.ndarray] | None = None,
                     n_splits: int = MIN_FLOOR_SPLITS, seed: int = 0) -> list[np.ndarray]:
    """``given`` 0/1 split labels completed to ``n_splits`` with seeded random halves."""
    out = list(given or [])
    rng = np.random.default_rng([seed, 53, n])
    while len(out) < n_splits:
        out.append(rng.permutation(np.arange(n) % 2).astype(np.int8))
    return out


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in ``edges`` with under/overflow folded into the first/last bin, so that
    every shower counts in the metrics (a generator that overshoots is not hidden)."""
    v = np.clip(np.asarray(values, dtype=np.float64), edges[0], np.nextafter(edges[-1], -np.inf))
    return np.histogram(v, bins=edges)[0]


# ---------------------------------------------------------------------------------------
def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """Frechet distance |mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) of two Gaussians.

    Tr (C1 C2)^(1/2) is computed as the sum of the square roots of the eigenvalues of the
    symmetric matrix C1^(1/2) C2 C1^(1/2) (similar to C1 C2): two symmetric
    eigendecompositions, far faster and steadier than a general matrix square root.
    """
    from threadpoolctl import threadpool_limits

    diff = np.asarray(mu1, float) - np.asarray(mu2, float)
    c1 = np.atleast_2d(np.asarray(cov1, float))
    c2 = np.atleast_2d(np.asarray(cov2, float))
    # One BLAS thread: eigendecompositions of a few hundred dimensions do not gain from
    # threads, and on a loaded machine threaded LAPACK is 10-100x slower (measured).
    with threadpool_limits(1):
        w, v = linalg.eigh(c1)
        s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = s1 @ c2 @ s1
        ev = linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(ev, 0, None))))
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1); the cross product in float32 (features are
    normalised to |x| <= 1, so float32 is ample and twice as fast)."""
    mu = x.mean(axis=0)
    xc = (x - mu).astype(np.float32)
    cov = (xc.T @ xc).astype(np.float64) / max(len(x) - 1, 1)
    return mu, cov


def _normalise_features(real: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide both by the per-feature max |real| (jetnet's ``normalise=True``)."""
    scale = np.max(np.abs(real), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return real / scale, gen / scale


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputError(f"{name}: features must be (N, d), got shape {x.shape}")
    return x


@dataclass
class DistanceResult:
    value: float
    error: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "error": self.error}


def fpd(real: np.ndarray, gen: np.ndarray, min_samples: int = 20_000,
        max_samples: int = 50_000, num_batches: int = 20, num_points: int = 10,
        normalise: bool = True, seed: int = 42) -> DistanceResult:
    """Frechet physics distance extrapolated to infinite sample size (Kansal et al.).

    For ``num_points`` sample sizes N between ``min_samples`` and ``max_samples`` (both
    capped at the size of the smaller sample), the Frechet distance is averaged over
    ``num_batches`` random subsamples (without replacement) of each sample; a straight
    line in 1/N is fitted and its intercept (N -> infinity) is the FPD.  The error is the
    standard error of the intercept.
    """
    x, y = _as_features(real, "real"), _as_features(gen, "gen")
    n_avail = min(len(x), len(y))
    if n_avail < MIN_SHOWERS_FPD:
        raise InputError(f"FPD needs at least {MIN_SHOWERS_FPD} showers per sample, "
                         f"got {n_avail}")
    if normalise:
        x, y = _normalise_features(x, y)
    hi = min(max_samples, n_avail)
    lo = min(min_samples, hi // 2)
    sizes = np.unique(np.linspace(lo, hi, num_points).astype(np.int64))
    rng = np.random.default_rng(seed)
    vals = []
    for n in sizes:
        fd = []
        for _ in range(num_batches):
            xs = x[rng.choice(len(x), size=n, replace=False)]
            ys = y[rng.choice(len(y), size=n, replace=False)]
            fd.append(frechet_distance(*_mean_cov(xs), *_mean_cov(ys)))
        vals.append(np.mean(fd))
    inv = 1.0 / sizes.astype(np.float64)
    if len(sizes) < 3:
        return DistanceResult(float(vals[-1]), math.nan)
    fit = stats.linregress(inv, np.asarray(vals))
    return DistanceResult(float(fit.intercept), float(fit.intercept_stderr))


def _power_sum(k: np.ndarray, degree: int) -> float:
    """sum(k ** degree) with BLAS dot products for degrees 3 and 4."""
    if degree == 3:
        return float(np.dot(np.square(k).ravel(), k.ravel()))  # <k^2, k>
    if degree == 4:
        k2 = np.square(k).ravel()
        return float(np.dot(k2, k2))  # <k^2, k^2>
    return float(np.sum(k ** degree))


def _poly_kernel_sums(x: np.ndarray, y: np.ndarray, degree: int, coef0: float,
                      same: bool) -> float:
    """Sum of ``(x.y/d + coef0)^degree`` over all pairs (diagonal excluded if ``same``,
    where ``y`` is ``x``), in row blocks so that memory stays at a few 100 MB.  Within one
    sample the kernel is symmetric: only blocks on and above the diagonal are computed."""
    d = x.shape[1]
    xs, ys = x / math.sqrt(d), y / math.sqrt(d)
    # The dot products in float32 (sgemm, twice as fast; per-pair rounding ~1e-7 averages
    # out over the 10^7 pairs), the powers and sums in float64.
    x32, y32 = xs.astype(np.float32), ys.astype(np.float32)
    total, block = 0.0, 2048
    for lo in range(0, len(xs), block):
        k = (x32[lo:lo + block] @ (y32[lo:] if same else y32).T).astype(np.float64)
        k += coef0
        if same:
            total += _power_sum(k[:, :block], degree) + 2.0 * _power_sum(k[:, block:], degree)
        else:
            total += _power_sum(k, degree)
    if same:
        total -= float(np.sum((np.einsum("ij,ij->i", xs, xs) + coef0) ** degree))
    return total


def mmd_poly_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3,
                      coef0: float = 1.0) -> float:
    """Unbiased MMD^2 estimate with the kernel ``(x.y/d + coef0)^degree``:
    ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 mean k(x_i,y_j)``.
    """
    m, n = len(x), len(y)
    sxx = _poly_kernel_sums(x, x, degree, coef0, True) / (m * (m - 1))
    syy = _poly_kernel_sums(y, y, degree, coef0, True) / (n * (n - 1))
    sxy = _poly_kernel_sums(x, y, degree, coef0, False) / (m * n)
    return float(sxx + syy - 2.0 * sxy)


def kpd(real: np.ndarray, gen: np.ndarray, num_batches: int = 10, batch_size: int = 5000,
        normalise: bool = True, seed: int = 42) -> DistanceResult:
    """Kernel physics distance: median over batches of the unbiased polynomial-kernel
    MMD^2 (Kansal et al.); error = half the inter-quartile range."""
    x, y = _as_features(real, "real"), _as_features(gen, "gen")
    n_avail = min(len(x), len(y))
    if n_avail < MIN_SHOWERS_KPD:
        raise InputError(f"KPD needs at least {MIN_SHOWERS_KPD} showers per sample, "
                         f"got {n_avail}")
    if normalise:
        x, y = _normalise_features(x, y)
    bs = min(batch_size, n_avail)
    rng = np.random.default_rng(seed)
    vals = np.array([
        mmd_poly_unbiased(x[rng.choice(len(x), size=bs, replace=False)],
                          y[rng.choice(len(y), size=bs, replace=False)])
        for _ in range(num_batches)])
    q1, q3 = np.percentile(vals, [25, 75])
    return DistanceResult(float(np.median(vals)), float(0.5 * (q3 - q1)))


# ---------------------------------------------------------------------------------------
def verdict(value: float, floor: float, lower_is_better: bool = True) -> str:
    """Traffic light from a metric and its noise floor.

    green: within 2x the noise floor (indistinguishable at this statistics);
    yellow: within 5x; red: beyond.  A tiny absolute tolerance avoids flagging when the
    floor itself is ~0 (e.g. identical discrete distributions).
    """
    if not (math.isfinite(value) and math.isfinite(floor)):
        return "grey"
    if not lower_is_better:  # pragma: no cover - all metrics here are distances
        value, floor = -value, -floor
    tol = 1e-9
    if value <= 2.0 * floor + tol:
        return "green"
    if value <= 5.0 * floor + tol:
        return "yellow"
    return "red"


def worst(verdicts: list[str]) -> str:
    """The worst of several traffic lights (grey only if nothing else is known)."""
    for v in ("red", "yellow", "green"):
        if v in verdicts:
            return v
    return "grey"


def histogram_metrics(ref: np.ndarray, splits: list[np.ndarray], gen: np.ndarray,
                      edges: np.ndarray, min_splits: int = MIN_FLOOR_SPLITS,
                      seed: int = 0) -> dict[str, float]:
    """W1/std, separation power and chi2/ndf of ``gen`` vs ``ref`` plus their noise floors.

    Each entry of ``splits`` is a 0/1 label per reference shower; the floor of a metric is
    its mean over the splits of the metric between the two halves (averaging several
    splits steadies the floor, which is itself a noisy number).  Fewer than
    ``min_splits`` given splits are completed with seeded random halves
    (:func:`reference_splits`), so that per-layer floors never rest on one split.
    """
    if not splits:
        raise InputError("histogram metrics need at least one reference split")
    splits = reference_splits(len(ref), splits, min_splits, seed)
    n_half = min(min(int((s == 0).sum()), int((s == 1).sum())) for s in splits)
    if n_half < MIN_SHOWERS_HIST or len(gen) < MIN_SHOWERS_HIST:
        raise InputError(
            f"histogram metrics need at least {MIN_SHOWERS_HIST} showers per sample and "
            f"{2 * MIN_SHOWERS_HIST} in the reference (got reference {len(ref)}, "
            f"generated {len(gen)})")
    scale = float(np.std(ref))
    h_ref, h_gen = histogram(ref, edges), histogram(gen, edges)
    floors: dict[str, list[float]] = {"wasserstein": [], "separation_power": [],
                                      "chi2_ndf": []}
    for s in splits:
        a, b = ref[s == 0], ref[s == 1]
        h_a, h_b = histogram(a, edges), histogram(b, edges)
        floors["wasserstein"].append(wasserstein_normalised(a, b, scale))
        floors["separation_power"].append(separation_power(h_a, h_b))
        floors["chi2_ndf"].append(chi2_ndf(h_a, h_b))
    return {
        "wasserstein": wasserstein_normalised(ref, gen, scale),
        "wasserstein_floor": float(np.mean(floors["wasserstein"])),
        "separation_power": separation_power(h_ref, h_gen),
        "separation_power_floor": float(np.mean(floors["separation_power"])),
        "chi2_ndf": chi2_ndf(h_ref, h_gen),
        "chi2_ndf_floor": float(np.nanmean(floors["chi2_ndf"])) if any(
            math.isfinite(v) for v in floors["chi2_ndf"]) else math.nan,
    }


def observable_verdict(m: dict[str, float]) -> str:
    """Verdict of one observable: the worst of its Wasserstein and separation-power lights
    (chi2/ndf is shown but not used: with 100k showers it flags differences far below
    any physics relevance)."""
    return worst([verdict(m["wasserstein"], m["wasserstein_floor"]),
                  verdict(m["separation_power"], m["separation_power_floor"])])
