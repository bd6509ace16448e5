"""ILD HDF5 as in "Getting High" (photons) and "Hadrons, Better, Faster, Stronger" (pions).

Photons (ILD ECAL): group ``30x30`` with ``energy`` (N, 1) incident energy in **GeV** and
``layers`` (N, 30, 30, 30) cell energies in **MeV**, axes (layer, x, y).
Pions (ILD AHCAL): group ``hcal_only`` with ``energy`` (N, 1) GeV and ``layers``
(N, 48, 25, 25) MeV.

Data types follow the original files: their production scripts (``create_hdf5.py`` of the
"Getting High" and "Hadrons, Better, Faster, Stronger" code) store the incident energy
from the float32 ``mcene`` branch and the layers as ``np.histogram2d`` output, float64.
Downstream training code depends on it: the BIB-AE feeds the energy column to its critic
without a cast, so float64 energies fail there on a dtype mismatch (its layers are cast).
Constant conditions (e.g. theta) are root attributes, see :mod:`caloforge.data.io.base`.
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

GROUPS = {"30x30": "ild-ecal", "hcal_only": "ild-ahcal"}
GEV = 1000.0
ENERGY_DTYPE = np.float32
LAYERS_DTYPE = np.float64


class ILDReader(ShowerReader):
    format = "ild"

    def _geometry(self, requested: str | None) -> str:
        groups = [g for g in GROUPS if g in self.h5]
        if not groups:
            raise FormatError("no ILD group ('30x30' or 'hcal_only') in file", self.path)
        self.group = self.h5[groups[0]]
        name = resolve_geometry(self.path, GROUPS[groups[0]], requested)
        geo = get_geometry(name)
        layers = dataset(self.group, "layers", self.path, ndim=4)
        expected = (geo.n_layers,) + geo.layer_shape(0)
        if layers.shape[1:] != expected:
            raise FormatError(f"{groups[0]}/layers has shape {layers.shape}, expected "
                              f"(N, {', '.join(map(str, expected))}) for {name}", self.path)
        return name

    def _n_showers(self) -> int:
        energy = dataset(self.group, "energy", self.path)
        n = self.group["layers"].shape[0]
        if energy.shape not in ((n, 1), (n,)):
            raise FormatError(f"energy has shape {energy.shape}, expected ({n}, 1)", self.path)
        return n

    def _read_conditions(self, start: int, stop: int) -> Conditions:
        return self._conditions(read_rows(self.group["energy"], start, stop, self.path)
                               .astype(np.float64) * GEV)

    def _read(self, start: int, stop: int) -> ShowerBatch:
        layers = read_rows(self.group["layers"], start, stop, self.path)
        return ShowerBatch(self.geometry, layers.reshape(len(layers), -1),
                           self._read_conditions(start, stop))


class ILDWriter(ShowerWriter):
    format = "ild"

    def _check_geometry(self) -> None:
        if self.geometry not in GROUPS.values():
            raise GeometryError(f"the ILD format holds ild-ecal or ild-ahcal showers, not "
                                f"{self.geometry}", self.target)
        self.group = self.h5.require_group(
            next(g for g, name in GROUPS.items() if name == self.geometry))

    def _append(self, batch: ShowerBatch) -> None:
        batch = self.voxelise(batch)
        geo = get_geometry(self.geometry)
        shape = (len(batch), geo.n_layers) + geo.layer_shape(0)
        append_rows(self.group, "energy", (batch.incident_energy / GEV).reshape(-1, 1)
                    .astype(ENERGY_DTYPE), 4096)
        append_rows(self.group, "layers", batch.energies.reshape(shape).astype(LAYERS_DTYPE), 16,
                    compression="gzip")

    def finalize(self) -> None:
        if "layers" not in self.group:
            geo = get_geometry(self.geometry)
            shape = (geo.n_layers,) + geo.layer_shape(0)
            self.group.create_dataset("energy", shape=(0, 1), maxshape=(None, 1),
                                      dtype=ENERGY_DTYPE)
            self.group.create_dataset("layers", shape=(0,) + shape, maxshape=(None,) + shape,
                                      dtype=LAYERS_DTYPE)
        super().finalize()


def is_ild(h5: h5py.File) -> bool:
    return any(g in h5 and isinstance(h5[g], h5py.Group) for g in GROUPS)
