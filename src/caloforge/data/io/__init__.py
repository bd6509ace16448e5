"""Shower file formats: autodetected readers and atomic writers.

Formats (energies in MeV in memory; file units as each format defines them):

==============  ==========================================================  =========
name            layout                                                      units
==============  ==========================================================  =========
caloforge       native HDF5: dense / sparse / points + all conditions       MeV, mm
calochallenge   incident_energies (N,1), showers (N, n_voxels)              MeV
ild             30x30/{energy,layers} or hcal_only/{energy,layers}          GeV, MeV
calogan         energy, layer_0..2, overflow                                GeV, MeV
pointcloud      CaloClouds II: events (N,4,6000) x, y=layer mm, z, E        mm, GeV
==============  ==========================================================  =========

Formats without a per-shower column for a condition (theta, phi, particle, impact) keep it
as a root attribute ``caloforge_condition_<name>`` when it is the same for every shower of
the file; a condition that varies needs ``lossy`` and is listed under
``dropped_conditions`` in the file's metadata.

>>> from caloforge.data.io import open_showers, write_showers  # doctest: +SKIP
>>> with open_showers("in.h5") as src, write_showers("out.h5", "calochallenge",
...                                                   src.geometry) as dst:  # doctest: +SKIP
...     for batch in src.iter_batches(1000):
...         dst.append(batch)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from caloforge.data.batch import ShowerBatch
from caloforge.data.io.base import ShowerReader, ShowerWriter, open_h5
from caloforge.data.io.calochallenge import (
    CaloChallengeReader,
    CaloChallengeWriter,
    is_calochallenge,
)
from caloforge.data.io.calogan import CaloGANReader, CaloGANWriter, is_calogan
from caloforge.data.io.ild import ILDReader, ILDWriter, is_ild
from caloforge.data.io.native import NativeReader, NativeWriter, is_native
from caloforge.data.io.pointcloud import PointCloudReader, PointCloudWriter, is_pointcloud
from caloforge.errors import ConfigError, FormatError
from caloforge.utils.atomic import atomic_path
from caloforge.utils.safe_io import GuardedFile, as_resource_error

# Detection order matters: the native format is checked first because it is the most
# specific; the foreign formats have disjoint required keys.
_FORMATS: dict[str, tuple[Any, type[ShowerReader], type[ShowerWriter]]] = {
    "caloforge": (is_native, NativeReader, NativeWriter),
    "calochallenge": (is_calochallenge, CaloChallengeReader, CaloChallengeWriter),
    "ild": (is_ild, ILDReader, ILDWriter),
    "calogan": (is_calogan, CaloGANReader, CaloGANWriter),
    "pointcloud": (is_pointcloud, PointCloudReader, PointCloudWriter),
}
FORMATS = tuple(_FORMATS)
#: formats that keep point clouds as points (others voxelise them)
POINT_FORMATS = ("caloforge", "pointcloud")


def _check_format(name: str) -> None:
    if name not in _FORMATS:
        raise ConfigError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")


def detect_format(path: str | Path) -> str:
    """Name of the format of an HDF5 shower file (see :data:`FORMATS`)."""
    with open_h5(path) as h5:
        return _detect(h5, path)


def _detect(h5: Any, path: str | Path) -> str:
    for name, (probe, _, _) in _FORMATS.items():
        if probe(h5):
            return name
    keys = ", ".join(sorted(h5.keys())) or "none"
    raise FormatError(
        f"not a known shower format (top-level keys: {keys}); expected e.g. "
        "'incident_energies'+'showers' (CaloChallenge), '30x30' or 'hcal_only' (ILD), "
        "'layer_0..2'+'energy' (CaloGAN), 'events'+'energy' (point cloud)", path)


def open_showers(path: str | Path, format: str | None = None, geometry: str | None = None,
                 validate: bool = True) -> ShowerReader:
    """Open a shower file for streaming reads (format and geometry autodetected).

    ``validate`` checks every batch read for NaN/inf and negative energies and raises
    :class:`~caloforge.errors.InputError` naming the file and the showers.
    """
    h5 = open_h5(path)
    try:
        fmt = format or _detect(h5, path)
        _check_format(fmt)
        return _FORMATS[fmt][1](path, h5, geometry, validate)
    except BaseException:
        h5.close()
        raise


def read_showers(path: str | Path, format: str | None = None, geometry: str | None = None,
                 validate: bool = True) -> ShowerBatch:
    """Read a whole file into memory (use :func:`open_showers` for large files)."""
    with open_showers(path, format, geometry, validate) as f:
        return f.read()


@contextlib.contextmanager
def write_showers(path: str | Path, format: str = "caloforge", geometry: str = "ild-ecal",
                  overwrite: bool = False, metadata: dict[str, Any] | None = None,
                  lossy: bool = False, **options: Any) -> Iterator[ShowerWriter]:
    """Write showers batch by batch; the file appears only once everything is written.

    ``lossy`` allows dropping what the format cannot hold (per-shower conditions that are
    not constant over the file, overflow, point positions inside a cell); conditions that
    are constant over the file are kept as file attributes by every format.  A failed
    write (disk full, quota, I/O error) raises :class:`~caloforge.errors.ResourceError`
    naming ``path``, and no file is left behind.  Native-format option: ``sparse`` (True / False /
    None = decide from the occupancy of the first batch).
    """
    _check_format(format)
    writer_cls = _FORMATS[format][2]
    with atomic_path(path, overwrite) as tmp:
        try:
            sink = GuardedFile(tmp)
        except OSError as exc:
            raise as_resource_error(exc, path) from None
        try:
            h5 = h5py.File(sink, "w")
            try:
                writer = writer_cls(h5, geometry, Path(path), metadata, lossy, **options)
                writer.io_guard = sink
                yield writer
                writer.finalize()
            finally:
                h5.close()
        finally:
            sink.close()
        sink.raise_if_failed(path)


__all__ = [
    "FORMATS",
    "POINT_FORMATS",
    "ShowerReader",
    "ShowerWriter",
    "detect_format",
    "open_showers",
    "read_showers",
    "write_showers",
]
