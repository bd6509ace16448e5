"""The moment flow (``moment_flow_steps``): the layers' centres and widths drawn by a
conditional flow fitted on the training clouds, read back through the maps' training
quantiles, instead of the copula's linear move of the generated ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_point_moments import (  # same folder: on sys.path under pytest
    GEO,
    _angles,
    _clouds,
    centre_correlation,
)

from caloforge.errors import ConfigError, InputError
from caloforge.models import load
from caloforge.models.moment_flow import MomentFlow
from caloforge.models.point_moments import PointMoments
from caloforge.models.pointdiffusion import PointModelConfig
from caloforge.training import TrainConfig, train


@pytest.mark.parametrize("seed", [0, 1])
def test_the_flow_draws_centres_that_wander_together_as_in_training(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    angles = _angles(rng, n)
    e_inc = torch.full((n,), 2e4)
    ref = _clouds(rng, n, (6.0, 1.0), 8.0, angles, common=0.8)
    gen = _clouds(rng, n, (6.0, 1.0), 8.0, angles)
    module = PointMoments(GEO, 1, 1, 17, flow_steps=800, flow_transforms=4, flow_hidden=32)
    module.flow_seed = seed
    module.fit([(ref, e_inc, angles)], [(gen, e_inc, angles)])
    fresh = _clouds(rng, n, (6.0, 1.0), 8.0, angles)
    normals = torch.randn(n, module.flow.features, generator=torch.Generator().manual_seed(9))
    moved = module(*fresh, e_inc, angles, normals)
    want = centre_correlation(module, _clouds(rng, n, (6.0, 1.0), 8.0, angles, common=0.8), angles)
    assert want > 0.6 and abs(centre_correlation(module, fresh, angles)) < 0.1
    assert abs(centre_correlation(module, (moved, *fresh[1:]), angles) - want) < 0.1
    # a temperature below 1 draws nearer the mode: the layers' centres spread less
    module.flow_temperature = 0.5
    cooler = module(*fresh, e_inc, angles, normals)
    module.flow_temperature = 1.0

    def spread(xy: torch.Tensor) -> float:
        return float(module.layer_moments((xy, *fresh[1:]), angles)[0][..., 1].std(0).mean())

    assert spread(cooler) < 0.8 * spread(moved)
    # without the flow's draw the plain maps act (they keep the generator's ranks)
    plain = module(*fresh, e_inc, angles)
    assert abs(centre_correlation(module, (plain, *fresh[1:]), angles)) < 0.1
    few = tuple(t[:20] for t in fresh)
    traced = torch.jit.trace(module, (*few, e_inc[:20], angles[:20], normals[:20]),
                             check_trace=False)
    torch.testing.assert_close(traced(*few, e_inc[:20], angles[:20], normals[:20]),
                               moved[:20])
    for i in (0, 13):
        torch.testing.assert_close(module(*(t[i:i + 1] for t in few), e_inc[:1],
                                          angles[i:i + 1], normals[i:i + 1])[0], moved[i])


def test_the_flow_fit_is_seeded_and_needs_showers():
    rng = np.random.default_rng(3)
    n, n_l = 400, 4
    scores = torch.as_tensor(rng.normal(size=(n, n_l, 4)), dtype=torch.float32)
    ok = torch.ones(n, n_l, dtype=torch.bool)
    e = torch.as_tensor(rng.uniform(1e4, 1e5, n), dtype=torch.float32)
    theta = torch.as_tensor(rng.uniform(0, 0.6, n), dtype=torch.float32)
    layer_e = e[:, None] * torch.full((n, n_l), 0.2)

    def fitted(seed: int) -> MomentFlow:
        flow = MomentFlow(n_l, 1, 1, transforms=2, hidden=8)
        record = flow.fit(scores, ok, e, theta, layer_e, 40, seed=seed, show_progress=False)
        assert np.isfinite(record["held_out_nll"])
        return flow

    a, b, c = fitted(0), fitted(0), fitted(1)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)
    assert any(not torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items()
               if k.startswith("flow.nets"))
    with pytest.raises(InputError, match="at least"):
        MomentFlow(n_l, 1, 1).fit(scores[:10], ok[:10], e[:10], theta[:10], layer_e[:10], 5)


@pytest.mark.parametrize("settings", [{"moment_flow_steps": 5},
                                      {"moment_flow_steps": -1, "moment_knots": 9},
                                      {"moment_flow_steps": 5, "moment_knots": 9,
                                       "moment_layer_bins": 2},
                                      {"moment_flow_hidden": 0},
                                      {"moment_flow_temperature": 0.0},
                                      {"moment_flow_temperature": 3.0}])
def test_bad_moment_flow_settings_are_refused(settings):
    with pytest.raises(ConfigError, match="moment_"):
        PointModelConfig(**settings).validate()


def test_a_trained_point_model_with_the_flow_keeps_it_and_stays_batch_independent(
        write_toy_points, tmp_path):
    path = write_toy_points(tmp_path / "points.h5", 96, seed=4)
    cfg = TrainConfig(steps=4, batch_size=16, validate_every=0, checkpoint_every=0)
    model = train("caloclouds2", path, tmp_path / "run", preset="tiny", train_config=cfg,
                  model_config={"moment_knots": 9, "moment_energy_bins": 1,
                                "moment_theta_bins": 1, "occupancy_showers": 0,
                                "moment_flow_steps": 20, "moment_flow_transforms": 2,
                                "moment_flow_hidden": 8},
                  progress=False)
    assert model.moments.flow is not None and model.moments.is_fitted
    e = np.geomspace(3e3, 4e4, 9)
    drawn = model.sample(e, 3)
    again = load(tmp_path / "run" / "model")
    np.testing.assert_array_equal(again.sample(e, 3).x, drawn.x)
    np.testing.assert_allclose(model.sample(e, 3, batch_size=4).x, drawn.x, rtol=1e-5,
                               atol=1e-4)
    assert not np.allclose(model.sample(e, 4).x[:50], drawn.x[:50])
