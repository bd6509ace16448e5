"""Point-cloud models: sample() returns a PointCloudBatch (energies clamped, coordinates
never), generation is independent of the batch size, and `generate` writes point formats
or projects the points into the geometry with --project (energy conserved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from caloforge.cli import main
from caloforge.data import PointCloudBatch
from caloforge.data.io import open_showers
from caloforge.errors import InputError
from caloforge.models import GenerativeModel, load, register
from caloforge.models.generation import generate_file
from caloforge.models.noise import ShowerNoise

POINTS = 12


@register("toy-points")
class ToyPointModel(GenerativeModel):
    """A toy point-cloud model: POINTS points per shower, Gaussian around the axis (so some
    coordinates are negative and some fall outside the grid), energies from a learnt
    fraction of the incident energy with noise that can go negative (clamped by sample)."""

    representation = "points"

    def __init__(self, config, geometry) -> None:  # noqa: ANN001
        super().__init__(config, geometry)
        self.log_width = nn.Parameter(torch.tensor(2.5))  # mm, log
        self.register_buffer("layer_z", torch.as_tensor(geometry.layer_z_mm,
                                                        dtype=torch.float32))

    def generate(self, e_inc: Tensor, noise: ShowerNoise, conditions=None):  # noqa: ANN001
        xy = noise.randn(POINTS, 2) * self.log_width.exp()
        layer = noise.randint(len(self.layer_z), POINTS)
        z = self.layer_z[layer]
        e = e_inc[:, None] * 0.01 / POINTS * (1 + noise.randn(POINTS))
        mask = torch.arange(POINTS)[None] < 3 + noise.randint(POINTS - 2, 1)  # 3..POINTS
        return torch.stack([xy[..., 0], xy[..., 1], z, e], -1), mask


@pytest.fixture(scope="module")
def point_model(toy_geo):
    model = ToyPointModel.from_config(None, toy_geo)
    model.fit_preprocessing(torch.zeros(2, toy_geo.n_voxels), torch.tensor([1e3, 1e5]))
    return model


def test_sample_returns_point_clouds(point_model, toy_geo):
    e = np.geomspace(2e3, 9e4, 40)
    pts = point_model.sample(e, 3, batch_size=40)
    assert isinstance(pts, PointCloudBatch) and len(pts) == 40
    assert pts.geometry == toy_geo.name
    assert (pts.energy >= 0).all() and (pts.energy == 0).any()  # clamped energies
    assert (pts.x < 0).any() and (pts.y < 0).any()  # coordinates are never clamped
    assert 3 <= pts.n_points.min() and pts.n_points.max() <= POINTS
    for bs in (1, 7):
        other = point_model.sample(e, 3, batch_size=bs)
        np.testing.assert_array_equal(other.offsets, pts.offsets)
        np.testing.assert_allclose(other.x, pts.x, rtol=1e-6)
        np.testing.assert_allclose(other.energy, pts.energy, rtol=1e-6)


def test_point_formats_and_projection(point_model, tmp_path):
    e = np.geomspace(2e3, 9e4, 30)
    native = tmp_path / "points.h5"
    generate_file(point_model, e, native, "caloforge", batch_size=8, seed=1)
    with open_showers(native) as f:
        stored = f.read_points()
    direct = point_model.sample(e, 1)
    np.testing.assert_allclose(stored.energy, direct.energy, rtol=1e-6)
    with pytest.raises(InputError, match=r"holds voxels only: pass --project"):
        generate_file(point_model, e, tmp_path / "v.h5", "calochallenge", seed=1)
    assert not (tmp_path / "v.h5").exists()
    meta = generate_file(point_model, e, tmp_path / "v.h5", "calochallenge", seed=1,
                         project=True)
    with open_showers(tmp_path / "v.h5") as f:
        voxels = f.read()
    # energy conserved: what is in the cells plus what fell outside is the points' energy
    point_sum = np.bincount(direct.shower_index, weights=direct.energy, minlength=len(e))
    np.testing.assert_allclose(voxels.total_energy().sum() + meta["projected_outside_mev"],
                               point_sum.sum(), rtol=1e-5)
    assert meta["projected_outside_mev"] > 0  # some points fall outside the 6x6 grid


def test_cli_refuses_voxel_format_for_points(point_model, tmp_path, capsys):
    folder = point_model.save(tmp_path / "model")
    assert load(folder).representation == "points"
    out = tmp_path / "g.h5"
    rc = main(["generate", "--model", str(folder), "--energy", "20", "-n", "3",
               "--format", "calochallenge", "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "--project" in err
    assert not out.exists()
    rc = main(["generate", "--model", str(folder), "--energy", "20", "-n", "3",
               "--format", "calochallenge", "--project", "-o", str(out), "--no-progress"])
    assert rc == 0 and "outside the cells" in capsys.readouterr().out
    with open_showers(out) as f:
        assert len(f) == 3
