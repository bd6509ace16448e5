"""Points to detector: the one projection of point clouds into a geometry's cells.

``caloforge generate --project`` and ``caloforge evaluate`` on point files both call
:func:`project_points`, so that a generated file and its evaluation see the same cells.

>>> import numpy as np
>>> from caloforge.data import Conditions, PointCloudBatch
>>> pts = PointCloudBatch([0, 2], x=[0, 500.], y=[0, 0.], z=[0, 0.], energy=[1., 3.],
...                       layer=[0, 0], conditions=Conditions([1e4]), geometry="ild-ecal")
>>> voxels, lost = project_points(pts, "ild-ecal")
>>> float(voxels.total_energy()[0]), lost.tolist()
(1.0, [3.0])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caloforge.data.batch import PointCloudBatch, ShowerBatch
from caloforge.errors import InputError
from caloforge.geometry import Geometry


def project_points(points: PointCloudBatch, geometry: str | Geometry | None = None,
                   realistic: bool = False) -> tuple[ShowerBatch, np.ndarray]:
    """Deposit the points into the cells of ``geometry`` (default: the points' own).

    Returns the voxel batch and, per shower, the energy (MeV) lost: what fell outside
    every cell, or into a wafer gap with ``realistic`` (wafer gaps and staggering of
    :meth:`CartesianGeometry.project`).  Energy is conserved: voxel sum + overflow + lost
    = point sum; a geometry with overflow (CaloGAN) keeps the outside energy there and
    loses nothing.
    """
    voxels, outside = points.to_voxels(geometry, realistic=realistic)
    if voxels.overflow is not None:
        outside = np.zeros_like(outside)
    return voxels, outside


def check_points(points: PointCloudBatch, source: str | Path | None, first: int = 0,
                 allow_empty: bool = True) -> None:
    """Refuse points that cannot be projected: NaN/inf coordinates or energies, negative
    energies, and (unless ``allow_empty``) showers without points (``first``: number of
    the batch's first shower in its file or run)."""
    if not allow_empty and (points.n_points == 0).any():
        empty = np.flatnonzero(points.n_points == 0)
        raise InputError(f"{len(empty)} showers hold no points (first: shower "
                         f"{first + int(empty[0])})", source)
    for name in ("x", "y", "z", "energy"):
        bad = ~np.isfinite(getattr(points, name))
        if bad.any():
            k = first + int(points.shower_index[np.flatnonzero(bad)[0]])
            raise InputError(f"NaN/inf point {name} (first in shower {k})", source)
    if (points.energy < 0).any():
        k = first + int(points.shower_index[np.flatnonzero(points.energy < 0)[0]])
        raise InputError(f"negative point energies (first in shower {k}, "
                         f"{float(points.energy.min()):.4g} MeV)", source)
