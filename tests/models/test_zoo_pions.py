"""The shipped AHCAL pion models: they load from the package, are small, and generate
hadron showers that follow the requested incident energy within their trained range."""

import numpy as np
import pytest

from caloforge import zoo
from caloforge.data.batch import Conditions
from caloforge.errors import CaloforgeError
from caloforge.models import list_zoo, load
from caloforge.models.base import WEIGHTS_FILE

NAMES = ["ild-ahcal-pions", "ild-ahcal-pions-cuts"]


@pytest.mark.parametrize("name", NAMES)
def test_pion_model_is_shipped_with_a_card(name):
    assert name in list_zoo()
    folder = zoo.path(name)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "caloforge simulate --detector ild-ahcal --particle pi+" in card
    assert (folder / WEIGHTS_FILE).stat().st_size < 20 * 2**20


@pytest.fixture(scope="module", params=NAMES)
def pion_model(request):
    return load(request.param)


def test_pion_model_follows_its_energy_condition(pion_model):
    model = pion_model
    assert model.geometry.name == "ild-ahcal" and model.geometry.n_voxels == 25 * 25 * 48
    lo, hi = model.energy_range_mev
    assert lo <= 10.5e3 and hi >= 99.5e3
    n = 40
    low = model.sample(np.full(n, 20e3), 1).energies
    high = model.sample(np.full(n, 80e3), 2).energies
    for x in (low, high):
        assert np.isfinite(x).all() and (x >= 0).all()
    thr = model.geometry.readout_threshold_mev
    assert ((low > 0) & (low < thr)).sum() == 0  # read-out showers
    # Visible fraction of the reference pions is ~1.7-1.8 %; a model that ignored the
    # energy would fail the ratio of the means (4 for the energies asked).
    r_low, r_high = low.sum(1) / 20e3, high.sum(1) / 80e3
    assert 0.012 < np.median(r_low) < 0.024 and 0.012 < np.median(r_high) < 0.024
    assert 3.0 < high.sum(1).mean() / low.sum(1).mean() < 5.0
    h_low, h_high = (low >= thr).sum(1).mean(), (high >= thr).sum(1).mean()
    assert 70 < h_low < h_high < 1500  # the reference: ~140 hits at 20 GeV, ~450 at 80


def test_pion_model_refuses_what_it_was_not_trained_on(pion_model):
    with pytest.raises(CaloforgeError, match="outside"):
        pion_model.sample(np.array([150e3]), 1)
    with pytest.raises(CaloforgeError, match="theta"):
        pion_model.sample(Conditions(np.array([30e3]), theta=np.array([0.3])), 1)


def test_the_default_reads_out_the_drawn_hit_counts():
    """The default draws every layer's hit count with the layer energies and reads out
    that many hits (scaled with the response table) where the layer's energy allows it;
    the previous default, kept as ``ild-ahcal-pions-cuts``, reads out by the cuts."""
    model = load("ild-ahcal-pions")
    assert model.config.context_hits and model.config.readout_drawn_hits
    assert model.config.readout_count_exponent == 1.25
    # the layer-moment maps solved twice, a hit keeping half its energy above threshold
    assert model.moments.passes == 2 and model.moments.w_min == 0.5
    assert not load("ild-ahcal-pions-cuts").config.context_hits
