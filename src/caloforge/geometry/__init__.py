"""Detector geometries: layers, cells, positions (mm), materials and voxel order.

>>> from caloforge.geometry import get_geometry
>>> g = get_geometry("ild-ecal")
>>> g.n_layers, g.n_voxels
(30, 27000)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from caloforge.errors import GeometryError
from caloforge.geometry.base import CartesianGeometry, CylindricalGeometry, Geometry, LayerSpec
from caloforge.geometry.calochallenge import BINNING_FILES, calochallenge
from caloforge.geometry.calogan import calogan
from caloforge.geometry.ild import ild_ahcal, ild_ecal

_FACTORIES: dict[str, Callable[[], Geometry]] = {
    "ild-ecal": ild_ecal,
    "ild-ahcal": ild_ahcal,
    "calogan": calogan,
    **{name: (lambda n=name: calochallenge(n)) for name in BINNING_FILES},
}


def list_geometries() -> list[str]:
    """Names of all known geometries."""
    return list(_FACTORIES)


@cache
def get_geometry(name: str) -> Geometry:
    """The geometry called ``name`` (see :func:`list_geometries`)."""
    if isinstance(name, Geometry):  # pragma: no cover - convenience
        return name
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise GeometryError(
            f"unknown geometry {name!r}; known: {', '.join(_FACTORIES)}"
        ) from None
    return factory()


def register_geometry(geometry: Geometry, overwrite: bool = False) -> None:
    """Make a user-built geometry (e.g. a small test grid) known by its name."""
    if geometry.name in _FACTORIES and not overwrite:
        raise GeometryError(f"geometry {geometry.name!r} is already registered")
    _FACTORIES[geometry.name] = lambda: geometry
    get_geometry.cache_clear()


def geometries_with_voxels(n_voxels: int) -> list[str]:
    """Names of the geometries with exactly ``n_voxels`` voxels."""
    return [name for name in _FACTORIES if get_geometry(name).n_voxels == n_voxels]


__all__ = [
    "CartesianGeometry",
    "CylindricalGeometry",
    "Geometry",
    "LayerSpec",
    "geometries_with_voxels",
    "get_geometry",
    "list_geometries",
    "register_geometry",
]
