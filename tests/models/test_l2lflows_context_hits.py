"""``context_hits``: the energy flow draws each layer's hit count with the layer energies,
and the shared layer flow draws the layer given that count."""

import numpy as np
import pytest
import torch

from caloforge.data import Conditions, ShowerBatch
from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.toy import toy_geometry
from caloforge.training import TrainConfig, train

TINY = {"hidden": [32], "context_embedding": 8, "transforms": 2, "energy_transforms": 2,
        "energy_bins": 4, "energy_hidden": [32], "lr": 3e-3, "axis_frame": False}


def _layer_hits(model, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([(x[:, model._slice(k)] > 0).sum(1) for k in model.active], 1)


def _record_drawn_hits(model) -> dict:
    """Wrap the model's per-layer context so that each generation leaves the energy
    flow's drawn hit features in the returned dict under "hits"."""
    drawn = {}
    layer_extras = model._layer_extras

    def keep_hits(el, e_inc, remainder, hits=None):
        drawn["hits"] = hits
        return layer_extras(el, e_inc, remainder, hits)

    model._layer_extras = keep_hits
    return drawn


def test_hit_feature_is_the_dequantised_count_of_read_out_cells(toy_data):
    m = build("l2lflows", toy_data.geometry, preset="compact",
              config={**TINY, "context_hits": True})
    x = m._threshold(torch.from_numpy(toy_data.energies[:50]))
    n = _layer_hits(m, x)
    f = m._hit_features(x, torch.Generator().manual_seed(0))
    assert f.shape == n.shape
    assert torch.equal(torch.floor(torch.expm1(f) + 1e-4).long(), n)
    assert (f > torch.log1p(n.float())).all()  # the uniform part is never exactly 0


def test_preprocessing_fits_the_counts_and_leaves_the_cell_features(toy_data):
    x = torch.from_numpy(toy_data.energies)
    e_inc = torch.from_numpy(toy_data.incident_energy.astype(np.float32))
    plain, hits = (build("l2lflows", toy_data.geometry, preset="compact",
                         config={**TINY, "context_hits": on}) for on in (False, True))
    assert plain.hits_std is None
    for m in (plain, hits):
        m.fit_preprocessing(x, e_inc)
    assert torch.equal(plain.voxel_std.mean, hits.voxel_std.mean)
    assert torch.equal(plain.voxel_std.std, hits.voxel_std.std)
    counts = torch.log1p(_layer_hits(hits, hits._threshold(x)).double() + 0.5)
    assert torch.allclose(hits.hits_std.mean.double(), counts.mean(0), atol=0.05)
    assert (hits.hits_std.std > 0.05).all()


def test_each_layer_context_ends_with_its_hit_feature():
    m = build("l2lflows", "ild-ecal", preset="compact", config={**TINY, "context_hits": True})
    b, n_e = 3, len(m.active)
    hits = torch.randn(b, n_e)
    extras = m._layer_extras(torch.rand(b, n_e) * 100, torch.full((b,), 5e3), None, hits)
    assert extras.shape == (b, m.n_mod, 1)
    assert torch.equal(extras[..., 0], hits[:, m.mod_energy_index])
    both = build("l2lflows", "ild-ecal", preset="compact",
                 config={**TINY, "context_hits": True, "context_age": True})
    extras = both._layer_extras(torch.rand(b, n_e) * 100, torch.full((b,), 5e3), None, hits)
    assert extras.shape == (b, m.n_mod, 3)
    assert torch.equal(extras[..., 2], hits[:, m.mod_energy_index])


def test_context_hits_needs_the_shared_threshold_flow():
    with pytest.raises(ConfigError, match="context_hits"):
        build("l2lflows", "ild-ecal", config={"context_hits": True})


def _sparse_or_dense_layers(n: int, seed: int) -> ShowerBatch:
    """Every layer holds its energy in 2 cells or spread over 14, at random and
    independently of its energy, its neighbours and the incident energy: only a drawn hit
    count can tell the layer flow which."""
    geo = toy_geometry()
    rng = np.random.default_rng(seed)
    n_l, n_c = geo.n_layers, geo.n_voxels // geo.n_layers
    x = np.zeros((n, n_l, n_c), np.float32)
    for i in range(n):
        for k in range(n_l):
            hits = 2 if rng.random() < 0.5 else 14
            cells = rng.choice(n_c, hits, replace=False)
            x[i, k, cells] = rng.uniform(0.5, 1.5, hits) * 30.0 / hits
    return ShowerBatch(geo.name, x.reshape(n, -1), Conditions(rng.uniform(1e4, 5e4, n)))


@pytest.mark.parametrize("seed", [0, 1])
def test_trained_layers_follow_the_drawn_hit_count(tmp_path, seed):
    """Trained on layers that are sparse or dense at random, the generated layers' numbers
    of drawn hits follow the hit counts that the energy flow drew (before any
    calibration), and the two kinds of layer come out in about equal numbers."""
    data = _sparse_or_dense_layers(512, seed)
    torch.manual_seed(seed)
    model = train("l2lflows", data, tmp_path / "run", preset="compact",
                  model_config={**TINY, "context_hits": True, "calibration_showers": 0},
                  train_config=TrainConfig(steps=300, batch_size=64, validate_every=0),
                  progress=False, seed=seed)
    drawn = _record_drawn_hits(model)
    with torch.no_grad():
        _, feats = model._generate(torch.full((400,), 3e4),
                                   torch.Generator().manual_seed(seed), calibrated=False)
    n_drawn = (feats.view(400, len(model.active), -1) >= 0).sum(2).float()
    wanted = torch.expm1(model.hits_std.inverse(drawn["hits"], None))
    dense = wanted > 6.0
    assert 0.3 < dense.float().mean() < 0.7
    # dense layers drawn with several times the hits of sparse ones
    assert n_drawn[dense].mean() > 2 * n_drawn[~dense].mean()
    corr = np.corrcoef(n_drawn.flatten().numpy(), wanted.flatten().numpy())[0, 1]
    assert corr > 0.6


def test_count_shift_leaves_exactly_the_count_above_the_cut():
    from caloforge.models.l2lflows_generation import _count_shift

    gen = torch.Generator().manual_seed(4)
    margin = torch.randn(5, 3 * 20, generator=gen)
    count = torch.tensor([[0, 1, 20], [3, 7, 0], [19, 2, 5], [1, 1, 1], [10, 0, 4]])
    shift = _count_shift(margin, count, [20, 20, 20])
    above = ((margin.view(5, 3, 20) - shift[..., None]) >= 0).sum(2)
    assert torch.equal(above, count)
    # row by row: the same shifts for one shower alone
    assert torch.equal(_count_shift(margin[2:3], count[2:3], [20, 20, 20]), shift[2:3])


def test_readout_drawn_hits_needs_the_drawn_counts():
    with pytest.raises(ConfigError, match="readout_drawn_hits"):
        build("l2lflows", "ild-ecal", preset="compact", config={"readout_drawn_hits": True})


@pytest.mark.parametrize("axis_tables", [False, True])
def test_read_out_layers_hold_the_drawn_number_of_hits(toy_data, axis_tables):
    """Every layer with the energy for them holds exactly the hits the energy flow drew
    (the calibrated read-out, per-cell or ring tables), batch by batch the same."""
    m = build("l2lflows", toy_data.geometry, preset="compact",
              config={**TINY, "context_hits": True, "readout_drawn_hits": True,
                      "calibration_showers": 256, "calibration_axis_tables": axis_tables,
                      "thin_starved_layers": True, "rescue_empty_layers": True})
    x = torch.from_numpy(toy_data.energies)
    e = torch.from_numpy(toy_data.incident_energy.astype(np.float32))
    m.fit_preprocessing(x, e)
    m.finalize(x, e, torch.Generator().manual_seed(0))
    m.eval()
    drawn = _record_drawn_hits(m)
    e_gen = torch.full((64,), 3e4)
    with torch.no_grad():
        out = m._generate(e_gen, torch.Generator().manual_seed(1))[0]
    want = (torch.exp(m.hits_std.inverse(drawn["hits"], None)) - 1).floor().clamp(max=m.n_cells)
    got = _layer_hits(m, out).float()
    el = torch.stack([out[:, m._slice(k)].sum(1) for k in m.active], 1)
    thr = m.geometry.readout_threshold_mev
    room = el >= want * thr  # thinning keeps fewer where the energy is too small
    assert room.float().mean() > 0.5
    sel = room & (want > 0)
    assert torch.equal(got[sel], want[sel])
    assert (got <= want.clamp_min(1)).all()
    again = m.sample(e_gen[:5].numpy(), seed=3).energies
    one = m.sample(e_gen[:1].numpy(), seed=3, batch_size=1).energies
    np.testing.assert_allclose(again[:1], one, rtol=1e-5, atol=1e-6)


def test_count_exponent_scales_the_counts_with_the_response_table(toy_data, monkeypatch):
    """A response table that doubles every layer energy doubles the counts read out
    with readout_count_exponent 1 (each layer's mean hit energy kept) and leaves them
    with 0."""
    import caloforge.models.l2lflows as l2l

    got = {}
    for exponent in (0.0, 1.0):
        m = build("l2lflows", toy_data.geometry, preset="compact",
                  config={**TINY, "context_hits": True, "readout_drawn_hits": True,
                          "readout_count_exponent": exponent, "calibration_showers": 0,
                          "thin_starved_layers": False, "rescue_empty_layers": False})
        x = torch.from_numpy(toy_data.energies)
        m.fit_preprocessing(x, torch.from_numpy(toy_data.incident_energy.astype(np.float32)))
        monkeypatch.setattr(l2l.calib, "calibrate_response", lambda el, *a: 2.0 * el)
        with torch.no_grad():
            out = m.eval()._generate(torch.full((32,), 3e4),
                                     torch.Generator().manual_seed(2))[0]
        got[exponent] = _layer_hits(m, out)
    small = (got[0.0] > 0) & (got[0.0] <= m.n_cells // 2)
    assert small.float().mean() > 0.3
    assert torch.equal(got[1.0][small], 2 * got[0.0][small])


def test_count_exponent_needs_the_drawn_read_out():
    with pytest.raises(ConfigError, match="readout_count_exponent"):
        build("l2lflows", "ild-ecal", preset="compact",
              config={"context_hits": True, "readout_count_exponent": 1.0})
