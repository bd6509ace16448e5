"""Point-level observables of point-cloud samples (CaloClouds-style generators).

A point file is evaluated twice over: its points are projected into the geometry's cells
(:meth:`PointCloudBatch.to_voxels`, the function ``caloforge generate --project`` uses
too) and get every voxel observable, and the points themselves give:

- per shower: the number of points and their energy sum, and the fraction of the point
  energy that fell outside every cell in the projection;
- per shower and layer: the number of points and their energy;
- the point-energy spectrum (fixed log bins, :data:`SPECTRUM_EDGES_MEV`);
- the mean radial profile (energy per radial bin around the impact point, the
  geometry's radial bins) and the mean longitudinal profile (energy per layer).

They are accumulated chunk by chunk like the voxel observables (per-shower arrays plus
per-half sums for the spectrum and the profiles, for the noise floors).

>>> import numpy as np
>>> from caloforge.data import Conditions, PointCloudBatch
>>> from caloforge.geometry import get_geometry
>>> pts = PointCloudBatch([0, 2], x=[0, 10.], y=[0, 0.], z=[0, 0.], energy=[1., 3.],
...                       layer=[0, 2], conditions=Conditions([1e4]), geometry="ild-ecal")
>>> acc = PointAccumulator(get_geometry("ild-ecal"), np.array([0., 5, 20]))
>>> acc.add(pts, np.zeros(1, np.int8), np.zeros(1))
>>> s = acc.finish()
>>> s.scalars["n_points"].tolist(), s.layers["e_points_layer"][0, :3].tolist()
([2.0], [1.0, 0.0, 3.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caloforge.data.batch import PointCloudBatch
from caloforge.geometry import Geometry

POINT_SCALARS: dict[str, tuple[str, str]] = {
    "n_points": ("number of points", ""),
    "e_points": ("point energy sum", "MeV"),
}
POINT_LAYER_FEATURES: dict[str, tuple[str, str]] = {
    "points_layer": ("points per layer", ""),
    "e_points_layer": ("point energy per layer", "MeV"),
}
#: point-energy spectrum bins (MeV): 1e-4 to 1e4, 12 per decade, plus under/overflow
SPECTRUM_EDGES_MEV = np.logspace(-4, 4, 97)


@dataclass
class PointSummary:
    """The point observables of one sample (showers in the order of the voxel summary)."""

    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    outside_fraction: np.ndarray | None = None  # (N,) of the point energy
    spectrum: np.ndarray | None = None  # (2, n_bins + 2) counts per half
    profiles: dict[str, np.ndarray] = field(default_factory=dict)  # (2, 2, nb) per half


class PointAccumulator:
    """Collects :class:`PointSummary` over the chunks of one sample."""

    def __init__(self, geometry: Geometry, r_edges: np.ndarray) -> None:
        self.n_layers = geometry.n_layers
        self.geometry = geometry
        self.r_edges = np.asarray(r_edges, dtype=np.float64)
        nb = len(self.r_edges) - 1
        self.spectrum = np.zeros((2, len(SPECTRUM_EDGES_MEV) + 1), np.int64)
        self.profiles = {"radial": np.zeros((2, 2, nb)),
                         "longitudinal": np.zeros((2, 2, self.n_layers))}
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, points: PointCloudBatch, half: np.ndarray, outside_mev: np.ndarray,
            keep: np.ndarray | None = None) -> None:
        """One chunk; ``keep`` (per shower) drops showers the voxel pass skipped."""
        n = len(points)
        keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
        shower = points.shower_index
        sel = keep[shower]
        # renumber the kept showers 0..n_kept-1 so that rows match ``half``
        new_index = np.cumsum(keep) - 1
        s = new_index[shower[sel]]
        m = int(keep.sum())
        e = points.energy[sel].astype(np.float64)
        layer = points.layers_on(self.geometry)[sel]
        flat = s * self.n_layers + layer
        e_layer = np.bincount(flat, e, m * self.n_layers).reshape(m, self.n_layers)
        n_layer = np.bincount(flat, minlength=m * self.n_layers).reshape(m, self.n_layers)
        total = e_layer.sum(axis=1)
        outside = np.asarray(outside_mev, dtype=np.float64)[keep]
        self._append("n_points", n_layer.sum(axis=1).astype(np.float64))
        self._append("e_points", total)
        self._append("points_layer", n_layer.astype(np.float32))
        self._append("e_points_layer", e_layer.astype(np.float32))
        self._append("outside_fraction", np.divide(outside, total, out=np.zeros(m),
                                                   where=total > 0))
        # spectrum: bin 0 underflow, last bin overflow
        b = np.searchsorted(SPECTRUM_EDGES_MEV, e, side="right")
        for h in (0, 1):
            self.spectrum[h] += np.bincount(b[half[s] == h], minlength=self.spectrum.shape[1])
        impact = points.conditions.impact
        cx, cy = (np.zeros(m), np.zeros(m)) if impact is None else \
            (impact[keep, 0], impact[keep, 1])
        r = np.hypot(points.x[sel] - cx[s], points.y[sel] - cy[s])
        nb = len(self.r_edges) - 1
        rb = np.clip(np.searchsorted(self.r_edges, r, side="right") - 1, 0, nb - 1)
        radial = np.bincount(s * nb + rb, e, m * nb).reshape(m, nb)
        for key, per_shower in (("radial", radial), ("longitudinal", e_layer)):
            for h in (0, 1):
                rows = per_shower[half == h]
                self.profiles[key][h, 0] += rows.sum(axis=0)
                self.profiles[key][h, 1] += (rows ** 2).sum(axis=0)

    def _append(self, key: str, value: np.ndarray) -> None:
        self.parts.setdefault(key, []).append(value)

    def finish(self) -> PointSummary:
        def cat(key: str, width: int | None = None) -> np.ndarray:
            parts = self.parts.get(key)
            if parts:
                return np.concatenate(parts)
            return np.zeros((0,) if width is None else (0, width), np.float32)

        return PointSummary(
            scalars={k: cat(k) for k in POINT_SCALARS},
            layers={k: cat(k, self.n_layers) for k in POINT_LAYER_FEATURES},
            outside_fraction=cat("outside_fraction"), spectrum=self.spectrum,
            profiles=self.profiles)
