"""caloforge's own HDF5 format: dense or sparse showers, or point clouds, plus every
condition, the geometry name and provenance metadata.

Layout (energies in MeV, lengths in mm, angles in rad)::

    /                      attrs: caloforge_format = "caloforge", format_version = 1,
                                  geometry, layout ("dense" | "sparse" | "points"),
                                  energy_unit = "MeV", length_unit = "mm",
                                  caloforge_metadata (JSON provenance)
    /conditions/incident_energy   (N,)   float64
    /conditions/theta, phi        (N,)   float64   optional
    /conditions/particle          (N,)   int32     optional (PDG code)
    /conditions/impact            (N, 2) float64   optional
    /showers                      (N, n_voxels) float32             layout "dense"
    /hits/offsets (N+1,) int64, /hits/cell (M,) int32,
    /hits/energy (M,) float32                                      layout "sparse"
    /points/offsets (N+1,) int64, /points/{x,y,z} (M,) float64,
    /points/energy (M,) float32, /points/layer (M,) int32 optional  layout "points"
    /overflow                     (N, n_layers) float32  optional

Sparse files store only non-zero cells; reading returns exactly the dense showers.
"""

from __future__ import annotations

import h5py
import numpy as np

from caloforge.data.batch import Conditions, PointCloudBatch, ShowerBatch
from caloforge.data.io.base import (
    ShowerReader,
    ShowerWriter,
    append_rows,
    dataset,
    read_rows,
    resolve_geometry,
)
from caloforge.errors import FormatError, InputError

FORMAT_VERSION = 1
_CONDITIONS = ("theta", "phi", "particle", "impact")
_FLAT_COLUMNS = {"hits": ("cell", "energy"), "points": ("x", "y", "z", "energy")}


class NativeReader(ShowerReader):
    format = "caloforge"

    def __init__(self, *args, **kw) -> None:
        h5 = args[1]
        self.layout = str(h5.attrs.get("layout", "dense"))
        if self.layout not in ("dense", "sparse", "points"):
            raise FormatError(f"unknown caloforge layout {self.layout!r}", args[0])
        version = int(h5.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise FormatError(f"written by a newer caloforge (format version {version} > "
                              f"{FORMAT_VERSION}); upgrade caloforge", args[0])
        self.is_point_cloud = self.layout == "points"
        super().__init__(*args, **kw)

    def _geometry(self, requested: str | None) -> str:
        found = self.h5.attrs.get("geometry")
        return resolve_geometry(self.path, None if found is None else str(found), requested)

    def _n_showers(self) -> int:
        n = dataset(self.h5, "conditions/incident_energy", self.path, ndim=1).shape[0]
        if self.layout == "dense":
            ds = dataset(self.h5, "showers", self.path, ndim=2)
            if ds.shape[0] != n:
                raise FormatError(f"{ds.shape[0]} showers but {n} incident energies", self.path)
            if ds.shape[1] != self.geometry_object.n_voxels:
                raise FormatError(f"showers have {ds.shape[1]} voxels, geometry {self.geometry} "
                                  f"has {self.geometry_object.n_voxels}", self.path)
        else:
            group = "hits" if self.layout == "sparse" else "points"
            offsets = dataset(self.h5, f"{group}/offsets", self.path, ndim=1)
            if offsets.shape[0] != n + 1:
                raise FormatError(f"{group}/offsets has {offsets.shape[0]} entries, expected "
                                  f"{n + 1}", self.path)
            self._check_flat_columns(group, offsets)
        return n

    def _check_flat_columns(self, group: str, offsets: h5py.Dataset) -> None:
        """The per-hit (per-point) columns exist, and the offsets span them exactly."""
        n = offsets.shape[0]
        first = int(read_rows(offsets, 0, 1, self.path)[0])
        last = int(read_rows(offsets, n - 1, n, self.path)[0])
        for name in _FLAT_COLUMNS[group]:
            ds = dataset(self.h5, f"{group}/{name}", self.path, ndim=1)
            if first != 0 or last != ds.shape[0]:
                raise FormatError(f"{group}/offsets run from {first} to {last} but "
                                  f"{group}/{name} has {ds.shape[0]} entries", self.path)

    def _read_conditions(self, start: int, stop: int) -> Conditions:
        g = self.h5["conditions"]
        kw = {name: read_rows(g[name], start, stop, self.path)
              for name in _CONDITIONS if name in g}
        return Conditions(read_rows(g["incident_energy"], start, stop, self.path), **kw)

    def _overflow(self, start: int, stop: int) -> np.ndarray | None:
        if "overflow" not in self.h5:
            return None
        return read_rows(self.h5["overflow"], start, stop, self.path)

    def _flat_slice(self, group: str, start: int, stop: int) -> tuple[np.ndarray, slice]:
        offsets = read_rows(self.h5[f"{group}/offsets"], start, stop + 1, self.path)
        if np.any(np.diff(offsets) < 0):
            raise FormatError(f"{group}/offsets decrease between showers {start} and {stop} "
                              "(corrupt file)", self.path)
        return offsets - offsets[0], slice(int(offsets[0]), int(offsets[-1]))

    def _read(self, start: int, stop: int) -> ShowerBatch:
        cond = self._read_conditions(start, stop)
        if self.layout == "dense":
            energies = read_rows(self.h5["showers"], start, stop, self.path)
            return ShowerBatch(self.geometry, energies, cond, self._overflow(start, stop))
        if self.layout == "points":
            batch, _ = self.read_points(start, stop).to_voxels(self.geometry)
            return batch
        offsets, sl = self._flat_slice("hits", start, stop)
        cell = read_rows(self.h5["hits/cell"], sl.start, sl.stop, self.path).astype(np.int64)
        energy = read_rows(self.h5["hits/energy"], sl.start, sl.stop, self.path)
        n_vox = self.geometry_object.n_voxels
        if len(cell) and (cell.min() < 0 or cell.max() >= n_vox):
            raise FormatError(f"hit cell index out of range 0..{n_vox - 1}", self.path)
        dense = np.zeros((stop - start, n_vox), np.float32)
        rows = np.repeat(np.arange(stop - start), np.diff(offsets))
        flat = rows * n_vox + cell
        if np.all(flat[1:] > flat[:-1]):  # caloforge writes each cell once, in order: assign
            dense.reshape(-1)[flat] = energy
        else:  # foreign or hand-made files may repeat a cell: sum its entries
            np.add.at(dense, (rows, cell), energy)
        return ShowerBatch(self.geometry, dense, cond, self._overflow(start, stop))

    def read_points(self, start: int = 0, stop: int | None = None) -> PointCloudBatch:
        if self.layout != "points":
            return super().read_points(start, stop)
        start, stop = self._range(start, stop)
        offsets, sl = self._flat_slice("points", start, stop)
        g = self.h5["points"]
        arrays = {k: read_rows(g[k], sl.start, sl.stop, self.path)
                  for k in ("x", "y", "z", "energy")}
        layer = read_rows(g["layer"], sl.start, sl.stop, self.path) if "layer" in g else None
        pts = PointCloudBatch(offsets, conditions=self._read_conditions(start, stop), layer=layer,
                              geometry=self.geometry, metadata=dict(self.metadata), **arrays)
        if self.validate:
            pts.validate(str(self.path))
        return pts


class NativeWriter(ShowerWriter):
    format = "caloforge"
    stores = frozenset(_CONDITIONS)
    stores_overflow = True

    def __init__(self, *args, sparse: bool | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.sparse = sparse
        self.layout: str | None = None
        self.h5.attrs["caloforge_format"] = "caloforge"
        self.h5.attrs["format_version"] = FORMAT_VERSION
        self.h5.attrs["geometry"] = self.geometry
        self.h5.attrs["energy_unit"] = "MeV"
        self.h5.attrs["length_unit"] = "mm"
        self._present: list[str] | None = None

    def _choose_layout(self, batch: ShowerBatch | PointCloudBatch) -> str:
        if isinstance(batch, PointCloudBatch):
            return "points"
        if self.sparse is None:
            # Sparse pays off below ~40 % occupancy (8 bytes per hit vs 4 per voxel).
            return "sparse" if np.count_nonzero(batch.energies) < 0.4 * batch.energies.size \
                else "dense"
        return "sparse" if self.sparse else "dense"

    def _append(self, batch: ShowerBatch | PointCloudBatch) -> None:
        layout = self._choose_layout(batch)
        if self.layout is None:
            self.layout = layout
            self.h5.attrs["layout"] = layout
            self._present = batch.conditions.present
        elif (layout == "points") != (self.layout == "points"):
            raise InputError("cannot mix point clouds and voxel showers in one file", self.target)
        if batch.conditions.present != self._present:
            raise InputError(f"batches carry different conditions ({batch.conditions.present} vs "
                             f"{self._present})", self.target)
        g = self.h5.require_group("conditions")
        c = batch.conditions
        append_rows(g, "incident_energy", c.incident_energy, 4096)
        for name in _CONDITIONS:
            if getattr(c, name) is not None:
                append_rows(g, name, getattr(c, name), 4096)
        if self.layout == "points":
            self._append_flat("points", batch.offsets, {
                "x": batch.x, "y": batch.y, "z": batch.z, "energy": batch.energy,
                **({"layer": batch.layer.astype(np.int32)} if batch.layer is not None else {})})
            return
        if self.layout == "dense":
            append_rows(self.h5, "showers", batch.energies, 16, compression="gzip")
        else:
            h = batch.hits()
            counts = np.bincount(h.shower, minlength=len(batch))
            self._append_flat("hits", np.concatenate([[0], np.cumsum(counts)]),
                              {"cell": h.cell.astype(np.int32), "energy": h.energy})
        if batch.overflow is not None:
            append_rows(self.h5, "overflow", batch.overflow, 4096)

    def _append_flat(self, group: str, offsets: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        g = self.h5.require_group(group)
        if "offsets" not in g:
            append_rows(g, "offsets", np.zeros(1, np.int64), 4096)
        base = int(g["offsets"][-1])
        append_rows(g, "offsets", (offsets[1:] + base).astype(np.int64), 4096)
        for key, arr in arrays.items():
            append_rows(g, key, arr, 65536)

    def finalize(self) -> None:
        if self.layout is None:  # empty file: still a valid, empty dense file
            self.h5.attrs["layout"] = "dense"
            g = self.h5.require_group("conditions")
            g.create_dataset("incident_energy", shape=(0,), maxshape=(None,), dtype="f8")
            self.h5.create_dataset("showers", shape=(0, self._n_vox()), maxshape=(None, None),
                                   dtype="f4")
        super().finalize()

    def _n_vox(self) -> int:
        from caloforge.geometry import get_geometry

        return get_geometry(self.geometry).n_voxels


def is_native(h5: h5py.File) -> bool:
    return h5.attrs.get("caloforge_format") == "caloforge"
