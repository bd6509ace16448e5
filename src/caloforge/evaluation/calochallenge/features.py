"""The CaloChallenge 2022 high-level features, as the challenge's evaluation defines them.

Definitions (CaloChallenge/homepage, ``code/HighLevelFeatures.py``; re-implemented here):
for every layer that has voxels ("relevant" layers), after zeroing voxels below the
dataset's readout threshold,

- ``E_layer``: the layer's energy sum; ``E_tot``: the sum over all voxels;
- ``sparsity``: the fraction of the layer's voxels with no energy (after the threshold);
- ``EC_r`` / ``width_r``: energy-weighted mean and standard deviation of the voxels'
  radial bin centres;
- for layers with more than one angular bin only: ``EC_x`` / ``EC_y`` (the challenge's
  "EC eta" / "EC phi") and ``width_x`` / ``width_y``, energy-weighted mean and standard
  deviation of the voxel centres ``r_mid cos(alpha_mid)`` / ``r_mid sin(alpha_mid)``,
  ``alpha`` bins spanning [-pi, pi).

Means divide by ``(sum E) + 1e-16`` (so an empty layer has centre 0 and width 0) and the
variance is clipped at 0 before the square root, as in the challenge code.  The voxel
centres come from :mod:`caloforge.geometry.calochallenge` (same binning XML files).

The classifier / FPD / KPD feature vector (challenge ``prepare_high_data_for_classifier``)
is, in this order: ``log10 E_inc``, ``log10(E_layer + 1e-8)`` per relevant layer,
``EC_x/100``, ``EC_y/100``, ``width_x/100``, ``width_y/100`` per alpha-binned layer,
``log10(E_tot + 1e-8)``, ``sparsity`` per relevant layer, ``EC_r/100`` and
``width_r/100`` per relevant layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from caloforge.errors import GeometryError
from caloforge.geometry import CylindricalGeometry, get_geometry
from caloforge.geometry.calochallenge import OFFICIAL_THRESHOLD_FILE_MEV


@dataclass(frozen=True)
class DatasetSpec:
    """One CaloChallenge dataset: its geometry and the evaluation's fixed settings."""

    key: str  # the challenge's --dataset value: "1-photons", "1-pions", "2", "3"
    geometry: str
    # Voxels below this (MeV, in the files' energy convention) are zeroed first.
    threshold_mev: float
    # The challenge's hard-coded train / model-selection / final-evaluation sizes.
    official_split: tuple[int, int, int]

    @property
    def is_dataset_1(self) -> bool:
        return self.key.startswith("1")


DATASETS: dict[str, DatasetSpec] = {
    spec.key: spec for spec in (
        DatasetSpec("1-photons", "calochallenge-1-photons",
                    OFFICIAL_THRESHOLD_FILE_MEV["calochallenge-1-photons"], (80000, 20000, 21000)),
        DatasetSpec("1-pions", "calochallenge-1-pions",
                    OFFICIAL_THRESHOLD_FILE_MEV["calochallenge-1-pions"], (80000, 20000, 20800)),
        DatasetSpec("2", "calochallenge-2", OFFICIAL_THRESHOLD_FILE_MEV["calochallenge-2"],
                    (60000, 20000, 20000)),
        DatasetSpec("3", "calochallenge-3", OFFICIAL_THRESHOLD_FILE_MEV["calochallenge-3"],
                    (60000, 20000, 20000)),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset for a challenge key ("2") or a geometry name ("calochallenge-2")."""
    for spec in DATASETS.values():
        if name in (spec.key, spec.geometry):
            return spec
    raise GeometryError(
        f"the CaloChallenge protocol needs a CaloChallenge dataset (one of "
        f"{', '.join(s.geometry for s in DATASETS.values())}), got {name!r}")


class LayerLayout:
    """Per-voxel positions and layer slices of a CaloChallenge geometry."""

    def __init__(self, geometry: str) -> None:
        geo = get_geometry(geometry)
        if not isinstance(geo, CylindricalGeometry):
            raise GeometryError(f"{geometry} is not a cylindrical CaloChallenge geometry")
        self.geometry = geo
        self.layers = [k for k in geo.nonempty_layers]
        self.alpha_layers = [k for k in self.layers if geo.n_alpha[k] > 1]
        off = geo.layer_offsets
        self.slices = {k: slice(int(off[k]), int(off[k + 1])) for k in self.layers}
        centres = np.asarray(geo.cell_centres, dtype=np.float64)
        self.x, self.y = centres[:, 0], centres[:, 1]
        r_mid = np.zeros(geo.n_voxels)
        for k in self.layers:
            e = np.asarray(geo.r_edges[k], dtype=np.float64)
            r_mid[self.slices[k]] = np.tile(0.5 * (e[1:] + e[:-1]), geo.n_alpha[k])
        self.r = r_mid

    @property
    def n_voxels(self) -> int:
        return self.geometry.n_voxels

    @cached_property
    def n_features(self) -> int:
        return 2 + 4 * len(self.layers) + 4 * len(self.alpha_layers)


@dataclass
class HighLevelFeatures:
    """Per-shower features, arrays of shape (N,) or (N, n_layers) in layer order."""

    e_inc: np.ndarray
    e_tot: np.ndarray
    e_layer: np.ndarray
    sparsity: np.ndarray
    ec_r: np.ndarray
    width_r: np.ndarray
    ec_x: np.ndarray  # (N, n_alpha_layers)
    ec_y: np.ndarray
    width_x: np.ndarray
    width_y: np.ndarray

    def __len__(self) -> int:
        return len(self.e_inc)

    def vector(self) -> np.ndarray:
        """(N, d) float64 classifier / FPD / KPD input in the challenge's order.

        Filled block by block (one temporary block at a time, computed contiguous as
        before, so the same values): a list of all blocks and their concatenation would
        hold the vector twice (0.3 GB per 100k dataset-2 showers)."""
        blocks = (lambda: np.log10(self.e_inc)[:, None],
                  lambda: np.log10(self.e_layer + 1e-8),
                  lambda: self.ec_x / 1e2, lambda: self.ec_y / 1e2,
                  lambda: self.width_x / 1e2, lambda: self.width_y / 1e2,
                  lambda: np.log10(self.e_tot + 1e-8)[:, None], lambda: self.sparsity,
                  lambda: self.ec_r / 1e2, lambda: self.width_r / 1e2)
        widths = (1, self.e_layer.shape[1], *(a.shape[1] for a in (
            self.ec_x, self.ec_y, self.width_x, self.width_y)), 1, self.sparsity.shape[1],
            self.ec_r.shape[1], self.width_r.shape[1])
        out = np.empty((len(self), sum(widths)))
        col = 0
        for block, width in zip(blocks, widths):
            out[:, col:col + width] = block()
            col += width
        return out


def apply_official_threshold(energies: np.ndarray, threshold_mev: float) -> np.ndarray:
    """float32 copy with voxels below the threshold set to 0 (challenge: ``E < min``)."""
    e = np.asarray(energies, dtype=np.float32)
    return np.where(e < np.float32(threshold_mev), np.float32(0.0), e)


def _centre_width(pos: np.ndarray, e: np.ndarray, norm: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    mean = e @ pos / norm
    second = e @ (pos * pos) / norm
    return mean, np.sqrt(np.clip(second - mean ** 2, 0.0, None))


FEATURE_ROWS = 256  # showers converted to float64 at a time (13 MB for dataset 2)


def compute_features(energies: np.ndarray, e_inc: np.ndarray, layout: LayerLayout
                     ) -> HighLevelFeatures:
    """High-level features of thresholded showers ``energies`` (N, n_voxels), in MeV.

    The showers are converted to float64 a few hundred at a time into one reused buffer
    (a float64 copy of a whole chunk would cost more in memory and page faults than the
    arithmetic); each layer is a strided view of it."""
    e_all = np.asarray(energies)
    n = len(e_all)
    n_l, n_a = len(layout.layers), len(layout.alpha_layers)
    out = {k: np.zeros((n, n_l)) for k in ("e_layer", "sparsity", "ec_r", "width_r")}
    out.update({k: np.zeros((n, n_a)) for k in ("ec_x", "ec_y", "width_x", "width_y")})
    e_tot = np.zeros(n)
    alpha_col = {k: i for i, k in enumerate(layout.alpha_layers)}
    buf = np.empty((min(n, FEATURE_ROWS), e_all.shape[1]))
    for lo in range(0, n, FEATURE_ROWS):
        rows = slice(lo, min(lo + FEATURE_ROWS, n))
        e64 = buf[:rows.stop - lo]
        np.copyto(e64, e_all[rows])
        e_tot[rows] = e64.sum(axis=1)
        for i, k in enumerate(layout.layers):
            sl = layout.slices[k]
            e = e64[:, sl]
            total = e.sum(axis=1)
            norm = total + 1e-16
            out["e_layer"][rows, i] = total
            out["sparsity"][rows, i] = 1.0 - (e > 0).mean(axis=1)
            out["ec_r"][rows, i], out["width_r"][rows, i] = _centre_width(layout.r[sl], e, norm)
            if k in alpha_col:
                j = alpha_col[k]
                out["ec_x"][rows, j], out["width_x"][rows, j] = _centre_width(
                    layout.x[sl], e, norm)
                out["ec_y"][rows, j], out["width_y"][rows, j] = _centre_width(
                    layout.y[sl], e, norm)
    return HighLevelFeatures(
        e_inc=np.asarray(e_inc, dtype=np.float64).reshape(-1), e_tot=e_tot, **out)
