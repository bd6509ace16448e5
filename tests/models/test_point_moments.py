"""Per-shower maps of each layer's centre and width for point clouds (``moment_knots``):
the layer's points move (shift and scale in the frame of the direction) onto the mapped
centre and width; energies and counts stay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_layer_moments import K, set_maps  # same folder: on sys.path under pytest

from caloforge.models import load
from caloforge.models.point_moments import PointMoments
from caloforge.models.pointdiffusion import PointModelConfig
from caloforge.models.toy import toy_geometry
from caloforge.training import TrainConfig, train

GEO = toy_geometry()
Z = np.asarray(GEO.layer_z_mm)


def _clouds(rng: np.random.Generator, n: int, width: tuple[float, float], offset: float,
            angles: torch.Tensor, depth: np.ndarray = Z, points: int = 8,
            common: float = 0.0):
    """``points`` points per layer, Gaussian around a centre off the axis through the
    layers at ``depth`` (sd ``offset``; a share ``common`` of its variance the same in
    every layer), of random width (mean, sd; mm); with padding."""
    n_l = GEO.n_layers
    a = angles.double().numpy()
    along = np.tan(a[:, 0])[:, None] * depth[None]
    centre = np.stack([along * np.cos(a[:, 1])[:, None], along * np.sin(a[:, 1])[:, None]], 2)
    centre = centre + np.sqrt(1 - common) * rng.normal(0, offset, (n, n_l, 2))
    centre = centre + np.sqrt(common) * rng.normal(0, offset, (n, 1, 2))
    w = np.clip(rng.normal(*width, (n, n_l)), 1.0, None)
    xy = centre[:, :, None] + w[:, :, None, None] * rng.normal(size=(n, n_l, points, 2))
    e = rng.exponential(1.0, (n, n_l, points))
    layer = np.broadcast_to(np.arange(n_l)[None, :, None], (n, n_l, points))
    pad = 5  # padding slots: no energy, any position
    xy = np.concatenate([xy.reshape(n, -1, 2), rng.normal(0, 50, (n, pad, 2))], 1)
    e = np.concatenate([e.reshape(n, -1), np.zeros((n, pad))], 1)
    layer = np.concatenate([layer.reshape(n, -1), np.full((n, pad), n_l - 1)], 1)
    return (torch.as_tensor(xy, dtype=torch.float32), torch.as_tensor(layer),
            torch.as_tensor(e, dtype=torch.float32))


def centre_correlation(module: PointMoments, clouds: tuple, angles: torch.Tensor) -> float:
    """Mean correlation of the centres (v) of neighbouring layers over the clouds."""
    c = module.layer_moments(clouds, angles)[0][..., 1].numpy()
    return float(np.mean([np.corrcoef(c[:, k], c[:, k + 1])[0, 1]
                          for k in range(GEO.n_layers - 1)]))


def _angles(rng: np.random.Generator, n: int) -> torch.Tensor:
    return torch.as_tensor(np.c_[np.radians(rng.uniform(0, 30, n)), rng.uniform(0, 6.28, n)],
                           dtype=torch.float32)


def test_points_move_onto_the_mapped_centre_and_width():
    rng = np.random.default_rng(0)
    angles = _angles(rng, 30)
    xy, layer, e = _clouds(rng, 30, (6.0, 1.0), 2.0, angles)
    module = PointMoments(GEO, 1, 1, K)
    set_maps(module, 2.5, 0.8, width=3)
    before, ok, _ = module.layer_moments((xy, layer, e), angles)
    moved = module(xy, layer, e, torch.full((30,), 2e4), angles)
    after = module.layer_moments((moved, layer, e), angles)[0]
    want = before.clone()
    want[..., 0] += 2.5
    want[..., 3] *= 0.8
    assert ok.all()
    torch.testing.assert_close(after, want, atol=1e-3, rtol=1e-4)
    # the same traced (the exporters' path) and row by row
    traced = torch.jit.trace(module, (xy, layer, e, torch.full((30,), 2e4), angles),
                             check_trace=False)
    torch.testing.assert_close(traced(xy, layer, e, torch.full((30,), 2e4), angles), moved)
    for i in (0, 17):
        assert torch.equal(module(xy[i:i + 1], layer[i:i + 1], e[i:i + 1],
                                  torch.full((1,), 2e4), angles[i:i + 1])[0], moved[i])


def test_the_fit_finds_the_axis_depth_and_brings_the_moments_onto_the_reference():
    rng = np.random.default_rng(1)
    n = 4000
    angles = _angles(rng, n)
    e_inc = torch.as_tensor(np.exp(rng.uniform(np.log(2e3), np.log(5e4), n)),
                            dtype=torch.float32)
    true_depth = Z * 0.6 + 5.0  # where the showers' centres really follow the direction
    ref = _clouds(rng, n, (6.0, 0.7), 1.0, angles, true_depth)
    gen = _clouds(rng, n, (8.0, 2.0), 3.0, angles, true_depth)
    module = PointMoments(GEO, 2, 2, 17)
    module.fit([(ref, e_inc, angles)], [(gen, e_inc, angles)])
    np.testing.assert_allclose(module.depth.numpy(), true_depth, atol=0.5)
    fresh_ref = _clouds(rng, n, (6.0, 0.7), 1.0, angles, true_depth)
    fresh_gen = _clouds(rng, n, (8.0, 2.0), 3.0, angles, true_depth)
    want = module.layer_moments(fresh_ref, angles)[0]
    before = module.layer_moments(fresh_gen, angles)[0]
    moved = module(*fresh_gen, e_inc, angles)
    got = module.layer_moments((moved, *fresh_gen[1:]), angles)[0]
    for q in range(4):
        err_before = abs(before[..., q].std() - want[..., q].std())
        assert abs(got[..., q].std() - want[..., q].std()) < 0.1 * err_before, q
    assert abs(got[..., 2].mean() - want[..., 2].mean()) < 0.1


@pytest.mark.parametrize("key,bad", [("moment_knots", 1), ("moment_knots", -1),
                                     ("moment_theta_bins", 0), ("moment_layer_bins", 0),
                                     ("moment_showers", -5)])
def test_bad_moment_options_are_refused(key, bad):
    from caloforge.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        PointModelConfig(**{key: bad}).validate()


def test_a_trained_point_model_fits_the_maps_and_keeps_them(write_toy_points, tmp_path):
    path = write_toy_points(tmp_path / "points.h5", 96, seed=4)
    cfg = TrainConfig(steps=6, batch_size=16, validate_every=0, checkpoint_every=0)
    model = train("caloclouds2", path, tmp_path / "run", preset="tiny", train_config=cfg,
                  model_config={"moment_knots": 9, "moment_energy_bins": 1,
                                "occupancy_showers": 0, "moment_copula": True},
                  progress=False)
    assert model.moments.is_fitted
    assert not torch.equal(model.moments.q_gen, model.moments.q_ref)
    e = np.geomspace(3e3, 4e4, 9)
    mapped = model.sample(e, 3)
    again = load(tmp_path / "run" / "model")
    assert again.moments.is_fitted
    torch.testing.assert_close(again.moments.mixing.matrix, model.moments.mixing.matrix,
                               rtol=0, atol=0)
    np.testing.assert_array_equal(again.sample(e, 3).x, mapped.x)
    np.testing.assert_allclose(model.sample(e, 3, batch_size=4).x, mapped.x, rtol=1e-5,
                               atol=1e-4)
    model.moments.is_fitted = False
    plain = model.sample(e, 3)
    # the same points and energies, other positions
    np.testing.assert_array_equal(plain.energy, mapped.energy)
    np.testing.assert_array_equal(plain.z, mapped.z)
    assert not np.allclose(plain.x, mapped.x)


def _energy_width_clouds(rng: np.random.Generator, n: int, follow: bool):
    """Clouds at normal incidence whose layers carry a random energy scale; the width
    follows it (``follow``) or is drawn independently with the same spread."""
    n_l, points = GEO.n_layers, 10
    log_s = rng.normal(0, 1, (n, n_l))
    width = 6 + 2 * np.tanh(log_s if follow else rng.normal(0, 1, (n, n_l)))
    xy = width[:, :, None, None] * rng.normal(size=(n, n_l, points, 2))
    e = np.exp(log_s)[:, :, None] * rng.uniform(0.5, 1.5, (n, n_l, points))
    layer = np.broadcast_to(np.arange(n_l)[None, :, None], (n, n_l, points))
    return (torch.as_tensor(xy.reshape(n, -1, 2), dtype=torch.float32),
            torch.as_tensor(layer.reshape(n, -1)),
            torch.as_tensor(e.reshape(n, -1), dtype=torch.float32))


@pytest.mark.parametrize("seed", [0, 1])
def test_layer_energy_bins_give_the_width_its_dependence_on_the_layer_energy(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    e_inc, angles = torch.full((n,), 2e4), torch.zeros(n, 2)
    ref, gen = _energy_width_clouds(rng, n, True), _energy_width_clouds(rng, n, False)
    fresh = _energy_width_clouds(rng, n, False)

    def correlation(clouds) -> float:  # width u with log layer energy, pooled
        mom, _, energy = module.layer_moments(clouds, angles)
        return float(np.corrcoef(mom[..., 2].flatten().numpy(),
                                 np.log(energy.flatten().numpy()))[0, 1])

    got = {}
    for bins in (1, 3):
        module = PointMoments(GEO, 1, 1, 17, n_layer_bins=bins)
        module.fit([(ref, e_inc, angles)], [(gen, e_inc, angles)])
        got[bins] = correlation((module(*fresh, e_inc, angles), *fresh[1:]))
    want = correlation(ref)
    assert want > 0.5 and abs(got[1]) < 0.15, (want, got)
    assert got[3] > 0.6 * want, (want, got)


def test_the_maps_measure_from_the_trained_impact_point_after_reloading(write_toy_points,
                                                                        tmp_path):
    """A model trained at a fixed impact point off the origin measures its layers from
    that point's axis also when loaded again (not from the origin)."""
    path = write_toy_points(tmp_path / "points.h5", 96, seed=6)
    cfg = TrainConfig(steps=4, batch_size=16, validate_every=0, checkpoint_every=0)
    model = train("caloclouds2", path, tmp_path / "run", preset="tiny", train_config=cfg,
                  model_config={"moment_knots": 9, "moment_theta_bins": 1,
                                "moment_energy_bins": 1, "occupancy_showers": 0},
                  progress=False)
    set_maps(model.moments, 0.0, 1.0)
    model.moments.q_ref[..., 0, :] *= 0.5  # centres pulled halfway to the axis
    e = np.geomspace(3e3, 4e4, 6)
    at_origin = model.sample(e, 2).x
    model.condition_space.fixed["impact"] = [12.0, -7.0]
    moved = model.sample(e, 2).x
    assert not np.allclose(moved, at_origin)  # the axis starts at the impact point
    model.save(tmp_path / "moved")
    again = load(tmp_path / "moved")
    np.testing.assert_array_equal(again.sample(e, 2).x, moved)


@pytest.mark.parametrize("seed", [0, 1])
def test_with_the_copula_the_layers_centres_wander_together_as_in_training(seed):
    """``moment_copula``: the moved centres get the training clouds' correlation between
    layers (the plain maps keep the generator's), traced and row by row alike."""
    rng = np.random.default_rng(seed)
    n = 3000
    angles = _angles(rng, n)
    e_inc = torch.full((n,), 2e4)
    ref = _clouds(rng, n, (6.0, 1.0), 8.0, angles, common=0.8)
    gen = _clouds(rng, n, (6.0, 1.0), 8.0, angles)
    module = PointMoments(GEO, 1, 1, 17, copula=True)
    module.fit([(ref, e_inc, angles)], [(gen, e_inc, angles)])

    def correlation(clouds: tuple) -> float:
        return centre_correlation(module, clouds, angles)

    fresh_gen = _clouds(rng, n, (6.0, 1.0), 8.0, angles)
    moved = module(*fresh_gen, e_inc, angles)
    want = correlation(_clouds(rng, n, (6.0, 1.0), 8.0, angles, common=0.8))
    assert want > 0.6 and abs(correlation(fresh_gen)) < 0.1
    assert abs(correlation((moved, *fresh_gen[1:])) - want) < 0.1
    few = tuple(t[:20] for t in fresh_gen)
    traced = torch.jit.trace(module, (*few, e_inc[:20], angles[:20]), check_trace=False)
    torch.testing.assert_close(traced(*few, e_inc[:20], angles[:20]), moved[:20])
    for i in (0, 13):
        assert torch.equal(module(*(t[i:i + 1] for t in few), e_inc[:1],
                                  angles[i:i + 1])[0], moved[i])
