"""Simulation API and CLI: conditions, reproducibility (shards, workers), outputs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.data.batch import PointCloudBatch, ShowerBatch
from caloforge.data.io import open_showers, read_showers
from caloforge.errors import CaloforgeError, InputError
from caloforge.geometry import get_geometry
from caloforge.simulation import Range, iter_simulate, shard_range, simulate
from caloforge.simulation.api import pion_min_hits


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CALOFORGE_NO_PROGRESS", "1")


def test_simulate_conditions_and_reproducibility():
    b = simulate("ild-ecal", "photon", (1000.0, 3000.0, True), n=4, seed=2,
                 theta=0.1, phi=(0.0, 1.0), impact=(3.0, -2.0), chunk_size=3)
    assert isinstance(b, ShowerBatch) and b.energies.shape == (4, 27000)
    c = b.conditions
    assert np.all((c.incident_energy >= 1000) & (c.incident_energy <= 3000))
    assert np.all(c.particle == 22) and np.allclose(c.theta, 0.1)
    assert np.all((c.phi >= 0) & (c.phi <= 1)) and np.allclose(c.impact, [3.0, -2.0])
    again = simulate("ild-ecal", "photon", (1000.0, 3000.0, True), n=4, seed=2,
                     theta=0.1, phi=(0.0, 1.0), impact=(3.0, -2.0))
    np.testing.assert_array_equal(b.energies, again.energies)
    other = simulate("ild-ecal", "photon", (1000.0, 3000.0, True), n=4, seed=3,
                     theta=0.1, phi=(0.0, 1.0), impact=(3.0, -2.0))
    assert not np.array_equal(b.energies, other.energies)
    # a part of the sample equals the same showers of the whole sample
    part = simulate("ild-ecal", "photon", (1000.0, 3000.0, True), n=4, seed=2, start=2,
                    theta=0.1, phi=(0.0, 1.0), impact=(3.0, -2.0))
    np.testing.assert_array_equal(part.energies, b.energies[2:])
    assert b.total_energy().min() > 0


def test_workers_give_the_same_showers():
    one = simulate("ild-ecal", "electron", 500.0, n=4, seed=5, chunk_size=1)
    two = simulate("ild-ecal", "electron", 500.0, n=4, seed=5, chunk_size=1, workers=2)
    np.testing.assert_array_equal(one.energies, two.energies)


def test_points_match_voxels():
    """Points clustered on the 6x6 finer grid voxelise back to the same cells."""
    pts = simulate("ild-ecal", "photon", 2000.0, n=2, seed=1, points=True)
    vox = simulate("ild-ecal", "photon", 2000.0, n=2, seed=1)
    assert isinstance(pts, PointCloudBatch)
    back, outside = pts.to_voxels("ild-ecal")
    np.testing.assert_allclose(back.energies, vox.energies, rtol=1e-4, atol=1e-6)
    pitch = 5.088 / 6
    # points sit at fine-cell centres
    frac = (pts.x + 15 * 5.088) / pitch - 0.5
    assert np.allclose(frac, np.round(frac), atol=1e-6)
    assert pts.n_points.min() > 50


def test_other_geometries():
    b = simulate("calochallenge-2", "electron", 2000.0, n=1, seed=0)
    assert b.energies.shape[1] == get_geometry("calochallenge-2").n_voxels
    assert b.total_energy()[0] > 0
    with pytest.raises(CaloforgeError, match="Cartesian"):
        simulate("calochallenge-2", "electron", 2000.0, n=1, points=True)


def test_pion_cleaning():
    b = simulate("ild-ahcal", "pi+", 10000.0, n=3, seed=4)
    assert np.all((b.energies > 0.25).sum(axis=1) >= 70)
    assert np.all(b.conditions.particle == 211)
    assert b.metadata["rejected_showers"] >= 0


def test_low_energy_pions_are_redrawn_not_aborted():
    """2 GeV pions (bottom of the documented range) pass the energy-scaled default cut;
    a shower's redraws come from its own stream, so shower i depends on (seed, i) only."""
    assert pion_min_hits(2000.0) == 14 and pion_min_hits(10000.0) == pion_min_hits(5e5) == 70
    b = simulate("ild-ahcal", "pi-", 2000.0, n=6, seed=3, min_hits=25, chunk_size=4)
    assert np.all((b.energies > 0.25).sum(axis=1) >= 25)
    assert b.metadata["rejected_showers"] > 0  # most 2 GeV showers have < 25 hits
    tail = simulate("ild-ahcal", "pi-", 2000.0, n=6, seed=3, min_hits=25, start=4)
    np.testing.assert_array_equal(tail.energies, b.energies[4:])
    default = simulate("ild-ahcal", "pi+", (2000.0, 4000.0), n=4, seed=1)
    cut = [pion_min_hits(e) for e in default.incident_energy]
    assert np.all((default.energies > 0.25).sum(axis=1) >= cut)


def test_impossible_hit_cut_fails_clearly():
    with pytest.raises(InputError, match=r"none of 200 pi\+ showers of 2 GeV had 1000 cells"):
        simulate("ild-ahcal", "pi+", 2000.0, n=1, min_hits=1000)


def test_cli_reports_rejected_showers(tmp_path, capsys):
    out = tmp_path / "pi.h5"
    assert main(["simulate", "--detector", "ild-ahcal", "--particle", "pi+", "--energy", "2",
                 "-n", "4", "--seed", "3", "--min-hits", "25", "-o", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    with open_showers(out) as f:
        rejected = f.metadata["rejected_showers"]
    assert rejected > 0
    assert lines[-1].startswith(f"hit cut: {rejected} showers with too few cells")


@pytest.mark.parametrize("kw,match", [
    (dict(detector="nope"), "unknown geometry"),
    (dict(particle="kaon"), "unknown particle"),
    (dict(energy=0.0), "> 0"),
    (dict(energy=(-5.0, 10.0)), "> 0"),
    (dict(energy=5e7), "outside the range"),
    (dict(particle="pi+", energy=500.0), "outside the range"),
    (dict(n=0), "n must be >= 1"),
    (dict(n=-4), "n must be >= 1"),
    (dict(n=2.5), "must be an integer"),
    (dict(n=True), "must be an integer"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(energy=float("nan")), "energy"),
    (dict(energy="ten"), "energy"),
    (dict(theta=math.pi / 2), r"theta must lie in \[0, 90\)"),
    (dict(theta=float("nan")), "theta"),
    (dict(phi=(0.0, float("inf"))), "phi"),
    (dict(impact=(1e6, 0.0)), "outside the ild-ecal front face"),
    (dict(impact=(float("nan"), 0.0)), "impact"),
    (dict(impact=(1.0,)), "impact"),
    (dict(min_hits=-1), "min_hits must be >= 0"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
    (dict(chunk_size=-3), "chunk_size must be >= 1"),
    (dict(workers=0), "workers must be >= 1"),
    (dict(start=1, stop=1), "empty"),
])
def test_bad_api_input(kw, match):
    """The Python API refuses what the CLI refuses, before any shower is simulated."""
    args = dict(detector="ild-ecal", particle="photon", energy=1000.0, n=1) | kw
    with pytest.raises(CaloforgeError, match=match):
        list(iter_simulate(args.pop("detector"), args.pop("particle"), args.pop("energy"),
                           args.pop("n"), **args))


def test_impact_on_the_face_is_accepted():
    b = simulate("ild-ecal", "photon", 1000.0, n=1, seed=0, impact=(70.0, -70.0))
    assert b.total_energy()[0] > 0


def test_range_parsing():
    r = Range.parse("10:100", 1000.0)
    assert (r.lo, r.hi, r.log) == (1e4, 1e5, False)
    assert Range.parse("10:100:log").log
    assert Range.parse("50").lo == 50.0
    for bad in ("a", "10:5", "1:2:3"):
        with pytest.raises(InputError):
            Range.parse(bad)
    rng = np.random.default_rng(0)
    vals = [Range(1.0, 100.0, True).sample(rng) for _ in range(2000)]
    assert abs(np.median(vals) - 10.0) < 1.5  # log-uniform median = geometric mean
    assert shard_range(10, 2, 3) == (6, 10)
    with pytest.raises(InputError):
        shard_range(10, 3, 3)


def _sim(tmp_path, name, *extra):
    return main(["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy",
                 "1:2", "-n", "5", "--seed", "9", "-o", str(tmp_path / name), *extra])


def test_cli_shards_and_merge(tmp_path):
    assert _sim(tmp_path, "full.h5") == 0
    assert _sim(tmp_path, "s0.h5", "--shard", "0/2") == 0
    assert _sim(tmp_path, "s1.h5", "--shard", "1/2") == 0
    assert main(["merge", str(tmp_path / "m.h5"), str(tmp_path / "s1.h5"),
                 str(tmp_path / "s0.h5")]) == 0
    full, merged = read_showers(tmp_path / "full.h5"), read_showers(tmp_path / "m.h5")
    np.testing.assert_array_equal(full.energies, merged.energies)
    # energies in the file are MeV (CLI takes GeV)
    assert 1000 <= full.incident_energy.min() and full.incident_energy.max() <= 2000
    with open_showers(tmp_path / "s1.h5") as f:
        assert f.metadata["simulation"]["seed"] == 9 and f.metadata["first_index"] == 2
    # a shard of another seed is refused, as is a shard given twice
    assert _sim(tmp_path, "t1.h5", "--shard", "1/2", "--seed", "10") == 0
    assert main(["merge", str(tmp_path / "x.h5"), str(tmp_path / "s0.h5"),
                 str(tmp_path / "t1.h5")]) == 1
    assert main(["merge", str(tmp_path / "x.h5"), str(tmp_path / "s0.h5"),
                 str(tmp_path / "s0.h5")]) == 1
    assert not (tmp_path / "x.h5").exists()


def test_cli_points_and_format(tmp_path):
    assert _sim(tmp_path, "p.h5", "--points") == 0
    with open_showers(tmp_path / "p.h5") as f:
        assert f.is_point_cloud and f.n_showers == 5
    # constant conditions (theta = 0, one particle) are kept as file attributes...
    assert _sim(tmp_path, "c0.h5", "--format", "calochallenge") == 0
    # ...varying ones cannot be stored without --lossy
    assert _sim(tmp_path, "c1.h5", "--format", "calochallenge", "--theta", "0:20") == 1
    assert not (tmp_path / "c1.h5").exists()
    assert _sim(tmp_path, "c.h5", "--format", "calochallenge", "--lossy") == 0
    assert read_showers(tmp_path / "c.h5").energies.shape == (5, 27000)
    assert _sim(tmp_path, "bad.h5", "--points", "--format", "calochallenge") == 1
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("extra,message", [
    (["--detector", "nope"], "unknown geometry"),
    (["--particle", "kaon"], "unknown particle"),
    (["--energy", "0"], "> 0"),
    (["--energy=-1:2"], "> 0"),
    (["--energy", "5000"], "outside the range"),
    (["--shard", "2/2"], "out of range"),
    (["--impact", "1"], "impact"),
])
def test_cli_bad_input(tmp_path, capsys, extra, message):
    args = ["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy", "1",
            "-n", "2", "-o", str(tmp_path / "out.h5")]
    # later options override earlier ones
    assert main(args + extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_output_exists_and_geant4(tmp_path, capsys):
    (tmp_path / "out.h5").write_bytes(b"keep")
    args = ["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy", "1",
            "-n", "2", "-o", str(tmp_path / "out.h5")]
    assert main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "out.h5").read_bytes() == b"keep"
    # Geant4 without geant4_pybind or its datasets: one clear error, no output
    assert main(args[:-1] + [str(tmp_path / "g4.h5"), "--engine", "geant4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("geant4" in err[0].lower() or "GEANT4" in err[0])
    assert not (tmp_path / "g4.h5").exists()


def test_theta_direction_moves_the_shower():
    """An inclined photon's shower drifts in x with depth by tan(theta) per mm."""
    b = simulate("ild-ecal", "photon", 5000.0, n=3, seed=1, theta=math.radians(20), phi=0.0)
    g = get_geometry("ild-ecal")
    x = g.cell_centres[:, 0]
    imgs = b.energies.reshape(3, 30, 900)
    xs = (imgs * x.reshape(30, 900)).sum(axis=(0, 2)) / imgs.sum(axis=(0, 2))
    z = g.layer_z_mm
    slope = np.polyfit(z[5:20], xs[5:20], 1)[0]
    assert slope == pytest.approx(math.tan(math.radians(20)), rel=0.25)
