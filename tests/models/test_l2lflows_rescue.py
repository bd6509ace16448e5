"""l2lflows read-out: a layer the energy flow gives at least the readout threshold but
whose drawn cells all fall below their cuts gets one hit instead of being lost
(``rescue_empty_layers``)."""

import dataclasses

import numpy as np
import pytest
import torch

from caloforge.data.batch import Conditions
from caloforge.errors import ConfigError
from caloforge.models import build, load


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


def test_rescued_hits_lie_near_the_axis_with_rescue_axis_scale(model):
    """``rescue_axis_scale``: the rescued hit goes near the shower's axis (the few hits of
    the first layers do), not wherever the cell closest to its cut happens to be; layers
    with hits of their own are untouched."""
    n = 300
    rng = np.random.default_rng(4)
    cond = Conditions(incident_energy=rng.uniform(10.5e3, 30e3, n),
                      theta=rng.uniform(0.0, 0.6, n), phi=rng.uniform(0.0, 6.2, n))
    angles = torch.from_numpy(np.c_[cond.theta, cond.phi]).float()
    dist = model.axis_cal.axis_distance(angles, slice(None)).numpy().reshape(n, 30, 900)
    out = {}
    for scale in (0.0, 1.0):
        m = load("ild-ecal-photons")
        m.config = dataclasses.replace(m.config, rescue_axis_scale=scale)
        out[scale] = m.sample(cond, 5).energies.reshape(n, 30, 900)
    off = load("ild-ecal-photons")
    off.config = dataclasses.replace(off.config, rescue_empty_layers=False)
    empty = (off.sample(cond, 5).energies.reshape(n, 30, 900) > 0).sum(2) == 0
    assert np.array_equal(out[0.0][~empty], out[1.0][~empty])
    rescued = empty & ((out[1.0] > 0).sum(2) == 1)
    assert rescued.sum() >= 20
    assert np.array_equal(rescued, empty & ((out[0.0] > 0).sum(2) == 1))
    d = {s: dist[rescued][out[s][rescued] > 0] for s in out}  # one hit per rescued layer
    assert np.median(d[1.0]) < 1.5 < np.median(d[0.0])
    assert np.array_equal(out[0.0][rescued].sum(1), out[1.0][rescued].sum(1))  # same energy


def test_rescue_axis_scale_must_not_be_negative():
    with pytest.raises(ConfigError, match="rescue_axis_scale"):
        build("l2lflows", "ild-ecal", preset="compact", config={"rescue_axis_scale": -1.0})
