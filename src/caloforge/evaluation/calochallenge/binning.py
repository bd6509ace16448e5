"""The official CaloChallenge histograms and their separation power.

Re-implements what ``code/evaluate_plotting_helper.py`` of CaloChallenge/homepage does
for ``--mode hist`` (the numbers written to ``histogram_chi2_<dataset>.txt``):

- each feature is histogrammed with fixed edges; entries outside the edges are dropped
  (``plt.hist`` with explicit bins), and each histogram is normalised to unit sum over
  the entries inside (``density=True`` times the bin widths);
- the "chi2" of that file is the separation power (triangular discrimination, eq. 15
  of arXiv:2009.03796): ``1/2 sum_i (p_i - q_i)^2 / (p_i + q_i + 1e-16)``;
- edges: ``E_tot/E_inc`` 100 linear bins on [0.5, 1.5]; ``E_layer`` 39 log bins from the
  threshold to the largest reference value (``logspace(log10 thr, log10 max, 40)``);
  centres of energy 100 linear bins on [-30, 30] mm (datasets 2, 3), [-500, 500] mm
  (dataset 1, layers 12 and 13) or [-100, 100] mm (other dataset-1 layers); widths
  [0, 30], [0, 400], [0, 100] mm likewise; voxel energies 49 log bins from the
  threshold to the largest reference voxel; dataset 1 also ``E_tot/E_inc`` per discrete
  incident energy (20 bins on [0.4, 1.4], photons above the fourth energy [0.9, 1.1]).
- The helper also defines sparsity (20 bins on [0, 1]), radial centre ([0, 42] mm for
  datasets 2/3, [0, 1500] mm for dataset-1 layers 12-14, else [0, 500]) and radial
  width ([0, 20], [0, 1500], [0, 500]) histograms that ``evaluate.py`` never calls; we
  compute them with those edges and mark them ``"official": False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from caloforge.evaluation.calochallenge.features import DatasetSpec, HighLevelFeatures


@dataclass
class HistogramSpec:
    """A named feature histogram: edges and the per-shower values of both samples."""

    name: str  # as the challenge's histogram_chi2 file names it
    edges: np.ndarray | None  # None: could not be defined (reason in ``problem``)
    official: bool = True
    problem: str = ""


def separation_power_official(counts_ref: np.ndarray, counts_gen: np.ndarray) -> float:
    """``1/2 sum (p - q)^2 / (p + q + 1e-16)`` of the two histograms normalised to unit
    sum; NaN if either histogram is empty (the challenge's density would be 0/0)."""
    a = np.asarray(counts_ref, dtype=np.float64)
    b = np.asarray(counts_gen, dtype=np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    p, q = a / a.sum(), b / b.sum()
    return float(0.5 * np.sum((p - q) ** 2 / (p + q + 1e-16)))


def counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Entries per bin; values outside [edges[0], edges[-1]] (and NaN) are dropped."""
    # np.histogram's rule (edges[i] <= v < edges[i+1], the last bin closed) by a binary
    # search of the edges per value: O(n log bins) instead of histogram's sort of the data.
    # In blocks of 2^20 values: float64 and index copies of a whole chunk's voxels would
    # add ~0.5 GB to the protocol's peak memory.
    edges = np.asarray(edges, dtype=np.float64)
    values = np.asarray(values).reshape(-1)
    out = np.zeros(len(edges) - 1, dtype=np.int64)
    for lo in range(0, len(values), 1 << 20):
        v = values[lo:lo + (1 << 20)].astype(np.float64)
        idx = np.searchsorted(edges, v, "right")  # len(edges): at/above the last edge, NaN
        out += np.bincount(idx, minlength=len(edges) + 1)[1:len(edges)]
        out[-1] += int(np.count_nonzero(v == edges[-1]))
    return out


def log_edges(threshold: float, maximum: float, n_edges: int) -> tuple[np.ndarray | None, str]:
    """``logspace(log10 threshold, log10 maximum, n_edges)``, or None and why not."""
    if not (maximum > threshold > 0):
        return None, (f"largest reference value {maximum:.4g} MeV is not above the "
                      f"threshold {threshold:.4g} MeV")
    return np.logspace(math.log10(threshold), math.log10(maximum), n_edges), ""


def _centre_limits(spec: DatasetSpec, layer: int) -> tuple[float, float]:
    if not spec.is_dataset_1:
        return 30.0, 30.0
    return (500.0, 400.0) if layer in (12, 13) else (100.0, 100.0)


def _radial_limits(spec: DatasetSpec, layer: int) -> tuple[float, float]:
    if not spec.is_dataset_1:
        return 42.0, 20.0
    return (1500.0, 1500.0) if layer in (12, 13, 14) else (500.0, 500.0)


DISCRETE_ENERGIES_MEV = 2.0 ** np.linspace(8, 23, 16)


def feature_histograms(spec: DatasetSpec, layers: list[int], alpha_layers: list[int],
                       ref: HighLevelFeatures, gen: HighLevelFeatures
                       ) -> list[tuple[HistogramSpec, np.ndarray, np.ndarray]]:
    """Every official histogram (plus the defined-but-unused ones) with the values of
    the reference and the generated sample."""
    out: list[tuple[HistogramSpec, np.ndarray, np.ndarray]] = []
    out.append((HistogramSpec("Etot / Einc", np.linspace(0.5, 1.5, 101)),
                ref.e_tot / ref.e_inc, gen.e_tot / gen.e_inc))
    for i, k in enumerate(layers):
        edges, why = log_edges(spec.threshold_mev, float(ref.e_layer[:, i].max(initial=0)), 40)
        out.append((HistogramSpec(f"E layer {k}", edges, problem=why),
                    ref.e_layer[:, i], gen.e_layer[:, i]))
    for label, attr in (("EC Eta", "ec_x"), ("EC Phi", "ec_y"),
                        ("Width Eta", "width_x"), ("Width Phi", "width_y")):
        for j, k in enumerate(alpha_layers):
            centre, width = _centre_limits(spec, k)
            edges = (np.linspace(-centre, centre, 101) if label.startswith("EC")
                     else np.linspace(0.0, width, 101))
            out.append((HistogramSpec(f"{label} layer {k}", edges),
                        getattr(ref, attr)[:, j], getattr(gen, attr)[:, j]))
    if spec.is_dataset_1:
        bins = np.linspace(0.4, 1.4, 21)
        for i in range(len(DISCRETE_ENERGIES_MEV) - 1):
            lo, hi = DISCRETE_ENERGIES_MEV[i], DISCRETE_ENERGIES_MEV[i + 1]
            if i > 3 and spec.key == "1-photons":
                bins = np.linspace(0.9, 1.1, 21)
            sr = (ref.e_inc >= lo) & (ref.e_inc < hi)
            sg = (gen.e_inc >= lo) & (gen.e_inc < hi)
            out.append((HistogramSpec(f"Etot / Einc at E = {lo:g}", bins),
                        ref.e_tot[sr] / ref.e_inc[sr], gen.e_tot[sg] / gen.e_inc[sg]))
    for i, k in enumerate(layers):
        out.append((HistogramSpec(f"Sparsity layer {k}", np.linspace(0.0, 1.0, 21),
                                  official=False), ref.sparsity[:, i], gen.sparsity[:, i]))
    for label, attr, which in (("EC r", "ec_r", 0), ("Width r", "width_r", 1)):
        for i, k in enumerate(layers):
            hi = _radial_limits(spec, k)[which]
            out.append((HistogramSpec(f"{label} layer {k}", np.linspace(0.0, hi, 101),
                                      official=False),
                        getattr(ref, attr)[:, i], getattr(gen, attr)[:, i]))
    return out
