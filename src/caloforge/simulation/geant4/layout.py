"""Geant4-independent part of the Geant4 engine: slab layout, scoring mesh, materials
and the checks that must pass before Geant4 is touched.

Everything here is plain Python so that it is tested without ``geant4_pybind``.  The
detector is a stack of full-width slabs along z, one per absorber / active / passive
slice of every readout layer (:class:`caloforge.geometry.LayerSpec`), front face at
z = 0, beam axis x = y = 0, lengths in mm.  Every active slab is divided into a fine
square mesh in x and y; a Geant4 hit is identified by ``(slab, ix, iy)`` and the
readout layer of the slab comes from :attr:`SlabLayout.slab_layer`.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloforge.errors import ConfigError, GeometryError
from caloforge.geometry import CartesianGeometry, CylindricalGeometry, Geometry

# caloforge material name (caloforge.geometry.materials) -> Geant4 NIST material.
NIST_MATERIALS: dict[str, str] = {
    "W": "G4_W",
    "Si": "G4_Si",
    "Fe": "G4_Fe",
    "polystyrene": "G4_POLYSTYRENE",
    "Pb": "G4_Pb",
    "LAr": "G4_lAr",
    "air": "G4_AIR",
}
# Geant4 name of caloforge's particle names; Geant4 names are accepted as they are.
PARTICLE_NAMES: dict[str, str] = {
    "photon": "gamma",
    "electron": "e-",
    "positron": "e+",
    "pi+": "pi+",
    "pi-": "pi-",
    "proton": "proton",
    "neutron": "neutron",
    "muon": "mu-",
    "antimuon": "mu+",
    "geantino": "geantino",
    "chargedgeantino": "chargedgeantino",
}
GEANTINOS = ("geantino", "chargedgeantino")
# Physics-list name of the transport-only list (geantinos, no datasets needed).
GEANTINO_PHYSICS = "geantino"
# Most fine-mesh cells per axis: beyond this the replica navigation costs more than the
# position resolution is worth, so the pitch is coarsened.
MAX_MESH_CELLS = 4096
MAX_SCORING_INDEX = 2**31 - 1
# Fine-mesh pitch relative to the smallest readout feature (the point clouds of the
# reference simulation use a grid 6 x 6 times finer than the cell, seed 002).
MESH_SUBDIVISION = 6


class Geant4SetupError(ConfigError):
    """geant4_pybind or the Geant4 datasets are missing, or Geant4 is set up otherwise."""


def nist_material(name: str) -> str:
    """Geant4 NIST material name of a caloforge material name (``"W"`` -> ``"G4_W"``)."""
    try:
        return NIST_MATERIALS[name]
    except KeyError:
        raise GeometryError(
            f"material {name!r} has no Geant4 equivalent; known: {', '.join(NIST_MATERIALS)}"
        ) from None


def geant4_particle(name: str) -> str:
    """Geant4 particle name of a caloforge particle name (``"photon"`` -> ``"gamma"``)."""
    return PARTICLE_NAMES.get(name, name)


@dataclass(frozen=True)
class Slab:
    """One homogeneous slab: role ("absorber", "active", "passive"), z range in mm."""

    layer: int
    role: str
    material: str  # caloforge material name
    z_min_mm: float
    thickness_mm: float

    @property
    def z_max_mm(self) -> float:
        return self.z_min_mm + self.thickness_mm

    @property
    def z_centre_mm(self) -> float:
        return self.z_min_mm + 0.5 * self.thickness_mm


@dataclass(frozen=True)
class SlabLayout:
    """The slabs of a geometry, the transverse size and the scoring mesh of active slabs.

    ``half_width_mm`` is the half-size in x and y of every slab; the mesh has ``n_mesh``
    cells of ``mesh_mm`` per axis, so ``n_mesh * mesh_mm == 2 * half_width_mm``.
    """

    slabs: tuple[Slab, ...]
    half_width_mm: float
    mesh_mm: float
    n_mesh: int

    @property
    def active(self) -> tuple[Slab, ...]:
        """The active slabs in z order; the index in this tuple is the Geant4 copy number."""
        return tuple(s for s in self.slabs if s.role == "active")

    @property
    def slab_layer(self) -> np.ndarray:
        """(n_active,) readout layer of every active slab."""
        return np.array([s.layer for s in self.active], dtype=np.int64)

    @property
    def slab_z_mm(self) -> np.ndarray:
        """(n_active,) z of the centre of every active slab (mm)."""
        return np.array([s.z_centre_mm for s in self.active])

    @property
    def depth_mm(self) -> float:
        return self.slabs[-1].z_max_mm if self.slabs else 0.0

    @property
    def n_keys(self) -> int:
        """Number of distinct scoring indices (slab, ix, iy)."""
        return len(self.active) * self.n_mesh * self.n_mesh

    def mesh_centres_mm(self, index: np.ndarray) -> np.ndarray:
        """Centre coordinate (mm) of fine-mesh cells along one axis."""
        return (np.asarray(index, dtype=np.float64) + 0.5) * self.mesh_mm - self.half_width_mm

    def decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split scoring keys ``slab * n^2 + ix * n + iy`` into (slab, ix, iy).

        This is the index order of Geant4's ``G4PSEnergyDeposit3D`` with the slab copy
        number at depth 2, the x replica at depth 1 and the y replica at depth 0.
        """
        keys = np.asarray(keys, dtype=np.int64)
        n = self.n_mesh
        if np.any((keys < 0) | (keys >= self.n_keys)):
            raise GeometryError("Geant4 scoring index outside the mesh of the layout")
        return keys // (n * n), (keys // n) % n, keys % n

    def positions(self, keys: np.ndarray) -> tuple[np.ndarray, ...]:
        """(x, y, z, layer, slab) of scoring keys: mesh-cell centres and active-slab centres."""
        slab, ix, iy = self.decode(keys)
        return (
            self.mesh_centres_mm(ix),
            self.mesh_centres_mm(iy),
            self.slab_z_mm[slab],
            self.slab_layer[slab],
            slab,
        )


def readout_half_extent_mm(geometry: Geometry) -> float:
    """Half-size (mm) of the square that contains the readout cells of every layer."""
    if isinstance(geometry, CartesianGeometry):
        return max(
            0.5 * max(ni * si, nj * sj)
            for (ni, nj), (si, sj) in zip(geometry.grid, geometry.cell_mm)
        )
    if isinstance(geometry, CylindricalGeometry):
        radii = [max(edges) for edges in geometry.r_edges if len(edges) > 1]
        if radii:
            return float(max(radii))
    centres = geometry.cell_centres
    if len(centres) == 0:
        raise GeometryError(f"{geometry.name}: geometry has no readout cells")
    return float(np.abs(centres[:, :2]).max())


def smallest_cell_mm(geometry: Geometry) -> float:
    """Smallest readout feature (mm): cell side, or radial bin width for (r, alpha) bins."""
    if isinstance(geometry, CartesianGeometry):
        return float(min(min(size) for size in geometry.cell_mm))
    if isinstance(geometry, CylindricalGeometry):
        widths = [np.diff(edges) for edges in geometry.r_edges if len(edges) > 1]
        widths = np.concatenate(widths) if widths else np.zeros(0)
        widths = widths[widths > 0]
        if len(widths):
            return float(widths.min())
    return 2.0 * readout_half_extent_mm(geometry) / 100.0


def slab_layout(
    geometry: Geometry,
    mesh_mm: float | None = None,
    half_width_mm: float | None = None,
    margin: float = 1.25,
) -> SlabLayout:
    """The Geant4 slab stack of ``geometry``.

    ``half_width_mm`` defaults to ``margin`` times the readout half-extent: the readout
    window is part of a wider detector, so energy leaking out of it laterally still
    meets material.  ``mesh_mm`` defaults to the smallest readout feature divided by
    :data:`MESH_SUBDIVISION`.  The half width is rounded up to a whole, even number of
    mesh cells.  Zero-thickness slices (empty CaloChallenge layers) produce no slab.
    """
    slabs: list[Slab] = []
    z = 0.0
    for k, spec in enumerate(geometry.layers):
        if spec.repeats < 1:
            raise GeometryError(f"{geometry.name}: layer {k} has {spec.repeats} repeats")
        for _ in range(spec.repeats):
            for role, material, thickness in (
                ("absorber", spec.absorber, spec.absorber_mm),
                ("active", spec.active, spec.active_mm),
                ("passive", spec.passive, spec.passive_mm),
            ):
                if thickness < 0:
                    raise GeometryError(
                        f"{geometry.name}: layer {k} has a negative {role} thickness"
                    )
                if thickness > 0:
                    nist_material(material)  # fail early on a material Geant4 lacks
                    slabs.append(Slab(k, role, material, z, float(thickness)))
                z += thickness
    if not any(s.role == "active" for s in slabs):
        raise GeometryError(f"{geometry.name}: geometry has no active material")

    half = readout_half_extent_mm(geometry) * margin if half_width_mm is None else half_width_mm
    pitch = smallest_cell_mm(geometry) / MESH_SUBDIVISION if mesh_mm is None else mesh_mm
    if not (half > 0 and math.isfinite(half)):
        raise ConfigError(f"transverse half width must be positive, got {half} mm")
    if not (pitch > 0 and math.isfinite(pitch)):
        raise ConfigError(f"mesh pitch must be positive, got {pitch} mm")
    n_active = sum(1 for s in slabs if s.role == "active")
    # Geant4 scorers index cells with a 32-bit int: slab * n^2 + ix * n + iy.
    max_cells = min(MAX_MESH_CELLS, math.isqrt(MAX_SCORING_INDEX // n_active))
    max_cells -= max_cells % 2
    if mesh_mm is None:
        pitch = max(pitch, 2.0 * half / max_cells)
    # An even number of cells puts mesh edges on multiples of the pitch, where the edges
    # of Cartesian readout grids lie (multiples of half a cell = 3 pitches by default),
    # so no mesh cell straddles two readout cells.
    n = 2 * math.ceil(half / pitch - 1e-9)
    if n > max_cells:
        raise ConfigError(
            f"a {pitch} mm mesh over {2 * half:.1f} mm needs {n} cells per axis; with "
            f"{n_active} active slabs at most {max_cells} fit, choose a coarser mesh_mm"
        )
    return SlabLayout(tuple(slabs), half_width_mm=0.5 * n * pitch, mesh_mm=pitch, n_mesh=n)


# ---- Geant4 datasets -------------------------------------------------------------------
# Environment variable -> dataset directory name (without version), as Geant4 11 names
# them; GEANT4_DATA_DIR holds the directories as <name><version>.
DATASETS: dict[str, str] = {
    "G4NEUTRONHPDATA": "G4NDL",
    "G4LEDATA": "G4EMLOW",
    "G4LEVELGAMMADATA": "PhotonEvaporation",
    "G4RADIOACTIVEDATA": "RadioactiveDecay",
    "G4PARTICLEXSDATA": "G4PARTICLEXS",
    "G4PIIDATA": "G4PII",
    "G4REALSURFACEDATA": "RealSurface",
    "G4SAIDXSDATA": "G4SAIDDATA",
    "G4ABLADATA": "G4ABLA",
    "G4INCLDATA": "G4INCL",
    "G4ENSDFSTATEDATA": "G4ENSDFSTATE",
    "G4CHANNELINGDATA": "G4CHANNELING",
}
# Dataset folder names Geant4 looks for under GEANT4_DATA_DIR, per Geant4 release
# (G4VERSION_NUMBER // 10); the geant4_pybind 0.1.x wheels ship Geant4 11.4.
DATASET_VERSIONS: dict[int, dict[str, str]] = {
    114: {
        "G4NEUTRONHPDATA": "G4NDL4.7.1",
        "G4LEDATA": "G4EMLOW8.8",
        "G4LEVELGAMMADATA": "PhotonEvaporation6.1.2",
        "G4RADIOACTIVEDATA": "RadioactiveDecay6.1.2",
        "G4PARTICLEXSDATA": "G4PARTICLEXS4.2",
        "G4PIIDATA": "G4PII1.3",
        "G4REALSURFACEDATA": "RealSurface2.2",
        "G4SAIDXSDATA": "G4SAIDDATA2.0",
        "G4ABLADATA": "G4ABLA3.3",
        "G4INCLDATA": "G4INCL1.3",
        "G4ENSDFSTATEDATA": "G4ENSDFSTATE3.0",
        "G4CHANNELINGDATA": "G4CHANNELING2.0",
    },
}
# Datasets required for any reference physics list: low-energy EM data, nuclear levels
# and de-excitation, particle cross sections, nuclide states, plus radioactive decay and
# SAID cross sections.  Not every list reads the last two; requiring them is deliberately
# conservative, since a Geant4 installation fetches all datasets by default and a
# missing one aborts the process instead of raising an error.
_CORE_DATASETS = ("G4LEDATA", "G4LEVELGAMMADATA", "G4PARTICLEXSDATA", "G4ENSDFSTATEDATA",
                  "G4RADIOACTIVEDATA", "G4SAIDXSDATA")


def required_datasets(physics_list: str) -> list[str]:
    """Environment variables of the datasets a reference physics list reads."""
    if physics_list == GEANTINO_PHYSICS:
        return []
    need = list(_CORE_DATASETS)
    if "_HP" in physics_list or "Shielding" in physics_list:
        need.append("G4NEUTRONHPDATA")
    if "INCLXX" in physics_list or "ABLA" in physics_list:
        need += ["G4INCLDATA", "G4ABLADATA"]
    return need


def dataset_versions(g4_version_number: int | None) -> dict[str, str] | None:
    """Exact dataset folder names of a Geant4 release (``G4VERSION_NUMBER``), if known."""
    if g4_version_number is None:
        return None
    return DATASET_VERSIONS.get(int(g4_version_number) // 10)


def _dataset_dir(root: Path, name: str, exact: str | None) -> Path | None:
    """``root/<name><version>``: the exact folder name if known, else any version."""
    if not root.is_dir():
        return None
    if exact is not None:
        return root / exact if (root / exact).is_dir() else None
    for entry in sorted(root.iterdir()):
        rest = entry.name[len(name):]
        if entry.name.startswith(name) and rest[:1].isdigit() and entry.is_dir():
            return entry
    return None


def find_datasets(
    env: Mapping[str, str] | None = None,
    ignore: tuple[str, ...] = (),
    versions: Mapping[str, str] | None = None,
) -> dict[str, Path | None]:
    """Where each Geant4 dataset is: its variable, else ``GEANT4_DATA_DIR/<name><version>``,
    else geant4_pybind's own download folder ``~/.geant4_pybind``; ``None`` if nowhere.

    ``versions`` gives the exact folder names the Geant4 release expects (see
    :func:`dataset_versions`); ``ignore`` lists directories not to count (caloforge's own
    empty nuclide table of transport-only runs).
    """
    env = os.environ if env is None else env
    roots = []
    if env.get("GEANT4_DATA_DIR"):
        roots.append(Path(env["GEANT4_DATA_DIR"]))
    roots.append(Path.home() / ".geant4_pybind")
    found: dict[str, Path | None] = {}
    for var, name in DATASETS.items():
        path: Path | None = None
        value = env.get(var)
        if value and Path(value).is_dir() and str(Path(value)) not in ignore:
            path = Path(value)
        for root in roots:
            if path is None:
                path = _dataset_dir(root, name, None if versions is None else versions.get(var))
        found[var] = path
    return found


def check_datasets(
    physics_list: str,
    env: Mapping[str, str] | None = None,
    ignore: tuple[str, ...] = (),
    versions: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`Geant4SetupError` naming the variables to set if a dataset is missing.

    Called before Geant4 initialises physics: Geant4 itself aborts the whole process
    (a fatal G4Exception) when it cannot find a dataset.
    """
    found = find_datasets(env, ignore, versions)
    missing = [var for var in required_datasets(physics_list) if found[var] is None]
    if missing:
        names = {var: (versions or {}).get(var, DATASETS[var] + "*") for var in missing}
        raise Geant4SetupError(
            f"Geant4 physics list {physics_list} needs the Geant4 datasets; not found: "
            f"{', '.join(f'{var} ({names[var]})' for var in missing)}. Set GEANT4_DATA_DIR "
            "to the folder that holds the dataset folders, or set each of these variables "
            "to its dataset folder (`geant4-config --datasets` lists them for an installed "
            "Geant4; https://cern.ch/geant4-data/datasets has them)"
        )


@contextlib.contextmanager
def _no_dataset_download() -> Iterator[None]:
    """Make importing geant4_pybind never prompt for or start a dataset download.

    On import, geant4_pybind asks on stdin whether to download missing datasets (which
    fails in batch jobs, where stdin is closed) and downloads them unasked when
    ``CI=true``.  caloforge never downloads: the prompt is answered "no" and ``CI`` is
    hidden for the duration of the import; both are restored afterwards.
    """
    saved_input = builtins.input
    saved_ci = os.environ.pop("CI", None)
    builtins.input = lambda *args, **kwargs: "n"
    try:
        yield
    finally:
        builtins.input = saved_input
        if saved_ci is not None:
            os.environ["CI"] = saved_ci


def import_geant4():
    """Import geant4_pybind, or raise :class:`Geant4SetupError` saying how to install it."""
    try:
        with _no_dataset_download(), contextlib.redirect_stdout(io.StringIO()):
            # Its import prints a dataset notice that is wrong for transport-only runs;
            # caloforge checks the datasets itself (check_datasets).
            import geant4_pybind
    except ImportError as exc:
        raise Geant4SetupError(
            f"the Geant4 engine needs geant4_pybind ({exc}); install it with "
            "`pip install caloforge[geant4]`"
        ) from None
    return geant4_pybind
