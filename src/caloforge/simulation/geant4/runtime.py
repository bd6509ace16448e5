"""The Geant4 side of the engine: detector, scorers, primary gun and the run manager.

Geant4 allows one run manager and one physics list per process, so this module keeps
one :class:`Geant4Session` (created on first use).  Every engine builds its own world
once; switching engine swaps the world volume of the run manager.  Energy is scored
C++-side by a ``G4MultiFunctionalDetector`` with a ``G4PSEnergyDeposit3D`` primitive on
the fine-mesh cells of the active slabs; Python only runs once per event (reseeding the
random engine, reading the hits map).  Geant4's internal units are mm and MeV, the
units of caloforge, so numbers pass through unscaled.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caloforge.errors import ConfigError, InputError
from caloforge.simulation.geant4.layout import (
    GEANTINO_PHYSICS,
    GEANTINOS,
    Geant4SetupError,
    SlabLayout,
    check_datasets,
    dataset_versions,
    find_datasets,
    import_geant4,
    nist_material,
)

WORLD_MATERIAL = "G4_Galactic"
# The gun starts this far (mm) in front of the calorimeter face, in vacuum.
GUN_OFFSET_MM = 1.0
_VERBOSITY_COMMANDS = ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0",
                       "/tracking/verbose 0")
_PHYSICS_VERBOSITY_COMMANDS = ("/process/em/verbose 0", "/process/had/verbose 0",
                               "/process/verbose 0")


@dataclass
class EventResult:
    """Scoring output of one event: (key, value) per primitive, keys as in SlabLayout."""

    energy_keys: np.ndarray
    energy_mev: np.ndarray
    length_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    length_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _hits_map_arrays(hits_map) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of a G4DoubleHitsMap, sorted by key."""
    items = sorted(hits_map)
    keys = np.fromiter((k for k, _ in items), dtype=np.int64, count=len(items))
    values = np.fromiter((v for _, v in items), dtype=np.float64, count=len(items))
    return keys, values


class _World:
    """The Geant4 volumes of one layout plus its sensitive detector (built once)."""

    _serial = itertools.count()

    def __init__(self, g4, layout: SlabLayout, score_length: bool) -> None:
        self.layout = layout
        self.tag = f"caloforge{next(self._serial)}"
        self.keep: list = []  # Python references keep the C++ objects alive
        nist = g4.G4NistManager.Instance()
        mm = g4.mm
        half = layout.half_width_mm
        world_half_xy = 1.1 * half + 10.0
        world_half_z = layout.depth_mm + 10.0 * GUN_OFFSET_MM + 10.0
        world_solid = g4.G4Box(f"{self.tag}_world", world_half_xy * mm, world_half_xy * mm,
                               world_half_z * mm)
        world_lv = g4.G4LogicalVolume(world_solid, nist.FindOrBuildMaterial(WORLD_MATERIAL),
                                      f"{self.tag}_world")
        self.world = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, f"{self.tag}_world",
                                      None, False, 0)
        self.keep += [world_solid, world_lv, self.world]

        n, pitch = layout.n_mesh, layout.mesh_mm
        logicals: dict[tuple[str, str, float], object] = {}
        self.cell_logicals = []
        for k, slab in enumerate(layout.slabs):
            key = (slab.role, slab.material, slab.thickness_mm)
            if key not in logicals:
                logicals[key] = self._slab_logical(g4, nist, slab, half, n, pitch, len(logicals))
            # Active slabs are numbered 0..n_active-1 in z order (the scoring index);
            # absorber and passive slabs carry their readout layer.
            copy = sum(1 for s in layout.slabs[:k] if s.role == "active") \
                if slab.role == "active" else slab.layer
            pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, slab.z_centre_mm * mm),
                                  logicals[key], f"{slab.role}_L{slab.layer}", world_lv,
                                  False, copy)
            self.keep.append(pv)

        # C++-side scoring: index = slab * n^2 + ix * n + iy from the copy numbers at
        # touchable depths 2 (slab placement), 1 (x replica), 0 (y replica).
        sd = g4.G4MultiFunctionalDetector(self.tag)
        n_slabs = len(layout.active)
        sd.RegisterPrimitive(g4.G4PSEnergyDeposit3D("edep", n_slabs, n, n, 2, 1, 0))
        if score_length:
            sd.RegisterPrimitive(g4.G4PSTrackLength3D("length", n_slabs, n, n, 2, 1, 0))
        g4.G4SDManager.GetSDMpointer().AddNewDetector(sd)
        for lv in self.cell_logicals:
            lv.SetSensitiveDetector(sd)
        self.keep.append(sd)
        sdm = g4.G4SDManager.GetSDMpointer()
        self.edep_id = sdm.GetCollectionID(f"{self.tag}/edep")
        self.length_id = sdm.GetCollectionID(f"{self.tag}/length") if score_length else -1
        self.navigator = g4.G4Navigator()
        self.navigator.SetWorldVolume(self.world)

    def _slab_logical(self, g4, nist, slab, half, n, pitch, serial):
        mm = g4.mm
        material = nist.FindOrBuildMaterial(nist_material(slab.material))
        if material is None:  # pragma: no cover - every mapped name is a NIST material
            raise Geant4SetupError(f"Geant4 has no material {nist_material(slab.material)}")
        name = f"{self.tag}_{slab.role}{serial}"
        hz = 0.5 * slab.thickness_mm * mm
        solid = g4.G4Box(name, half * mm, half * mm, hz)
        lv = g4.G4LogicalVolume(solid, material, name)
        self.keep += [solid, lv]
        if slab.role == "active":
            # Fine mesh as replicas (navigation computes the cell arithmetically).
            strip_s = g4.G4Box(f"{name}_strip", 0.5 * pitch * mm, half * mm, hz)
            strip_lv = g4.G4LogicalVolume(strip_s, material, f"{name}_strip")
            cell_s = g4.G4Box(f"{name}_cell", 0.5 * pitch * mm, 0.5 * pitch * mm, hz)
            cell_lv = g4.G4LogicalVolume(cell_s, material, f"{name}_cell")
            rx = g4.G4PVReplica(f"{name}_x", strip_lv, lv, g4.EAxis.kXAxis, n, pitch * mm)
            ry = g4.G4PVReplica(f"{name}_y", cell_lv, strip_lv, g4.EAxis.kYAxis, n, pitch * mm)
            self.keep += [strip_s, strip_lv, cell_s, cell_lv, rx, ry]
            self.cell_logicals.append(cell_lv)
        return lv


def _classes(g4):
    """Geant4 user classes (they subclass geant4_pybind types, so are built after import)."""

    class Detector(g4.G4VUserDetectorConstruction):
        def __init__(self) -> None:
            super().__init__()
            self.world: _World | None = None

        def Construct(self):  # noqa: N802 - Geant4 API
            return self.world.world

    class TransportOnly(g4.G4VModularPhysicsList):
        """Geantinos and transportation only: needs no physics dataset."""

        def ConstructParticle(self) -> None:  # noqa: N802 - Geant4 API
            g4.G4Geantino.GeantinoDefinition()
            g4.G4ChargedGeantino.ChargedGeantinoDefinition()

    class Gun(g4.G4VUserPrimaryGeneratorAction):
        def __init__(self) -> None:
            super().__init__()
            self.gun = g4.G4ParticleGun(1)
            self.seeds: list[int] = []

        def GeneratePrimaries(self, event) -> None:  # noqa: N802 - Geant4 API
            # Reseed here, after run initialisation, so the event depends only on the
            # seeds drawn from the caller's generator, not on the process history.
            try:
                g4.HepRandom.setTheSeeds([*self.seeds, 0], len(self.seeds))
                self.gun.GeneratePrimaryVertex(event)
            except BaseException as exc:  # noqa: BLE001 - re-raised after BeamOn
                _ERRORS.append(exc)

    class Readout(g4.G4UserEventAction):
        def __init__(self) -> None:
            super().__init__()
            self.world: _World | None = None
            self.result: EventResult | None = None

        def EndOfEventAction(self, event) -> None:  # noqa: N802 - Geant4 API
            try:
                hce = event.GetHCofThisEvent()
                keys, values = _hits_map_arrays(hce.GetHC(self.world.edep_id))
                result = EventResult(keys, values)
                if self.world.length_id >= 0:
                    result.length_keys, result.length_mm = _hits_map_arrays(
                        hce.GetHC(self.world.length_id))
                self.result = result
            except BaseException as exc:  # noqa: BLE001 - re-raised after BeamOn
                _ERRORS.append(exc)

    return Detector, TransportOnly, Gun, Readout


# Exceptions (Ctrl-C included) raised in Python callbacks must not unwind through
# Geant4's C++ event loop; they are kept here and re-raised once BeamOn has returned.
_ERRORS: list[BaseException] = []


class Geant4Session:
    """The process-wide Geant4 run manager with its physics list (one per process)."""

    def __init__(self, physics_list: str, production_cut_mm: float) -> None:
        g4 = import_geant4()
        self.g4 = g4
        self.physics_list = physics_list
        self.production_cut_mm = production_cut_mm
        self._ensdf_stub: str | None = None
        if physics_list == GEANTINO_PHYSICS:
            self._ensure_nuclide_table()
        else:
            list_class = physics_class(g4, physics_list)
            # Geant4 aborts the process on a missing dataset: check before touching it.
            check_datasets(physics_list, versions=dataset_versions(g4.G4VERSION_NUMBER))
        if g4.G4RunManager.GetRunManager() is not None:
            raise Geant4SetupError("a Geant4 run manager already exists in this process")
        self.run_manager = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
        ui = g4.G4UImanager.GetUIpointer()
        for command in _VERBOSITY_COMMANDS:
            ui.ApplyCommand(command)
        Detector, TransportOnly, Gun, Readout = _classes(g4)
        if physics_list == GEANTINO_PHYSICS:
            self.physics = TransportOnly()
        else:
            self.physics = list_class()
            self.physics.SetVerboseLevel(0)
        self.detector = Detector()
        self.run_manager.SetUserInitialization(self.detector)
        # Geant4 requires the physics list to be set before any user action exists.
        self.run_manager.SetUserInitialization(self.physics)
        # Through the UI: calling SetDefaultCutValue on a bound reference list corrupts
        # memory in geant4_pybind 0.1.3 (segmentation fault at exit).
        ui.ApplyCommand(f"/run/setCut {production_cut_mm!r} mm")
        self.gun, self.readout = Gun(), Readout()
        self.run_manager.SetUserAction(self.gun)
        self.run_manager.SetUserAction(self.readout)
        self.worlds: dict[int, _World] = {}
        self.current: _World | None = None
        self.initialized = False
        self.geometry_closed = False

    def _ensure_nuclide_table(self) -> None:
        """Geant4's nuclide table reads G4ENSDFSTATEDATA even for geantinos; without the
        dataset, point it at an empty table (no nuclide is needed to transport geantinos).
        """
        versions = dataset_versions(self.g4.G4VERSION_NUMBER)
        if find_datasets(versions=versions)["G4ENSDFSTATEDATA"] is not None:
            return
        folder = Path(tempfile.mkdtemp(prefix="caloforge-g4-empty-ensdf-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        (folder / "ENSDFSTATE.dat").write_text("")
        os.environ["G4ENSDFSTATEDATA"] = str(folder)
        self._ensdf_stub = str(folder)

    def world_for(self, key: int, layout: SlabLayout) -> _World:
        """The world of engine ``key`` (built on first use), made the current one."""
        world = self.worlds.get(key)
        if world is None:
            world = _World(self.g4, layout, score_length=self.physics_list == GEANTINO_PHYSICS)
            self.worlds[key] = world
        if world is not self.current:
            # Only the current world's scorers run; the others would score nothing anyway.
            sdm = self.g4.G4SDManager.GetSDMpointer()
            for other in self.worlds.values():
                sdm.Activate(f"/{other.tag}", other is world)
            self.detector.world = world
            self.readout.world = world
            if self.initialized:
                self.run_manager.DefineWorldVolume(world.world, True)
            self.current = world
            self.geometry_closed = False
        if not self.initialized:
            self.run_manager.Initialize()
            if self.physics_list != GEANTINO_PHYSICS:
                ui = self.g4.G4UImanager.GetUIpointer()
                for command in _PHYSICS_VERBOSITY_COMMANDS:
                    ui.ApplyCommand(command)
            self.initialized = True
        return world

    def particle(self, name: str):
        """The Geant4 particle definition called ``name``, or an InputError."""
        if self.physics_list == GEANTINO_PHYSICS and name not in GEANTINOS:
            raise ConfigError(
                f"physics list {GEANTINO_PHYSICS!r} transports only geantinos, not {name!r}"
            )
        definition = self.g4.G4ParticleTable.GetParticleTable().FindParticle(name)
        if definition is None:
            raise InputError(f"Geant4 does not know the particle {name!r}")
        return definition

    def run_one(self, world: _World, particle: str, energy_mev: float,
                position_mm: tuple[float, float, float],
                direction: tuple[float, float, float], seeds: list[int]) -> EventResult:
        """Transport one primary through ``world`` and return the scored hits."""
        g4 = self.g4
        gun = self.gun.gun
        gun.SetParticleDefinition(self.particle(particle))
        gun.SetParticleEnergy(energy_mev * g4.MeV)
        gun.SetParticlePosition(g4.G4ThreeVector(*(c * g4.mm for c in position_mm)))
        gun.SetParticleMomentumDirection(g4.G4ThreeVector(*direction))
        self.gun.seeds = [int(s) for s in seeds]
        self.readout.result = None
        _ERRORS.clear()
        self.run_manager.BeamOn(1)
        self.geometry_closed = True
        if _ERRORS:
            error = _ERRORS[0]
            _ERRORS.clear()
            raise error
        if self.readout.result is None:  # pragma: no cover - Geant4 aborted the event
            raise Geant4SetupError("Geant4 did not process the event (see its output above)")
        return self.readout.result

    def volume_at(self, world: _World, x_mm: float, y_mm: float, z_mm: float) -> VolumeInfo:
        """What Geant4's navigator finds at a point of ``world``."""
        g4 = self.g4
        if world is not self.current:
            raise ValueError("volume_at needs the current world (use Engine.volume_at)")
        if not self.geometry_closed:
            # Locating points inside replicas crashes until Geant4 has processed an event
            # in this world (a zero-event run is not enough): send one geantino away from
            # the calorimeter.
            self.run_one(world, "geantino", 1.0, (0.0, 0.0, -GUN_OFFSET_MM), (0.0, 0.0, -1.0),
                         [1, 2, 3, 4])
        point = g4.G4ThreeVector(x_mm * g4.mm, y_mm * g4.mm, z_mm * g4.mm)
        pv = world.navigator.LocateGlobalPointAndSetup(point, None, False, True)
        if pv is None:
            return VolumeInfo("", "", -1)
        touchable = world.navigator.CreateTouchableHistory()
        material = str(pv.GetLogicalVolume().GetMaterial().GetName())
        depth = touchable.GetHistoryDepth()
        if depth >= 3:  # world > active slab > x replica > y replica
            return VolumeInfo(str(touchable.GetVolume(2).GetName()), material,
                              touchable.GetCopyNumber(2),
                              (touchable.GetReplicaNumber(1), touchable.GetReplicaNumber(0)))
        return VolumeInfo(str(pv.GetName()), material, pv.GetCopyNo())


@dataclass(frozen=True)
class VolumeInfo:
    """A point's volume: placement name ("absorber_L3", "active_L3", ...), NIST material,
    copy number (readout layer; active-slab index for active slabs) and, in an active
    slab, the fine-mesh cell (ix, iy)."""

    name: str
    material: str
    copy_number: int
    cell: tuple[int, int] | None = None


def physics_class(g4, physics_list: str):
    """The geant4_pybind class of a reference physics list, or a ConfigError listing them.

    Lists are built from their classes: lists made by G4PhysListFactory cannot be handed
    to the run manager through geant4_pybind (it does not own them), and the bindings
    cannot swap physics constructors, so EM-option variants ("_EMZ", ...) are not
    available.
    """
    names = sorted(
        name for name in (str(p) for p in g4.G4PhysListFactory().AvailablePhysLists())
        if isinstance(getattr(g4, name, None), type)
    )
    if physics_list not in names:
        raise ConfigError(
            f"unknown Geant4 physics list {physics_list!r}; available: {', '.join(names)}, "
            f"or {GEANTINO_PHYSICS!r} (transport only)"
        )
    return getattr(g4, physics_list)


_SESSION: Geant4Session | None = None


def get_session(physics_list: str, production_cut_mm: float) -> Geant4Session:
    """The process's Geant4 session, created on first use with this physics list."""
    global _SESSION
    if _SESSION is None:
        _SESSION = Geant4Session(physics_list, production_cut_mm)
    elif (_SESSION.physics_list, _SESSION.production_cut_mm) != (physics_list,
                                                                 production_cut_mm):
        raise Geant4SetupError(
            "Geant4 initialises one physics list per process; this process already uses "
            f"{_SESSION.physics_list!r} with a {_SESSION.production_cut_mm} mm production cut, "
            f"not {physics_list!r} with {production_cut_mm} mm (run it in a new process)"
        )
    if physics_list != GEANTINO_PHYSICS:
        # The datasets may have gone away since the session started.
        check_datasets(physics_list, ignore=stub_folders(),
                       versions=dataset_versions(_SESSION.g4.G4VERSION_NUMBER))
    return _SESSION


def stub_folders() -> tuple[str, ...]:
    """Folders of caloforge's empty nuclide table; they never count as a dataset."""
    if _SESSION is not None and _SESSION._ensdf_stub:
        return (_SESSION._ensdf_stub,)
    return ()


def direction_vector(theta: float, phi: float) -> tuple[float, float, float]:
    """Unit vector of polar angle ``theta`` to the z axis and azimuth ``phi`` (rad)."""
    st = math.sin(theta)
    return (st * math.cos(phi), st * math.sin(phi), math.cos(theta))
