"""Showers in memory: conditions, dense voxels, sparse hits and point clouds.

Energies are in MeV, positions in mm, angles in radians.  A :class:`ShowerBatch` stores
dense ``(N, n_voxels)`` voxel energies once; sparse hits and point views are computed
on demand.  A :class:`PointCloudBatch` stores variable-length point clouds flat, with
offsets, and projects onto any geometry.

>>> import numpy as np
>>> from caloforge.data import Conditions, ShowerBatch
>>> b = ShowerBatch("calogan", np.zeros((2, 504), np.float32), Conditions(np.array([1e4, 2e4])))
>>> len(b), b.n_voxels
(2, 504)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from caloforge.errors import GeometryMismatchError, InputError
from caloforge.geometry import Geometry, get_geometry

# Particle names <-> PDG codes (the conditions store PDG codes).
PARTICLES: dict[str, int] = {
    "photon": 22, "electron": 11, "positron": -11, "pi+": 211, "pi-": -211,
}
PDG_NAMES = {v: k for k, v in PARTICLES.items()}


def _opt(a: Any, dtype: Any) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=dtype).reshape(-1)


@dataclass
class Conditions:
    """Per-shower conditions: incident energy (MeV), optional direction and particle.

    ``theta``/``phi`` are the polar and azimuthal angles of the incident direction with
    respect to the calorimeter normal (rad); ``particle`` holds PDG codes; ``impact`` the
    (x, y) impact point on the front face (mm).
    """

    incident_energy: np.ndarray
    theta: np.ndarray | None = None
    phi: np.ndarray | None = None
    particle: np.ndarray | None = None
    impact: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.incident_energy = np.asarray(self.incident_energy, dtype=np.float64).reshape(-1)
        self.theta = _opt(self.theta, np.float64)
        self.phi = _opt(self.phi, np.float64)
        self.particle = _opt(self.particle, np.int32)
        if self.impact is not None:
            self.impact = np.asarray(self.impact, dtype=np.float64).reshape(-1, 2)
        n = len(self.incident_energy)
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and len(v) != n:
                raise InputError(f"condition {f.name!r} has {len(v)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.incident_energy)

    def __getitem__(self, idx: Any) -> Conditions:
        return Conditions(**{
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx])
            for f in fields(self)
        })

    @property
    def present(self) -> list[str]:
        """Names of the conditions that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    @staticmethod
    def concatenate(parts: list[Conditions]) -> Conditions:
        if not parts:
            raise InputError("cannot concatenate zero condition sets")
        out = {}
        for f in fields(Conditions):
            vals = [getattr(p, f.name) for p in parts]
            if all(v is None for v in vals):
                out[f.name] = None
            elif any(v is None for v in vals):
                raise InputError(f"condition {f.name!r} is set in some parts only")
            else:
                out[f.name] = np.concatenate(vals)
        return Conditions(**out)

    def validate(self, source: str | None = None) -> None:
        """Raise :class:`InputError` for non-finite or non-positive incident energies."""
        e = self.incident_energy
        bad = ~np.isfinite(e)
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} incident energies are NaN/inf (first at shower "
                f"{int(np.flatnonzero(bad)[0])})", source)
        if (e <= 0).any():
            raise InputError(
                f"{int((e <= 0).sum())} incident energies are <= 0 (first at shower "
                f"{int(np.flatnonzero(e <= 0)[0])})", source)
        for name in ("theta", "phi"):
            v = getattr(self, name)
            if v is not None and not np.isfinite(v).all():
                raise InputError(f"condition {name!r} has NaN/inf values", source)


@dataclass
class Hits:
    """Sparse view of a batch: one row per non-zero cell."""

    shower: np.ndarray  # (M,) index of the shower in the batch
    cell: np.ndarray  # (M,) flat voxel index
    energy: np.ndarray  # (M,) MeV

    def positions(self, geometry: Geometry) -> np.ndarray:
        """(M, 3) cell-centre positions in mm."""
        return geometry.cell_centres[self.cell]


@dataclass
class ShowerBatch:
    """N showers on one geometry as dense voxel energies (MeV) plus their conditions.

    ``overflow`` (N, n_layers) holds energy outside the cells of each layer where the
    format records it (CaloGAN).  ``metadata`` is free-form provenance (model, seed,
    time per shower) that writers store in the file.
    """

    geometry: str
    energies: np.ndarray
    conditions: Conditions
    overflow: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        geo = self.geometry_object
        self.energies = np.asarray(self.energies, dtype=np.float32)
        if self.energies.ndim != 2 or self.energies.shape[1] != geo.n_voxels:
            raise GeometryMismatchError(
                f"showers of shape {self.energies.shape} do not fit geometry {geo.name} "
                f"({geo.n_voxels} voxels)")
        if len(self.conditions) != len(self.energies):
            raise InputError(
                f"{len(self.energies)} showers but {len(self.conditions)} incident energies")
        if self.overflow is not None:
            self.overflow = np.asarray(self.overflow, dtype=np.float32)
            if self.overflow.shape != (len(self.energies), geo.n_layers):
                raise InputError(
                    f"overflow has shape {self.overflow.shape}, expected "
                    f"{(len(self.energies), geo.n_layers)}")

    # ---- basics ---------------------------------------------------------------------
    @property
    def geometry_object(self) -> Geometry:
        return get_geometry(self.geometry)

    @property
    def n_voxels(self) -> int:
        return self.energies.shape[1]

    @property
    def incident_energy(self) -> np.ndarray:
        return self.conditions.incident_energy

    def __len__(self) -> int:
        return len(self.energies)

    def __getitem__(self, idx: Any) -> ShowerBatch:
        if isinstance(idx, (int, np.integer)):
            idx = slice(int(idx), int(idx) + 1) if idx != -1 else slice(-1, None)
        return ShowerBatch(
            self.geometry, self.energies[idx], self.conditions[idx],
            None if self.overflow is None else self.overflow[idx], dict(self.metadata))

    @staticmethod
    def concatenate(parts: list[ShowerBatch]) -> ShowerBatch:
        if not parts:
            raise InputError("cannot concatenate zero batches")
        geos = {p.geometry for p in parts}
        if len(geos) > 1:
            raise GeometryMismatchError(f"cannot concatenate batches of geometries {sorted(geos)}")
        overflow = None
        if any(p.overflow is not None for p in parts):
            if not all(p.overflow is not None for p in parts):
                raise InputError("overflow is set in some batches only")
            overflow = np.concatenate([p.overflow for p in parts])
        return ShowerBatch(
            parts[0].geometry, np.concatenate([p.energies for p in parts]),
            Conditions.concatenate([p.conditions for p in parts]), overflow,
            dict(parts[0].metadata))

    def validate(self, source: str | None = None) -> None:
        """Raise :class:`InputError` naming ``source`` for NaN/inf or negative energies."""
        self.conditions.validate(source)
        if self.energies.size == 0:
            return
        # Fast path: min/max need no temporary arrays and NaN propagates through min.
        lo, hi = self.energies.min(), self.energies.max()
        if np.isfinite(lo) and np.isfinite(hi) and lo >= 0:
            return
        finite = np.isfinite(self.energies)
        if not finite.all():
            rows = np.flatnonzero(~finite.all(axis=1))
            raise InputError(
                f"{len(rows)} showers contain NaN/inf voxel energies (first: shower {rows[0]})",
                source)
        neg = self.energies < 0
        if neg.any():
            rows = np.flatnonzero(neg.any(axis=1))
            raise InputError(
                f"{len(rows)} showers contain negative voxel energies (first: shower "
                f"{rows[0]}, min {self.energies.min():.4g} MeV)", source)

    # ---- views and transforms ---------------------------------------------------------
    def total_energy(self) -> np.ndarray:
        """(N,) visible energy sum in MeV (voxels only, overflow excluded)."""
        return self.energies.sum(axis=1, dtype=np.float64)

    def layer_energies(self) -> np.ndarray:
        """(N, n_layers) energy per layer in MeV."""
        off = self.geometry_object.layer_offsets
        out = np.zeros((len(self), len(off) - 1))
        for k in range(len(off) - 1):  # a loop over layers: empty layers give 0
            if off[k + 1] > off[k]:
                out[:, k] = self.energies[:, off[k]:off[k + 1]].sum(axis=1, dtype=np.float64)
        return out

    def with_threshold(self, threshold_mev: float | None = None) -> ShowerBatch:
        """Copy with cells below the readout threshold set to 0 (default: the geometry's)."""
        thr = self.geometry_object.readout_threshold_mev if threshold_mev is None else threshold_mev
        return replace(self, energies=np.where(self.energies >= thr, self.energies, 0.0)
                       .astype(np.float32))

    def hits(self, threshold_mev: float = 0.0) -> Hits:
        """Sparse hits with energy > ``threshold_mev`` (cells at exactly 0 never count)."""
        shower, cell = np.nonzero(self.energies > max(threshold_mev, 0.0))
        return Hits(shower.astype(np.int64), cell.astype(np.int64), self.energies[shower, cell])

    @staticmethod
    def from_hits(geometry: str, hits: Hits, conditions: Conditions, **kw: Any) -> ShowerBatch:
        """Dense batch from sparse hits (hits on the same cell are summed)."""
        n_vox = get_geometry(geometry).n_voxels
        dense = np.zeros((len(conditions), n_vox), np.float32)
        np.add.at(dense, (hits.shower, hits.cell), hits.energy)
        return ShowerBatch(geometry, dense, conditions, **kw)

    def to_points(self, threshold_mev: float = 0.0) -> PointCloudBatch:
        """Point clouds with one point per hit cell, at the cell centre."""
        h = self.hits(threshold_mev)
        geo = self.geometry_object
        pos = geo.cell_centres[h.cell]
        counts = np.bincount(h.shower, minlength=len(self))
        return PointCloudBatch(
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            x=pos[:, 0], y=pos[:, 1], z=pos[:, 2], energy=h.energy,
            layer=geo.layer_of_voxel[h.cell], conditions=self.conditions,
            geometry=self.geometry, metadata=dict(self.metadata))


@dataclass
class PointCloudBatch:
    """N variable-length point clouds stored flat: points of shower k are
    ``offsets[k]:offsets[k+1]``.  x, y, z in mm, energy in MeV, optional layer index."""

    offsets: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    energy: np.ndarray
    conditions: Conditions
    layer: np.ndarray | None = None
    geometry: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        for name in ("x", "y", "z", "energy"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32 if name == "energy"
                                           else np.float64).reshape(-1))
        m = len(self.energy)
        if any(len(getattr(self, n)) != m for n in ("x", "y", "z")):
            raise InputError("point arrays x, y, z, energy differ in length")
        if self.layer is not None:
            self.layer = np.asarray(self.layer, dtype=np.int64).reshape(-1)
            if len(self.layer) != m:
                raise InputError("point layer array differs in length from the energies")
        if len(self.offsets) != len(self.conditions) + 1 or self.offsets[0] != 0 \
                or self.offsets[-1] != m or np.any(np.diff(self.offsets) < 0):
            raise InputError("point-cloud offsets are inconsistent with the number of points")

    def __len__(self) -> int:
        return len(self.conditions)

    @property
    def n_points(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def shower_index(self) -> np.ndarray:
        """(M,) shower number of every point."""
        return np.repeat(np.arange(len(self)), self.n_points)

    def __getitem__(self, idx: slice) -> PointCloudBatch:
        if not isinstance(idx, slice) or idx.step not in (None, 1):
            raise TypeError("point clouds support contiguous slices only")
        start, stop, _ = idx.indices(len(self))
        stop = max(stop, start)
        lo, hi = self.offsets[start], self.offsets[stop]
        sl = slice(lo, hi)
        return PointCloudBatch(
            self.offsets[start:stop + 1] - lo, self.x[sl], self.y[sl], self.z[sl],
            self.energy[sl], self.conditions[start:stop],
            None if self.layer is None else self.layer[sl], self.geometry, dict(self.metadata))

    def validate(self, source: str | None = None) -> None:
        self.conditions.validate(source)
        for name in ("x", "y", "z", "energy"):
            if not np.isfinite(getattr(self, name)).all():
                raise InputError(f"point {name} contains NaN/inf", source)
        if (self.energy < 0).any():
            raise InputError("point energies contain negative values", source)

    def layers_on(self, geometry: Geometry) -> np.ndarray:
        """Layer index of every point: the stored one, else from z and the layer fronts."""
        if self.layer is not None:
            return self.layer
        fronts = geometry.layer_front_z_mm
        return np.clip(np.searchsorted(fronts, self.z, side="right") - 1, 0, geometry.n_layers - 1)

    def to_voxels(self, geometry: str | Geometry | None = None, realistic: bool = False
                  ) -> tuple[ShowerBatch, np.ndarray]:
        """Deposit the points into the cells of ``geometry``.

        Returns the dense batch and the (N,) energy (MeV) that fell outside every cell.
        Energy is conserved: ``batch.total_energy() + outside (+ overflow) == point sum``.
        Where the geometry records overflow (CaloGAN), outside energy goes to the
        overflow of its layer.  ``realistic`` applies the wafer gaps and staggering of
        Cartesian geometries that define them (:meth:`CartesianGeometry.project`).
        """
        geo = get_geometry(geometry or self.geometry) if not isinstance(geometry, Geometry) \
            else geometry
        if geo is None:
            raise InputError("point clouds carry no geometry; name one to voxelise them")
        layer = self.layers_on(geo)
        if realistic and hasattr(geo, "project"):
            cell = geo.project(self.x, self.y, layer, realistic=True)
        else:
            cell = geo.locate(self.x, self.y, layer)
        shower = self.shower_index
        dense = np.zeros((len(self), geo.n_voxels), np.float64)
        inside = cell >= 0
        np.add.at(dense, (shower[inside], cell[inside]), self.energy[inside])
        outside = np.bincount(shower[~inside], weights=self.energy[~inside], minlength=len(self))
        overflow = None
        if "overflow" in geo.tags:
            overflow = np.zeros((len(self), geo.n_layers))
            lay = np.clip(layer[~inside], 0, geo.n_layers - 1)
            np.add.at(overflow, (shower[~inside], lay), self.energy[~inside])
        batch = ShowerBatch(geo.name, dense.astype(np.float32), self.conditions, overflow,
                            dict(self.metadata))
        return batch, outside
