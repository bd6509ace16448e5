"""Detector geometries as plain data.

A geometry is a stack of readout layers along z (the direction of the incident
particle).  Each layer has a sampling structure (absorber, then active medium, possibly
repeated) and a set of readout cells.  Voxels are numbered layer by layer; inside a
layer the order depends on the cell layout (row-major ``(i, j)`` for Cartesian grids,
angular-major/radial-fastest for cylindrical binnings as in the CaloChallenge).

Lengths are in mm, energies in MeV.  The front face of the first layer is at z = 0 and
the beam axis is x = y = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from caloforge.errors import GeometryError
from caloforge.geometry.materials import Material, get_material, mip_most_probable_deposit


@dataclass(frozen=True)
class LayerSpec:
    """Sampling structure of one readout layer: ``repeats`` x (absorber, active, passive).

    ``passive_mm`` is non-absorber material after the active medium (PCB, air, glue),
    counted as ``passive`` material (default air, i.e. only adds depth).
    """

    absorber: str
    absorber_mm: float
    active: str
    active_mm: float
    repeats: int = 1
    passive: str = "air"
    passive_mm: float = 0.0

    @property
    def thickness_mm(self) -> float:
        return self.repeats * (self.absorber_mm + self.active_mm + self.passive_mm)

    @property
    def radiation_lengths(self) -> float:
        """Material budget of the layer in units of X0."""
        per_cell = (
            self.absorber_mm / get_material(self.absorber).radiation_length_mm
            + self.active_mm / get_material(self.active).radiation_length_mm
            + self.passive_mm / get_material(self.passive).radiation_length_mm
        )
        return self.repeats * per_cell

    @property
    def interaction_lengths(self) -> float:
        """Material budget of the layer in units of lambda_I."""
        per_cell = (
            self.absorber_mm / get_material(self.absorber).interaction_length_mm
            + self.active_mm / get_material(self.active).interaction_length_mm
            + self.passive_mm / get_material(self.passive).interaction_length_mm
        )
        return self.repeats * per_cell


@dataclass(frozen=True, eq=False, repr=False)
class Geometry:
    """Base class: layer structure, voxel bookkeeping and readout constants.

    Subclasses define the cells of each layer (``cells_per_layer``, ``_layer_centres``,
    ``_layer_locate``).  Everything else (offsets, depth, cell centres in 3-D, MIP value)
    derives from that.
    """

    name: str
    description: str
    layers: tuple[LayerSpec, ...]
    # Readout threshold in MeV; None means half the MIP most-probable deposit.
    threshold_mev: float | None = None
    # Override of the computed MIP MPV (MeV) where the source quotes a measured value.
    mip_override_mev: float | None = None
    source: str = ""
    # Fields that file formats use to recognise the geometry (e.g. "calochallenge").
    tags: tuple[str, ...] = field(default=())

    # ---- per-layer cell layout (subclass API) ---------------------------------------
    @property
    def cells_per_layer(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def layer_shape(self, layer: int) -> tuple[int, int]:  # pragma: no cover - abstract
        """The 2-D shape ``(n_a, n_b)`` of a layer's cells in voxel order."""
        raise NotImplementedError

    def _layer_centres(self, layer: int) -> np.ndarray:  # pragma: no cover - abstract
        """(cells, 2) x, y centres of a layer's cells in voxel order (mm)."""
        raise NotImplementedError

    def _layer_locate(self, layer: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cell index inside ``layer`` for positions (mm), -1 outside."""
        raise NotImplementedError  # pragma: no cover - abstract

    # ---- derived ---------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def n_voxels(self) -> int:
        return int(sum(self.cells_per_layer))

    @cached_property
    def layer_offsets(self) -> np.ndarray:
        """Index of the first voxel of each layer, with ``n_voxels`` appended."""
        return np.concatenate([[0], np.cumsum(self.cells_per_layer)]).astype(np.int64)

    @cached_property
    def layer_of_voxel(self) -> np.ndarray:
        """(n_voxels,) layer number of every voxel."""
        return np.repeat(np.arange(self.n_layers), self.cells_per_layer).astype(np.int64)

    @property
    def is_regular(self) -> bool:
        """True if every layer has the same 2-D cell shape (a (L, A, B) image)."""
        return len({self.layer_shape(k) for k in range(self.n_layers)}) == 1

    @cached_property
    def layer_front_z_mm(self) -> np.ndarray:
        """z of the front face of every layer (mm)."""
        thick = np.array([s.thickness_mm for s in self.layers])
        return np.concatenate([[0.0], np.cumsum(thick)[:-1]])

    @cached_property
    def layer_z_mm(self) -> np.ndarray:
        """z of the centre of the last active slice of every layer (mm)."""
        z = []
        for front, spec in zip(self.layer_front_z_mm, self.layers):
            cell = spec.absorber_mm + spec.active_mm + spec.passive_mm
            z.append(front + (spec.repeats - 1) * cell + spec.absorber_mm + 0.5 * spec.active_mm)
        return np.asarray(z)

    @cached_property
    def layer_depth_x0(self) -> np.ndarray:
        """Material in front of each layer's last active slice, in radiation lengths."""
        depth, out = 0.0, []
        for spec in self.layers:
            out.append(depth + spec.radiation_lengths - 0.5 * spec.active_mm
                       / get_material(spec.active).radiation_length_mm
                       - spec.passive_mm / get_material(spec.passive).radiation_length_mm)
            depth += spec.radiation_lengths
        return np.asarray(out)

    @property
    def total_radiation_lengths(self) -> float:
        return float(sum(s.radiation_lengths for s in self.layers))

    @property
    def total_interaction_lengths(self) -> float:
        return float(sum(s.interaction_lengths for s in self.layers))

    @property
    def active_material(self) -> Material:
        return get_material(self.layers[0].active)

    @cached_property
    def mip_mev(self) -> float:
        """Most probable MIP deposit in one active cell (MeV), at normal incidence."""
        if self.mip_override_mev is not None:
            return self.mip_override_mev
        spec = self.layers[0]
        return mip_most_probable_deposit(get_material(spec.active), spec.active_mm * spec.repeats)

    @property
    def readout_threshold_mev(self) -> float:
        """Hits below this energy (MeV) are not read out (default 0.5 MIP)."""
        return self.threshold_mev if self.threshold_mev is not None else 0.5 * self.mip_mev

    @cached_property
    def cell_centres(self) -> np.ndarray:
        """(n_voxels, 3) cell centres x, y, z in mm, in voxel order."""
        out = np.empty((self.n_voxels, 3))
        for k in range(self.n_layers):
            lo, hi = self.layer_offsets[k], self.layer_offsets[k + 1]
            if hi > lo:
                out[lo:hi, :2] = self._layer_centres(k)
                out[lo:hi, 2] = self.layer_z_mm[k]
        out.setflags(write=False)
        return out

    # ---- index mappings ----------------------------------------------------------------
    def voxel_index(self, layer, a, b) -> np.ndarray:
        """Flat voxel index from (layer, a, b), vectorised."""
        layer, a, b = (np.asarray(v, dtype=np.int64) for v in (layer, a, b))
        if np.any((layer < 0) | (layer >= self.n_layers)):
            raise GeometryError(f"{self.name}: layer index out of range 0..{self.n_layers - 1}")
        shapes = np.array([self.layer_shape(k) for k in range(self.n_layers)], dtype=np.int64)
        na, nb = shapes[layer, 0], shapes[layer, 1]
        if np.any((a < 0) | (a >= na) | (b < 0) | (b >= nb)):
            raise GeometryError(f"{self.name}: cell index outside the layer")
        return self.layer_offsets[layer] + a * nb + b

    def voxel_coordinates(self, index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(layer, a, b) of flat voxel indices, vectorised; inverse of :meth:`voxel_index`."""
        index = np.asarray(index, dtype=np.int64)
        if np.any((index < 0) | (index >= self.n_voxels)):
            raise GeometryError(f"{self.name}: voxel index out of range 0..{self.n_voxels - 1}")
        layer = np.searchsorted(self.layer_offsets, index, side="right") - 1
        local = index - self.layer_offsets[layer]
        nb = np.array([self.layer_shape(k)[1] for k in range(self.n_layers)], dtype=np.int64)
        nb_l = np.maximum(nb[layer], 1)
        return layer, local // nb_l, local % nb_l

    def locate(self, x, y, layer) -> np.ndarray:
        """Flat voxel index of positions (x, y in mm) in readout ``layer``; -1 if outside."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        layer = np.broadcast_to(np.asarray(layer, dtype=np.int64), x.shape)
        out = np.full(x.shape, -1, dtype=np.int64)
        for k in np.unique(layer):
            if not 0 <= k < self.n_layers:
                continue
            sel = layer == k
            local = self._layer_locate(int(k), x[sel], y[sel])
            out[sel] = np.where(local >= 0, local + self.layer_offsets[k], -1)
        return out

    def layer_images(self, showers: np.ndarray) -> list[np.ndarray]:
        """Split (N, n_voxels) showers into per-layer (N, n_a, n_b) images."""
        showers = np.asarray(showers)
        return [
            showers[:, self.layer_offsets[k]:self.layer_offsets[k + 1]].reshape(
                (showers.shape[0],) + self.layer_shape(k)
            )
            for k in range(self.n_layers)
        ]

    def summary(self) -> str:
        """One line describing the geometry."""
        return (
            f"{self.name}: {self.n_layers} layers, {self.n_voxels} voxels, "
            f"{self.total_radiation_lengths:.1f} X0 / {self.total_interaction_lengths:.2f} lambda_I, "
            f"MIP {self.mip_mev:.3f} MeV ({self.active_material.name})"
        )

    def __repr__(self) -> str:
        return f"<Geometry {self.summary()}>"


@dataclass(frozen=True, eq=False, repr=False)
class CartesianGeometry(Geometry):
    """Rectangular cells on a grid per layer, centred on the beam axis.

    ``grid[k] = (n_i, n_j)`` and ``cell_mm[k] = (size_i, size_j)``; axis i is x and axis
    j is y.  Optional realism for the projection of physical hits onto the regular grid
    (:meth:`project`): sensors (wafers) of ``cells_per_wafer`` cells separated by dead
    gaps of ``wafer_gap_mm``, and odd layers shifted in x by ``stagger_mm``.
    """

    grid: tuple[tuple[int, int], ...] = ()
    cell_mm: tuple[tuple[float, float], ...] = ()
    cells_per_wafer: int = 0
    wafer_gap_mm: float = 0.0
    stagger_mm: float = 0.0

    def __post_init__(self) -> None:
        if len(self.grid) != len(self.layers) or len(self.cell_mm) != len(self.layers):
            raise GeometryError(f"{self.name}: grid and cell sizes must be given per layer")

    @property
    def cells_per_layer(self) -> tuple[int, ...]:
        return tuple(ni * nj for ni, nj in self.grid)

    def layer_shape(self, layer: int) -> tuple[int, int]:
        return self.grid[layer]

    def _axis_centres(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        (ni, nj), (si, sj) = self.grid[layer], self.cell_mm[layer]
        return (np.arange(ni) - 0.5 * (ni - 1)) * si, (np.arange(nj) - 0.5 * (nj - 1)) * sj

    def _layer_centres(self, layer: int) -> np.ndarray:
        xc, yc = self._axis_centres(layer)
        xx, yy = np.meshgrid(xc, yc, indexing="ij")
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def _layer_locate(self, layer: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (ni, nj), (si, sj) = self.grid[layer], self.cell_mm[layer]
        i = np.floor(x / si + 0.5 * ni).astype(np.int64)
        j = np.floor(y / sj + 0.5 * nj).astype(np.int64)
        inside = (i >= 0) & (i < ni) & (j >= 0) & (j < nj)
        return np.where(inside, i * nj + j, -1)

    def extent_mm(self, layer: int = 0) -> tuple[float, float]:
        """Half-widths in x and y of a layer's grid."""
        (ni, nj), (si, sj) = self.grid[layer], self.cell_mm[layer]
        return 0.5 * ni * si, 0.5 * nj * sj

    def project(self, x, y, layer, realistic: bool = False) -> np.ndarray:
        """Project physical hit positions onto the regular grid (flat voxel index, -1 lost).

        With ``realistic=True`` the sensor structure is applied first: odd layers are
        shifted by ``stagger_mm`` in x, hits falling into the dead gaps between wafers are
        lost, and the hit is moved to the centre of the physical cell it fell in before
        being assigned to the regular grid.  This reproduces the gap and staggering
        artefacts of seed 002 that generative models must learn.
        """
        if not realistic or self.cells_per_wafer <= 0:
            return self.locate(x, y, layer)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        layer = np.broadcast_to(np.asarray(layer, dtype=np.int64), x.shape)
        xs = x - np.where(layer % 2 == 1, self.stagger_mm, 0.0)
        size = self.cell_mm[0][0]
        pitch = self.cells_per_wafer * size + self.wafer_gap_mm
        # Wafers tile the plane starting at the grid's lower edge.
        half_x, half_y = self.extent_mm(0)
        gx, gy = xs + half_x, y + half_y
        wx, wy = np.floor(gx / pitch), np.floor(gy / pitch)
        ux, uy = gx - wx * pitch, gy - wy * pitch
        active = (ux < self.cells_per_wafer * size) & (uy < self.cells_per_wafer * size)
        px = wx * pitch + (np.floor(ux / size) + 0.5) * size - half_x
        py = wy * pitch + (np.floor(uy / size) + 0.5) * size - half_y
        px = px + np.where(layer % 2 == 1, self.stagger_mm, 0.0)
        out = self.locate(px, py, layer)
        return np.where(active, out, -1)


@dataclass(frozen=True, eq=False, repr=False)
class CylindricalGeometry(Geometry):
    """Cylindrical (r, alpha) binning per layer, as the CaloChallenge 2022 datasets.

    ``r_edges[k]`` are the radial bin edges of layer k (mm, empty/one edge = no cells)
    and ``n_alpha[k]`` its number of angular bins, which span [-pi, pi).  Voxel order in
    a layer: angular bin major, radial bin fastest (as in the challenge files).
    """

    r_edges: tuple[tuple[float, ...], ...] = ()
    n_alpha: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.r_edges) != len(self.layers) or len(self.n_alpha) != len(self.layers):
            raise GeometryError(f"{self.name}: r_edges and n_alpha must be given per layer")

    def n_radial(self, layer: int) -> int:
        return max(len(self.r_edges[layer]) - 1, 0)

    @property
    def cells_per_layer(self) -> tuple[int, ...]:
        return tuple(self.n_radial(k) * self.n_alpha[k] for k in range(self.n_layers))

    def layer_shape(self, layer: int) -> tuple[int, int]:
        n_r = self.n_radial(layer)
        return (self.n_alpha[layer] if n_r else 0, n_r)

    @property
    def nonempty_layers(self) -> list[int]:
        """Layers with at least one voxel (dataset 1 has empty layer ids)."""
        return [k for k, n in enumerate(self.cells_per_layer) if n > 0]

    def alpha_edges(self, layer: int) -> np.ndarray:
        return np.linspace(-math.pi, math.pi, self.n_alpha[layer] + 1)

    def _layer_centres(self, layer: int) -> np.ndarray:
        edges = np.asarray(self.r_edges[layer])
        r_mid = 0.5 * (edges[1:] + edges[:-1])
        a_edges = self.alpha_edges(layer)
        a_mid = 0.5 * (a_edges[1:] + a_edges[:-1]) if self.n_alpha[layer] > 1 else np.zeros(1)
        aa, rr = np.meshgrid(a_mid, r_mid, indexing="ij")
        return np.stack([(rr * np.cos(aa)).ravel(), (rr * np.sin(aa)).ravel()], axis=1)

    def _layer_locate(self, layer: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        edges = np.asarray(self.r_edges[layer])
        n_r, n_a = self.n_radial(layer), self.n_alpha[layer]
        if n_r == 0:
            return np.full(x.shape, -1, dtype=np.int64)
        r = np.hypot(x, y)
        ir = np.searchsorted(edges, r, side="right") - 1
        alpha = np.arctan2(y, x)
        ia = np.clip(np.floor((alpha + math.pi) / (2 * math.pi) * n_a).astype(np.int64), 0, n_a - 1)
        inside = (ir >= 0) & (ir < n_r)
        return np.where(inside, ia * n_r + ir, -1)
