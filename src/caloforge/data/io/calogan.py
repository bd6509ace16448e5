"""CaloGAN HDF5 (seed 004): ``energy`` (N, 1) incident energy in **GeV**, ``layer_0``
(N, 3, 96), ``layer_1`` (N, 12, 12), ``layer_2`` (N, 12, 6) cell energies in **MeV**, and
``overflow`` (N, 3) MeV, the energy of each layer outside its cells.
"""

from __future__ import annotations

import h5py
import numpy as np

from caloforge.data.batch import Conditions, ShowerBatch
from caloforge.data.io.base import (
    ShowerReader,
    ShowerWriter,
    append_rows,
    dataset,
    read_rows,
    resolve_geometry,
)
from caloforge.errors import FormatError, GeometryError
from caloforge.geometry import get_geometry

GEV = 1000.0
LAYERS = ("layer_0", "layer_1", "layer_2")


class CaloGANReader(ShowerReader):
    format = "calogan"

    def _geometry(self, requested: str | None) -> str:
        name = resolve_geometry(self.path, "calogan", requested)
        geo = get_geometry(name)
        for k, key in enumerate(LAYERS):
            ds = dataset(self.h5, key, self.path, ndim=3)
            if ds.shape[1:] != geo.layer_shape(k):
                raise FormatError(f"{key} has shape {ds.shape}, expected (N, "
                                  f"{', '.join(map(str, geo.layer_shape(k)))})", self.path)
        return name

    def _n_showers(self) -> int:
        n = self.h5["layer_0"].shape[0]
        for key in LAYERS[1:]:
            if self.h5[key].shape[0] != n:
                raise FormatError(f"{key} has {self.h5[key].shape[0]} showers, layer_0 has {n}",
                                  self.path)
        energy = dataset(self.h5, "energy", self.path)
        if energy.shape not in ((n, 1), (n,)):
            raise FormatError(f"energy has shape {energy.shape}, expected ({n}, 1)", self.path)
        if "overflow" in self.h5 and self.h5["overflow"].shape != (n, 3):
            raise FormatError(f"overflow has shape {self.h5['overflow'].shape}, expected ({n}, 3)",
                              self.path)
        return n

    def _read_conditions(self, start: int, stop: int) -> Conditions:
        return self._conditions(read_rows(self.h5["energy"], start, stop, self.path)
                               .astype(np.float64) * GEV)

    def _read(self, start: int, stop: int) -> ShowerBatch:
        parts = [read_rows(self.h5[k], start, stop, self.path).reshape(stop - start, -1)
                 for k in LAYERS]
        overflow = read_rows(self.h5["overflow"], start, stop, self.path) \
            if "overflow" in self.h5 else None
        return ShowerBatch(self.geometry, np.concatenate(parts, axis=1),
                           self._read_conditions(start, stop), overflow)


class CaloGANWriter(ShowerWriter):
    format = "calogan"
    stores_overflow = True

    def _check_geometry(self) -> None:
        if self.geometry != "calogan":
            raise GeometryError(f"the CaloGAN format holds calogan showers, not {self.geometry}",
                                self.target)

    def _append(self, batch: ShowerBatch) -> None:
        batch = self.voxelise(batch)
        geo = get_geometry(self.geometry)
        append_rows(self.h5, "energy", (batch.incident_energy / GEV).reshape(-1, 1), 4096)
        for k, image in enumerate(geo.layer_images(batch.energies)):
            append_rows(self.h5, LAYERS[k], image, 256)
        overflow = batch.overflow if batch.overflow is not None \
            else np.zeros((len(batch), geo.n_layers), np.float32)
        append_rows(self.h5, "overflow", overflow, 4096)

    def finalize(self) -> None:
        if "energy" not in self.h5:
            geo = get_geometry(self.geometry)
            self.h5.create_dataset("energy", shape=(0, 1), maxshape=(None, 1), dtype="f8")
            for k, key in enumerate(LAYERS):
                shape = geo.layer_shape(k)
                self.h5.create_dataset(key, shape=(0,) + shape, maxshape=(None,) + shape,
                                       dtype="f4")
            self.h5.create_dataset("overflow", shape=(0, 3), maxshape=(None, 3), dtype="f4")
        super().finalize()


def is_calogan(h5: h5py.File) -> bool:
    return all(k in h5 for k in LAYERS) and "energy" in h5
