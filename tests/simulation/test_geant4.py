"""Geant4 engine: layout and dataset checks (always), geometry and cell indexing with
geantino transport (needs geant4_pybind, no Geant4 dataset)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from caloforge.errors import ConfigError, GeometryError, InputError
from caloforge.geometry import get_geometry, list_geometries
from caloforge.geometry.base import LayerSpec
from caloforge.geometry.materials import MATERIALS
from caloforge.simulation.engine import Primary
from caloforge.simulation.geant4 import (
    GEANTINO_PHYSICS,
    Geant4Engine,
    Geant4SetupError,
    check_datasets,
    find_datasets,
    nist_material,
    required_datasets,
    slab_layout,
)
from caloforge.simulation.geant4.layout import DATASET_VERSIONS, DATASETS, import_geant4

DATASET_VARS = (*DATASETS, "GEANT4_DATA_DIR")


def _geant4_available() -> str:
    try:
        import_geant4()
    except Geant4SetupError as exc:
        return str(exc)
    return ""


_G4_MISSING = _geant4_available()
needs_geant4 = pytest.mark.skipif(
    bool(_G4_MISSING), reason=f"geant4_pybind not importable: {_G4_MISSING}"
)


@pytest.fixture
def no_datasets(monkeypatch, tmp_path):
    """An environment without any Geant4 dataset (HOME hides ~/.geant4_pybind)."""
    for var in DATASET_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def _fake_data_dir(root, versions):
    for folder in versions.values():
        (root / folder).mkdir(parents=True)
    return root


# ---- materials and slab layout -------------------------------------------------------
def test_every_caloforge_material_has_a_nist_material():
    expected = {"W": "G4_W", "Si": "G4_Si", "Fe": "G4_Fe", "polystyrene": "G4_POLYSTYRENE",
                "Pb": "G4_Pb", "LAr": "G4_lAr", "air": "G4_AIR"}
    assert {name: nist_material(name) for name in MATERIALS} == expected
    with pytest.raises(GeometryError, match="unobtainium"):
        nist_material("unobtainium")


@pytest.mark.parametrize("name", list_geometries())
def test_slab_layout_reproduces_the_layer_structure(name):
    geometry = get_geometry(name)
    layout = slab_layout(geometry)
    slabs = layout.slabs
    # Contiguous stack from z = 0, as deep as the geometry.
    assert slabs[0].z_min_mm == 0.0
    for a, b in zip(slabs[:-1], slabs[1:]):
        assert b.z_min_mm == pytest.approx(a.z_max_mm, abs=1e-9)
    assert layout.depth_mm == pytest.approx(sum(s.thickness_mm for s in geometry.layers))
    for k, spec in enumerate(geometry.layers):
        mine = [s for s in slabs if s.layer == k]
        assert sum(s.thickness_mm for s in mine) == pytest.approx(spec.thickness_mm)
        active = [s for s in mine if s.role == "active"]
        assert len(active) == (spec.repeats if spec.active_mm > 0 else 0)
        assert all(s.material == spec.active and s.thickness_mm == spec.active_mm
                   for s in active)
        assert all(s.material == spec.absorber for s in mine if s.role == "absorber")
        if mine:
            assert mine[0].z_min_mm == pytest.approx(geometry.layer_front_z_mm[k])
        if active:
            # The last active slice of a layer is where the geometry puts the layer.
            assert active[-1].z_centre_mm == pytest.approx(geometry.layer_z_mm[k])
    assert np.array_equal(layout.slab_layer, [s.layer for s in slabs if s.role == "active"])
    # Mesh: an even number of cells covering the slabs, wider than the readout window.
    assert layout.n_mesh % 2 == 0
    assert layout.n_mesh * layout.mesh_mm == pytest.approx(2 * layout.half_width_mm)
    assert layout.half_width_mm >= np.abs(geometry.cell_centres[:, :2]).max()
    assert layout.n_keys <= 2**31 - 1


@pytest.mark.parametrize("name", ["ild-ecal", "ild-ahcal", "calogan"])
def test_mesh_cells_never_straddle_readout_cells(name):
    geometry = get_geometry(name)
    layout = slab_layout(geometry)
    centres = layout.mesh_centres_mm(np.arange(layout.n_mesh))
    xx, yy = (a.ravel() for a in np.meshgrid(centres, centres, indexing="ij"))
    h = 0.499 * layout.mesh_mm
    layer_types = {(geometry.grid[k], geometry.cell_mm[k]): k for k in range(geometry.n_layers)}
    for k in layer_types.values():
        cell = geometry.locate(xx, yy, k)
        for dx, dy in ((-h, -h), (-h, h), (h, -h), (h, h)):
            assert np.array_equal(geometry.locate(xx + dx, yy + dy, k), cell)
        # Every readout cell is covered by (cell / pitch)^2 mesh cells.
        (si, sj) = geometry.cell_mm[k]
        counts = np.bincount(cell[cell >= 0] - geometry.layer_offsets[k],
                             minlength=geometry.cells_per_layer[k])
        assert np.all(counts == round(si / layout.mesh_mm) * round(sj / layout.mesh_mm))


def test_scoring_keys_decode_to_mesh_positions():
    geometry = get_geometry("ild-ecal")
    layout = slab_layout(geometry, mesh_mm=1.0, half_width_mm=80.0)
    n = layout.n_mesh
    assert (n, layout.half_width_mm) == (160, 80.0)
    keys = np.array([0, 5 * n * n + 3 * n + 7, layout.n_keys - 1])
    x, y, z, layer, slab = layout.positions(keys)
    assert slab.tolist() == [0, 5, 29]
    assert x.tolist() == [-79.5, -76.5, 79.5]
    assert y.tolist() == [-79.5, -72.5, 79.5]
    assert np.allclose(z, geometry.layer_z_mm[[0, 5, 29]])
    assert layer.tolist() == [0, 5, 29]
    with pytest.raises(GeometryError):
        layout.decode(np.array([layout.n_keys]))


def test_bad_mesh_and_layers_are_rejected():
    geometry = get_geometry("ild-ecal")
    with pytest.raises(ConfigError, match="coarser"):
        slab_layout(geometry, mesh_mm=0.001)
    with pytest.raises(ConfigError, match="positive"):
        slab_layout(geometry, mesh_mm=-1.0)
    with pytest.raises(ConfigError, match="positive"):
        slab_layout(geometry, half_width_mm=0.0)
    bad = get_geometry("ild-ecal").__class__(
        name="bad", description="", layers=(LayerSpec("W", 1.0, "Si", -0.5),),
        grid=((2, 2),), cell_mm=((5.0, 5.0),))
    with pytest.raises(GeometryError, match="negative"):
        slab_layout(bad)


# ---- datasets and setup errors -------------------------------------------------------
def test_required_datasets_follow_the_physics_list():
    assert required_datasets(GEANTINO_PHYSICS) == []
    base = set(required_datasets("FTFP_BERT"))
    assert {"G4LEDATA", "G4ENSDFSTATEDATA", "G4PARTICLEXSDATA"} <= base
    assert "G4NEUTRONHPDATA" not in base
    assert "G4NEUTRONHPDATA" in required_datasets("QGSP_BERT_HP")
    assert {"G4INCLDATA", "G4ABLADATA"} <= set(required_datasets("FTFP_INCLXX"))


def test_missing_datasets_name_the_variables(no_datasets):
    with pytest.raises(Geant4SetupError) as info:
        check_datasets("FTFP_BERT")
    message = str(info.value)
    assert "GEANT4_DATA_DIR" in message
    for var in required_datasets("FTFP_BERT"):
        assert var in message
    assert "G4NEUTRONHPDATA" not in message
    check_datasets(GEANTINO_PHYSICS)  # transport only: nothing needed


def test_datasets_are_found_in_geant4_data_dir(no_datasets, monkeypatch):
    versions = DATASET_VERSIONS[114]
    root = _fake_data_dir(no_datasets / "data", versions)
    monkeypatch.setenv("GEANT4_DATA_DIR", str(root))
    found = find_datasets(versions=versions)
    assert all(found[var] == root / folder for var, folder in versions.items())
    check_datasets("QGSP_BERT_HP", versions=versions)
    # Without known versions any <name><digit...> folder counts.
    assert find_datasets()["G4LEDATA"] == root / versions["G4LEDATA"]


def test_wrong_dataset_version_is_missing(no_datasets, monkeypatch):
    versions = DATASET_VERSIONS[114]
    root = no_datasets / "data"
    for var in versions:
        (root / (DATASETS[var] + "0.1")).mkdir(parents=True)  # another release's folders
    monkeypatch.setenv("GEANT4_DATA_DIR", str(root))
    with pytest.raises(Geant4SetupError, match=r"G4LEDATA \(G4EMLOW8\.8\)"):
        check_datasets("FTFP_BERT", versions=versions)
    check_datasets("FTFP_BERT")  # version unknown: accepted


def test_single_dataset_variable_and_ignored_folder(no_datasets, monkeypatch):
    folder = no_datasets / "emlow"
    folder.mkdir()
    monkeypatch.setenv("G4LEDATA", str(folder))
    assert find_datasets()["G4LEDATA"] == folder
    assert find_datasets(ignore=(str(folder),))["G4LEDATA"] is None
    monkeypatch.setenv("G4LEDATA", str(no_datasets / "nowhere"))
    assert find_datasets()["G4LEDATA"] is None


def test_missing_geant4_pybind_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "geant4_pybind", None)  # makes the import fail
    with pytest.raises(Geant4SetupError, match=r"pip install caloforge\[geant4\]"):
        Geant4Engine("ild-ecal")
    with pytest.raises(Geant4SetupError, match=r"pip install caloforge\[geant4\]"):
        Geant4Engine("ild-ecal", GEANTINO_PHYSICS)


@needs_geant4
def test_physics_run_without_datasets_fails_clearly(no_datasets):
    with pytest.raises(Geant4SetupError, match="GEANT4_DATA_DIR") as info:
        Geant4Engine("ild-ecal", "FTFP_BERT")
    assert "G4LEDATA" in str(info.value)
    with pytest.raises(ConfigError, match="unknown Geant4 physics list 'NOPE'"):
        Geant4Engine("ild-ecal", "NOPE")


# ---- geantino transport: geometry and cell indexing -----------------------------------
@pytest.fixture(scope="module")
def ecal():
    if _G4_MISSING:
        pytest.skip(f"geant4_pybind not importable: {_G4_MISSING}")
    return Geant4Engine("ild-ecal", GEANTINO_PHYSICS)


@needs_geant4
@pytest.mark.parametrize("x0, y0", [(1.3, -2.1), (-60.0, 44.4), (0.0, 0.0)])
def test_geantino_crosses_every_active_layer_once(ecal, x0, y0):
    geometry = ecal.geometry
    hits = ecal.crossings(Primary("geantino", 1000.0, x_mm=x0, y_mm=y0))
    assert hits.layer.tolist() == list(range(geometry.n_layers))
    assert np.allclose(hits.length_mm, 0.5)  # 0.5 mm silicon at normal incidence
    assert np.allclose(hits.z, geometry.layer_z_mm)
    pitch = ecal.layout.mesh_mm
    assert np.all(np.abs(hits.x - x0) <= 0.5 * pitch + 1e-9)
    assert np.all(np.abs(hits.y - y0) <= 0.5 * pitch + 1e-9)
    # The fine-mesh position lands in the readout cell the line goes through.
    assert np.array_equal(geometry.locate(hits.x, hits.y, hits.layer),
                          geometry.locate(np.full(30, x0), np.full(30, y0), hits.layer))


@needs_geant4
def test_inclined_charged_geantino_follows_its_line(ecal):
    geometry = ecal.geometry
    theta, phi, x0, y0 = 0.4, 2.2, 10.0, -5.0
    hits = ecal.crossings(Primary("chargedgeantino", 5000.0, x_mm=x0, y_mm=y0,
                                  theta=theta, phi=phi))
    assert set(hits.layer.tolist()) == set(range(geometry.n_layers))
    per_layer = np.bincount(hits.layer, weights=hits.length_mm)
    assert np.allclose(per_layer, 0.5 / math.cos(theta))
    # Length-weighted mean position per layer lies on the line through (x0, y0, 0).
    for axis, start, slope in ((hits.x, x0, math.cos(phi)), (hits.y, y0, math.sin(phi))):
        mean = np.bincount(hits.layer, weights=hits.length_mm * axis) / per_layer
        expected = start + math.tan(theta) * slope * geometry.layer_z_mm
        assert np.all(np.abs(mean - expected) < ecal.layout.mesh_mm)


@needs_geant4
def test_geantino_outside_the_slabs_scores_nothing(ecal):
    hits = ecal.crossings(Primary("geantino", 1000.0, x_mm=ecal.layout.half_width_mm + 5.0))
    assert len(hits.length_mm) == 0


@needs_geant4
@pytest.mark.parametrize("name", ["ild-ahcal", "calogan", "calochallenge-2", "ild-ecal"])
def test_navigator_finds_every_slab(ecal, name):
    # Other geometries in the same process: the engine swaps the world volume.
    engine = Geant4Engine(name, GEANTINO_PHYSICS)
    layout = engine.layout
    x, y = 7.3, -11.9
    assert engine.volume_at(x, y, -0.5).material == "G4_Galactic"
    active_index = 0
    for slab in layout.slabs:
        for z in (slab.z_min_mm + 1e-3, slab.z_centre_mm, slab.z_max_mm - 1e-3):
            info = engine.volume_at(x, y, z)
            assert info.name == f"{slab.role}_L{slab.layer}"
            assert info.material == nist_material(slab.material)
            if slab.role == "active":
                assert info.copy_number == active_index
                ix, iy = info.cell
                assert layout.mesh_centres_mm(ix) == pytest.approx(x, abs=layout.mesh_mm / 2)
                assert layout.mesh_centres_mm(iy) == pytest.approx(y, abs=layout.mesh_mm / 2)
            else:
                assert info.copy_number == slab.layer
        active_index += slab.role == "active"
    # Geantino tracks in this world: one crossing per active slab, at the slab centres.
    hits = engine.crossings(Primary("geantino", 1000.0, x_mm=x, y_mm=y))
    assert hits.slab.tolist() == list(range(len(layout.active)))
    assert np.allclose(hits.z, layout.slab_z_mm)
    assert np.allclose(hits.length_mm, [s.thickness_mm for s in layout.active])
    # Back to the first engine's world.
    assert ecal.volume_at(0.0, 0.0, ecal.geometry.layer_z_mm[3]).name == "active_L3"


@needs_geant4
def test_simulate_is_seeded_from_the_generator(ecal):
    import geant4_pybind as g4

    deposits = ecal.simulate(Primary("geantino", 1000.0), np.random.default_rng(7))
    assert deposits.total == 0.0 and len(deposits.energy) == 0  # geantinos deposit nothing
    seeds_a = g4.HepRandom.getTheSeeds()
    state_a = g4.G4UniformRand()
    ecal.simulate(Primary("geantino", 1000.0), np.random.default_rng(8))
    assert g4.HepRandom.getTheSeeds() != seeds_a
    ecal.simulate(Primary("geantino", 1000.0), np.random.default_rng(7))
    assert g4.HepRandom.getTheSeeds() == seeds_a
    assert g4.G4UniformRand() == state_a
    expected = np.random.default_rng(7).integers(1, 2**32, size=4, dtype=np.uint64)
    assert list(seeds_a)[:4] == expected.tolist()


@needs_geant4
def test_bad_primaries_and_physics_conflicts(ecal, no_datasets, monkeypatch):
    with pytest.raises(InputError, match="positive"):
        ecal.simulate(Primary("geantino", 0.0), np.random.default_rng(1))
    with pytest.raises(InputError, match="front face"):
        ecal.simulate(Primary("geantino", 10.0, theta=2.0), np.random.default_rng(1))
    with pytest.raises(ConfigError, match="only geantinos"):
        ecal.simulate(Primary("photon", 10.0), np.random.default_rng(1))
    # With datasets present, a second physics list still cannot join this process.
    root = _fake_data_dir(no_datasets / "data", DATASET_VERSIONS[114])
    monkeypatch.setenv("GEANT4_DATA_DIR", str(root))
    with pytest.raises(Geant4SetupError, match="one physics list per process"):
        Geant4Engine("ild-ecal", "FTFP_BERT")


@needs_geant4
def test_physics_session_is_set_up_up_to_initialisation(tmp_path):
    # In a subprocess: the run manager is per process and Geant4 would abort on the
    # (empty) fake datasets if it initialised physics.  This checks that the physics list
    # and user actions are accepted by the run manager through geant4_pybind.
    root = _fake_data_dir(tmp_path / "data", DATASET_VERSIONS[114])
    (root / DATASET_VERSIONS[114]["G4ENSDFSTATEDATA"] / "ENSDFSTATE.dat").write_text("")
    script = (
        "from caloforge.simulation.geant4 import runtime\n"
        "s = runtime.get_session('QGSP_BERT', 0.5)\n"
        "assert type(s.run_manager.GetUserPhysicsList()).__name__ == 'QGSP_BERT'\n"
        "assert s.run_manager.GetUserPrimaryGeneratorAction() is not None\n"
        "print('session-ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in DATASET_VARS}
    env.update(GEANT4_DATA_DIR=str(root), HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "session-ok" in done.stdout


@needs_geant4
def test_interrupt_in_a_callback_surfaces_after_the_event(ecal, monkeypatch):
    from caloforge.simulation.geant4 import runtime

    def interrupted(hits_map):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "_hits_map_arrays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ecal.crossings(Primary("geantino", 1000.0))
    monkeypatch.undo()
    assert len(ecal.crossings(Primary("geantino", 1000.0)).slab) == ecal.geometry.n_layers
