"""l2lflows read-out: a layer the energy flow gives at least the readout threshold but
whose drawn cells all fall below their cuts gets one hit instead of being lost
(``rescue_empty_layers``)."""

import dataclasses

import numpy as np
import pytest
import torch

from caloforge.models import load


@pytest.fixture(scope="module")
def model():
    return load("ild-ecal-photons")


@pytest.mark.parametrize("widths", [[4, 4], [3, 5]])
def test_empty_layer_gets_its_energy_in_the_cell_closest_to_its_cut(model, widths):
    thr = model.geometry.readout_threshold_mev
    n = sum(widths)
    cell = torch.zeros(3, n)
    cell[2, 1] = 0.9  # shower 2: layer 0 has a hit
    margin = -torch.arange(1.0, n + 1).repeat(3, 1)  # all below their cut ...
    margin[:, 2] = -0.1  # ... cell 2 closest in layer 0
    margin[:, widths[0] + 1] = -0.2  # ... and cell 1 of layer 1
    target = torch.tensor([[0.5, 0.0], [0.5 * thr, 2 * thr], [0.9, 0.3]])
    out = model._rescue_empty_layers(cell, margin, target, widths)
    expect = cell.clone()
    expect[0, 2] = 0.5  # shower 0, layer 0: rescued; layer 1: no energy, stays empty
    expect[1, widths[0] + 1] = 2 * thr  # shower 1: layer 0 below threshold, layer 1 rescued
    expect[2, widths[0] + 1] = 0.3  # shower 2: layer 1 rescued, layer 0 untouched
    assert torch.equal(out, expect)


def test_rescue_changes_only_layers_that_were_read_out_empty(model):
    assert model.config.rescue_empty_layers  # the shipped default rescues
    e = np.linspace(10.5e3, 20e3, 200)
    on = model.sample(e, 3).energies.reshape(200, 30, 900)
    off_model = load("ild-ecal-photons")
    off_model.config = dataclasses.replace(off_model.config, rescue_empty_layers=False)
    off = off_model.sample(e, 3).energies.reshape(200, 30, 900)
    empty = (off > 0).sum(2) == 0
    assert np.array_equal(on[~empty], off[~empty])  # layers with hits: the same bits
    hits = (on > 0).sum(2)
    assert hits[empty].max() == 1 and hits[empty].sum() > 0  # rescued layers: one hit
    assert np.all(on[empty].max(1)[hits[empty] == 1] >= model.geometry.readout_threshold_mev)
