"""l2lflows guards on the sampled energies: each layer's energy is capped at the largest
fraction of the incident energy it carried in the training showers (``layer_cap``), and
a layer whose energy cannot give all its drawn hits the readout threshold keeps its
hottest hits instead of losing some below it (``thin_starved_layers``)."""

import dataclasses

import numpy as np
import pytest
import torch

from caloforge.models import build, load
from caloforge.models.l2lflows_generation import _keep_largest, _thin_rows
from caloforge.models.toy import toy_geometry, toy_showers

THR = 0.25


def test_keep_largest_keeps_the_largest_values_and_the_first_of_ties():
    rows = torch.tensor([[0.3, 0.0, 0.9, 0.5, 0.5], [1.0, 2.0, 3.0, 0.0, 0.0]])
    out = _keep_largest(rows, torch.tensor([2.0, 0.0]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.9, 0.5, 0.0], [0.0] * 5]))


def test_only_starved_rows_are_thinned():
    rows = torch.tensor([[0.3, 0.4, 0.26, 0.0, 0.0],   # 3 hits, 0.6 MeV: room for 2
                         [0.3, 0.4, 0.26, 0.0, 0.0],   # 3 hits, 0.8 MeV: room for all
                         [0.3, 0.4, 0.26, 0.0, 0.0],   # below one threshold: left alone
                         [0.25, 0.0, 0.25, 0.25, 0.25],  # ties: the first ones kept
                         [0.0, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0.6, 0.8, 0.2, 0.5, 1.0])
    out = _thin_rows(rows, target, THR)
    assert torch.equal(out[0], torch.tensor([0.3, 0.4, 0.0, 0.0, 0.0]))
    assert torch.equal(out[3], torch.tensor([0.25, 0.0, 0.25, 0.0, 0.0]))
    assert torch.equal(out[[1, 2, 4]], rows[[1, 2, 4]])
    traced = torch.jit.trace(lambda r, t: _thin_rows(r, t, THR), (rows, target))
    assert torch.equal(traced(rows, target), out)  # the exporters' path: every row sorted


def _showers_of(model, e, seed=3):
    return model.sample(e, seed).energies.reshape(len(e), model.geometry.n_layers, -1)


@pytest.fixture(scope="module")
def pions():
    return load("ild-ahcal-pions")


def test_thinning_keeps_layer_energy_and_adds_hits(pions):
    """Read-out with and without thinning, same draws: layers that had room for all
    their hits are the same bits; the others keep more hits and their sampled energy.
    (Without the layer-moment maps, applied last: their copula couples the layers, so a
    thinned layer would move the others' hit energies too.)"""
    e = np.full(300, 30e3)
    off = dataclasses.replace(pions.config, thin_starved_layers=False)
    on = dataclasses.replace(pions.config, thin_starved_layers=True)
    pions.moments.is_fitted = False
    try:
        pions.config = off
        a = _showers_of(pions, e)
        pions.config = on
        b = _showers_of(pions, e)
    finally:
        pions.moments.is_fitted = True
    changed = (a != b).any(2)
    assert 0 < changed.sum() < 0.2 * changed.size
    assert np.array_equal(a[~changed], b[~changed])
    assert ((b > 0).sum(2)[changed] >= (a > 0).sum(2)[changed]).all()
    assert (b > 0).sum() > (a > 0).sum()
    assert b[b > 0].min() >= pions.geometry.readout_threshold_mev
    # a thinned layer carries at least as much energy as before (nothing lost below
    # the threshold)
    assert (b.sum(2)[changed] >= a.sum(2)[changed] - 1e-3).all()


def test_layer_cap_is_the_training_maximum_and_bounds_every_layer():
    geo = toy_geometry()
    rng = np.random.default_rng(2)
    e = rng.uniform(2e3, 20e3, 400)
    data = toy_showers(geo, e, rng)
    model = build("l2lflows", geo, preset="tiny",
                  config={"cell_feature": "log_threshold", "calibration_showers": 0})
    x = torch.as_tensor(data.energies)
    model.fit_preprocessing(x, torch.as_tensor(e, dtype=torch.float32))
    thr = geo.readout_threshold_mev
    el = np.where(data.energies >= thr, data.energies, 0).reshape(400, geo.n_layers, -1).sum(2)
    np.testing.assert_allclose(model.layer_cap.numpy(), (el / e[:, None]).max(0), rtol=1e-5)
    # an untrained flow has wild tails: the cap holds them
    out = model.sample(np.full(200, 10e3), 1).energies.reshape(200, geo.n_layers, -1).sum(2)
    assert (out <= model.layer_cap.numpy() * 10e3 * (1 + 1e-5) + 1e-3).all()


def test_folders_without_a_cap_load_uncapped(pions, tmp_path):
    state = {k: v for k, v in pions.state_dict().items() if k != "layer_cap"}
    m = build("l2lflows", pions.geometry, config=dataclasses.asdict(pions.config))
    m.load_state_dict(state)
    assert torch.isinf(m.layer_cap).all()


def test_onnx_thinning_keeps_the_first_of_equal_hits(tmp_path):
    """ONNX has no stable sort: the exported graph ranks with TopK, which orders equal
    values by index as the stable sort does (torch's own topk does not)."""
    ort = pytest.importorskip("onnxruntime")
    from caloforge.export.api import OPSET

    class Thin(torch.nn.Module):
        def forward(self, rows, target):
            return _thin_rows(rows, target, THR)

    rows = torch.tensor([[0.25, 0.0, 0.25, 0.25, 0.25, 0.4],
                         [0.3, 0.25, 0.25, 0.0, 0.25, 0.0]])
    target = torch.tensor([0.75, 0.5])
    path = tmp_path / "thin.onnx"
    torch.onnx.export(Thin(), (rows, target), str(path), input_names=["rows", "target"],
                      opset_version=OPSET, dynamo=False)
    out = ort.InferenceSession(str(path)).run(None, {"rows": rows.numpy(),
                                                     "target": target.numpy()})[0]
    expect = _thin_rows(rows, target, THR).numpy()
    assert np.array_equal(expect, np.float32([[0.25, 0.0, 0.25, 0.0, 0.0, 0.4],
                                              [0.3, 0.25, 0.0, 0.0, 0.0, 0.0]]))
    assert np.array_equal(out, expect)
