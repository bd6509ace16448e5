"""Reader / writer base classes shared by every file format.

Readers stream: ``read(start, stop)`` touches only those showers, so any file can be
processed in bounded memory with :meth:`ShowerReader.iter_batches`.  Writers append
batches to resizable HDF5 datasets in a temporary file that :func:`write_showers`
renames onto the target when (and only when) everything was written.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from caloforge.data.batch import Conditions, PointCloudBatch, ShowerBatch
from caloforge.errors import FormatError, GeometryError, GeometryMismatchError, InputError
from caloforge.geometry import Geometry, get_geometry
from caloforge.utils.progress import progress
from caloforge.utils.safe_io import as_resource_error

METADATA_ATTR = "caloforge_metadata"
#: attribute prefix of conditions that are constant over a file whose format has no
#: per-shower column for them (e.g. ``caloforge_condition_theta`` in radians)
CONSTANT_ATTR = "caloforge_condition_"
CONSTANT_SHAPES: dict[str, tuple[int, ...]] = {"theta": (), "phi": (), "particle": (),
                                               "impact": (2,)}

# How the errors name the switch: the CLI option first, its API spelling after.
_LOSSY = "--lossy (lossy=True in the API)"


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning h5py's low-level errors into one clear FormatError."""
    path = Path(path)
    if mode == "r":
        if not path.exists():
            reason = "broken or looping symbolic link" if path.is_symlink() else \
                "file does not exist"
            raise InputError(reason, path)
        if path.is_dir():
            raise InputError("is a directory, not a shower file", path)
        if not path.is_file():  # reading a FIFO would block forever; HDF5 needs to seek
            raise InputError("is not a regular file (a pipe or device?): HDF5 shower files "
                             "must be plain files", path)
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        msg = str(exc)
        if "lock" in msg:
            raise FormatError("file is locked (another program is writing it?)", path) from None
        resource = as_resource_error(exc, path)
        if resource is not None and "signature" not in msg and "truncated" not in msg:
            raise resource from None
        if "truncated" in msg:
            reason = "HDF5 file is truncated (incomplete copy or interrupted write?)"
        elif "signature" in msg:
            reason = "not an HDF5 file"
        else:
            reason = f"cannot be opened as HDF5 ({msg})"
        raise FormatError(reason, path) from None


def dataset(h5: h5py.File | h5py.Group, key: str, path: str | Path, ndim: int | None = None
            ) -> h5py.Dataset:
    """``h5[key]`` as a dataset, or a FormatError naming the missing key."""
    obj = h5.get(key)
    if obj is None or not isinstance(obj, h5py.Dataset):
        raise FormatError(
            f"missing dataset {key!r} (found: {', '.join(sorted(h5.keys())) or 'nothing'})", path)
    if ndim is not None and obj.ndim != ndim:
        raise FormatError(f"dataset {key!r} has shape {obj.shape}, expected {ndim} dimensions",
                          path)
    if obj.dtype.kind not in "iuf":
        raise FormatError(f"dataset {key!r} holds {obj.dtype} values, expected numbers", path)
    _check_stored(obj, key, path)
    return obj


def _check_stored(ds: h5py.Dataset, key: str, path: str | Path) -> None:
    """Refuse datasets whose last rows were never written (an interrupted or hostile file
    declaring e.g. 10^12 showers would otherwise read as endless zeros)."""
    if ds.chunks is None or ds.size == 0:
        return
    last = ((ds.shape[0] - 1) // ds.chunks[0] * ds.chunks[0],) + (0,) * (ds.ndim - 1)
    try:
        stored = ds.id.get_chunk_info_by_coord(last).byte_offset is not None
    except (OSError, RuntimeError, ValueError, AttributeError):  # pragma: no cover - old HDF5
        return
    if not stored:
        raise FormatError(f"dataset {key!r} declares {ds.shape[0]} rows but its last rows hold "
                          "no data (incomplete or damaged file)", path)


def read_rows(ds: h5py.Dataset, start: int, stop: int, path: str | Path) -> np.ndarray:
    """``ds[start:stop]``, with a clear error if the data on disk is corrupt."""
    try:
        return ds[start:stop]
    except MemoryError:
        gib = (stop - start) * int(np.prod(ds.shape[1:])) * ds.dtype.itemsize / 2**30
        raise InputError(f"reading {ds.name} rows {start}:{stop} needs {gib:.3g} GiB of "
                         "memory; read fewer showers at a time", path) from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise FormatError(f"cannot read {ds.name} rows {start}:{stop} (corrupt file? {exc})",
                          path) from None


def read_metadata(h5: h5py.File) -> dict[str, Any]:
    """The JSON provenance attribute; {} when absent or unreadable (it is informative only)."""
    try:
        meta = json.loads(h5.attrs.get(METADATA_ATTR) or "{}")
    except (OSError, TypeError, ValueError, KeyError):  # foreign or hostile attribute types
        return {}
    return meta if isinstance(meta, dict) else {}


def read_constant_conditions(h5: h5py.File, path: str | Path) -> dict[str, np.ndarray]:
    """Per-file constant conditions stored as attributes by formats without per-shower
    columns for them (see :meth:`ShowerWriter.finalize`)."""
    found = {}
    for name, shape in CONSTANT_SHAPES.items():
        key = CONSTANT_ATTR + name
        if key not in h5.attrs:
            continue
        try:
            value = np.asarray(h5.attrs[key])
        except (OSError, TypeError, ValueError) as exc:
            raise FormatError(f"attribute {key!r} cannot be read ({exc})", path) from None
        if value.dtype.kind not in "iuf" or value.shape != shape \
                or not np.isfinite(value).all():
            raise FormatError(f"attribute {key!r} must be {'a pair of' if shape else 'a'} "
                              f"finite number{'s' if shape else ''}, found {value!r:.80}", path)
        found[name] = value
    return found


def resolve_geometry(path: str | Path, found: str | None, requested: str | None,
                     n_voxels: int | None = None) -> str:
    """Pick the geometry of a file: the requested one must agree with what the file says."""
    if requested is not None:
        geo = get_geometry(requested)
        if found is not None and found != geo.name:
            raise GeometryMismatchError(
                f"file holds geometry {found!r} but {geo.name!r} was requested", path)
        if n_voxels is not None and geo.n_voxels != n_voxels:
            raise GeometryMismatchError(
                f"file has {n_voxels} voxels per shower, geometry {geo.name} has {geo.n_voxels}",
                path)
        return geo.name
    if found is None:
        raise InputError("cannot tell the geometry of this file; pass one (--geometry)", path)
    try:
        return get_geometry(found).name
    except GeometryError as exc:
        raise GeometryError(f"the file's geometry attribute {found[:60]!r} is not usable "
                            f"({exc})", path) from None


class ShowerReader(ABC):
    """A shower file opened for streaming reads."""

    format: str = ""
    is_point_cloud: bool = False

    def __init__(self, path: str | Path, h5: h5py.File, geometry: str | None = None,
                 validate: bool = True) -> None:
        self.path = Path(path)
        self.h5 = h5
        self.validate = validate
        self.metadata: dict[str, Any] = read_metadata(h5)
        self.constants = read_constant_conditions(h5, self.path)
        self.geometry_assumed = False
        self.geometry = self._geometry(geometry)
        self.n_showers = self._n_showers()

    # -- format-specific ------------------------------------------------------------
    @abstractmethod
    def _geometry(self, requested: str | None) -> str: ...

    @abstractmethod
    def _n_showers(self) -> int: ...

    @abstractmethod
    def _read_conditions(self, start: int, stop: int) -> Conditions: ...

    @abstractmethod
    def _read(self, start: int, stop: int) -> ShowerBatch: ...

    def _conditions(self, incident_energy_mev: np.ndarray) -> Conditions:
        """Conditions from per-shower incident energies plus the file's constants."""
        n = len(incident_energy_mev)
        extra = {name: np.repeat(v[None], n, axis=0) for name, v in self.constants.items()}
        return Conditions(incident_energy_mev, **extra)

    # -- public -----------------------------------------------------------------------
    @property
    def geometry_object(self) -> Geometry:
        return get_geometry(self.geometry)

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_showers if stop is None else min(stop, self.n_showers)
        if start < 0 or start > stop:
            raise InputError(f"invalid shower range {start}:{stop} (file has {self.n_showers})",
                             self.path)
        return start, stop

    def read_conditions(self, start: int = 0, stop: int | None = None) -> Conditions:
        """Conditions of showers ``start:stop`` without reading any voxels."""
        start, stop = self._range(start, stop)
        cond = self._read_conditions(start, stop)
        if self.validate:
            cond.validate(str(self.path))
        return cond

    def read(self, start: int = 0, stop: int | None = None) -> ShowerBatch:
        """Showers ``start:stop`` as a dense batch (MeV), validated unless disabled."""
        start, stop = self._range(start, stop)
        batch = self._read(start, stop)
        batch.metadata = dict(self.metadata)
        if self.validate:
            batch.validate(f"{self.path} (showers {start}:{stop})")
        return batch

    def read_points(self, start: int = 0, stop: int | None = None) -> PointCloudBatch:
        """Showers as point clouds (cell centres for voxel formats)."""
        return self.read(start, stop).to_points()

    def iter_batches(self, batch_size: int = 1000, progress_bar: bool = False,
                     start: int = 0, stop: int | None = None) -> Iterator[ShowerBatch]:
        """Consecutive batches of at most ``batch_size`` showers (bounded memory)."""
        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}")
        start, stop = self._range(start, stop)
        bar = progress(total=stop - start, desc=f"reading {self.path.name}", unit="shower",
                       enabled=None if progress_bar else False)
        try:
            for lo in range(start, stop, batch_size):
                hi = min(lo + batch_size, stop)
                yield self.read(lo, hi)
                bar.update(hi - lo)
        finally:
            bar.close()

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> ShowerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_showers


class ShowerWriter(ABC):
    """Appends batches to an HDF5 file opened for writing (a temporary file)."""

    format: str = ""
    #: conditions besides the incident energy that the format can store
    stores: frozenset[str] = frozenset()
    stores_overflow: bool = False

    def __init__(self, h5: h5py.File, geometry: str, target: Path,
                 metadata: dict[str, Any] | None = None, lossy: bool = False,
                 **options: Any) -> None:
        self.h5 = h5
        self.geometry = get_geometry(geometry).name
        self.target = target
        self.metadata = dict(metadata or {})
        self.lossy = lossy
        if options:  # a misspelt or misplaced option must not be dropped silently
            raise InputError(f"format {self.format!r} has no option "
                             f"{', '.join(sorted(options))}", target)
        self.n_written = 0
        #: set by write_showers: the file whose failed writes are raised after each batch
        self.io_guard: Any = None
        self._constants: dict[str, np.ndarray] = {}  # extra conditions constant so far
        self._dropped: set[str] = set()  # varying extra conditions dropped (lossy)
        self._check_geometry()

    def _check_geometry(self) -> None:
        """Raise if this format cannot represent the geometry."""

    @abstractmethod
    def _append(self, batch: ShowerBatch | PointCloudBatch) -> None: ...

    def _check_loss(self, batch: ShowerBatch | PointCloudBatch) -> None:
        """Conditions the format has no per-shower column for are kept if constant over
        the file (as attributes); varying ones, and overflow energies the format cannot
        hold, need ``lossy``."""
        cond = batch.conditions
        extra = {c for c in cond.present if c != "incident_energy" and c not in self.stores}
        if self.n_written == 0:
            self._constants = {c: np.array(getattr(cond, c)[0]) for c in extra}
        varying = []
        for name in sorted((extra | set(self._constants)) - self._dropped):
            values, ref = getattr(cond, name), self._constants.get(name)
            if values is None or ref is None:
                varying.append(f"{name} (set for some showers only)")
            elif not np.all(values == ref):
                first = values[np.flatnonzero(np.any((values != ref).reshape(len(values), -1),
                                                     axis=1))[0]]
                varying.append(f"{name} (e.g. {_fmt(ref)} and {_fmt(first)})")
        problems = list(varying)
        if isinstance(batch, ShowerBatch) and batch.overflow is not None \
                and not self.stores_overflow and np.any(batch.overflow):
            problems.append("overflow energies")
        if problems and not self.lossy:
            from caloforge.errors import LossyConversionError

            raise LossyConversionError(
                f"format {self.format!r} cannot store {', '.join(problems)}: it keeps only "
                f"conditions that are the same for every shower of the file; use {_LOSSY} to "
                "drop them", self.target)
        for item in varying:
            name = item.split(" ", 1)[0]
            self._dropped.add(name)
            self._constants.pop(name, None)

    def voxelise(self, batch: ShowerBatch | PointCloudBatch) -> ShowerBatch:
        """Voxelise point clouds for voxel formats, refusing (unless lossy) to drop
        sub-cell positions or energy outside the grid."""
        if isinstance(batch, ShowerBatch):
            return batch
        geo = get_geometry(self.geometry)
        voxels, outside = batch.to_voxels(geo)
        if not self.lossy:
            problems = []
            lost = float(outside.sum()) if voxels.overflow is None else 0.0
            if lost > 0:
                problems.append(f"{lost:.4g} MeV of point energy outside the {geo.name} cells")
            cell = geo.locate(batch.x, batch.y, batch.layers_on(geo))
            inside = cell >= 0
            centres = geo.cell_centres[cell[inside]]
            off = np.hypot(batch.x[inside] - centres[:, 0], batch.y[inside] - centres[:, 1])
            if len(off) and off.max() > 1e-3:
                problems.append("point positions inside the cells")
            if problems:
                from caloforge.errors import LossyConversionError

                raise LossyConversionError(
                    f"voxelising point clouds for format {self.format!r} loses "
                    f"{' and '.join(problems)} (use {_LOSSY} to accept)",
                    self.target)
        return voxels

    def append(self, batch: ShowerBatch | PointCloudBatch) -> None:
        """Write one batch (its geometry must be the writer's)."""
        if isinstance(batch, ShowerBatch) and batch.geometry != self.geometry:
            raise GeometryMismatchError(
                f"cannot write {batch.geometry} showers into a {self.geometry} file", self.target)
        if len(batch) == 0:
            return
        self._check_loss(batch)
        self._append(batch)
        self.n_written += len(batch)
        if self.io_guard is not None:  # surface a full disk now, not at the end
            self.h5.flush()
            self.io_guard.raise_if_failed(self.target)

    def finalize(self) -> None:
        """Write attributes once all batches are in: provenance, the conditions that were
        constant over the file, and the names of those dropped (lossy)."""
        meta = dict(self.metadata)
        meta.setdefault("geometry", self.geometry)
        if self._dropped:
            meta["dropped_conditions"] = sorted(self._dropped)
        self.h5.attrs[METADATA_ATTR] = json.dumps(meta, default=str)
        for name, value in self._constants.items():
            self.h5.attrs[CONSTANT_ATTR + name] = value


def _fmt(value: np.ndarray) -> str:
    return np.array2string(np.asarray(value), precision=4, separator=",")


def append_rows(group: h5py.Group, key: str, data: np.ndarray, chunk_rows: int = 64,
                compression: str | None = None) -> None:
    """Append ``data`` along axis 0 of a resizable dataset, creating it on first use."""
    data = np.asarray(data)
    if key not in group:
        chunks = (max(1, min(chunk_rows, max(len(data), 1))),) + data.shape[1:]
        group.create_dataset(key, data=data, maxshape=(None,) + data.shape[1:], chunks=chunks,
                             compression=compression)
        return
    ds = group[key]
    if ds.shape[1:] != data.shape[1:]:
        raise InputError(f"cannot append rows of shape {data.shape[1:]} to {key} {ds.shape[1:]}")
    n = ds.shape[0]
    ds.resize(n + len(data), axis=0)
    ds[n:] = data
