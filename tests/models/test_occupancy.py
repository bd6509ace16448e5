"""Occupancy calibration of the point models: the secant steps, the per-layer hit count
(the evaluation's projection), and a trained model calibrated towards a reference of
known occupancy (its own clouds at a known count scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.data import Conditions, PointCloudBatch
from caloforge.errors import FormatError
from caloforge.models import load
from caloforge.models.occupancy import MIN_SCALE, fit_count_scale, layer_hits, secant_scale
from caloforge.training import TrainConfig, train
from caloforge.training.loop import padded_points


def test_secant_steps_and_limits():
    target = np.array([100.0, 100.0, 100.0, 0.0])
    first = secant_scale(target, np.ones((1, 4)), np.array([[200.0, 50.0, 1e6, 30.0]]))
    # hits taken proportional to points: halve, stay at 1 (never more points), floor, keep
    np.testing.assert_allclose(first, [0.5, 1.0, MIN_SCALE, 1.0])
    # hits ~ points^0.5 seen between two tries: the next step is twice as long in log
    tries = np.array([[1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 1.0, 1.0]])
    hits = np.array([[200.0, 50, 50, 30], [200 * 0.5 ** 0.5, 50, 50, 30]])
    nxt = secant_scale(target, tries, hits)
    assert nxt[0] == pytest.approx(0.25) and nxt[3] == 1.0


def test_layer_hits_counts_cells_above_threshold(toy_geo):
    thr = toy_geo.readout_threshold_mev
    # shower 0: two points in one cell (summed above threshold) and one below threshold;
    # shower 1: one point above threshold in layer 1
    x0, y0 = toy_geo.cell_centres[toy_geo.layer_offsets[0], :2]
    z = toy_geo.layer_z_mm
    pts = PointCloudBatch([0, 3, 4], x=[x0, x0, x0 + 40.0, x0], y=[y0] * 4,
                          z=[z[0], z[0], z[0], z[1]],
                          energy=[0.6 * thr, 0.6 * thr, 0.5 * thr, 2 * thr],
                          conditions=Conditions(np.full(2, 1e4)), geometry=toy_geo.name)
    dense = pts.to_voxels()[0].energies
    assert (dense > thr).sum() == 2  # the evaluation's projection agrees
    expected = np.zeros(toy_geo.n_layers)
    expected[0], expected[1] = 0.5, 0.5
    np.testing.assert_allclose(layer_hits(pts, toy_geo), expected)


def test_fit_converges_on_a_known_response(toy_geo):
    """A synthetic 'model' whose layer-k clouds put n = 30 * scale points uniformly into
    the layer's cells: the fit finds the scale that gives the reference's hit counts."""
    n_l = toy_geo.n_layers
    sizes = [toy_geo.layer_offsets[k + 1] - toy_geo.layer_offsets[k] for k in range(n_l)]
    true_scale = np.linspace(0.3, 0.9, n_l)

    def clouds(scale):
        rng = np.random.default_rng(0)  # the same noise for every call
        xs, ys, zs, es, counts = [], [], [], [], []
        for _ in range(400):
            n_shower = 0
            for k in range(n_l):
                m = int(round(30 * scale[k]))
                cells = rng.integers(0, sizes[k], m)
                centres = toy_geo.cell_centres[toy_geo.layer_offsets[k] + cells]
                x, y = centres[:, 0], centres[:, 1]
                xs.append(x), ys.append(y), zs.append(np.full(m, toy_geo.layer_z_mm[k]))
                es.append(np.full(m, 2 * toy_geo.readout_threshold_mev))
                n_shower += m
            counts.append(n_shower)
        return PointCloudBatch(np.concatenate([[0], np.cumsum(counts)]),
                               *(np.concatenate(v) for v in (xs, ys, zs, es)),
                               conditions=Conditions(np.full(400, 1e4)), geometry=toy_geo.name)

    reference = clouds(true_scale)
    fitted = fit_count_scale(reference, clouds, toy_geo, iterations=4)
    got, want = layer_hits(clouds(fitted), toy_geo), layer_hits(reference, toy_geo)
    np.testing.assert_allclose(got, want, rtol=0.03)
    assert np.abs(fitted - true_scale).max() < 0.05


@pytest.fixture(scope="module")
def cloud_model(write_toy_points, tmp_path_factory):
    root = tmp_path_factory.mktemp("occupancy")
    path = write_toy_points(root / "points.h5", 96, seed=9)
    cfg = TrainConfig(steps=8, batch_size=16, validate_every=0, checkpoint_every=0)
    model = train("caloclouds2", path, root / "run", preset="tiny", train_config=cfg,
                  progress=False)
    return model, root / "run" / "model"


def test_trained_model_is_calibrated_towards_a_known_occupancy(cloud_model, toy_geo):
    model, folder = cloud_model
    assert model.count_scale is not None  # training ends with the calibration
    assert len(model.count_scale) == toy_geo.n_layers
    assert load(folder).count_scale == pytest.approx(model.count_scale)
    e = np.geomspace(3e3, 4e4, 300)
    known = tuple(0.5 for _ in range(toy_geo.n_layers))
    model.count_scale = known
    reference = model.sample(e, 21)
    model.count_scale = None
    raw = model.sample(e, 22)
    x, mask = padded_points(reference)
    e_fit = torch.as_tensor(e, dtype=torch.float32)
    # fewer than the showers handed over, not a multiple of the chunk: the first 290
    model.config.occupancy_showers = 290
    model.finalize(x, e_fit, torch.Generator().manual_seed(0), mask=mask)
    model.count_scale = None
    model.config.occupancy_showers = len(reference)
    model.finalize(x, e_fit, torch.Generator().manual_seed(0), mask=mask)
    calibrated = model.sample(e, 22)
    want = layer_hits(reference, toy_geo).sum()
    assert abs(layer_hits(raw, toy_geo).sum() / want - 1) > 0.15  # there was a gap
    # within sampling noise of 300 showers (seen: 4 % at most over training seeds)
    assert layer_hits(calibrated, toy_geo).sum() == pytest.approx(want, rel=0.1)
    assert 0.35 < np.median(model.count_scale) < 0.65  # the reference's 0.5
    # fewer points, the same visible energy (a layer keeps at least one point)
    assert calibrated.n_points.sum() < raw.n_points.sum()
    np.testing.assert_allclose(np.bincount(calibrated.shower_index, calibrated.energy),
                               np.bincount(raw.shower_index, raw.energy), rtol=1e-4)


def test_a_bad_occupancy_table_is_one_error(cloud_model, tmp_path):
    import shutil

    import yaml

    _, folder = cloud_model
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    meta = yaml.safe_load((bad / "model.yaml").read_text())
    meta["occupancy_scale"] = [1.5] * 3
    (bad / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(FormatError, match="occupancy_scale"):
        load(bad)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_occupancy_config_is_checked(value):
    from caloforge.errors import ConfigError
    from caloforge.models.pointdiffusion import PointModelConfig

    for key in ("occupancy_showers", "occupancy_iterations"):
        with pytest.raises(ConfigError, match=key):
            PointModelConfig(**{key: value}).validate()
    PointModelConfig(occupancy_showers=0).validate()  # 0: no calibration


def test_no_calibration_when_occupancy_showers_is_zero(write_toy_points, tmp_path):
    path = write_toy_points(tmp_path / "points.h5", 48, seed=2)
    cfg = TrainConfig(steps=4, batch_size=16, validate_every=0, checkpoint_every=0)
    model = train("caloclouds2", path, tmp_path / "run", model_config={"occupancy_showers": 0},
                  preset="tiny", train_config=cfg, progress=False)
    assert model.count_scale is None
    assert load(tmp_path / "run" / "model").count_scale is None
