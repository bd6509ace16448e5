"""Geant4 engine: full Geant4 physics on the caloforge geometries (optional extra).

>>> from caloforge.geometry import get_geometry
>>> from caloforge.simulation.engine import Primary
>>> engine = Geant4Engine(get_geometry("ild-ecal"))  # doctest: +SKIP
>>> photon = Primary("photon", 50_000.0)  # 50 GeV, normal incidence at x = y = 0
>>> deposits = engine.simulate(photon, np.random.default_rng(1))  # doctest: +SKIP

Needs ``pip install caloforge[geant4]`` and the Geant4 datasets (``GEANT4_DATA_DIR``).
``physics_list="geantino"`` transports geantinos only and needs no dataset: it is the
way to check the geometry and the cell indexing (:meth:`Geant4Engine.crossings`,
:meth:`Geant4Engine.volume_at`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from caloforge.errors import ConfigError, InputError
from caloforge.geometry import Geometry, get_geometry
from caloforge.simulation.engine import Deposits, Primary
from caloforge.simulation.geant4 import runtime
from caloforge.simulation.geant4.layout import (
    GEANTINO_PHYSICS,
    SlabLayout,
    check_datasets,
    dataset_versions,
    geant4_particle,
    import_geant4,
    slab_layout,
)


@dataclass
class Crossings:
    """Track length of (charged) geantinos per fine-mesh cell of the active slabs.

    ``slab`` is the active-slab index (Geant4 copy number), ``layer`` its readout layer,
    x, y the mesh-cell centre and z the slab centre (mm), ``length_mm`` the path length.
    """

    slab: np.ndarray
    layer: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    length_mm: np.ndarray


class Geant4Engine:
    """Shower engine running Geant4 through geant4_pybind.

    ``physics_list`` is a Geant4 reference list ("FTFP_BERT", "QGSP_BERT", "QBBC", ...;
    EM-option variants such as "_EMZ" are not reachable through geant4_pybind) or
    ``"geantino"`` (transport only).  ``mesh_mm`` is the pitch of the fine mesh that
    gives deposit positions (default: smallest readout cell / 6), ``half_width_mm`` the
    transverse half-size of the slabs (default 1.25 x the readout window),
    ``production_cut_mm`` the Geant4 range cut.  Geant4 allows one physics list per
    process; engines on different geometries share it.
    """

    name = "geant4"
    _serial = itertools.count()

    def __init__(
        self,
        geometry: Geometry | str,
        physics_list: str = "FTFP_BERT",
        *,
        mesh_mm: float | None = None,
        half_width_mm: float | None = None,
        production_cut_mm: float = 0.7,
    ) -> None:
        self.geometry = get_geometry(geometry) if isinstance(geometry, str) else geometry
        if not (production_cut_mm > 0 and math.isfinite(production_cut_mm)):
            raise ConfigError(f"production cut must be positive, got {production_cut_mm} mm")
        self.physics_list = physics_list
        self.production_cut_mm = float(production_cut_mm)
        self.layout: SlabLayout = slab_layout(self.geometry, mesh_mm, half_width_mm)
        self._key = next(self._serial)
        # Fail now, before any output is opened, if Geant4 cannot run this.
        g4 = import_geant4()
        if physics_list != GEANTINO_PHYSICS:
            runtime.physics_class(g4, physics_list)
            check_datasets(physics_list, ignore=runtime.stub_folders(),
                           versions=dataset_versions(g4.G4VERSION_NUMBER))
        if runtime._SESSION is not None:
            runtime.get_session(physics_list, self.production_cut_mm)

    def _world(self):
        session = runtime.get_session(self.physics_list, self.production_cut_mm)
        return session, session.world_for(self._key, self.layout)

    def _run(self, primary: Primary, rng: np.random.Generator | None):
        energy = float(primary.energy_mev)
        if not (math.isfinite(energy) and energy > 0):
            raise InputError(f"primary energy must be positive and finite, got {energy} MeV")
        theta, phi = float(primary.theta), float(primary.phi)
        if not (math.isfinite(theta) and 0 <= theta < 0.5 * math.pi and math.isfinite(phi)):
            raise InputError(f"primary must enter the front face: theta={theta} rad, phi={phi}")
        direction = runtime.direction_vector(theta, phi)
        # Start in vacuum in front of the face, on the line through the impact point.
        back = runtime.GUN_OFFSET_MM / direction[2]
        start = (primary.x_mm - back * direction[0], primary.y_mm - back * direction[1],
                 -runtime.GUN_OFFSET_MM)
        # Geantinos need no random numbers; a fixed generator keeps crossings reproducible.
        rng = np.random.default_rng(0) if rng is None else rng
        seeds = rng.integers(1, 2**32, size=4, dtype=np.uint64).tolist()
        session, world = self._world()
        return session.run_one(world, geant4_particle(primary.particle), energy, start,
                               direction, seeds)

    def simulate(self, primary: Primary, rng: np.random.Generator) -> Deposits:
        """Transport one primary; deposits at fine-mesh cell centres of the active slabs."""
        result = self._run(primary, rng)
        x, y, z, layer, _ = self.layout.positions(result.energy_keys)
        return Deposits(x=x, y=y, z=z, energy=result.energy_mev, layer=layer)

    def crossings(self, primary: Primary, rng: np.random.Generator | None = None) -> Crossings:
        """Path length per active mesh cell of a geantino (``physics_list="geantino"``)."""
        if self.physics_list != GEANTINO_PHYSICS:
            raise ConfigError(f"crossings need physics_list={GEANTINO_PHYSICS!r}")
        result = self._run(primary, rng)
        x, y, z, layer, slab = self.layout.positions(result.length_keys)
        return Crossings(slab=slab, layer=layer, x=x, y=y, z=z, length_mm=result.length_mm)

    def volume_at(self, x_mm: float, y_mm: float, z_mm: float) -> runtime.VolumeInfo:
        """The Geant4 volume at a point (mm), e.g. name "absorber_L3", material "G4_W"."""
        session, world = self._world()
        return session.volume_at(world, x_mm, y_mm, z_mm)

    def __repr__(self) -> str:
        return (f"<Geant4Engine {self.geometry.name} {self.physics_list}, "
                f"mesh {self.layout.mesh_mm:.3f} mm>")
