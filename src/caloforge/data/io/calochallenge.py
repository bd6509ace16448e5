"""CaloChallenge 2022 HDF5: ``incident_energies`` (N, 1) MeV and ``showers``
(N, n_voxels) MeV, voxels in the challenge order (radial fastest, then angular, then
layers).  The files carry no geometry name; it follows from the voxel count (368, 533,
6480, 40500; caloforge also writes ILD 27000 / 30000 and CaloGAN 504 grids this way).

Energy convention (see :mod:`caloforge.geometry.calochallenge`): the challenge's files
for datasets 2 and 3 hold the silicon deposits divided by the sampling fraction 0.033,
while caloforge holds deposits; the reader multiplies by the sampling fraction and the
writer divides by it, and records the convention in the file's metadata
(``energy_convention``, ``sampling_fraction``).  Files that caloforge wrote before it
followed this convention (metadata without ``energy_convention``) hold deposits and are
read as such.  Dataset-1 files hold ATLAS cells calibrated to the electromagnetic scale,
read and written unchanged; showers that caloforge's reference simulation made for the
approximate dataset-1 geometry are uncalibrated deposits, which the writer refuses.
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
from caloforge.errors import FormatError, GeometryError, LossyConversionError
from caloforge.geometry import geometries_with_voxels
from caloforge.geometry.calochallenge import SAMPLING_FRACTION

CONVENTION_SCALED = "deposited / sampling fraction"  # the challenge's datasets 2 and 3
CONVENTION_DEPOSITED = "deposited"  # caloforge files written before the convention
CONVENTION_CALIBRATED = "calibrated cells (EM scale)"  # the challenge's dataset 1


def official_convention(geometry: str) -> str:
    """The energy convention of the challenge's files for a geometry."""
    if geometry in SAMPLING_FRACTION:
        return CONVENTION_SCALED
    if geometry.startswith("calochallenge-1"):
        return CONVENTION_CALIBRATED
    return CONVENTION_DEPOSITED  # non-challenge grids written in this format


def file_convention(h5: h5py.File, metadata: dict, geometry: str) -> str:
    """The convention a file's energies follow: as recorded, else the challenge's for
    files caloforge did not write, else deposits (caloforge's older files)."""
    if "energy_convention" in metadata:
        return str(metadata["energy_convention"])
    written_by_caloforge = bool(metadata) or "geometry" in h5.attrs
    return CONVENTION_DEPOSITED if written_by_caloforge and geometry in SAMPLING_FRACTION \
        else official_convention(geometry)


def to_internal_factor(convention: str, geometry: str) -> float:
    """Factor from a file's energies to caloforge's (deposits on datasets 2 and 3)."""
    if convention == CONVENTION_SCALED:
        if geometry not in SAMPLING_FRACTION:
            raise FormatError(f"energy convention {convention!r} is defined only for "
                              f"CaloChallenge datasets 2 and 3, not {geometry}")
        return SAMPLING_FRACTION[geometry]
    if convention in (CONVENTION_DEPOSITED, CONVENTION_CALIBRATED):
        return 1.0
    raise FormatError(f"unknown energy convention {convention!r}")


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

    @property
    def energy_convention(self) -> str:
        return file_convention(self.h5, self.metadata, self.geometry)

    def read_file_energies(self, start: int, stop: int) -> np.ndarray:
        """Voxel energies exactly as stored (the file's convention, not caloforge's)."""
        return read_rows(self.h5["showers"], start, stop, self.path)

    def _read(self, start: int, stop: int) -> ShowerBatch:
        e = self.read_file_energies(start, stop)
        factor = to_internal_factor(self.energy_convention, self.geometry)
        if factor != 1.0:
            e = np.asarray(e, dtype=np.float32)
            e *= np.float32(factor)  # in place: a batch is never held twice
        return ShowerBatch(self.geometry, e, self._read_conditions(start, stop))


class CaloChallengeWriter(ShowerWriter):
    format = "calochallenge"

    def _append(self, batch: ShowerBatch) -> None:
        batch = self.voxelise(batch)
        convention = official_convention(self.geometry)
        if convention == CONVENTION_CALIBRATED and (
                "simulation" in self.metadata or "simulation" in batch.metadata):
            raise LossyConversionError(
                "CaloChallenge dataset-1 files hold ATLAS cell energies calibrated to the "
                "electromagnetic scale; caloforge's simulated dataset-1 showers are "
                "uncalibrated deposits of an approximate geometry and cannot be written in "
                "that convention (write them with --to caloforge instead)", self.target)
        energies = batch.energies
        factor = to_internal_factor(convention, self.geometry)
        if factor != 1.0:
            energies = (np.asarray(energies, np.float32) / np.float32(factor)
                        ).astype(np.float32)
        append_rows(self.h5, "incident_energies",
                    batch.incident_energy.reshape(-1, 1), 4096)
        append_rows(self.h5, "showers", energies, 64)

    def finalize(self) -> None:
        if "showers" not in self.h5:
            from caloforge.geometry import get_geometry

            n_vox = get_geometry(self.geometry).n_voxels
            self.h5.create_dataset("incident_energies", shape=(0, 1), maxshape=(None, 1), dtype="f8")
            self.h5.create_dataset("showers", shape=(0, n_vox), maxshape=(None, n_vox), dtype="f4")
        self.h5.attrs["geometry"] = self.geometry
        convention = official_convention(self.geometry)
        self.metadata["energy_convention"] = convention
        if convention == CONVENTION_SCALED:
            self.metadata["sampling_fraction"] = SAMPLING_FRACTION[self.geometry]
        super().finalize()


def is_calochallenge(h5: h5py.File) -> bool:
    return "incident_energies" in h5 and "showers" in h5
