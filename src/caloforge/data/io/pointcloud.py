"""Point clouds in the CaloClouds / CaloClouds II HDF5 layout.

The layout, as the peers' own code reads it (FLC-QU-hep/CaloClouds-2: the dataset reader
``utils/dataset.py`` and the projection ``utils/plotting.py:get_projections``):

- ``events`` (N, 4, P) float32, P = 6000 slots per shower (caloforge writes more, as
  many as the largest shower needs, only when a shower has more than 6000 points; the
  CaloClouds II reader then needs ``max_ds_seq_len = P``).  Rows: x (mm), y (mm, the
  layer's position along the ILD radial direction), z (mm), E (**GeV**).  The points of a
  shower fill the **last** slots: zero padding at the front (the reader keeps
  ``events[:, :, P - n_max:]``), and E = 0 marks padding.
- ``energy`` (N, 1): the incident energy in **GeV**.

The frame is the one of the CaloClouds ILD ECAL barrel files: y is the middle of the
layer's silicon (layer bottom + 0.525 mm / 2, the 30 ``layer_bottom_pos`` values below);
x runs along the barrel circumference and z along the beam, with the photon axis at
x = 0, z = 40 mm.  caloforge's frame (x, y transverse about the grid centre, z depth) maps
onto it as ``x_file = x``, ``z_file = y + 40 mm``, ``y_file = layer position``.  For a
geometry other than the ILD ECAL, y_file is caloforge's depth of the layer's active
medium (:attr:`Geometry.layer_z_mm`) and the transverse origin is the grid centre.

Reading accepts, besides this layout, the peers' training files (y in layer units, layer
k filling [k, k+1)), (N, P, 4) arrays, padding on either side, and files written by
earlier caloforge versions (y = integer layer index, transverse origin at the grid
centre).  Bad points are errors naming the file: NaN/inf values, negative energies, a y
outside every layer and, when validating, showers without points.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from caloforge.geometry import Geometry, get_geometry

GEV = 1000.0
DEFAULT_GEOMETRY = "ild-ecal"
#: slots per shower: CaloClouds II's reader cuts ``events[:, :, 6000 - n_max:]``
SLOTS = 6000
#: root attribute marking files in the layout above (earlier caloforge files lack it)
LAYOUT_ATTR = "caloforge_pointcloud_layout"
LAYOUT = "caloclouds"

# ILD ECAL barrel, CaloClouds frame (CaloClouds-2 utils/plotting.py ``layer_bottom_pos``,
# ``cell_thickness``; CaloClouds-3 metadata 10-90GeV_x36_grid_regular_524k).
ILD_LAYER_BOTTOM_MM = np.array([
    1811.34020996, 1814.46508789, 1823.81005859, 1826.93505859, 1836.2800293,
    1839.4050293, 1848.75, 1851.875, 1861.2199707, 1864.3449707,
    1873.68994141, 1876.81494141, 1886.16003418, 1889.28503418, 1898.63000488,
    1901.75500488, 1911.09997559, 1914.22497559, 1923.56994629, 1926.69494629,
    1938.14001465, 1943.36499023, 1954.81005859, 1960.03503418, 1971.47998047,
    1976.70495605, 1988.15002441, 1993.375, 2004.81994629, 2010.04504395])
ILD_SENSOR_MM = 0.5250244140625
#: the projection takes a point into layer k when bottom_k - 0.5 <= y <= bottom_k + 1
ILD_WINDOW_MM = (0.5, 1.0)
#: (x, z) of the photon axis in the CaloClouds files (radial-profile origin (0, 40))
ILD_AXIS_MM = (0.0, 40.0)


@dataclass(frozen=True)
class FileFrame:
    """Where caloforge's coordinates sit in a point file: the y written for each layer,
    the y window read back as that layer, and the file position of the grid centre."""

    layer_y: np.ndarray
    y_lo: np.ndarray
    y_hi: np.ndarray
    x0: float = 0.0
    z0: float = 0.0

    @staticmethod
    def of(geometry: Geometry) -> FileFrame:
        if geometry.name == "ild-ecal":
            lo, hi = ILD_WINDOW_MM
            return FileFrame(ILD_LAYER_BOTTOM_MM + 0.5 * ILD_SENSOR_MM,
                             ILD_LAYER_BOTTOM_MM - lo, ILD_LAYER_BOTTOM_MM + hi, *ILD_AXIS_MM)
        front = geometry.layer_front_z_mm
        thick = np.array([s.thickness_mm for s in geometry.layers])
        return FileFrame(np.asarray(geometry.layer_z_mm), front, front + thick)

    def layer_of(self, y: np.ndarray) -> np.ndarray:
        """Layer of each file y (mm), -1 outside every layer window."""
        k = np.clip(np.searchsorted(self.y_lo, y, side="right") - 1, 0, len(self.y_lo) - 1)
        return np.where((y >= self.y_lo[k]) & (y <= self.y_hi[k]), k, -1)


class PointCloudReader(ShowerReader):
    format = "pointcloud"
    is_point_cloud = True

    def _geometry(self, requested: str | None) -> str:
        found = self.h5.attrs.get("geometry")
        # earlier caloforge files: a geometry attribute but no layout marker
        self.legacy = found is not None and LAYOUT_ATTR not in self.h5.attrs
        if found is None and requested is None:
            self.geometry_assumed = True
            found = DEFAULT_GEOMETRY
        return resolve_geometry(self.path, None if found is None else str(found), requested)

    def _n_showers(self) -> int:
        events = dataset(self.h5, "events", self.path, ndim=3)
        if events.shape[1] == 4:
            self.transposed = False
        elif events.shape[2] == 4:
            self.transposed = True
        else:
            raise FormatError(f"events has shape {events.shape}, expected (N, 4, P) or "
                              "(N, P, 4)", self.path)
        energy = dataset(self.h5, "energy", self.path)
        if energy.shape not in ((events.shape[0], 1), (events.shape[0],)):
            raise FormatError(f"energy has shape {energy.shape}, expected ({events.shape[0]}, 1)",
                              self.path)
        return events.shape[0]

    def _read_conditions(self, start: int, stop: int) -> Conditions:
        return self._conditions(read_rows(self.h5["energy"], start, stop, self.path)
                                .reshape(-1).astype(np.float64) * GEV)

    def read_points(self, start: int = 0, stop: int | None = None) -> PointCloudBatch:
        start, stop = self._range(start, stop)
        events = read_rows(self.h5["events"], start, stop, self.path)
        if self.transposed:
            events = np.swapaxes(events, 1, 2)
        where = f"showers {start}:{stop}"
        if not np.isfinite(events).all():
            rows = np.flatnonzero(~np.isfinite(events).all(axis=(1, 2)))
            raise InputError(f"{where}: {len(rows)} showers have NaN/inf point coordinates or "
                             f"energies (first: shower {start + rows[0]})", self.path)
        e = events[:, 3, :]
        if (e < 0).any():
            rows = np.flatnonzero((e < 0).any(axis=1))
            raise InputError(f"{where}: {len(rows)} showers have negative point energies "
                             f"(first: shower {start + rows[0]}, {e.min() * GEV:.4g} MeV)",
                             self.path)
        real = e > 0
        counts = real.sum(axis=1)
        if self.validate and (counts == 0).any():
            rows = np.flatnonzero(counts == 0)
            raise InputError(f"{where}: {len(rows)} showers hold no points (first: shower "
                             f"{start + rows[0]})", self.path)
        shower, point = np.nonzero(real)
        geo = get_geometry(self.geometry)
        x, y, z = (events[shower, row, point].astype(np.float64) for row in range(3))
        layer, x0, z0 = self._layers(y, geo, where)
        pts = PointCloudBatch(
            offsets=np.concatenate([[0], np.cumsum(counts)]), x=x - x0, y=z - z0,
            z=geo.layer_z_mm[layer], energy=e[shower, point] * GEV, layer=layer,
            conditions=self._read_conditions(start, stop), geometry=self.geometry,
            metadata=dict(self.metadata))
        if self.validate:
            pts.validate(str(self.path))
        return pts

    def _layers(self, y: np.ndarray, geo: Geometry, where: str
                ) -> tuple[np.ndarray, float, float]:
        """Layer of every point from the file's y, and the file's transverse origin."""
        frame = FileFrame.of(geo)
        if self.legacy or (LAYOUT_ATTR not in self.h5.attrs and len(y)
                           and y.max() <= geo.n_layers):
            # layer units: integer indices (earlier caloforge) or [k, k+1) (peer training)
            layer = np.floor(y).astype(np.int64)
            bad = (layer < 0) | (layer >= geo.n_layers)
            what = f"layer units 0..{geo.n_layers}"
        else:
            layer = frame.layer_of(y)
            bad = layer < 0
            what = (f"the {geo.name} layer positions {frame.y_lo[0]:.6g}.."
                    f"{frame.y_hi[-1]:.6g} mm")
        if bad.any():
            raise InputError(f"{where}: {int(bad.sum())} points lie outside the layers "
                             f"(y = {y[bad][0]:.6g}; expected {what})", self.path)
        origin = (0.0, 0.0) if self.legacy else (frame.x0, frame.z0)
        return layer, *origin

    def _read(self, start: int, stop: int) -> ShowerBatch:
        batch, _ = self.read_points(start, stop).to_voxels(self.geometry)
        return batch


class PointCloudWriter(ShowerWriter):
    format = "pointcloud"

    def __init__(self, *args, slots: int = SLOTS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(slots, bool) or int(slots) != slots or slots < 1:
            raise InputError(f"slots must be a positive integer, got {slots!r}", self.target)
        self.slots = int(slots)
        self.frame = FileFrame.of(get_geometry(self.geometry))

    def _append(self, batch: ShowerBatch | PointCloudBatch) -> None:
        if isinstance(batch, ShowerBatch):
            batch = batch.to_points()
        geo = get_geometry(self.geometry)
        layer = batch.layers_on(geo)
        # zero-energy points are indistinguishable from padding
        keep = batch.energy > 0
        counts = np.bincount(batch.shower_index[keep], minlength=len(batch))
        first = self.n_written
        if (counts == 0).any():
            raise InputError(f"shower {first + int(np.flatnonzero(counts == 0)[0])} has no "
                             "point with energy > 0; the point-cloud layout cannot hold an "
                             "empty shower", self.target)
        if counts.max() > self.slots:
            self._grow(int(counts.max()))
        if ((layer[keep] < 0) | (layer[keep] >= geo.n_layers)).any():
            raise InputError(f"points outside the {geo.n_layers} layers of {geo.name}",
                             self.target)
        shower = batch.shower_index[keep]
        ends = np.cumsum(counts)
        # right-aligned: point j of a shower with n points goes to slot P - n + j
        slot = self.slots - counts[shower] + (np.arange(len(shower)) - (ends - counts)[shower])
        events = np.zeros((len(batch), 4, self.slots), np.float32)
        events[shower, 0, slot] = batch.x[keep] + self.frame.x0
        events[shower, 1, slot] = self.frame.layer_y[layer[keep]]
        events[shower, 2, slot] = batch.y[keep] + self.frame.z0
        events[shower, 3, slot] = batch.energy[keep] / GEV
        if "events" not in self.h5:
            self.h5.create_dataset("events", data=events, maxshape=(None, 4, None),
                                   chunks=(16, 4, min(self.slots, SLOTS)), compression="gzip")
        else:
            append_rows(self.h5, "events", events)
        append_rows(self.h5, "energy",
                    (batch.conditions.incident_energy / GEV).reshape(-1, 1), 4096)

    def _grow(self, slots: int) -> None:
        """More slots for a shower with more points than the layout holds so far: the
        rows written already move right so that their padding stays at the front."""
        if "events" in self.h5:
            ds, shift = self.h5["events"], slots - self.slots
            ds.resize(slots, axis=2)
            for lo in range(0, ds.shape[0], 256):
                rows = ds[lo:lo + 256, :, :self.slots]
                moved = np.zeros((len(rows), 4, slots), np.float32)
                moved[:, :, shift:] = rows
                ds[lo:lo + 256] = moved
        self.slots = slots

    def finalize(self) -> None:
        if "events" not in self.h5:
            self.h5.create_dataset("events", shape=(0, 4, self.slots), maxshape=(None, 4,
                                   self.slots), dtype="f4", chunks=(16, 4, self.slots))
            self.h5.create_dataset("energy", shape=(0, 1), maxshape=(None, 1), dtype="f8")
        self.h5.attrs["geometry"] = self.geometry
        self.h5.attrs[LAYOUT_ATTR] = LAYOUT
        super().finalize()


def is_pointcloud(h5: h5py.File) -> bool:
    return "events" in h5 and "energy" in h5
