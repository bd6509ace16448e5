"""The l2lflows read-out runs on groups of layers (bounded temporaries at large batch):
any grouping gives the same showers, bit for bit."""

import numpy as np

from caloforge.models import l2lflows_generation, load


def test_read_out_grouping_does_not_change_showers(monkeypatch):
    model = load("ild-ecal-photons")
    e = np.array([12e3, 35e3, 60e3, 95e3])
    monkeypatch.setattr(l2lflows_generation, "READ_OUT_ELEMENTS", 1 << 40)  # all layers at once
    whole = model.sample(e, 9).energies
    monkeypatch.setattr(l2lflows_generation, "READ_OUT_ELEMENTS", 1)  # one layer per group
    per_layer = model.sample(e, 9).energies
    monkeypatch.setattr(l2lflows_generation, "READ_OUT_ELEMENTS", 3 * 900 * len(e))  # three layers
    triples = model.sample(e, 9).energies
    assert (whole > 0).sum() > 1000
    assert np.array_equal(whole, per_layer) and np.array_equal(whole, triples)
