"""Angle-conditioned voxel models: wgan, bibae and l2lflows take theta and phi as inputs
when the training showers vary in them (declared from the data), generate at requested
angles and refuse angles outside the trained range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caloforge.data import Conditions
from caloforge.data.io import read_showers
from caloforge.errors import ConfigError, InputError
from caloforge.models import StepContext, TrainBatch, build, get_model_class, load

MODELS = ["wgan", "bibae", "l2lflows"]
THETA_MAX = 30.0  # degrees


def _fit(name, data, steps=8):
    """A few training steps as the training loop runs them, with the angles."""
    conditions = get_model_class(name).conditions_from_data(data.conditions)
    model = build(name, data.geometry, preset="tiny", config={"conditions": list(conditions)})
    model.fit_conditions(data.conditions)
    x = torch.as_tensor(data.energies)
    e = torch.as_tensor(data.incident_energy, dtype=torch.float32)
    angles = model.angle_tensor(data.conditions, len(data))
    model.fit_preprocessing(x, e)
    gen = torch.Generator().manual_seed(0)
    ctx = StepContext(model.configure_optimizers(), gen, torch.device("cpu"))
    bounds = np.cumsum([f for _, f in model.phases()]) * steps
    for step in range(steps):
        phase = model.phases()[int(np.searchsorted(bounds, step, side="right"))][0]
        idx = torch.randint(0, len(x), (16,), generator=gen)
        ctx.step_index = step
        model.training_step(TrainBatch(x[idx], e[idx], angles[idx]), phase, ctx)
    model.finalize(x, e, gen, angles)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_generates_at_requested_angles(name, angled_file, tmp_path):
    data = read_showers(angled_file)
    model = _fit(name, data)
    assert model.config.conditions == ("theta", "phi")  # declared from the data
    lo, hi = model.condition_space.ranges["theta"]
    assert 0 <= lo < math.radians(2) and math.radians(28) < hi <= math.radians(THETA_MAX)
    model.config = model.config.replace(threshold_output=False)  # raw output: 8 steps only
    e = np.full(20, 2e4)
    at = {t: model.sample(Conditions(e, theta=np.full(20, math.radians(t)),
                                     phi=np.full(20, 1.0)), 5).energies for t in (0, 25)}
    for x in at.values():
        assert x.shape == (20, data.n_voxels) and np.isfinite(x).all() and (x >= 0).all()
    assert not np.allclose(at[0], at[25])  # the angle reaches the networks
    # phi is irrelevant at normal incidence: the direction input is sin(theta) (cos, sin)
    zero = model.sample(Conditions(e, theta=np.zeros(20), phi=np.full(20, 2.5)), 5).energies
    np.testing.assert_allclose(zero, at[0], rtol=1e-5, atol=1e-6)
    # a direction left out is normal incidence, and the output says so
    unsaid = model.sample(Conditions(e), 5)
    np.testing.assert_allclose(unsaid.energies, at[0], rtol=1e-5, atol=1e-6)
    assert (unsaid.conditions.theta == 0).all() and (unsaid.conditions.phi == 0).all()
    with pytest.raises(InputError, match=r"theta values lie outside the trained range"):
        model.sample(Conditions(e[:1], theta=np.radians([60.0]), phi=[0.0]), 5)
    # the folder keeps the declared conditions and ranges
    model.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.condition_space == model.condition_space
    loaded.config = loaded.config.replace(threshold_output=False)
    again = loaded.sample(Conditions(e, theta=np.full(20, math.radians(25)),
                                     phi=np.full(20, 1.0)), 5).energies
    np.testing.assert_allclose(again, at[25], rtol=1e-5, atol=1e-6)


def test_varying_angles_need_a_model_that_takes_them(angled_file, toy_geo):
    data = read_showers(angled_file)
    energy_only = build("l2lflows", toy_geo.name, preset="tiny")
    with pytest.raises(ConfigError, match="vary in theta"):
        energy_only.fit_conditions(data.conditions)
    with pytest.raises(ConfigError, match="cannot be conditioned on impact"):
        build("wgan", toy_geo.name, preset="tiny", config={"conditions": ["impact"]})
