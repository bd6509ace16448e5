"""Every architecture trains end to end on toy showers, generates valid showers, follows
the energy condition, and round-trips through its model folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.data import Conditions
from caloforge.errors import FormatError, GeometryError, GeometryMismatchError, InputError
from caloforge.models import build, load
from caloforge.training import TrainConfig, train

MODELS = ["wgan", "bibae", "l2lflows"]


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(name) / "run"
            cfg = TrainConfig(steps=12, batch_size=16, validate_every=6, checkpoint_every=6)
            cache[name] = (train(name, toy_data, out, preset="tiny", train_config=cfg,
                                 progress=False), out)
        return cache[name]
    return get


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_generates_valid_showers(name, trained, toy_geo):
    model, out = trained(name)
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "metrics.jsonl").read_text().count("gen_response_mean") >= 2
    e = np.array([1.5e3, 1e4, 9e4])
    batch = model.sample(Conditions(e), generator=3)
    assert batch.energies.shape == (3, toy_geo.n_voxels)
    assert batch.geometry == toy_geo.name
    assert np.isfinite(batch.energies).all() and (batch.energies >= 0).all()
    assert np.array_equal(batch.incident_energy, e)
    again = model.sample(Conditions(e), generator=3)
    assert np.array_equal(batch.energies, again.energies)  # same seed, same showers
    other = model.sample(np.repeat(e, 4), generator=4, batch_size=5)
    assert other.energies.shape == (12, toy_geo.n_voxels)


@pytest.mark.parametrize("name", MODELS)
def test_model_folder_roundtrip(name, trained):
    model, out = trained(name)
    loaded = load(out)
    e = np.array([2e3, 5e4])
    a, b = model.sample(e, generator=7), loaded.sample(e, generator=7)
    assert np.array_equal(a.energies, b.energies)
    assert loaded.energy_range_mev == pytest.approx(model.energy_range_mev)
    for k, v in model.state_dict().items():
        assert torch.equal(v.cpu(), loaded.state_dict()[k]), k


def test_out_of_range_energies_refused_unless_allowed(trained):
    model, _ = trained("wgan")
    lo, hi = model.energy_range_mev
    with pytest.raises(InputError, match="outside the trained range"):
        model.check_energies(np.array([hi * 1.5]))
    with pytest.warns(UserWarning, match="extrapolating"):
        model.check_energies(np.array([lo * 0.5]), allow_extrapolation=True)
    model.check_energies(np.array([lo, hi]))


def test_untrained_model_refuses_to_sample(toy_geo):
    with pytest.raises(InputError, match="not trained"):
        build("l2lflows", toy_geo.name, preset="tiny").sample(np.array([1e4]))


def test_conv_models_need_regular_grid():
    with pytest.raises(GeometryError, match="regular grid"):
        build("wgan", "calogan", preset="tiny")
    with pytest.raises(GeometryError, match="regular grid"):
        build("bibae", "calochallenge-1-photons", preset="tiny")


def test_l2lflows_on_irregular_geometry(tmp_path):
    """Per-layer flows handle layers of different shapes (CaloGAN: 3x96, 12x12, 12x6)."""
    from caloforge.models.toy import toy_layered_showers
    data = toy_layered_showers("calogan", np.random.default_rng(0).uniform(1e4, 1e5, 64),
                               np.random.default_rng(1))
    model = train("l2lflows", data, tmp_path / "run", preset="tiny",
                  train_config=TrainConfig(steps=3, batch_size=16, validate_every=0),
                  progress=False)
    out = model.sample(np.full(4, 2e4), generator=0)
    assert out.energies.shape == (4, 504) and (out.energies >= 0).all()
    layer_e = out.layer_energies()
    assert np.isfinite(layer_e).all()


def test_geometry_mismatch_is_refused(trained, tmp_path, showers):
    _, out = trained("wgan")
    other = showers("calogan", n=40)
    with pytest.raises(GeometryMismatchError, match="toy-6x6x6"):
        train("wgan", other, out, resume=True, progress=False)


def test_foreign_or_corrupt_model_folder(trained, tmp_path):
    import shutil
    _, out = trained("l2lflows")
    bad = tmp_path / "bad"
    shutil.copytree(out / "model", bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(FormatError, match="safetensors"):
        load(bad)
    shutil.copy(out / "model" / "model.safetensors", bad / "model.safetensors")
    meta = (bad / "model.yaml").read_text().replace("model: l2lflows", "model: wgan")
    (bad / "model.yaml").write_text(meta)
    with pytest.raises(FormatError, match="cannot rebuild the model"):
        load(bad)  # the l2lflows config does not fit a wgan
    good = (out / "model" / "model.yaml").read_text()
    (bad / "model.yaml").write_text(good.replace("transforms: 2", "transforms: 3"))
    with pytest.raises(FormatError, match="do not match"):
        load(bad)  # weights of another size
    (bad / "model.yaml").write_text("just: text\n")
    with pytest.raises(FormatError, match="lacks the key"):
        load(bad)
    with pytest.raises(InputError, match="architecture, not a trained model"):
        load("wgan")
    with pytest.raises(InputError, match="no model folder"):
        load(tmp_path / "missing")


def _depth(batch):
    le = batch.layer_energies()
    return ((le * np.arange(le.shape[1])).sum(1) / np.maximum(le.sum(1), 1e-12)).mean()


# Steps for the conditioning test: enough for each tiny model to learn the energy
# dependence of the toy's longitudinal profile (measured: all pass with margin).
COND_STEPS = {"wgan": 150, "bibae": 120, "l2lflows": 60}


@pytest.mark.parametrize("name", MODELS)
def test_follows_the_energy_condition(name, two_energy_data, tmp_path):
    """Showers at 2 and 80 GeV differ in depth (shower maximum ~ log E) and visible
    energy.  A model that ignores its condition produces one mixture for both, whose
    mean depth cannot be closer to each energy's own reference than to the other's."""
    torch.manual_seed(0)
    model = train(name, two_energy_data, tmp_path / "run", preset="tiny",
                  train_config=TrainConfig(steps=COND_STEPS[name], batch_size=32,
                                           validate_every=0), progress=False)
    # Raw model output: the readout threshold cuts more of a low-energy shower and would
    # shift its depth even for a model blind to the energy.
    model.config = model.config.replace(threshold_output=False)
    data = two_energy_data
    real = {e: data[np.flatnonzero(data.incident_energy == e)] for e in (2e3, 80e3)}
    gen = {e: model.sample(np.full(300, e), generator=11) for e in (2e3, 80e3)}
    d_real = {e: _depth(b) for e, b in real.items()}
    d_gen = {e: _depth(b) for e, b in gen.items()}
    for e, other in ((2e3, 80e3), (80e3, 2e3)):
        assert abs(d_gen[e] - d_real[e]) < abs(d_gen[e] - d_real[other]), (e, d_gen, d_real)
    assert gen[80e3].total_energy().mean() > 5 * gen[2e3].total_energy().mean()
