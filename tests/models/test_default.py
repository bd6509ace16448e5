"""The shipped default model: it loads from the package, is small, and generates sensible
ILD ECAL photon showers that follow the requested incident energy."""

import numpy as np
import pytest

from caloforge import zoo
from caloforge.models import list_zoo, load
from caloforge.models.base import WEIGHTS_FILE

DEFAULT = "ild-ecal-photons"


def test_default_is_shipped_and_small():
    assert DEFAULT in list_zoo()
    folder = zoo.path(DEFAULT)
    assert (folder / "MODEL_CARD.md").is_file()
    assert (folder / WEIGHTS_FILE).stat().st_size < 20 * 2**20


@pytest.fixture(scope="module")
def default_model():
    return load(DEFAULT)


def test_default_generates_conditioned_showers(default_model):
    model = default_model
    assert model.geometry.name == "ild-ecal" and model.geometry.n_voxels == 27000
    lo, hi = model.energy_range_mev
    assert lo <= 10.5e3 and hi >= 99.5e3
    n = 60
    low = model.sample(np.full(n, 20e3), 1).energies
    high = model.sample(np.full(n, 90e3), 2).energies
    for x in (low, high):
        assert x.shape == (n, 27000)
        assert np.isfinite(x).all() and (x >= 0).all()
    thr = model.geometry.readout_threshold_mev
    assert ((low > 0) & (low < thr)).sum() == 0  # read-out showers: nothing below threshold
    # Visible energy scales with the incident energy (sampling fraction about 2.4 %), so
    # a model that ignored its condition would fail the ratio test.
    r_low, r_high = low.sum(1) / 20e3, high.sum(1) / 90e3
    assert 0.018 < np.median(r_low) < 0.03 and 0.018 < np.median(r_high) < 0.03
    assert 3.8 < high.sum(1).mean() / low.sum(1).mean() < 5.2
    # More hits at higher energy, in the range of the reference (~250-900 hits).
    h_low, h_high = (low >= thr).sum(1).mean(), (high >= thr).sum(1).mean()
    assert 150 < h_low < h_high < 1200


def test_default_is_reproducible(default_model):
    a = default_model.sample(np.array([30e3, 70e3]), 5).energies
    b = default_model.sample(np.array([30e3, 70e3]), 5).energies
    assert np.array_equal(a, b)


def test_default_is_independent_of_batch_size(default_model):
    """Shower i depends only on (seed, i); other batch sizes change the last float bits
    of batched matrix products only (see tests/models/test_models.assert_same_showers),
    which may flip a cell sitting exactly on a cut: allow 1 in 100 000 cells to differ."""
    e = np.linspace(10e3, 100e3, 30)
    ref = default_model.sample(e, 3, batch_size=30).energies
    for bs in (1, 7):
        x = default_model.sample(e, 3, batch_size=bs).energies
        close = np.isclose(x, ref, rtol=1e-4, atol=1e-4)
        assert (~close).mean() <= 1e-5
        np.testing.assert_allclose(x.sum(1), ref.sum(1), rtol=1e-4)


def _layer_centroids_mm(showers, geometry):
    """Mean energy-weighted (x, y) of each layer, (layers, 2)."""
    xy = np.asarray(geometry.cell_centres)[:900, :2]
    x = showers.reshape(len(showers), geometry.n_layers, 900)
    w = x.sum((0, 2))
    return np.einsum("blc,cd->ld", x, xy) / np.maximum(w, 1e-9)[:, None]


def test_default_follows_the_requested_direction(default_model):
    """Trained on theta 0-40 deg and any phi: at theta = 30 deg the showers lean along phi
    (the centre of the deep layers moves away from the impact point by about
    depth tan(theta)); beyond the trained theta it refuses."""
    from caloforge.data import Conditions
    from caloforge.errors import InputError

    n, geo = 40, default_model.geometry
    e = np.full(n, 50e3)
    for phi, axis in ((0.0, 0), (np.pi / 2, 1)):
        c = Conditions(e, theta=np.full(n, np.radians(30.0)), phi=np.full(n, phi))
        cog = _layer_centroids_mm(default_model.sample(c, 1).energies, geo)
        lean = cog[20] - cog[5]  # layers about 40 mm apart in depth: ~23 mm at 30 deg
        assert 12 < lean[axis] < 35 and abs(lean[1 - axis]) < 4, (phi, lean)
    flat = _layer_centroids_mm(default_model.sample(Conditions(e), 1).energies, geo)
    assert np.abs(flat[5:21]).max() < 4  # normal incidence when no direction is given
    with pytest.raises(InputError, match=r"theta values lie outside the trained range"):
        default_model.sample(Conditions(e[:2], theta=np.radians([0.0, 60.0])), 1)
    e = e[:2]
    # At normal incidence the azimuth does not change the direction: any phi is fine.
    a = default_model.sample(Conditions(e, theta=np.zeros(2), phi=np.array([0.3, 2.0])), 1)
    b = default_model.sample(Conditions(e), 1)
    np.testing.assert_array_equal(a.energies, b.energies)
    with pytest.raises(InputError, match="not trained on impact"):
        default_model.sample(Conditions(e, impact=np.array([[5.0, 0.0], [0.0, 0.0]])), 1)
    with pytest.raises(InputError, match=r"incident_energy .*10 GeV to 99.99 GeV"):
        default_model.sample(Conditions(np.array([150e3])), 1)


def test_generated_showers_state_the_fixed_conditions(default_model):
    """A request without a direction is generated at normal incidence, and the output says
    so, with the fixed impact point, so evaluation compares like with like (and never
    guesses)."""
    out = default_model.sample(np.array([20e3, 50e3]), seed=1)
    c = out.conditions
    assert c.theta is not None and np.all(c.theta == 0.0)
    assert c.impact is not None and np.all(c.impact == 0.0)
    # conditions the caller gave are kept as given
    given = default_model.sample(out.conditions, seed=1).conditions
    assert np.array_equal(given.theta, c.theta)
