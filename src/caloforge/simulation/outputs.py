"""From engine deposits to caloforge showers: voxels on any geometry, point clouds.

Point clouds follow seed 002 ("artificially increased granularity"): the deposits of
each layer are summed on a grid 6 x 6 times finer than the readout cell, and every
non-empty fine cell becomes one point at its centre (x, y) and the layer's z.
"""

from __future__ import annotations

import numpy as np

from caloforge.errors import GeometryError
from caloforge.geometry import CartesianGeometry, Geometry
from caloforge.simulation.engine import Deposits

POINT_SPLIT = 6  # seed 002: cells split 6 x 6


def voxel_indices(dep: Deposits, geometry: Geometry, realistic: bool = False) -> np.ndarray:
    """Flat voxel index of every deposit (-1 outside the cells)."""
    if realistic and isinstance(geometry, CartesianGeometry):
        return geometry.project(dep.x, dep.y, dep.layer, realistic=True)
    return geometry.locate(dep.x, dep.y, dep.layer)


def voxelise(deposits: list[Deposits], geometry: Geometry, realistic: bool = False
             ) -> np.ndarray:
    """(N, n_voxels) float32 cell energies (MeV) of N showers' deposits."""
    out = np.zeros((len(deposits), geometry.n_voxels), np.float32)
    for i, dep in enumerate(deposits):
        cell = voxel_indices(dep, geometry, realistic)
        inside = cell >= 0
        out[i] = np.bincount(cell[inside], weights=dep.energy[inside],
                             minlength=geometry.n_voxels)
    return out


def layer_overflow(deposits: list[Deposits], geometry: Geometry, realistic: bool = False
                   ) -> np.ndarray | None:
    """(N, n_layers) MeV deposited in each layer's active material outside its cells, for
    geometries that record it (tag ``overflow``: the CaloGAN format); None for others."""
    if "overflow" not in geometry.tags:
        return None
    out = np.zeros((len(deposits), geometry.n_layers), np.float32)
    for i, dep in enumerate(deposits):
        outside = voxel_indices(dep, geometry, realistic) < 0
        out[i] = np.bincount(dep.layer[outside], weights=dep.energy[outside],
                             minlength=geometry.n_layers)
    return out


def point_pitch_mm(geometry: Geometry, split: int = POINT_SPLIT) -> tuple[float, float]:
    """Pitch (mm) of the fine point grid in x and y."""
    if not isinstance(geometry, CartesianGeometry):
        raise GeometryError(
            f"point clouds need a Cartesian cell grid; {geometry.name} has cylindrical bins")
    si, sj = geometry.cell_mm[0]
    return si / split, sj / split


def cluster_points(dep: Deposits, geometry: Geometry, split: int = POINT_SPLIT
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cluster one shower's deposits on the fine grid; returns x, y, z (mm), E (MeV),
    layer of the points, sorted by layer then position."""
    px, py = point_pitch_mm(geometry, split)
    # Fine cells aligned with the readout cell edges of layer 0.
    half_x, half_y = geometry.extent_mm(0)
    ix = np.floor((dep.x + half_x) / px).astype(np.int64)
    iy = np.floor((dep.y + half_y) / py).astype(np.int64)
    key = np.stack([dep.layer.astype(np.int64), ix, iy], axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    energy = np.bincount(inv.reshape(-1), weights=dep.energy, minlength=len(uniq))
    x = (uniq[:, 1] + 0.5) * px - half_x
    y = (uniq[:, 2] + 0.5) * py - half_y
    z = geometry.layer_z_mm[uniq[:, 0]]
    return x, y, z, energy, uniq[:, 0]
