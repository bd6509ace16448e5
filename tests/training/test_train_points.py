"""The shared training loop on point clouds: padded points and masks in TrainBatch,
streamed point files, validation on projected clouds, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caloforge.data.io import open_showers
from caloforge.training import TrainConfig, train
from caloforge.training.dataset import MemorySource, ShowerStream, concat_points, take_points
from caloforge.training.loop import padded_points


@pytest.fixture(scope="module")
def cloud_file(write_toy_points, tmp_path_factory):
    return write_toy_points(tmp_path_factory.mktemp("clouds") / "clouds.h5", 80, seed=12)


def _cfg(**kw):
    base = dict(steps=6, batch_size=8, validate_every=0, checkpoint_every=3,
                chunk_showers=16, shuffle_buffer_mb=0.01)
    base.update(kw)
    return TrainConfig(**base)


def test_point_batches_hold_padded_clouds_of_the_epoch_order(cloud_file, tmp_path,
                                                             monkeypatch):
    from caloforge.models.caloclouds2 import CaloClouds2
    seen = []
    real = CaloClouds2.training_step

    def spy(self, batch, phase, ctx):
        seen.append(batch)
        return real(self, batch, phase, ctx)

    monkeypatch.setattr(CaloClouds2, "training_step", spy)
    train("caloclouds2", cloud_file, tmp_path / "run", preset="tiny",
          train_config=_cfg(validate_every=3, validation_showers=8), progress=False)
    with open_showers(cloud_file) as f:
        every = f.read_points()
    stream = ShowerStream(MemorySource(every), seed=0, holdout=8, chunk_showers=16,
                          buffer_showers=max(1, int(0.01 * 2**20) // (4 * 216)), points=True)
    first = stream.rows(0, 0, 8)
    b = seen[0]
    assert b.x.shape == (8, 0) and b.points.shape == (8, int(first.n_points.max()), 4)
    assert torch.equal(b.mask.sum(1), torch.as_tensor(first.n_points))
    np.testing.assert_allclose(b.points[b.mask][:, 3].numpy(), first.energy, rtol=1e-6)
    np.testing.assert_allclose(b.e_inc.numpy(), first.conditions.incident_energy, rtol=1e-6)
    assert (b.points[~b.mask] == 0).all()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("gen_n_points_mean" in r and "real_n_points_mean" in r for r in records)


def test_point_training_resumes_exactly(cloud_file, tmp_path):
    straight = train("caloclouds2", cloud_file, tmp_path / "a", preset="tiny",
                     train_config=_cfg(), progress=False)
    train("caloclouds2", cloud_file, tmp_path / "b", preset="tiny",
          train_config=_cfg(stop_after=3), progress=False)
    resumed = train("caloclouds2", cloud_file, tmp_path / "b", resume=True, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_point_models_train_from_voxel_files_and_memory(toy_data, toy_file, tmp_path):
    """A voxel file gives one point per hit cell; clouds in memory train as well."""
    model = train("caloclouds", toy_file, tmp_path / "v", preset="tiny",
                  train_config=_cfg(steps=2), progress=False)
    assert model.representation == "points"
    model = train("caloclouds", toy_data.to_points(), tmp_path / "m", preset="tiny",
                  train_config=_cfg(steps=2), progress=False)
    assert len(model.sample(np.array([5e3]), 0)) == 1


def test_take_and_concat_points_keep_each_cloud(toy_data):
    pts = toy_data[:6].to_points()
    rows = np.array([4, 0, 4, 2])
    taken = take_points(pts, rows)
    np.testing.assert_array_equal(taken.n_points, pts.n_points[rows])
    for j, r in enumerate(rows):
        np.testing.assert_array_equal(taken.energy[taken.offsets[j]:taken.offsets[j + 1]],
                                      pts.energy[pts.offsets[r]:pts.offsets[r + 1]])
    both = concat_points([pts[0:2], pts[2:6]])
    np.testing.assert_array_equal(both.x, pts.x)
    np.testing.assert_array_equal(both.layer, pts.layer)
    points, mask = padded_points(pts)
    assert torch.equal(mask.sum(1), torch.as_tensor(pts.n_points))
    np.testing.assert_array_equal(points[mask][:, 0].numpy(), pts.x.astype(np.float32))


def test_empty_clouds_are_one_clear_error(toy_data, tmp_path):
    from caloforge.data import PointCloudBatch
    from caloforge.errors import InputError

    pts = toy_data[:40].to_points()
    keep = pts.shower_index != 3  # shower 3 loses all its points
    counts = np.bincount(pts.shower_index[keep], minlength=len(pts))
    empty = PointCloudBatch(np.concatenate([[0], np.cumsum(counts)]), pts.x[keep],
                            pts.y[keep], pts.z[keep], pts.energy[keep], pts.conditions,
                            geometry=pts.geometry)
    with pytest.raises(InputError, match="1 training showers have no point with energy"):
        train("caloclouds2", empty, tmp_path / "run", preset="tiny",
              train_config=_cfg(steps=2, finalize_showers=100), progress=False)
