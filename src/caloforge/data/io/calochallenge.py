"""CaloChallenge 2022 HDF5: ``incident_energies`` (N, 1) MeV and ``showers``
(N, n_voxels) MeV, voxels in the challenge order (radial fastest, then angular, then
layers).  The files carry no geometry name; it follows from the voxel count (368, 533,
6480, 40500; caloforge also writes ILD 27000 / 30000 and CaloGAN 504 grids this way).
"""

from __future__ import annotations

import h5py

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
from caloforge.geometry import geometries_with_voxels


class CaloChallengeReader(ShowerReader):
    format = "calochallenge"

    def _geometry(self, requested: str | None) -> str:
        showers = dataset(self.h5, "showers", self.path, ndim=2)
        n_vox = showers.shape[1]
        found = self.h5.attrs.get("geometry")
        if found is None and requested is None:
            candidates = geometries_with_voxels(n_vox)
            if not candidates:
                raise GeometryError(f"{n_vox} voxels per shower match no known geometry "
                                    "(368, 533, 6480, 40500, 27000, 30000, 504)", self.path)
            if len(candidates) > 1:  # pragma: no cover - voxel counts are unique today
                raise GeometryError(f"{n_vox} voxels match {candidates}; pass --geometry",
                                    self.path)
            found = candidates[0]
        return resolve_geometry(self.path, None if found is None else str(found), requested,
                                n_vox)

    def _n_showers(self) -> int:
        inc = dataset(self.h5, "incident_energies", self.path)
        if inc.ndim not in (1, 2) or (inc.ndim == 2 and inc.shape[1] != 1):
            raise FormatError(f"incident_energies has shape {inc.shape}, expected (N, 1)",
                              self.path)
        n = self.h5["showers"].shape[0]
        if inc.shape[0] != n:
            raise FormatError(f"{n} showers but {inc.shape[0]} incident energies", self.path)
        return n

    def _read_conditions(self, start: int, stop: int) -> Conditions:
        return self._conditions(read_rows(self.h5["incident_energies"], start, stop, self.path))

    def _read(self, start: int, stop: int) -> ShowerBatch:
        return ShowerBatch(self.geometry, read_rows(self.h5["showers"], start, stop, self.path),
                           self._read_conditions(start, stop))


class CaloChallengeWriter(ShowerWriter):
    format = "calochallenge"

    def _append(self, batch: ShowerBatch) -> None:
        batch = self.voxelise(batch)
        append_rows(self.h5, "incident_energies",
                    batch.incident_energy.reshape(-1, 1), 4096)
        append_rows(self.h5, "showers", batch.energies, 64)

    def finalize(self) -> None:
        if "showers" not in self.h5:
            from caloforge.geometry import get_geometry

            n_vox = get_geometry(self.geometry).n_voxels
            self.h5.create_dataset("incident_energies", shape=(0, 1), maxshape=(None, 1), dtype="f8")
            self.h5.create_dataset("showers", shape=(0, n_vox), maxshape=(None, n_vox), dtype="f4")
        self.h5.attrs["geometry"] = self.geometry
        super().finalize()


def is_calochallenge(h5: h5py.File) -> bool:
    return "incident_energies" in h5 and "showers" in h5
