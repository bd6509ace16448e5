"""Point-cloud diffusion models (caloclouds, caloclouds2, caloclouds2-cm): trained a few
steps through the shared loop from a point file, they generate valid clouds that depend
only on (seed, shower index), survive save/load, and the ShowerFlow keeps its integer
counts consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.data import PointCloudBatch
from caloforge.data.io import write_showers
from caloforge.models import load
from caloforge.models.showerflow import ShowerFlow
from caloforge.models.toy import toy_showers
from caloforge.training import TrainConfig, train


def _cfg(**kw):
    base = dict(steps=8, batch_size=16, validate_every=0, checkpoint_every=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def point_file(write_toy_points, tmp_path_factory):
    """96 toy showers (2-50 GeV) as point clouds (one point per hit cell) in the CaloClouds
    point-cloud format, as ``caloforge simulate --points --format pointcloud`` writes."""
    return write_toy_points(tmp_path_factory.mktemp("points") / "toy_points.h5", 96, seed=5)


@pytest.fixture(scope="module")
def trained(point_file, tmp_path_factory):
    """name -> (model returned by train, its model folder)."""
    out = {}
    root = tmp_path_factory.mktemp("runs")
    for name in ("caloclouds", "caloclouds2"):
        model = train(name, point_file, root / name, preset="tiny", train_config=_cfg(),
                      progress=False)
        out[name] = (model, root / name / "model")
    teacher = str(root / "caloclouds2" / "model")
    model = train("caloclouds2-cm", point_file, root / "cm", preset="tiny",
                  train_config=_cfg(steps=4, frozen_models={"teacher": teacher}),
                  progress=False)
    out["caloclouds2-cm"] = (model, root / "cm" / "model")
    return out


NAMES = ("caloclouds", "caloclouds2", "caloclouds2-cm")


@pytest.mark.parametrize("name", NAMES)
def test_point_models_generate_valid_clouds(trained, toy_geo, name):
    model, _ = trained[name]
    e = np.geomspace(2.5e3, 4.5e4, 6)
    pts = model.sample(e, 3)
    assert isinstance(pts, PointCloudBatch) and len(pts) == 6 and pts.geometry == toy_geo.name
    assert (pts.n_points >= 1).all() and pts.n_points.max() <= int(model.max_points)
    for name_ in ("x", "y", "z", "energy"):
        assert np.isfinite(getattr(pts, name_)).all()
    assert (pts.energy >= 0).all()
    # z is the depth of a layer's active medium, as point files and the projection expect
    assert np.isin(np.round(pts.z, 4), np.round(toy_geo.layer_z_mm, 4)).all()
    # per-layer energies and counts come from the ShowerFlow: totals are consistent
    voxels, outside = pts.to_voxels()
    sums = np.bincount(pts.shower_index, weights=pts.energy, minlength=len(pts))
    np.testing.assert_allclose(voxels.total_energy() + outside, sums, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_point_models_are_batch_independent_and_reload_identically(trained, name):
    model, folder = trained[name]
    e = np.geomspace(2.5e3, 4.5e4, 7)
    whole = model.sample(e, 11, batch_size=7)
    for bs in (1, 3):
        part = model.sample(e, 11, batch_size=bs)
        np.testing.assert_array_equal(part.offsets, whole.offsets)
        for key in ("x", "y", "z", "energy"):
            np.testing.assert_allclose(getattr(part, key), getattr(whole, key), rtol=1e-4,
                                       atol=1e-3)
    # a shower's points depend only on its own stream: as the 5th of a run or alone
    alone = model.sample(e[4:5], 11, first_index=4)
    lo, hi = whole.offsets[4], whole.offsets[5]
    np.testing.assert_allclose(alone.x, whole.x[lo:hi], rtol=1e-4, atol=1e-3)
    loaded = load(folder)
    again = loaded.sample(e, 11, batch_size=7)
    np.testing.assert_array_equal(again.offsets, whole.offsets)
    np.testing.assert_array_equal(again.x, whole.x)
    np.testing.assert_array_equal(again.energy, whole.energy)


@pytest.mark.parametrize("name", NAMES)
def test_large_batches_are_sampled_in_groups_of_similar_size(trained, name, monkeypatch):
    """Above SIZE_GROUP showers the clouds are sorted by size and sampled in groups, each
    padded only to its own largest cloud: the same points as one call over the batch."""
    from caloforge.models import pointdiffusion

    model, _ = trained[name]
    e = np.geomspace(2.5e3, 4.5e4, 10)
    whole = model.sample(e, 5, batch_size=10)
    padded_to = []
    real = type(model).sample_points

    def spy(self, mask, context, noise):
        padded_to.append((len(mask), mask.shape[1], int(mask.sum(1).max())))
        return real(self, mask, context, noise)

    monkeypatch.setattr(pointdiffusion, "SIZE_GROUP", 3)
    monkeypatch.setattr(type(model), "sample_points", spy)
    grouped = model.sample(e, 5, batch_size=10)
    assert [rows for rows, _, _ in padded_to] == [3, 3, 3, 1]
    assert all(p == largest for _, p, largest in padded_to)  # each group to its own size
    counts = [largest for _, _, largest in padded_to]
    assert counts == sorted(counts) and counts[-1] == whole.n_points.max()
    np.testing.assert_array_equal(grouped.offsets, whole.offsets)
    for key in ("x", "y", "z", "energy"):
        np.testing.assert_allclose(getattr(grouped, key), getattr(whole, key), rtol=1e-4,
                                   atol=1e-3)


def test_training_reads_the_points_and_fits_per_geometry(trained, point_file):
    from caloforge.data.io import open_showers

    model, _ = trained["caloclouds2"]
    with open_showers(point_file) as f:
        pts = f.read_points()
    # the standardisation is fitted on the data: log E of the points is centred
    assert float(model.feat_mean[3]) == pytest.approx(np.log(pts.energy).mean(), abs=0.3)
    assert int(model.max_points) >= pts.n_points.max()
    assert model.config.conditions == ()  # energy only in this file


def test_showerflow_rounding_keeps_totals():
    torch.manual_seed(0)
    flow = ShowerFlow(n_layers=5, context=1, transforms=2, hidden=(8,), bins=4)
    frac = torch.rand(50, 5) + 1e-3
    n = torch.randint(1, 200, (50,))
    counts = flow.round_counts(frac, n)
    assert torch.equal(counts.sum(1), n) and (counts >= 0).all()
    # decode: layer energies sum to E_vis and vanish in layers without points
    y = torch.randn(50, flow.features)
    s = flow.decode(y, torch.full((50,), 1e4))
    assert torch.equal(s.layer_counts.sum(1), s.n_points)
    torch.testing.assert_close(s.layer_energy.sum(1), s.e_vis)
    assert (s.layer_energy[s.layer_counts == 0] == 0).all()


def test_angle_conditioned_point_model(toy_geo, tmp_path):
    """Theta/phi varying in a native point file are conditions of the point model."""
    rng = np.random.default_rng(8)
    n = 64
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    theta, phi = np.radians(rng.uniform(0, 30, n)), rng.uniform(0, 2 * np.pi, n)
    path = tmp_path / "angled_points.h5"
    with write_showers(path, "caloforge", toy_geo.name) as w:
        w.append(toy_showers(toy_geo, e, rng, theta=theta, phi=phi).to_points())
    model = train("caloclouds2", path, tmp_path / "run", preset="tiny",
                  train_config=_cfg(steps=4), progress=False)
    assert model.config.conditions == ("theta", "phi")
    from caloforge.data import Conditions
    pts = model.sample(Conditions(np.full(3, 1e4), theta=np.radians([5, 10, 20]),
                                  phi=np.zeros(3)), 1)
    assert len(pts) == 3 and (pts.n_points >= 1).all()
