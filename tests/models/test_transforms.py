import numpy as np
import pytest
import torch

from caloforge.geometry import get_geometry
from caloforge.models.transforms import (
    Compose,
    EnergyCondition,
    LogTransform,
    PerLayerScale,
    ScaleByIncident,
    Standardize,
)


def _data(n=64, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g) * (torch.rand(n, d, generator=g) < 0.5)
    e = 1e3 + 1e5 * torch.rand(n, generator=g)
    return x * e[:, None] * 1e-3, e


@pytest.mark.parametrize("make", [
    ScaleByIncident, lambda: LogTransform(1e-4), lambda: Standardize(12), Standardize,
    lambda: PerLayerScale(np.repeat(np.arange(3), 4), 3),
    lambda: Compose(ScaleByIncident(), LogTransform(1e-5), Standardize(12)),
])
def test_invertible_after_fit(make):
    x, e = _data()
    t = make()
    t.fit(x, e)
    y = t(x, e)
    assert torch.isfinite(y).all()
    back = t.inverse(y, e)
    assert torch.allclose(back, x, rtol=1e-4, atol=1e-5 * float(x.max()))


def test_fitted_constants_travel_in_state_dict():
    x, e = _data()
    t = Compose(ScaleByIncident(), Standardize(12))
    t.fit(x, e)
    fresh = Compose(ScaleByIncident(), Standardize(12))
    fresh.load_state_dict(t.state_dict())
    assert torch.equal(fresh(x, e), t(x, e))
    assert float(t.steps[0].fraction) == pytest.approx(
        float((x.sum(1).double() / e.double()).mean()), rel=1e-6)


def test_per_layer_scale_on_real_geometry():
    geo = get_geometry("calogan")
    x = torch.rand(8, geo.n_voxels)
    t = PerLayerScale(geo.layer_of_voxel, geo.n_layers)
    t.fit(x, torch.ones(8))
    assert t.scale.shape == (3,)
    assert torch.allclose(t.inverse(t(x, None), None), x)


def test_energy_condition_range():
    ec = EnergyCondition()
    ec.fit(torch.tensor([1e4, 5e4, 1e5]))
    c = ec(torch.tensor([1e4, 1e5]))
    assert torch.allclose(c[:, 0], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(ec.inverse(c), torch.tensor([1e4, 1e5]), rtol=1e-5)
    assert ec.range_mev == pytest.approx((1e4, 1e5))
