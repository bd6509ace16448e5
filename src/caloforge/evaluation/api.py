"""``evaluate(...)``: compare generated showers with a reference and write a report.

>>> import numpy as np
>>> from caloforge.data import Conditions, ShowerBatch
>>> rng = np.random.default_rng(0)
>>> def sample(n):
...     e = rng.exponential(5.0, (n, 504)).astype(np.float32)
...     return ShowerBatch("calogan", e, Conditions(np.full(n, 1e4)))
>>> res = evaluate(sample(300), [sample(300)], classifier=False, progress_bar=False)
>>> res.metrics["generated"][0]["observables"]["e_vis"]["verdict"] in ("green", "yellow")
True
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge import __version__
from caloforge.data.batch import ShowerBatch
from caloforge.errors import CaloforgeError, GeometryMismatchError, InputError
from caloforge.evaluation import metrics as M
from caloforge.evaluation.classifier import ClassifierConfig, classifier_test, lowlevel_transform
from caloforge.evaluation.config import EvaluationConfig, check_device
from caloforge.evaluation.observables import (
    CALOGAN_OBSERVABLES,
    CORRELATION_OBSERVABLES,
    SCALAR_OBSERVABLES,
    GeometryFeatures,
    energy_bins,
    mu90_sigma90,
)
from caloforge.evaluation.report.folder import staged_report_dir
from caloforge.evaluation.stream import (
    SampleSummary,
    Source,
    StreamConfig,
    memo_features,
    memo_projection,
    spectrum_edges_from,
    summarise,
)
from caloforge.geometry import CylindricalGeometry, get_geometry

INTEGER_OBSERVABLES = {"n_hits", "shower_start", "d"}
FPD_NUM_BATCHES = 10
N_FLOOR_SPLITS = 5  # random reference splits averaged for the scalar noise floors
# Layer features compared per layer (and summarised over layers) in every geometry.
LAYER_METRIC_FEATURES = ("e_layer", "hits_layer", "cx_layer", "cy_layer", "wx_layer",
                         "wy_layer", "cr_layer", "wr_layer", "sparsity_layer")
HL_LAYER_FEATURES = ("e_layer", "cx_layer", "cy_layer", "wx_layer", "wy_layer")


@dataclass
class Evaluation:
    """Result of :func:`evaluate`: ``metrics`` is exactly what ``metrics.json`` holds."""

    metrics: dict[str, Any]
    reference: SampleSummary
    generated: list[SampleSummary | None]
    report_dir: Path | None = None
    figures: list[str] = field(default_factory=list)
    geometry_features: GeometryFeatures | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """True when every requested comparison was made (``not_compared`` is empty)."""
        return not self.metrics.get("not_compared")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def high_level_features(summ: SampleSummary, gf: GeometryFeatures) -> np.ndarray:
    """(N, d) high-level feature matrix (CaloChallenge set): per non-empty layer
    log1p(E_layer/MeV), energy centres and widths in x and y; plus E_vis/E_inc and
    log(E_inc/MeV)."""
    ne = gf.nonempty_layers
    cols = [np.log1p(np.clip(summ.layers["e_layer"][:, ne], 0, None))]
    cols += [summ.layers[k][:, ne] for k in HL_LAYER_FEATURES[1:]]
    cols += [summ.scalars["e_ratio"][:, None], np.log(summ.scalars["e_inc"])[:, None]]
    return np.concatenate(cols, axis=1).astype(np.float64)


def fpd_features(summ: SampleSummary, gf: GeometryFeatures) -> np.ndarray:
    """Features for FPD/KPD: the CaloChallenge high-level features without the incident
    energy (per layer E, centres and widths in x and y, plus E_vis/E_inc)."""
    ne = gf.nonempty_layers
    cols = [summ.layers[k][:, ne] for k in HL_LAYER_FEATURES]
    cols.append(summ.scalars["e_ratio"][:, None])
    return np.concatenate(cols, axis=1).astype(np.float64)


def _splits(summ: SampleSummary, seed: int, n: int = N_FLOOR_SPLITS) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 31])
    out = [summ.half]
    for _ in range(n - 1):
        out.append(rng.integers(0, 2, size=summ.n_used).astype(np.int8))
    return out


def _try(fn, *args, **kw) -> dict[str, Any]:
    """Run a metric; on a CaloforgeError return {"status": "not computed", reason}."""
    try:
        out = fn(*args, **kw)
        return out
    except CaloforgeError as exc:
        return {"status": "not computed", "reason": str(exc)}


# ---------------------------------------------------------------------------------------
def _scalar_metrics(ref: SampleSummary, gen: SampleSummary, table: dict[str, tuple],
                    ref_vals: dict[str, np.ndarray], gen_vals: dict[str, np.ndarray],
                    splits: list[np.ndarray], edges: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for name in table:
        if name not in ref_vals or name not in gen_vals:
            continue
        res = _try(M.histogram_metrics, ref_vals[name], splits, gen_vals[name], edges[name])
        if "status" not in res:
            res["verdict"] = M.observable_verdict(res)
        out[name] = res
    return out


def _layer_metrics(ref: SampleSummary, gen: SampleSummary, gf: GeometryFeatures
                   ) -> dict[str, Any]:
    """Per-layer separation power and W1 (+ floors from the stored reference split),
    summarised by their means over the non-empty layers."""
    out = {}
    for name in LAYER_METRIC_FEATURES:
        per_layer = []
        for k in gf.nonempty_layers:
            r = ref.layers[name][:, k].astype(np.float64)
            g = gen.layers[name][:, k].astype(np.float64)
            edges = M.hist_edges(r, integer=name == "hits_layer")
            res = _try(M.histogram_metrics, r, [ref.half], g, edges)
            if "status" in res:
                out[name] = res
                break
            per_layer.append(res)
        else:
            agg = {key: _nanmean([p[key] for p in per_layer]) for key in per_layer[0]}
            agg["verdict"] = M.observable_verdict(agg)
            agg["per_layer"] = {key: [p[key] for p in per_layer] for key in
                                ("wasserstein", "separation_power", "separation_power_floor")}
            agg["layers"] = gf.nonempty_layers.tolist()
            out[name] = agg
    return out


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _spectrum_metrics(ref: SampleSummary, gen: SampleSummary, edges_mip: np.ndarray,
                      threshold_mip: float) -> dict[str, Any]:
    """Separation power and chi2/ndf of the cell spectra, all cells and above the cut
    (only the part above the cut gets a verdict when a threshold is applied)."""
    above = np.concatenate([[False], edges_mip[:-1] >= threshold_mip * (1 - 1e-9), [True]])
    out = {}
    for key, sel in (("all_cells", slice(None)), ("above_threshold", above)):
        r, a, b = ref.spectrum.sum(0)[sel], ref.spectrum[0][sel], ref.spectrum[1][sel]
        g = gen.spectrum.sum(0)[sel]
        res = {"separation_power": M.separation_power(r, g),
               "separation_power_floor": M.separation_power(a, b),
               "chi2_ndf": M.chi2_ndf(r, g), "chi2_ndf_floor": M.chi2_ndf(a, b)}
        # Cells below the readout threshold are not read out: their part of the spectrum is
        # shown for information but does not enter the verdict (a generator of read-out
        # showers has none by design).
        res["verdict"] = "grey" if key == "all_cells" and threshold_mip > 0 else \
            M.verdict(res["separation_power"], res["separation_power_floor"])
        out[key] = res
    return out


def _mean_profile(sums: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error per bin from (sum, sum of squares) over n showers."""
    mean = sums[0] / max(n, 1)
    var = np.clip(sums[1] / max(n, 1) - mean ** 2, 0, None)
    return mean, np.sqrt(var / max(n - 1, 1))


def profile_table(summ: SampleSummary, half: int | None = None) -> dict[str, tuple]:
    """Mean profiles (x, y, r, longitudinal) with standard errors; ``half`` restricts the
    reference to one half of its split."""
    out = {}
    sel = np.ones(summ.n_used, bool) if half is None else summ.half == half
    n = float(sel.sum())
    for k, p in summ.profiles.items():
        sums = p.sum(axis=0) if half is None else p[half]
        out[k] = _mean_profile(sums, n)
    el = summ.layers["e_layer"][sel].astype(np.float64)
    out["longitudinal"] = (el.mean(0), el.std(0) / math.sqrt(max(n - 1, 1)))
    return out


def _profile_metrics(ref: SampleSummary, gen: SampleSummary) -> dict[str, Any]:
    pr, pg = profile_table(ref), profile_table(gen)
    pa, pb = profile_table(ref, 0), profile_table(ref, 1)
    out = {}
    for k in pr:
        res = {"chi2_ndf": M.chi2_profile(*pr[k], *pg[k]),
               "chi2_ndf_floor": M.chi2_profile(*pa[k], *pb[k]),
               "separation_power": M.separation_power(pr[k][0], pg[k][0]),
               "separation_power_floor": M.separation_power(pa[k][0], pb[k][0])}
        res["verdict"] = M.verdict(res["separation_power"], res["separation_power_floor"])
        out[k] = res
    return out


def response_table(summ: SampleSummary, edges: np.ndarray, sel: np.ndarray | None = None
                   ) -> dict[str, list[float]]:
    """mu90 of E_vis/E_inc and sigma90/mu90 per incident-energy bin."""
    e_inc, ratio = summ.scalars["e_inc"], summ.scalars["e_ratio"]
    if sel is not None:
        e_inc, ratio = e_inc[sel], ratio[sel]
    b = np.searchsorted(edges, e_inc, side="right") - 1
    mu, res, n, centre = [], [], [], []
    for k in range(len(edges) - 1):
        v = ratio[b == k]
        m, s = mu90_sigma90(v)
        mu.append(m)
        res.append(s / m if m and math.isfinite(m) and m > 0 else math.nan)
        n.append(int(len(v)))
        centre.append(float(np.median(e_inc[b == k])) if len(v) else
                      0.5 * (edges[k] + edges[k + 1]))
    return {"e_inc": centre, "mu90": mu, "sigma90_over_mu90": res, "n": n}


def _response_metrics(ref: SampleSummary, gen: SampleSummary, edges: np.ndarray
                      ) -> dict[str, Any]:
    r, g = response_table(ref, edges), response_table(gen, edges)
    a, b = response_table(ref, edges, ref.half == 0), response_table(ref, edges, ref.half == 1)

    def maxdev(x, y, key):
        d = [abs(p / q - 1) for p, q in zip(x[key], y[key])
             if math.isfinite(p) and math.isfinite(q) and q]
        return max(d) if d else math.nan

    out = {"reference": r, "generated": g}
    for key in ("mu90", "sigma90_over_mu90"):
        out[f"{key}_max_rel_dev"] = maxdev(g, r, key)
        out[f"{key}_max_rel_dev_floor"] = maxdev(a, b, key)
    out["verdict"] = M.worst([
        M.verdict(out["mu90_max_rel_dev"], out["mu90_max_rel_dev_floor"]),
        M.verdict(out["sigma90_over_mu90_max_rel_dev"],
                  out["sigma90_over_mu90_max_rel_dev_floor"])])
    return out


def correlation_matrix(values: dict[str, np.ndarray], sel: np.ndarray | None = None
                       ) -> np.ndarray:
    """Pearson correlation matrix of the seed-001 observable set (constant columns: 0)."""
    x = np.stack([values[k] if sel is None else values[k][sel]
                  for k in CORRELATION_OBSERVABLES], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(x, rowvar=False)
    return np.nan_to_num(c, nan=0.0)


def _correlation_metrics(ref: SampleSummary, gen: SampleSummary) -> dict[str, Any]:
    cr, cg = correlation_matrix(ref.scalars), correlation_matrix(gen.scalars)
    ca = correlation_matrix(ref.scalars, ref.half == 0)
    cb = correlation_matrix(ref.scalars, ref.half == 1)
    res = {"observables": list(CORRELATION_OBSERVABLES), "reference": cr, "generated": cg,
           "difference": cg - cr, "max_abs_diff": float(np.abs(cg - cr).max()),
           "max_abs_diff_floor": float(np.abs(ca - cb).max()),
           "mean_abs_diff": float(np.abs(cg - cr).mean()),
           "mean_abs_diff_floor": float(np.abs(ca - cb).mean())}
    res["verdict"] = M.verdict(res["mean_abs_diff"], res["mean_abs_diff_floor"])
    return res


def _distance_metrics(ref: SampleSummary, gen: SampleSummary, gf: GeometryFeatures,
                      seed: int) -> dict[str, Any]:
    xr, xg = fpd_features(ref, gf), fpd_features(gen, gf)
    a, b = xr[ref.half == 0], xr[ref.half == 1]
    out: dict[str, Any] = {}
    # FPD: 10 instead of jetnet's 20 batches per sample size halves the cost (800 -> 400
    # covariance matrices of up to 50k showers per generator); it only widens the error
    # of the extrapolated intercept, the definition is unchanged.
    fpd = functools.partial(M.fpd, num_batches=FPD_NUM_BATCHES)
    for name, fn in (("fpd", fpd), ("kpd", M.kpd)):
        try:
            v = fn(xr, xg, seed=seed)
            f = fn(a, b, seed=seed)
        except CaloforgeError as exc:
            out[name] = {"status": "not computed", "reason": str(exc)}
            continue
        # KPD can be negative (unbiased estimator); the floor is its spread.
        floor = max(abs(f.value) + 2 * f.error, 1e-12)
        out[name] = {"value": v.value, "error": v.error, "floor": f.value,
                     "floor_error": f.error, "verdict": M.verdict(abs(v.value), floor)}
    out["features"] = xr.shape[1]
    return out


def _classifier_metrics(ref: SampleSummary, gen: SampleSummary, gf: GeometryFeatures,
                        cfg: ClassifierConfig, floor: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    inputs = {"high_level": (high_level_features(ref, gf), high_level_features(gen, gf), None)}
    if ref.lowlevel is not None and gen.lowlevel is not None:
        inputs["low_level"] = (ref.lowlevel, gen.lowlevel, lowlevel_transform)
    else:
        out["low_level"] = {"status": "not computed", "reason": "no low-level subsample"}
    for name, (xr, xg, tf) in inputs.items():
        try:
            res = classifier_test(xr, xg, cfg, transform=tf, progress_label=f"{name} {gen.label}")
            if floor:
                h = np.random.default_rng([cfg.seed, 41]).permutation(len(xr))
                half = len(xr) // 2
                ia, ib = np.sort(h[:half]), np.sort(h[half:2 * half])
                fl = classifier_test(xr, xr, cfg, transform=tf, progress_label=f"{name} floor",
                                     reference_rows=ia, generated_rows=ib)
                res["auc_floor"] = fl["auc"]
                res["jsd_floor"] = fl["jsd"]
                res["floor_seconds"] = fl["seconds"]
            # Distance from 0.5, compared with the larger of the empirical floor and two
            # standard deviations of a useless classifier's AUC.
            fl_dev = abs(res.get("auc_floor", 0.5) - 0.5)
            res["verdict"] = M.verdict(abs(res["auc"] - 0.5),
                                       max(fl_dev, 2 * res["auc_null_std"]))
            out[name] = res
        except CaloforgeError as exc:
            out[name] = {"status": "not computed", "reason": str(exc)}
    return out


def _memorisation(train: Source, ref: SampleSummary, gen: SampleSummary, gf: GeometryFeatures,
                  projection: np.ndarray | None, threshold: float, batch_size: int,
                  progress_bar: bool | None) -> dict[str, Any]:
    """Nearest-training-shower distances of generated vs held-out reference showers.

    Distances are Euclidean between shower shapes E/E_vis (randomly projected to
    128 dimensions for large geometries).  A generator that memorises its training set
    has generated showers much closer to training showers than independent showers are:
    we report the medians, the ratio, and the fraction of generated showers closer than
    the 1st percentile of the held-out distances (about 0.01 without memorisation).
    """
    import torch

    from caloforge.evaluation.observables import apply_threshold
    from caloforge.utils import progress

    if ref.memo is None or gen.memo is None:
        raise InputError("no memorisation subsample was collected")
    q = torch.from_numpy(np.concatenate([ref.memo, gen.memo]).astype(np.float32))
    best = torch.full((len(q),), math.inf)
    bar = progress(total=train.n_showers, desc="memorisation", unit="shower",
                   enabled=progress_bar)
    n_train = 0
    for batch in train.batches():
        ok = np.isfinite(batch.energies).all(axis=1)
        f = memo_features(apply_threshold(batch.energies[ok], threshold), projection)
        d = torch.cdist(q, torch.from_numpy(np.ascontiguousarray(f, np.float32)))
        best = torch.minimum(best, d.min(dim=1).values)
        n_train += int(ok.sum())
        bar.update(len(batch))
    bar.close()
    if n_train == 0:
        raise InputError("training file has no usable showers", train.name)
    dist = best.numpy().astype(np.float64)
    d_ref, d_gen = dist[:len(ref.memo)], dist[len(ref.memo):]
    p1 = float(np.quantile(d_ref, 0.01))
    frac = float(np.mean(d_gen < p1))
    ratio = float(np.median(d_gen) / np.median(d_ref)) if np.median(d_ref) > 0 else math.nan
    return {"n_train": n_train, "n_reference": len(d_ref), "n_generated": len(d_gen),
            "median_distance_reference": float(np.median(d_ref)),
            "median_distance_generated": float(np.median(d_gen)),
            "median_ratio": ratio, "fraction_below_ref_p1": frac,
            "projected": projection is not None,
            "verdict": _memo_verdict(frac, ratio, len(d_gen)),
            "distances_reference": d_ref, "distances_generated": d_gen}


def _memo_verdict(frac: float, ratio: float, n_gen: int) -> str:
    """Without memorisation about 1% of generated showers fall below the held-out 1st
    percentile; flag excesses of 3 (yellow) and 6 (red) binomial standard deviations."""
    sd = math.sqrt(0.01 * 0.99 / max(n_gen, 1))
    if frac > 0.01 + 6 * sd or ratio < 0.5:
        return "red"
    if frac > 0.01 + 3 * sd or ratio < 0.8:
        return "yellow"
    return "green"


# ---------------------------------------------------------------------------------------
def evaluate(reference: str | Path | ShowerBatch,
             generated: Sequence[str | Path | ShowerBatch],
             labels: Sequence[str] | None = None, *, config: EvaluationConfig | None = None,
             report_dir: str | Path | None = None, overwrite: bool = False,
             train_reference: str | Path | ShowerBatch | None = None,
             progress_bar: bool | None = None, **options: Any) -> Evaluation:
    """Compare ``generated`` samples with ``reference`` and optionally write a report.

    Every input is a shower file (any format :func:`caloforge.data.io.open_showers`
    reads; streamed in chunks of ``batch_size``) or an in-memory ShowerBatch.  The
    settings are an :class:`EvaluationConfig`; ``options`` (its field names, e.g.
    ``seed=3, classifier=False``) override single fields of ``config``.
    ``train_reference`` may be a file or an in-memory ShowerBatch (a file name is also
    accepted as ``config.train_reference``).

    Samples that cannot be compared (unreadable, empty, other geometry) and an unusable
    training file do not stop the evaluation: they are listed in
    ``metrics["not_compared"]`` and :attr:`Evaluation.complete` is False.
    Returns an :class:`Evaluation` whose ``metrics`` equal the report's metrics.json.
    """
    from threadpoolctl import threadpool_limits

    cfg = config or EvaluationConfig()
    if labels is not None:
        options["labels"] = list(labels)
    if isinstance(train_reference, (str, Path)):
        options["train_reference"] = str(train_reference)
    if options:
        cfg = cfg.replace(**options)
    if train_reference is None and cfg.train_reference is not None:
        train_reference = cfg.train_reference
    check_device(cfg.device, "device")
    if cfg.classifier_config is not None:
        check_device(cfg.classifier_config.device, "classifier_config.device")
    with threadpool_limits(limits=cfg.threads):
        return _evaluate(reference, generated, cfg, train_reference, report_dir, overwrite,
                         progress_bar)


def _evaluate(reference, generated, cfg: EvaluationConfig, train_reference, report_dir,
              overwrite, progress_bar) -> Evaluation:
    warnings: list[str] = []
    if not generated:
        raise InputError("give at least one generated sample to compare")
    if cfg.labels and len(cfg.labels) != len(generated):
        raise InputError(f"{len(cfg.labels)} labels for {len(generated)} generated samples")
    if report_dir is None:
        return _compare(reference, generated, cfg, train_reference, progress_bar, warnings)
    with staged_report_dir(report_dir, overwrite, warnings) as staging:
        ev = _compare(reference, generated, cfg, train_reference, progress_bar, warnings)
        _write_report(ev, staging, Path(report_dir), cfg.figure_formats)
    return ev


def _compare(reference, generated, cfg: EvaluationConfig, train_reference, progress_bar,
             warnings: list[str]) -> Evaluation:
    t_start = time.perf_counter()
    geometry, seed, batch_size = cfg.geometry, cfg.seed, cfg.batch_size
    labels = list(cfg.labels or [])
    threshold_mip, classifier = cfg.threshold_mip, cfg.classifier
    not_computed: list[str] = []
    not_compared: list[str] = []
    ref_src = Source(reference, "reference", geometry, batch_size)
    if ref_src.n_showers == 0:
        raise InputError("reference sample contains no showers", ref_src.name)
    geo = get_geometry(ref_src.geometry)
    if geometry is not None and get_geometry(geometry).name != geo.name:
        raise GeometryMismatchError(f"reference is on {geo.name}, not {geometry}", ref_src.name)
    gf = GeometryFeatures.of(geo)
    thr_mev = geo.readout_threshold_mev if threshold_mip is None else threshold_mip * geo.mip_mev
    thr_mip = thr_mev / geo.mip_mev
    first = next(iter(ref_src.batches()))
    spec_edges = spectrum_edges_from(first, geo.mip_mev)
    del first
    n_ll = 0
    if classifier:
        n_ll = int(cfg.lowlevel_memory_gib * 2**30 / (2 * 2 * (geo.n_voxels + 1)))
    train_src = None
    if train_reference is not None:
        train_src = _try_source(train_reference, "training", geometry, batch_size, warnings)
        if train_src is not None and train_src.geometry != geo.name:
            warnings.append(f"training file {train_src.name} is on {train_src.geometry}, not "
                            f"{geo.name}: memorisation check skipped")
            train_src = None
        if train_src is None:
            not_compared.append(f"memorisation check: {warnings[-1]}")
    proj = memo_projection(geo.n_voxels, seed)
    stream_cfg = StreamConfig(thr_mev, spec_edges, n_ll, cfg.n_memo if train_src else 0,
                              proj, seed)
    is_calogan = geo.name == "calogan"
    ref = summarise(ref_src, gf, stream_cfg, is_calogan, progress_bar)
    if ref.bad_showers:
        warnings.append(f"reference: skipped {len(ref.bad_showers)} showers "
                        f"({_reasons(ref)}); first at index {ref.bad_showers[:10]}")
    if ref.n_used < 2 * M.MIN_SHOWERS_HIST:
        raise InputError(f"reference has {ref.n_used} usable showers; at least "
                         f"{2 * M.MIN_SHOWERS_HIST} are needed", ref_src.name)
    splits = _splits(ref, seed)
    e_edges, discrete = energy_bins(ref.scalars["e_inc"])
    scalar_edges = {k: M.hist_edges(v, integer=k in INTEGER_OBSERVABLES)
                    for k, v in ref.scalars.items()}
    cg_edges = {k: M.hist_edges(v, integer=k in INTEGER_OBSERVABLES)
                for k, v in ref.calogan.items()}
    e_lo, e_hi = float(ref.scalars["e_inc"].min()), float(ref.scalars["e_inc"].max())
    ccfg = cfg.resolved_classifier()

    gen_summaries: list[SampleSummary | None] = []
    gen_metrics: list[dict[str, Any]] = []

    def fail(entry: dict[str, Any], msg: str) -> None:
        warnings.append(msg)
        not_compared.append(msg)
        entry.update(status="failed", reason=msg)
        gen_metrics.append(entry)

    for i, g in enumerate(generated):
        label = labels[i] if labels else None
        if label is None and isinstance(g, ShowerBatch):
            label = f"generated {i + 1}"  # files default to their name
        entry: dict[str, Any] = {"label": label or Path(str(g)).stem, "status": "ok"}
        src = _try_source(g, label, geometry, batch_size, warnings)
        if src is None:
            gen_summaries.append(None)
            fail(entry, warnings.pop())
            continue
        entry.update(label=src.label, source=src.name, n_showers=src.n_showers)
        if src.geometry != geo.name:
            gen_summaries.append(None)
            fail(entry, f"{src.name}: geometry {src.geometry} differs from the reference's "
                        f"{geo.name}; not compared")
            continue
        if src.n_showers == 0:
            gen_summaries.append(None)
            fail(entry, f"{src.name}: file contains no showers; not compared")
            continue
        try:
            summ = summarise(src, gf, stream_cfg, is_calogan, progress_bar)
        except CaloforgeError as exc:
            gen_summaries.append(None)
            fail(entry, f"{exc}; not compared")
            continue
        gen_summaries.append(summ)
        entry["n_used"] = summ.n_used
        entry["skipped"] = {"count": len(summ.bad_showers), "reasons": summ.bad_reasons,
                            "indices": summ.bad_showers[:100]}
        if summ.bad_showers:
            warnings.append(f"{src.label}: skipped {len(summ.bad_showers)} of {src.n_showers} "
                            f"showers ({_reasons(summ)}); shower indices "
                            f"{summ.bad_showers[:10]}{' ...' if len(summ.bad_showers) > 10 else ''}")
        tps = summ.metadata.get("time_per_shower_ms")
        entry["time_per_shower_ms"] = float(tps) if isinstance(tps, (int, float)) else None
        if summ.n_used == 0:
            fail(entry, f"{src.label}: no usable showers; not compared")
            continue
        gi = summ.scalars["e_inc"]
        # 0.5% of the range as margin: a continuous spectrum sampled twice never has
        # exactly the same end points.
        margin = 0.005 * (e_hi - e_lo) + 1e-6 * e_hi
        out_range = int(((gi < e_lo - margin) | (gi > e_hi + margin)).sum())
        entry["incident_energy_outside_reference"] = out_range
        if out_range:
            warnings.append(f"{src.label}: {out_range} showers have incident energies outside "
                            f"the reference range {e_lo / 1e3:.4g}-{e_hi / 1e3:.4g} GeV; "
                            "distributions compare different populations")
        entry["observables"] = _scalar_metrics(ref, summ, SCALAR_OBSERVABLES, ref.scalars,
                                               summ.scalars, splits, scalar_edges)
        if is_calogan:
            entry["calogan"] = _scalar_metrics(ref, summ, CALOGAN_OBSERVABLES, ref.calogan,
                                               summ.calogan, splits, cg_edges)
        entry["layer_features"] = _layer_metrics(ref, summ, gf)
        entry["cell_spectrum"] = _spectrum_metrics(ref, summ, spec_edges, thr_mip)
        entry["profiles"] = _profile_metrics(ref, summ)
        entry["response"] = _response_metrics(ref, summ, e_edges)
        entry["correlations"] = _correlation_metrics(ref, summ)
        entry.update(_distance_metrics(ref, summ, gf, seed))
        if classifier:
            entry["classifier"] = _classifier_metrics(ref, summ, gf, ccfg, cfg.classifier_floor)
        if train_src is not None:
            entry["memorisation"] = _try(_memorisation, train_src, ref, summ, gf, proj, thr_mev,
                                         batch_size, progress_bar)
        entry["verdict"] = _overall(entry)
        gen_metrics.append(entry)
    for entry in gen_metrics:
        for key, val in _walk_not_computed(entry):
            not_computed.append(f"{entry['label']}: {key}: {val}")
    if not any(s is not None for s in gen_summaries):
        warnings.append("no generated sample could be compared")
    result = {
        "caloforge_version": __version__,
        "config": cfg.to_dict(),
        "geometry": geo.name,
        "threshold_mev": thr_mev,
        "threshold_mip": thr_mip,
        "mip_mev": geo.mip_mev,
        "seed": seed,
        "noise_floor": "same metric between two random halves of the reference "
                       f"(scalars: mean over {N_FLOOR_SPLITS} splits)",
        "reference": {"source": ref.source, "n_showers": ref.n_total, "n_used": ref.n_used,
                      "skipped": len(ref.bad_showers),
                      "incident_energy_range_mev": [e_lo, e_hi]},
        "energy_bins_mev": e_edges, "energy_bins_discrete": discrete,
        "cell_spectrum_edges_mip": spec_edges,
        "generated": gen_metrics,
        "warnings": warnings,
        "not_computed": not_computed,
        "not_compared": not_compared,
        "seconds_metrics": time.perf_counter() - t_start,
    }
    return Evaluation(_clean(result), ref, gen_summaries, geometry_features=gf)


def _write_report(ev: Evaluation, staging: Path, out: Path, formats: tuple[str, ...]) -> None:
    """Figures, index.html and metrics.json into ``staging`` (renamed to ``out`` by the
    caller once complete)."""
    from caloforge.evaluation.report import write_report

    t0 = time.perf_counter()
    ev.report_dir = out
    ev.figures, failed = write_report(ev, ev.geometry_features, staging, formats=formats)
    m = ev.metrics
    m["not_computed"].extend(f"figure {f}" for f in failed)
    m["figures"] = ev.figures
    m["seconds_total"] = m["seconds_metrics"] + time.perf_counter() - t0
    (staging / "metrics.json").write_text(json.dumps(m, indent=1))


def _reasons(s: SampleSummary) -> str:
    return ", ".join(f"{v} with {k}" for k, v in s.bad_reasons.items())


def _try_source(data, label, geometry, batch_size, warnings) -> Source | None:
    try:
        return Source(data, label, geometry, batch_size)
    except CaloforgeError as exc:
        # The error names the file already; an in-memory sample is named here.
        name = f"<in-memory {label}>: " if isinstance(data, ShowerBatch) else ""
        warnings.append(f"cannot read {name}{exc}")
        return None


def _walk_not_computed(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        if d.get("status") == "not computed":
            yield prefix, d.get("reason", "")
            return
        for k, v in d.items():
            yield from _walk_not_computed(v, f"{prefix}.{k}" if prefix else k)


def _overall(entry: dict[str, Any]) -> dict[str, str]:
    """Worst verdict per section."""
    out = {}
    for key in ("observables", "calogan", "layer_features", "cell_spectrum", "profiles"):
        if key in entry:
            out[key] = M.worst([v.get("verdict", "grey") for v in entry[key].values()
                                if isinstance(v, dict)])
    for key in ("response", "correlations", "fpd", "kpd", "memorisation"):
        if key in entry and isinstance(entry[key], dict):
            out[key] = entry[key].get("verdict", "grey")
    if "classifier" in entry:
        out["classifier"] = M.worst([v.get("verdict", "grey") for v in
                                     entry["classifier"].values()])
    return out


def is_cylindrical(name: str) -> bool:
    return isinstance(get_geometry(name), CylindricalGeometry)
