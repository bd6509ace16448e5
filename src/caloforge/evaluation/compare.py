"""The two-sample comparisons, each ``fn(base, gen) -> dict`` with its noise floor and
traffic-light verdict; :mod:`.table` lists them.

``base`` is the :class:`Baseline`: the reference sample with everything fixed from it
before any generated sample is read (binnings, random halvings, settings).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from caloforge.errors import CaloforgeError, InputError
from caloforge.evaluation import metrics as M
from caloforge.evaluation.classifier import (
    VERDICT_INCONCLUSIVE,
    ClassifierConfig,
    classifier_test,
    lowlevel_transform,
)
from caloforge.evaluation.config import EvaluationConfig
from caloforge.evaluation.derived import (
    LAYER_METRIC_FEATURES,
    _mean_profile,
    correlation_matrix,
    fpd_features,
    high_level_features,
    profile_table,
    response_table,
)
from caloforge.evaluation.observables import (
    CALOGAN_OBSERVABLES,
    CORRELATION_OBSERVABLES,
    SCALAR_OBSERVABLES,
    GeometryFeatures,
)
from caloforge.evaluation.points import POINT_LAYER_FEATURES, POINT_SCALARS
from caloforge.evaluation.stream import SampleSummary, Source, memo_features

FPD_NUM_BATCHES = 10
N_FLOOR_SPLITS = 5  # random reference splits averaged for the scalar noise floors


@dataclass
class Baseline:
    """The reference and everything fixed from it before the comparisons."""

    summary: SampleSummary
    gf: GeometryFeatures
    config: EvaluationConfig
    threshold_mev: float
    spectrum_edges: np.ndarray  # cell spectrum, MIP
    energy_edges: np.ndarray  # incident-energy bins of the response, MeV
    scalar_edges: dict[str, np.ndarray]
    calogan_edges: dict[str, np.ndarray]
    splits: list[np.ndarray]  # random halvings of the reference (noise floors)
    classifier: ClassifierConfig
    train: Source | None = None  # training file of the memorisation check
    projection: np.ndarray | None = None  # memorisation feature projection
    progress_bar: bool | None = None
    reco: Any = None  # caloforge.evaluation.reco.stage.RecoSetup, calibrated

    @property
    def threshold_mip(self) -> float:
        return self.threshold_mev / self.gf.geometry.mip_mev


def floor_splits(summ: SampleSummary, seed: int, n: int = N_FLOOR_SPLITS) -> list[np.ndarray]:
    """The stored halving of the reference plus ``n - 1`` seeded random ones."""
    rng = np.random.default_rng([seed, 31])
    out = [summ.half]
    for _ in range(n - 1):
        out.append(rng.integers(0, 2, size=summ.n_used).astype(np.int8))
    return out


def not_computed(exc: CaloforgeError) -> dict[str, Any]:
    return {"status": "not computed", "reason": str(exc)}


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


# ---- distributions ----------------------------------------------------------------------
def _histograms(base: Baseline, ref_vals: dict[str, np.ndarray],
                gen_vals: dict[str, np.ndarray], names: dict[str, tuple],
                edges: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for name in names:
        if name not in ref_vals or name not in gen_vals:
            continue
        try:
            res = M.histogram_metrics(ref_vals[name], base.splits, gen_vals[name], edges[name])
            res["verdict"] = M.observable_verdict(res)
        except CaloforgeError as exc:
            res = not_computed(exc)
        out[name] = res
    return out


def observables(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    return _histograms(base, base.summary.scalars, gen.scalars, SCALAR_OBSERVABLES,
                       base.scalar_edges)


def calogan_shapes(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    return _histograms(base, base.summary.calogan, gen.calogan, CALOGAN_OBSERVABLES,
                       base.calogan_edges)


def layer_features(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    """Per-layer separation power and W1 (+ floors from the stored reference split),
    summarised by their means over the non-empty layers."""
    ref, gf = base.summary, base.gf
    out = {}
    for name in LAYER_METRIC_FEATURES:
        per_layer = []
        for k in gf.nonempty_layers:
            r = ref.layers[name][:, k].astype(np.float64)
            g = gen.layers[name][:, k].astype(np.float64)
            edges = M.hist_edges(r, integer=name == "hits_layer")
            try:
                per_layer.append(M.histogram_metrics(r, [ref.half], g, edges))
            except CaloforgeError as exc:
                out[name] = not_computed(exc)
                break
        else:
            agg = {key: _nanmean([p[key] for p in per_layer]) for key in per_layer[0]}
            agg["verdict"] = M.observable_verdict(agg)
            agg["per_layer"] = {key: [p[key] for p in per_layer] for key in
                                ("wasserstein", "separation_power", "separation_power_floor")}
            agg["layers"] = gf.nonempty_layers.tolist()
            out[name] = agg
    return out


def cell_spectrum(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    """Separation power and chi2/ndf of the cell spectra, all cells and above the cut
    (only the part above the cut gets a verdict when a threshold is applied)."""
    ref, thr = base.summary, base.threshold_mip
    edges = base.spectrum_edges
    above = np.concatenate([[False], edges[:-1] >= thr * (1 - 1e-9), [True]])
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
        res["verdict"] = "grey" if key == "all_cells" and thr > 0 else \
            M.verdict(res["separation_power"], res["separation_power_floor"])
        out[key] = res
    return out


def profiles(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    ref = base.summary
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


def points(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    """Point-level observables (:mod:`.points`) of a point sample vs a point reference:
    number of points and energy sum, per-layer counts and energies (mean over the layers
    the reference fills), the point-energy spectrum, the radial and longitudinal
    profiles, and (shown, no verdict) the energy fraction outside the cells."""
    ref, g = base.summary.points, gen.points
    if g is None:
        raise InputError(f"{gen.label} holds voxels, not points: point observables compare "
                         "point files")
    splits = base.splits
    out: dict[str, Any] = {}
    for name in POINT_SCALARS:
        r = ref.scalars[name]
        res = M.histogram_metrics(r, splits, g.scalars[name],
                                  M.hist_edges(r, integer=name == "n_points"))
        res["verdict"] = M.observable_verdict(res)
        out[name] = res
    filled = np.flatnonzero(ref.layers["points_layer"].sum(axis=0) > 0)
    for name in POINT_LAYER_FEATURES:
        per_layer = []
        for k in filled:
            r = ref.layers[name][:, k].astype(np.float64)
            per_layer.append(M.histogram_metrics(
                r, [base.summary.half], g.layers[name][:, k].astype(np.float64),
                M.hist_edges(r, integer=name == "points_layer")))
        agg = {key: _nanmean([p[key] for p in per_layer]) for key in per_layer[0]}
        agg["verdict"] = M.observable_verdict(agg)
        agg["per_layer"] = {key: [p[key] for p in per_layer]
                            for key in ("wasserstein", "separation_power")}
        agg["layers"] = filled.tolist()
        out[name] = agg
    spec = {"separation_power": M.separation_power(ref.spectrum.sum(0), g.spectrum.sum(0)),
            "separation_power_floor": M.separation_power(*ref.spectrum)}
    spec["verdict"] = M.verdict(spec["separation_power"], spec["separation_power_floor"])
    out["point_spectrum"] = spec
    halves = [int((base.summary.half == h).sum()) for h in (0, 1)]
    for key in ref.profiles:
        pr = _mean_profile(ref.profiles[key].sum(0), base.summary.n_used)
        pg = _mean_profile(g.profiles[key].sum(0), gen.n_used)
        pa, pb = (_mean_profile(ref.profiles[key][h], halves[h]) for h in (0, 1))
        res = {"chi2_ndf": M.chi2_profile(*pr, *pg), "chi2_ndf_floor": M.chi2_profile(*pa, *pb),
               "separation_power": M.separation_power(pr[0], pg[0]),
               "separation_power_floor": M.separation_power(pa[0], pb[0])}
        res["verdict"] = M.verdict(res["separation_power"], res["separation_power_floor"])
        out[f"{key}_profile"] = res
    out["outside_cells_fraction"] = {
        "reference_mean": float(ref.outside_fraction.mean()),
        "generated_mean": float(g.outside_fraction.mean()),
        "generated_max": float(g.outside_fraction.max(initial=0.0)), "verdict": "grey"}
    return out


# ---- response, correlations, distances --------------------------------------------------
def max_rel_dev(x: dict[str, list[float]], y: dict[str, list[float]], key: str) -> float:
    """Largest |x/y - 1| over the bins where both are finite."""
    d = [abs(p / q - 1) for p, q in zip(x[key], y[key])
         if math.isfinite(p) and math.isfinite(q) and q]
    return max(d) if d else math.nan


def compare_response(ref: SampleSummary, gen: SampleSummary, edges: np.ndarray,
                     sel_ref: np.ndarray | None = None, sel_gen: np.ndarray | None = None
                     ) -> dict[str, Any]:
    """Response tables of both samples (optionally of selected showers) and the largest
    relative deviations of mu90 and sigma90/mu90, with floors from the reference halves."""
    sel = np.ones(ref.n_used, bool) if sel_ref is None else sel_ref
    r, g = response_table(ref, edges, sel_ref), response_table(gen, edges, sel_gen)
    a = response_table(ref, edges, sel & (ref.half == 0))
    b = response_table(ref, edges, sel & (ref.half == 1))
    out: dict[str, Any] = {"reference": r, "generated": g}
    for key in ("mu90", "sigma90_over_mu90"):
        out[f"{key}_max_rel_dev"] = max_rel_dev(g, r, key)
        out[f"{key}_max_rel_dev_floor"] = max_rel_dev(a, b, key)
    out["verdict"] = M.worst([M.verdict(out[f"{k}_max_rel_dev"], out[f"{k}_max_rel_dev_floor"])
                              for k in ("mu90", "sigma90_over_mu90")])
    return out


def response(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    return compare_response(base.summary, gen, base.energy_edges)


def correlations(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    ref = base.summary
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


def _distance(fn, base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    ref, seed = base.summary, base.config.seed
    xr, xg = fpd_features(ref, base.gf), fpd_features(gen, base.gf)
    v = fn(xr, xg, seed=seed)
    f = fn(xr[ref.half == 0], xr[ref.half == 1], seed=seed)
    # KPD can be negative (unbiased estimator); the floor is its spread.
    floor = max(abs(f.value) + 2 * f.error, 1e-12)
    return {"value": v.value, "error": v.error, "floor": f.value, "floor_error": f.error,
            "n_features": xr.shape[1], "verdict": M.verdict(abs(v.value), floor)}


def fpd(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    # 10 instead of jetnet's 20 batches per sample size halves the cost (800 -> 400
    # covariance matrices of up to 50k showers per generator); it only widens the error
    # of the extrapolated intercept, the definition is unchanged.
    return _distance(functools.partial(M.fpd, num_batches=FPD_NUM_BATCHES), base, gen)


def kpd(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    return _distance(M.kpd, base, gen)


# ---- classifier and memorisation --------------------------------------------------------
def classifier(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    ref, gf, cfg = base.summary, base.gf, base.classifier
    out: dict[str, Any] = {}
    inputs = {"high_level": (high_level_features(ref, gf), high_level_features(gen, gf), None)}
    if ref.lowlevel is not None and gen.lowlevel is not None:
        inputs["low_level"] = (ref.lowlevel, gen.lowlevel, lowlevel_transform)
    else:
        out["low_level"] = {"status": "not computed", "reason": "no low-level subsample"}
    for name, (xr, xg, tf) in inputs.items():
        try:
            res = classifier_test(xr, xg, cfg, transform=tf, progress_label=f"{name} {gen.label}")
            if base.config.classifier_floor:
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
            if res.get("power_verdict") == VERDICT_INCONCLUSIVE:
                # A classifier that learned nothing says nothing about the samples: never
                # green, whatever its AUC.
                res["verdict"] = "grey"
            out[name] = res
        except CaloforgeError as exc:
            out[name] = not_computed(exc)
    return out


def memorisation(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
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

    ref, train = base.summary, base.train
    if ref.memo is None or gen.memo is None or train is None:
        raise InputError("no memorisation subsample was collected")
    q = torch.from_numpy(np.concatenate([ref.memo, gen.memo]).astype(np.float32))
    best = torch.full((len(q),), math.inf)
    bar = progress(total=train.n_showers, desc="memorisation", unit="shower",
                   enabled=base.progress_bar)
    n_train = 0
    for batch in train.batches():
        ok = np.isfinite(batch.energies).all(axis=1)
        f = memo_features(apply_threshold(batch.energies[ok], base.threshold_mev),
                          base.projection)
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
            "projected": base.projection is not None,
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
