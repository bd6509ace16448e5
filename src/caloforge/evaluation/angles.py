"""Evaluation per incidence angle (seed 000): the shower axis reconstructed from the
hits, and observables and response in bins of the polar angle theta (and azimuth phi).

The shower axis is the principal axis of the energy-weighted hit positions (PCA: the
eigenvector of the largest eigenvalue of the weighted covariance of the cell centres);
its polar angle relative to the calorimeter normal (the z axis of the geometry) is the
reconstructed incidence angle.  It is a biased estimator (a polar angle is never
negative, so at normal incidence its mean is a few degrees; coarse cells and the
shower's own fluctuations add to it), which is why generated showers are compared with
reference showers at the same true angle rather than with the true angle itself.
The axis itself is :func:`caloforge.evaluation.observables.shower_axis_angles`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from caloforge.errors import InputError
from caloforge.evaluation import metrics as M
from caloforge.evaluation.compare import Baseline, compare_response, not_computed
from caloforge.evaluation.observables import SCALAR_OBSERVABLES
from caloforge.evaluation.stream import SampleSummary

MAX_DISCRETE_ANGLES = 10  # at most this many distinct angles: one bin each
N_ANGLE_BINS = 5  # otherwise quantile bins
VARIES_RAD = 1e-4  # a condition that spans less than this is constant
PHI_MIN_THETA_RAD = math.radians(5.0)  # below this phi hardly changes a shower


def varies(values: np.ndarray | None) -> bool:
    v = None if values is None else np.asarray(values)[np.isfinite(values)]
    return v is not None and len(v) > 1 and float(np.ptp(v)) > VARIES_RAD


def angle_bins(values: np.ndarray) -> np.ndarray:
    """Bin edges (rad) of an angle condition: one bin per value for at most
    ``MAX_DISCRETE_ANGLES`` distinct values, else ``N_ANGLE_BINS`` quantile bins."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise InputError("no finite angle to bin")
    uniq = np.unique(np.round(v, 9))
    if len(uniq) <= MAX_DISCRETE_ANGLES:
        half = 0.5 * np.diff(uniq).min() if len(uniq) > 1 else 1e-3
        lo = uniq[0] - half if uniq[0] < 0 else max(uniq[0] - half, 0.0)  # theta >= 0
        return np.concatenate([[lo], 0.5 * (uniq[1:] + uniq[:-1]), [uniq[-1] + half]])
    edges = np.unique(np.quantile(v, np.linspace(0, 1, N_ANGLE_BINS + 1)))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (-1 outside the edges or NaN)."""
    b = np.searchsorted(edges, values, side="right") - 1
    return np.where(np.isfinite(values) & (b >= 0) & (b < len(edges) - 1), b, -1)


def _condition(summ: SampleSummary, name: str) -> np.ndarray:
    v = summ.angles.get(name)
    if v is None or not np.isfinite(v).any():
        raise InputError(f"{summ.label}: the showers carry no {name} condition")
    return v


def _oblique(summ: SampleSummary) -> np.ndarray:
    """Showers whose azimuth matters: theta above ``PHI_MIN_THETA_RAD``."""
    theta = summ.angles.get("theta")
    if theta is None:
        return np.zeros(summ.n_used, bool)
    with np.errstate(invalid="ignore"):
        return theta > PHI_MIN_THETA_RAD


def _binned_conditions(base: Baseline) -> list[str]:
    """The conditions to bin in: theta if it varies; phi if it varies among the showers
    at oblique incidence."""
    ref = base.summary
    out = ["theta"] if varies(ref.angles.get("theta")) else []
    phi = ref.angles.get("phi")
    if phi is not None and varies(phi[_oblique(ref)]):
        out.append("phi")
    return out


def has_varying_angles(base: Baseline) -> bool:
    return bool(_binned_conditions(base))


def has_theta(base: Baseline) -> bool:
    theta = base.summary.angles.get("theta")
    return theta is not None and bool(np.isfinite(theta).any())


# ---- metrics (rows of the table) ----------------------------------------------------------
def _stats_deg(values: np.ndarray) -> tuple[float, float, int]:
    v = np.degrees(values[np.isfinite(values)])
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std()), int(len(v))


def reconstructed_angle(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    """Reconstructed polar angle vs the true one: mean and RMS per true-theta bin for
    reference and generated showers, and the distribution of the reconstructed angle."""
    ref = base.summary
    edges = angle_bins(_condition(ref, "theta"))
    br = _bin_index(ref.angles["theta"], edges)
    bg = _bin_index(_condition(gen, "theta"), edges)
    rr, rg = ref.angles["theta_reco"], gen.angles["theta_reco"]
    table: dict[str, dict[str, list]] = {
        k: {"mean_deg": [], "rms_deg": [], "n": []} for k in ("reference", "generated")}
    true_deg, diff, floor = [], [], []
    for k in range(len(edges) - 1):
        true_deg.append(float(np.degrees(np.nanmean(ref.angles["theta"][br == k])))
                        if (br == k).any() else math.nan)
        for key, vals in (("reference", rr[br == k]), ("generated", rg[bg == k])):
            m, s, n = _stats_deg(vals)
            table[key]["mean_deg"].append(m)
            table[key]["rms_deg"].append(s)
            table[key]["n"].append(n)
        diff.append(abs(table["generated"]["mean_deg"][k] - table["reference"]["mean_deg"][k]))
        a = _stats_deg(rr[(br == k) & (ref.half == 0)])[0]
        b = _stats_deg(rr[(br == k) & (ref.half == 1)])[0]
        floor.append(abs(a - b))
    out: dict[str, Any] = {"theta_bins_deg": np.degrees(edges), "true_theta_deg": true_deg,
                           **table}
    out["max_abs_mean_diff_deg"] = _nanmax(diff)
    out["max_abs_mean_diff_floor_deg"] = _nanmax(floor)
    r_deg, g_deg = np.degrees(rr[np.isfinite(rr)]), np.degrees(rg[np.isfinite(rg)])
    ok_splits = [s[np.isfinite(rr)] for s in base.splits]
    try:
        dist = M.histogram_metrics(r_deg, ok_splits, g_deg, M.hist_edges(r_deg))
        dist["verdict"] = M.observable_verdict(dist)
    except InputError as exc:
        dist = not_computed(exc)
    out["distribution"] = dist
    out["verdict"] = M.worst([M.verdict(out["max_abs_mean_diff_deg"],
                                        out["max_abs_mean_diff_floor_deg"]),
                              dist.get("verdict", "grey")])
    return out


def angle_bins_metrics(base: Baseline, gen: SampleSummary) -> dict[str, Any]:
    """Per-shower observables and the response in bins of theta (and phi)."""
    out: dict[str, Any] = {}
    for name in _binned_conditions(base):
        ref = base.summary
        # phi is binned among the showers at oblique incidence only
        sel_r = _oblique(ref) if name == "phi" else np.ones(ref.n_used, bool)
        sel_g = _oblique(gen) if name == "phi" else np.ones(gen.n_used, bool)
        edges = angle_bins(ref.angles[name][sel_r])
        br = np.where(sel_r, _bin_index(ref.angles[name], edges), -1)
        bg = np.where(sel_g, _bin_index(_condition(gen, name), edges), -1)
        bins = [_one_bin(base, gen, br == k, bg == k) for k in range(len(edges) - 1)]
        for k, b in enumerate(bins):
            b["range_deg"] = [float(np.degrees(edges[k])), float(np.degrees(edges[k + 1]))]
        out[name] = {"edges_deg": np.degrees(edges), "bins": bins,
                     "verdict": M.worst([b["verdict"] for b in bins])}
    return out


def _one_bin(base: Baseline, gen: SampleSummary, sel_r: np.ndarray, sel_g: np.ndarray
             ) -> dict[str, Any]:
    ref = base.summary
    obs = {}
    for name in SCALAR_OBSERVABLES:
        if name not in ref.scalars or name not in gen.scalars:
            continue
        try:
            res = M.histogram_metrics(ref.scalars[name][sel_r], [s[sel_r] for s in base.splits],
                                      gen.scalars[name][sel_g], base.scalar_edges[name])
            res["verdict"] = M.observable_verdict(res)
        except InputError as exc:
            res = not_computed(exc)
        obs[name] = res
    resp = compare_response(ref, gen, base.energy_edges, sel_r, sel_g)
    verdicts = [v.get("verdict", "grey") for v in obs.values()] + [resp["verdict"]]
    return {"n_reference": int(sel_r.sum()), "n_generated": int(sel_g.sum()),
            "observables": obs, "response": resp, "verdict": M.worst(verdicts)}


def _nanmax(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return max(v) if v else math.nan
