"""``context_age``: the shared layer flow's context holds the energy deposited before and
after each layer, the same in training (all layers at once) and in generation."""

import math

import pytest
import torch

from caloforge.errors import ConfigError
from caloforge.models import build

TINY = {"hidden": [16], "context_embedding": 8, "transforms": 2, "energy_transforms": 2,
        "energy_bins": 4, "energy_hidden": [16]}


@pytest.fixture(scope="module")
def model():
    return build("l2lflows", "ild-ecal", preset="compact",
                 config={**TINY, "context_age": True}).eval()


def _scaled(fraction: float) -> float:
    return (math.log(fraction + 1e-4) + 4.6) / 2.3


def test_age_is_the_energy_fraction_before_and_after_each_layer(model):
    n = len(model.active)
    el = torch.zeros(2, n)
    el[0, :3] = torch.tensor([100.0, 300.0, 600.0])
    el[1, 5] = 2000.0
    e_inc = torch.tensor([2000.0, 4000.0])
    age = model._layer_extras(el, e_inc, None)
    assert age.shape == (2, model.n_mod, 2)
    expect_before = [0.0, 0.05, 0.2] + [0.5] * (model.n_mod - 3)
    expect_after = [0.45, 0.3, 0.0] + [0.0] * (model.n_mod - 3)
    assert torch.allclose(age[0, :, 0], torch.tensor([_scaled(f) for f in expect_before]))
    assert torch.allclose(age[0, :, 1], torch.tensor([_scaled(f) for f in expect_after]))
    # all the energy in layer 5: none before it, half the incident energy after layer 4
    assert age[1, 5, 0] == pytest.approx(_scaled(0.0))
    assert age[1, 4, 1] == pytest.approx(_scaled(0.5))
    assert age[1, 6, 0] == pytest.approx(_scaled(0.5))


def test_age_joins_the_axis_remainder():
    m = build("l2lflows", "ild-ecal", preset="compact",
              config={**TINY, "context_age": True, "conditions": ["theta", "phi"]})
    remainder = torch.rand(3, m.n_mod, 2) - 0.5
    extras = m._layer_extras(torch.rand(3, len(m.active)) * 100, torch.full((3,), 5e3),
                             remainder)
    assert extras.shape == (3, m.n_mod, 4)
    assert torch.equal(extras[..., :2], remainder)


def test_training_and_generation_build_the_same_context(model):
    b, m = 4, model.n_mod
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(b, model.geometry.n_voxels, generator=gen)
    el = torch.rand(b, len(model.active), generator=gen) * 500
    e_inc = torch.full((b,), 20e3)
    e_feat = torch.randn(b, len(model.active), generator=gen)
    c = model.condition_features(e_inc, None)
    extras = model._layer_extras(el, e_inc, None)
    with torch.no_grad():
        every = model._shared_context_all(y, e_feat, c, extras).view(b, m, -1)
        images = {k: y[:, model._slice(k)] for k in model.modelled}
        for i in (0, 3, m - 1):
            one = model._shared_layer_context(i, images, e_feat, c, extras)
            assert torch.allclose(every[:, i], one, atol=1e-5)


@pytest.mark.parametrize("age", [True, False])
def test_a_layer_context_follows_the_other_layers_energies_only_with_age(age):
    m = build("l2lflows", "ild-ecal", preset="compact", config={**TINY, "context_age": age})
    el = torch.full((1, len(m.active)), 300.0)
    e_inc = torch.tensor([20e3])
    e_feat = torch.zeros(1, len(m.active))  # the layer's own energy feature held fixed
    c = m.condition_features(e_inc, None)
    images = {k: torch.zeros(1, m.n_cells) for k in m.modelled}
    ctx = [m._shared_layer_context(10, images, e_feat, c, m._layer_extras(el2, e_inc, None))
           for el2 in (el, el * torch.linspace(0.2, 3.0, el.shape[1]))]
    assert torch.equal(ctx[0], ctx[1]) is not age


def test_context_age_needs_the_shared_flow():
    with pytest.raises(ConfigError, match="context_age"):
        build("l2lflows", "ild-ecal", config={"context_age": True})

