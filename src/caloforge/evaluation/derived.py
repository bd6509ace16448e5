"""Quantities derived from a :class:`~caloforge.evaluation.stream.SampleSummary` that
both the metrics and the report use: feature matrices, mean profiles, the response
table and the correlation matrix."""

from __future__ import annotations

import math

import numpy as np

from caloforge.evaluation.observables import (
    CORRELATION_OBSERVABLES,
    GeometryFeatures,
    mu90_sigma90,
)
from caloforge.evaluation.stream import SampleSummary
from caloforge.geometry import CylindricalGeometry, get_geometry

# Layer features compared per layer (and summarised over layers) in every geometry.
LAYER_METRIC_FEATURES = ("e_layer", "hits_layer", "cx_layer", "cy_layer", "wx_layer",
                         "wy_layer", "cr_layer", "wr_layer", "sparsity_layer")
HL_LAYER_FEATURES = ("e_layer", "cx_layer", "cy_layer", "wx_layer", "wy_layer")


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


def correlation_matrix(values: dict[str, np.ndarray], sel: np.ndarray | None = None
                       ) -> np.ndarray:
    """Pearson correlation matrix of the seed-001 observable set (constant columns: 0)."""
    x = np.stack([values[k] if sel is None else values[k][sel]
                  for k in CORRELATION_OBSERVABLES], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(x, rowvar=False)
    return np.nan_to_num(c, nan=0.0)


def is_cylindrical(name: str) -> bool:
    return isinstance(get_geometry(name), CylindricalGeometry)
