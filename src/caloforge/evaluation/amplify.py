"""The amplification study (seeds 000 and 003; Butter et al., "GANplifying event samples",
arXiv:2008.06545): how many reference showers are M generated showers worth?

The measure is the paper's *quantile MSE*: split the truth distribution of an observable
into ``q`` quantiles (equal-probability bins), count which fraction ``f_j`` of a sample
falls into each, and take ``mean_j (f_j - p_j)^2`` with ``p_j`` the truth's own fraction
(``1/q`` for a continuous observable; ties in discrete ones make it the truth's count);
the study averages it over a set of observables.  For ``n`` showers drawn from the truth
it falls like ``a / n``; a generative model's falls with M until its own mismodelling
dominates (the plateau).  The *equivalent number* ``N_eq`` of a generated sample is the
``n`` at which the reference curve reaches the generated MSE; the *amplification factor*
is ``N_eq / N`` for a model trained on ``N`` showers.

Procedure (:func:`amplification`): the truth is shuffled (seed) and halved.  Half
``Q`` defines the quantiles and ``p_j``; the other half is a pool of reference
showers, drawn as disjoint subsamples of sizes ``N/4 .. pool/2`` (a geometric grid) to
measure the reference curve with error bars, fitted as ``a / n + b`` (``b``: the common
floor from the finite ``Q``, which the generated curve shares).  The generated curve is
measured on disjoint subsets of one sample of ``max_generated`` showers for a geometric
grid of M.  Plateau criterion: the smallest grid M from which no larger M lowers the
MSE by more than ``tolerance`` (default 10 %) of its value; the plateau value is the
mean MSE from there on.  ``N_eq = a / (MSE - b)``; it cannot be resolved beyond the size
of ``Q`` (flagged as a lower bound).  Without a plateau up to ``max_generated`` the
factor is the lower bound ``N_eq(max_generated) / N``.

>>> rng = np.random.default_rng(0)
>>> truth = rng.normal(size=(40000, 2))
>>> res = amplification(truth, rng.normal(size=(8000, 2)), n_train=200, seed=1)
>>> res.n_equivalent[-1] > 1000  # a perfect "model" keeps improving with M
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from caloforge.errors import InputError

DEFAULT_QUANTILES = 10
MAX_REPEATS = 20
# Scalar observables of evaluation.observables used by default (cog_x/cog_y sit on the
# beam axis and the shower start is a small integer: few distinct values, left out).
SCALARS = ("e_vis", "e_ratio", "n_hits", "cog_z", "width_x", "width_y", "width_z",
           "frac_first", "frac_second", "frac_last")


@dataclass
class AmplifyResult:
    """Curves and the derived numbers (see the module docstring)."""

    observables: list[str]
    n_train: int
    quantiles: int
    n_quantile_truth: int  # size of the half of the truth that defines the quantiles
    ref_sizes: list[int]
    ref_mse: list[float]
    ref_err: list[float]
    fit_a: float
    fit_b: float
    m_grid: list[int]
    gen_mse: list[float]
    gen_err: list[float]
    n_equivalent: list[float]  # per M (inf: below the resolution of the truth)
    train_mse: float | None = None  # of the given training sample (if any)
    train_ref_mse: float = math.nan  # reference curve at n_train (mean of subsamples)
    train_ref_err: float = math.nan
    plateau_m: int | None = None  # None: still improving at max_generated
    plateau_mse: float = math.nan
    n_eq: float = math.nan
    n_eq_lower_bound: bool = False
    factor: float = math.nan
    tolerance: float = 0.1
    # name -> generated MSE at the largest M and mean reference MSE at N
    per_observable: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()} | {
            "n_equivalent": [None if not math.isfinite(v) else v for v in self.n_equivalent]}

    def summary(self) -> str:
        bound = "at least " if self.n_eq_lower_bound else ""
        if self.plateau_m is None:
            where = f"no plateau up to M = {self.m_grid[-1]:,d} (still improving)"
        else:
            where = f"plateau from M = {self.plateau_m:,d} (gain < {self.tolerance:.0%} beyond)"
        worst = sorted(self.per_observable.items(),
                       key=lambda kv: -kv[1]["generated_mse_at_max_m"])[:3]
        limits = ", ".join(f"{k} ({v['generated_mse_at_max_m']:.2g})" for k, v in worst)
        return (f"{where}; generated MSE {self.plateau_mse:.3g} is worth {bound}"
                f"{self.n_eq:,.0f} reference showers: amplification factor {bound}"
                f"{self.factor:.3g} over N = {self.n_train:,d} (reference MSE at N: "
                f"{self.train_ref_mse:.3g} +- {self.train_ref_err:.2g})"
                + (f"; largest generated MSE: {limits}" if limits else ""))


# ---- the measure -------------------------------------------------------------------------
class QuantileBins:
    """Quantile edges of each observable (columns of ``truth``) and the truth fractions."""

    def __init__(self, truth: np.ndarray, quantiles: int) -> None:
        probs = np.linspace(0, 1, quantiles + 1)[1:-1]
        self.edges = [np.unique(np.quantile(col, probs)) for col in truth.T]
        self.expected = [self._fractions(col, e) for col, e in zip(truth.T, self.edges)]

    @staticmethod
    def _fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(edges, values, side="right")
        return np.bincount(idx, minlength=len(edges) + 1) / max(len(values), 1)

    def mse_per_observable(self, sample: np.ndarray) -> np.ndarray:
        """(K,) quantile MSE of each observable of ``sample`` (n, K)."""
        return np.array([np.mean((self._fractions(col, e) - p) ** 2)
                         for col, e, p in zip(sample.T, self.edges, self.expected)])

    def mse(self, sample: np.ndarray) -> float:
        """Quantile MSE of ``sample`` (n, K), averaged over the K observables."""
        return float(self.mse_per_observable(sample).mean())


def _subsample_mse(bins: QuantileBins, sample: np.ndarray, n: int,
                   repeats: int) -> tuple[float, float]:
    """Mean and standard error of the MSE over disjoint size-``n`` subsamples."""
    k = min(len(sample) // n, repeats)
    vals = np.array([bins.mse(sample[i * n:(i + 1) * n]) for i in range(k)])
    err = float(vals.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return float(vals.mean()), err


def geometric_grid(lo: int, hi: int, factor: float = 2.0) -> list[int]:
    """Integers from ``lo`` to ``hi`` (both included), each about ``factor`` apart."""
    if lo < 1 or hi < lo or factor <= 1:
        raise InputError(f"M grid: need 1 <= min ({lo}) <= max ({hi}) and a factor > 1 "
                         f"(got {factor})")
    n = int(math.floor(math.log(hi / lo) / math.log(factor) + 1e-9)) + 1
    grid = sorted({int(round(lo * factor ** i)) for i in range(n)} | {hi})
    return grid


def _fit_inverse(sizes: np.ndarray, mse: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """Weighted least squares of ``mse = a / n + b``."""
    w = 1.0 / np.where(np.isfinite(err) & (err > 0), err, np.nanmax(err[err > 0], initial=1.0))
    design = np.stack([1.0 / sizes, np.ones_like(sizes)], 1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(design, mse * w, rcond=None)
    return float(a), float(b)


def _plateau(grid: list[int], mse: np.ndarray, tolerance: float) -> int | None:
    """Index of the first grid point from which no later MSE is lower by more than
    ``tolerance`` of it; None if that is only the last point (still improving)."""
    for i in range(len(grid) - 1):
        if mse[i + 1:].min() >= (1 - tolerance) * mse[i]:
            return i
    return None


# ---- the study ---------------------------------------------------------------------------
def check_options(quantiles: int, tolerance: float, n_truth: int) -> None:
    """Quantiles that the truth can define (at least 20 showers each) and a tolerance
    that is a fraction."""
    if not 2 <= quantiles <= n_truth // 20:
        raise InputError(f"--quantiles {quantiles}: need 2..{n_truth // 20} for a truth of "
                         f"{n_truth:,d} showers")
    if not 0 < tolerance < 1:
        raise InputError(f"--tolerance {tolerance}: need a fraction in (0, 1)")


def amplification(truth: np.ndarray, generated: np.ndarray, n_train: int | None = None,
                  train: np.ndarray | None = None, m_grid: list[int] | None = None,
                  quantiles: int = DEFAULT_QUANTILES, tolerance: float = 0.1,
                  seed: int = 0, repeats: int = MAX_REPEATS,
                  names: list[str] | None = None) -> AmplifyResult:
    """The study on observable matrices: ``truth`` (T, K), ``generated`` (M_max, K) in
    generation order, and the training size ``n_train`` or the training sample ``train``
    (n, K).  ``m_grid``: generated sizes (default: ``N/4`` to ``M_max``, factor 2)."""
    truth = np.asarray(truth, dtype=np.float64)
    generated = np.asarray(generated, dtype=np.float64)
    if train is not None:
        train = np.asarray(train, dtype=np.float64)
        n_train = len(train)
    if n_train is None or n_train < 1:
        raise InputError("give the training size N (>= 1) or a training sample")
    if truth.ndim != 2 or generated.ndim != 2 or truth.shape[1] != generated.shape[1]:
        raise InputError(f"truth {truth.shape} and generated {generated.shape} observables "
                         f"do not match")
    if len(truth) < 4 * n_train:
        raise InputError(f"the truth holds {len(truth):,d} showers; the study needs at least "
                         f"4 N = {4 * n_train:,d} (half to define the quantiles, two disjoint "
                         f"training-size samples from the other half)")
    check_options(quantiles, tolerance, len(truth))
    m_grid = m_grid or geometric_grid(max(n_train // 4, 1), len(generated))
    if m_grid[0] < 1 or m_grid[-1] > len(generated) or len(m_grid) < 2 \
            or any(b <= a for a, b in zip(m_grid, m_grid[1:])):
        raise InputError(f"M grid {m_grid[:3]}...{m_grid[-1:]}: need >= 2 increasing sizes "
                         f"within 1..{len(generated):,d} generated showers")
    rng = np.random.default_rng(seed)
    truth = truth[rng.permutation(len(truth))]
    half = len(truth) // 2
    bins = QuantileBins(truth[:half], quantiles)
    pool = truth[half:]

    ref_sizes = [n for n in geometric_grid(max(n_train // 4, 1), len(pool) // 2)]
    ref = [_subsample_mse(bins, pool, n, repeats) for n in ref_sizes]
    ref_mse, ref_err = (np.array(v) for v in zip(*ref))
    a, b = _fit_inverse(np.array(ref_sizes, float), ref_mse, ref_err)
    if a <= 0:
        raise InputError("the reference MSE does not fall with the sample size (constant "
                         "observables?); choose other observables")
    gen = [_subsample_mse(bins, generated, m, repeats) for m in m_grid]
    gen_mse, gen_err = (np.array(v) for v in zip(*gen))

    def n_eq(mse: float) -> float:
        return a / (mse - b) if mse > b else math.inf

    n_equiv = [float(n_eq(v)) for v in gen_mse]
    i = _plateau(m_grid, gen_mse, tolerance)
    plateau_mse = float(gen_mse[i:].mean()) if i is not None else float(gen_mse[-1])
    value = n_eq(plateau_mse)
    lower = i is None or value > half
    value = min(value, float(half))
    train_ref = _subsample_mse(bins, pool, n_train, repeats)
    k = min(len(pool) // n_train, repeats)
    ref_at_n = np.mean([bins.mse_per_observable(pool[i * n_train:(i + 1) * n_train])
                        for i in range(k)], 0)
    names = list(names or [f"obs{j}" for j in range(truth.shape[1])])
    per_obs = {name: {"generated_mse_at_max_m": float(g), "reference_mse_at_n": float(r)}
               for name, g, r in zip(names, bins.mse_per_observable(generated), ref_at_n)}
    return AmplifyResult(
        observables=names, per_observable=per_obs,
        n_train=int(n_train), quantiles=quantiles, n_quantile_truth=half,
        ref_sizes=ref_sizes, ref_mse=ref_mse.tolist(), ref_err=ref_err.tolist(),
        fit_a=a, fit_b=b, m_grid=list(m_grid), gen_mse=gen_mse.tolist(),
        gen_err=gen_err.tolist(), n_equivalent=n_equiv,
        train_mse=None if train is None else bins.mse(train),
        train_ref_mse=train_ref[0], train_ref_err=train_ref[1],
        plateau_m=None if i is None else m_grid[i], plateau_mse=plateau_mse, n_eq=value,
        n_eq_lower_bound=lower, factor=value / n_train, tolerance=tolerance)


# ---- observables of shower files and models ----------------------------------------------
def observable_names(geometry: Any) -> list[str]:
    """The default set: :data:`SCALARS` and the energy of every layer with cells."""
    from caloforge.evaluation.observables import GeometryFeatures

    gf = GeometryFeatures.of(geometry)
    return list(SCALARS) + [f"e_layer_{k}" for k in gf.nonempty_layers]


def shower_observables(batch: Any, gf: Any) -> np.ndarray:
    """(n, K) default observables of a :class:`ShowerBatch` after the readout threshold
    (:func:`caloforge.evaluation.observables.sparse_observables`)."""
    from caloforge.evaluation.observables import sparse_observables

    raw = batch.energies
    thr = gf.geometry.readout_threshold_mev
    rows, cols = np.nonzero(raw >= thr if thr > 0 else raw > 0)
    sc, lf = sparse_observables(rows, cols, raw[rows, cols], len(raw),
                                batch.conditions.incident_energy, gf)
    layers = lf["e_layer"][:, gf.nonempty_layers]
    return np.concatenate([np.stack([sc[k] for k in SCALARS], 1), layers], 1)


def file_observables(path: Any, geometry: str, chunk: int = 500) -> tuple[np.ndarray, Any]:
    """Default observables and conditions of every shower of ``path``, read in chunks;
    the file must hold showers of ``geometry``."""
    from caloforge.data.batch import Conditions
    from caloforge.data.io import open_showers
    from caloforge.errors import GeometryMismatchError
    from caloforge.evaluation.observables import GeometryFeatures

    with open_showers(path) as f:
        if f.geometry != geometry:
            raise GeometryMismatchError(f"holds {f.geometry} showers, the model generates "
                                        f"{geometry}", path)
        gf = GeometryFeatures.of(f.geometry_object)
        obs, conds = [], []
        for batch in f.iter_batches(chunk):
            obs.append(shower_observables(batch, gf))
            conds.append(batch.conditions)
    if not obs:
        raise InputError("holds no showers", path)
    return np.concatenate(obs), Conditions.concatenate(conds)


def generated_observables(model: Any, conditions: Any, seed: int,
                          batch_size: int = 500) -> np.ndarray:
    """Default observables of one shower per condition, generated chunk by chunk
    (shower i from ``(seed, i)``, so the result does not depend on ``batch_size``)."""
    from caloforge.evaluation.observables import GeometryFeatures

    gf = GeometryFeatures.of(model.geometry)
    out = []
    for lo in range(0, len(conditions), batch_size):
        batch = model.sample(conditions[lo:lo + batch_size], seed=seed, first_index=lo)
        out.append(shower_observables(batch, gf))
    return np.concatenate(out)


def amplify(truth_path: Any, model: Any, n_train: int | None = None,
            train_path: Any = None, max_generated: int = 20000,
            min_generated: int | None = None, quantiles: int = DEFAULT_QUANTILES,
            tolerance: float = 0.1, seed: int = 0, batch_size: int = 500,
            device: str = "cpu") -> AmplifyResult:
    """The study for a model (loaded, folder or shipped name) against a truth file.

    The generated showers take the conditions of the truth showers, resampled
    (seed) to ``max_generated``.  Everything is checked before any shower is generated.
    """
    from caloforge.models import GenerativeModel, load
    from caloforge.utils.device import resolve_device

    if (n_train is None) == (train_path is None):
        raise InputError("give either the training size N or a training sample file")
    if n_train is not None and n_train < 1:
        raise InputError(f"-N must be >= 1, got {n_train}")
    if max_generated < 2:
        raise InputError(f"--max-generated must be >= 2, got {max_generated}")
    if min_generated is not None and not 1 <= min_generated < max_generated:
        raise InputError(f"--min-generated {min_generated}: need 1 <= it < --max-generated "
                         f"({max_generated})")
    dev = resolve_device(device)
    if not 0 < tolerance < 1:
        raise InputError(f"--tolerance {tolerance}: need a fraction in (0, 1)")
    label = model.name if isinstance(model, GenerativeModel) else str(model)
    if not isinstance(model, GenerativeModel):
        model = load(model, "cpu")
    model = model.to(dev).eval()
    geo = model.geometry.name
    truth, cond = file_observables(truth_path, geo)
    train = None
    if train_path is not None:
        train, _ = file_observables(train_path, geo)
        n_train = len(train)
    if len(truth) < 4 * n_train:
        raise InputError(f"holds {len(truth):,d} showers; the study needs at least 4 N = "
                         f"{4 * n_train:,d} (half to define the quantiles, two disjoint "
                         f"training-size samples from the other half)", truth_path)
    check_options(quantiles, tolerance, len(truth))
    lo = min_generated or max(n_train // 4, 1)
    m_grid = geometric_grid(lo, max_generated)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(cond), max_generated)
    gen_cond = cond[pick]
    model.check_conditions(gen_cond)
    generated = generated_observables(model, gen_cond, seed, batch_size)
    res = amplification(truth, generated, n_train=n_train, train=train, m_grid=m_grid,
                        quantiles=quantiles, tolerance=tolerance, seed=seed,
                        names=observable_names(model.geometry))
    res.extra = {"truth": str(truth_path), "truth_showers": len(truth),
                 "model": label, "seed": seed,
                 "train": None if train_path is None else str(train_path)}
    return res


def plot(result: AmplifyResult, path: Any, fmt: str = "png") -> None:
    """Quantile MSE vs sample size: the reference curve (points, a/n + b fit), the
    generated curve, the plateau and N_eq."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from caloforge.evaluation.report.plots import style

    style()
    fig, ax = plt.subplots(figsize=(7, 5.4))
    n = np.array(result.ref_sizes, float)
    ax.errorbar(n, result.ref_mse, yerr=np.nan_to_num(result.ref_err), fmt="o", color="0.3",
                label="reference subsamples")
    grid = np.geomspace(min(n[0], result.m_grid[0]), max(n[-1], result.m_grid[-1]), 100)
    ax.plot(grid, result.fit_a / grid + result.fit_b, color="0.5", lw=1,
            label=f"fit a/n + b (a={result.fit_a:.3g}, b={result.fit_b:.2g})")
    ax.errorbar(result.m_grid, result.gen_mse, yerr=np.nan_to_num(result.gen_err), fmt="s-",
                color="tab:blue", label="generated")
    ax.axhline(result.plateau_mse, color="tab:blue", ls=":", lw=1,
               label="generated plateau" if result.plateau_m else "generated at max M")
    ax.axvline(result.n_train, color="tab:red", ls="--", lw=1, label=f"N = {result.n_train:,d}")
    ax.axvline(result.n_eq, color="tab:green", ls="--", lw=1,
               label=f"N_eq {'>= ' if result.n_eq_lower_bound else '= '}{result.n_eq:,.0f}")
    if result.train_mse is not None:
        ax.plot([result.n_train], [result.train_mse], "*", color="tab:red", ms=12,
                label="training sample")
    ax.set(xscale="log", yscale="log", xlabel="showers in the sample",
           ylabel=f"quantile MSE ({result.quantiles} quantiles, "
                  f"{len(result.observables)} observables)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, format=fmt, dpi=90)
    finally:
        plt.close(fig)
