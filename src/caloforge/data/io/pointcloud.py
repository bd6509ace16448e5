"""Point-cloud HDF5 as used by CaloClouds: ``events`` (N, 4, P) with rows
x (mm), y (= layer index), z (mm), E (**GeV**), zero padded to P points, and ``energy``
(N, 1) incident energy in **GeV**.

In caloforge's frame the two transverse coordinates are x = events[:, 0] and
y = events[:, 2] (mm, relative to the grid centre), the layer is events[:, 1] and the
depth z is the centre of that layer's active medium.  Points with E = 0 are padding.
The files carry no geometry; caloforge writes a ``geometry`` attribute, otherwise the
ILD ECAL (the CaloClouds detector) is assumed unless another geometry is given.
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
from caloforge.errors import FormatError
from caloforge.geometry import get_geometry

GEV = 1000.0
DEFAULT_GEOMETRY = "ild-ecal"


class PointCloudReader(ShowerReader):
    format = "pointcloud"
    is_point_cloud = True

    def _geometry(self, requested: str | None) -> str:
        found = self.h5.attrs.get("geometry")
        if found is None and requested is None:
            self.geometry_assumed = True
            found = DEFAULT_GEOMETRY
        return resolve_geometry(self.path, None if found is None else str(found), requested)

    def _n_showers(self) -> int:
        events = dataset(self.h5, "events", self.path, ndim=3)
        if events.shape[1] != 4:
            raise FormatError(f"events has shape {events.shape}, expected (N, 4, P)", self.path)
        energy = dataset(self.h5, "energy", self.path)
        if energy.shape not in ((events.shape[0], 1), (events.shape[0],)):
            raise FormatError(f"energy has shape {energy.shape}, expected ({events.shape[0]}, 1)",
                              self.path)
        return events.shape[0]

    def _read_conditions(self, start: int, stop: int) -> Conditions:
        return self._conditions(read_rows(self.h5["energy"], start, stop, self.path)
                               .astype(np.float64) * GEV)

    def read_points(self, start: int = 0, stop: int | None = None) -> PointCloudBatch:
        start, stop = self._range(start, stop)
        events = read_rows(self.h5["events"], start, stop, self.path)
        e = events[:, 3, :]
        if self.validate and not np.isfinite(events).all():
            raise FormatError("events contain NaN/inf values", self.path)
        if self.validate and (e < 0).any():
            raise FormatError(f"{int((e < 0).any(axis=1).sum())} showers have negative point "
                              "energies", self.path)
        real = e != 0
        shower, point = np.nonzero(real)
        geo = get_geometry(self.geometry)
        layer_f = events[shower, 1, point]
        layer = np.rint(layer_f).astype(np.int64)
        if len(layer) and (np.abs(layer_f - layer).max() > 1e-3 or layer.min() < 0
                           or layer.max() >= geo.n_layers):
            raise FormatError(f"row y must hold integer layer indices 0..{geo.n_layers - 1} of "
                              f"{geo.name}; found {layer_f.min():.3g}..{layer_f.max():.3g}",
                              self.path)
        counts = real.sum(axis=1)
        pts = PointCloudBatch(
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            x=events[shower, 0, point], y=events[shower, 2, point],
            z=geo.layer_z_mm[layer], energy=events[shower, 3, point] * GEV, layer=layer,
            conditions=self._read_conditions(start, stop), geometry=self.geometry,
            metadata=dict(self.metadata))
        if self.validate:
            pts.validate(str(self.path))
        return pts

    def _read(self, start: int, stop: int) -> ShowerBatch:
        batch, _ = self.read_points(start, stop).to_voxels(self.geometry)
        return batch


class PointCloudWriter(ShowerWriter):
    format = "pointcloud"

    def _append(self, batch: ShowerBatch | PointCloudBatch) -> None:
        if isinstance(batch, ShowerBatch):
            batch = batch.to_points()
        geo = get_geometry(self.geometry)
        layer = batch.layers_on(geo)
        keep = batch.energy > 0  # zero-energy points are indistinguishable from padding
        counts = np.bincount(batch.shower_index[keep], minlength=len(batch))
        p = max(int(counts.max()) if len(counts) else 0, 1)
        events = np.zeros((len(batch), 4, p), np.float32)
        shower = batch.shower_index[keep]
        slot = np.arange(keep.sum()) - np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]),
                                                 counts)
        events[shower, 0, slot] = batch.x[keep]
        events[shower, 1, slot] = layer[keep]
        events[shower, 2, slot] = batch.y[keep]
        events[shower, 3, slot] = batch.energy[keep] / GEV
        if "events" in self.h5:
            ds = self.h5["events"]
            if ds.shape[2] < p:
                ds.resize(p, axis=2)
            elif ds.shape[2] > p:
                events = np.pad(events, ((0, 0), (0, 0), (0, ds.shape[2] - p)))
        else:
            self.h5.create_dataset("events", data=events, maxshape=(None, 4, None),
                                   chunks=(min(16, len(events)), 4, p), compression="gzip",
                                   compression_opts=1)
            append_rows(self.h5, "energy", (batch.conditions.incident_energy / GEV)
                        .reshape(-1, 1), 4096)
            return
        n = ds.shape[0]
        ds.resize(n + len(events), axis=0)
        ds[n:] = events
        append_rows(self.h5, "energy", (batch.conditions.incident_energy / GEV).reshape(-1, 1),
                    4096)

    def finalize(self) -> None:
        if "events" not in self.h5:
            self.h5.create_dataset("events", shape=(0, 4, 1), maxshape=(None, 4, None),
                                   dtype="f4", chunks=(16, 4, 1))
            self.h5.create_dataset("energy", shape=(0, 1), maxshape=(None, 1), dtype="f8")
        self.h5.attrs["geometry"] = self.geometry
        super().finalize()


def is_pointcloud(h5: h5py.File) -> bool:
    return "events" in h5 and "energy" in h5
