"""Point files through the CLI: evaluate (point and voxel levels, report), generate
--project [--realistic], and bad point input (negative energies, NaN coordinates, points
outside the layers, showers without points, files without points): one error line
naming the file, exit 1, nothing written."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from caloforge.cli import main
from caloforge.data import Conditions, PointCloudBatch
from caloforge.data.io import open_showers, write_showers
from caloforge.geometry import get_geometry
from caloforge.models import GenerativeModel, register
from caloforge.models.noise import ShowerNoise

N_POINTS = 10


def _clouds(n, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 40, n)
    m = int(counts.sum())
    return PointCloudBatch(
        np.concatenate([[0], np.cumsum(counts)]), x=rng.normal(0, 30, m),
        y=rng.normal(0, 30, m), z=np.zeros(m), energy=rng.exponential(0.5, m),
        layer=rng.integers(0, 30, m), conditions=Conditions(rng.uniform(1e4, 9e4, n)),
        geometry="ild-ecal")


@pytest.fixture(scope="module")
def point_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("points_cli")
    out = {}
    for name, seed in (("ref", 1), ("gen", 2)):
        out[name] = d / f"{name}.h5"
        with write_showers(out[name], "pointcloud", "ild-ecal") as w:
            w.append(_clouds(120, seed))
    return out


def _one_error(capsys, command):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"caloforge {command}: error: "), err
    return lines[-1]


@pytest.mark.slow  # the full report: ~20 s on a loaded 2-core machine
def test_evaluate_point_files_writes_both_levels(point_files, tmp_path, capsys):
    report = tmp_path / "report"
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("figure_formats: [png]\n")  # PDF copies only slow the test down
    rc = main(["evaluate", str(point_files["ref"]), str(point_files["gen"]), "--report",
               str(report), "--no-classifier", "--no-reco", "--no-progress", "--realistic",
               "--config", str(cfg)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((report / "metrics.json").read_text())
    assert m["config"]["realistic"] is True
    g = m["generated"][0]
    assert g["verdict"]["points"] in ("green", "yellow", "red")
    assert "e_vis" in g["observables"]
    assert "point-level observables" in (report / "index.html").read_text()
    assert any(name.startswith("points_n_points") for name in m["figures"])


def _raw_pointcloud(path, events, energy=None):
    with h5py.File(path, "w") as f:
        f["events"] = events
        f["energy"] = np.full((len(events), 1), 50.0) if energy is None else energy
    return path


def _good_events(n=3, p=8):
    ev = np.zeros((n, 4, p), np.float32)
    ev[:, 0, -4:] = 1.0
    ev[:, 1, -4:] = 1811.34020996 + 0.26
    ev[:, 2, -4:] = 40.0
    ev[:, 3, -4:] = 1e-3
    return ev


BAD = {
    "negative": (lambda ev: ev.__setitem__((1, 3, -1), -1e-3), "negative point energies"),
    "nan": (lambda ev: ev.__setitem__((2, 0, -2), np.nan), "NaN/inf point coordinates"),
    "outside": (lambda ev: ev.__setitem__((0, 1, -1), 1500.0), "outside the layers"),
    "empty_shower": (lambda ev: ev.__setitem__((1, slice(None), slice(None)), 0.0),
                     "hold no points"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_point_file_convert(tmp_path, capsys, case):
    ev = _good_events()
    BAD[case][0](ev)
    bad = _raw_pointcloud(tmp_path / f"{case}.h5", ev)
    out = tmp_path / "out.h5"
    rc = main(["convert", str(bad), str(out), "--to", "caloforge"])
    line = _one_error(capsys, "convert")
    assert rc == 1 and str(bad) in line and BAD[case][1] in line, line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_point_file_evaluate(point_files, tmp_path, capsys, case):
    ev = _good_events(60)
    BAD[case][0](ev)
    bad = _raw_pointcloud(tmp_path / f"{case}.h5", ev)
    report = tmp_path / "report"
    # as the reference: nothing to compare against, no report
    rc = main(["evaluate", str(bad), str(point_files["gen"]), "--report", str(report),
               "--no-classifier", "--no-reco", "--no-progress"])
    line = _one_error(capsys, "evaluate")
    assert rc == 1 and str(bad) in line and BAD[case][1] in line, line
    assert not report.exists()
    # as a generated sample: not compared, exit 1, the reason names the file
    rc = main(["evaluate", str(point_files["ref"]), str(bad), "--report", str(report),
               "--no-classifier", "--no-reco", "--no-progress"])
    line = _one_error(capsys, "evaluate")
    assert rc == 1 and str(bad) in line and BAD[case][1] in line, line


def test_file_without_points(tmp_path, capsys):
    bad = _raw_pointcloud(tmp_path / "none.h5", np.zeros((0, 4, 8), np.float32),
                          np.zeros((0, 1)))
    rc = main(["convert", str(bad), str(tmp_path / "o.h5"), "--to", "caloforge"])
    line = _one_error(capsys, "convert")
    assert rc == 1 and str(bad) in line and "no showers" in line
    assert not (tmp_path / "o.h5").exists()


@register("toy-points-nan")
class NaNPointModel(GenerativeModel):
    """Points on the axis; showers above 50 GeV get a NaN coordinate (a broken model)."""

    representation = "points"

    def __init__(self, config, geometry) -> None:  # noqa: ANN001
        super().__init__(config, geometry)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("layer_z", torch.as_tensor(geometry.layer_z_mm,
                                                        dtype=torch.float32))

    def generate(self, e_inc: Tensor, noise: ShowerNoise, conditions=None):  # noqa: ANN001
        xy = noise.randn(N_POINTS, 2) * 60.0 * self.scale  # tails leave the grid
        x = torch.where(e_inc[:, None] > 5e4, torch.nan, xy[..., 0])
        z = self.layer_z[noise.randint(len(self.layer_z), N_POINTS)]
        e = (e_inc[:, None] * 1e-3 / N_POINTS).expand(-1, N_POINTS)
        mask = torch.ones_like(e, dtype=torch.bool)
        return torch.stack([x, xy[..., 1], z, e], -1), mask


def test_generate_project(tmp_path, capsys):
    # the ILD ECAL (not the toy geometry: registering it here would leak into the
    # geometry listing tests), so that --realistic meets real wafer gaps
    geo = get_geometry("ild-ecal")
    model = NaNPointModel.from_config(None, geo)
    model.fit_preprocessing(torch.zeros(2, geo.n_voxels), torch.tensor([1e3, 1e5]))
    folder = model.save(tmp_path / "model")
    out = tmp_path / "v.h5"
    base = ["generate", "--model", str(folder), "-n", "4", "--format", "calochallenge",
            "-o", str(out), "--no-progress"]
    rc = main(base + ["--energy", "20", "--realistic"])
    assert rc == 1 and "add --project" in _one_error(capsys, "generate")
    rc = main(base + ["--energy", "20", "--project", "--realistic"])
    assert rc == 0 and "% ) outside the cells".replace(" ", "") in \
        capsys.readouterr().out.replace(" ", "")
    with open_showers(out) as f:
        meta, voxels = f.metadata, f.read()
    assert meta["projected_realistic"] is True
    # energy conserved: cells + reported loss = the points' energy (1e-3 of 20 GeV each)
    np.testing.assert_allclose(voxels.total_energy().sum() + meta["projected_outside_mev"],
                               4 * 20.0, rtol=1e-5)
    assert 0 < meta["projected_outside_fraction"] < 1
    out.unlink()
    rc = main(base + ["--energy", "60", "--project"])
    line = _one_error(capsys, "generate")
    assert rc == 1 and str(out) in line and "NaN/inf point x" in line
    assert not out.exists()
