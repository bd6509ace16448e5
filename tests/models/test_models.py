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


def assert_same_showers(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float32 rounding: batched matrix products may sum in another order for
    another batch size or thread count (MKL/oneDNN pick kernels by shape), which changes
    the last bits (measured: <= 1e-5 relative); everything else is bitwise."""
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(float(np.abs(a).max()), 1e-12))


def assert_batch_independent_and_reloads(model, folder, seed: int, config_key: str) -> None:  # noqa: ANN001
    """21 showers at batch 21, 1 and 7 are the same; the model saved in ``folder`` keeps
    its ``config_key`` and generates them bit for bit."""
    from caloforge.models import load

    e = np.exp(np.random.default_rng(seed).uniform(np.log(2e3), np.log(5e4), 21))
    ref = model.sample(e, 9, batch_size=21).energies
    # equal up to the rounding of batched matrix products
    assert_same_showers(model.sample(e, 9, batch_size=1).energies, ref)
    assert_same_showers(model.sample(e, 9, batch_size=7).energies, ref)
    again = load(folder)
    assert getattr(again.config, config_key) == getattr(model.config, config_key)
    assert np.array_equal(again.sample(e, 9, batch_size=21).energies, ref)


# small networks with the ring (axis) tables: the base of the calibration tests' configs
SMALL_AXIS_TOY = {"hidden": [32], "context_embedding": 8, "transforms": 2,
                  "energy_transforms": 2, "energy_bins": 4, "energy_hidden": [32],
                  "calibration_axis_tables": True}


def train_compact_toy(out, config: dict, seed: int):  # noqa: ANN001, ANN201
    """A small ``compact`` l2lflows model with ``config`` trained 60 steps on 600 toy
    showers of 2-50 GeV in ``out``: (model, training showers, out)."""
    from caloforge.models.toy import toy_geometry, toy_showers
    from caloforge.training import TrainConfig, train

    rng = np.random.default_rng(seed)
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), 600))
    data = toy_showers(toy_geometry(), e, rng)
    torch.manual_seed(0)
    model = train("l2lflows", data, out, preset="compact", model_config=config,
                  train_config=TrainConfig(steps=60, batch_size=64, validate_every=0),
                  progress=False)
    return model, data, out


def assert_tables_change_only_the_hits(model, buffer, seed: int) -> None:  # noqa: ANN001
    """Same draws with every shower in the lowest bin of ``buffer`` (a calibration's
    inner bin edges, set to +inf) vs their own bins: the visible energies are the same
    within 2 %, the showers are not."""
    e = np.full(200, 2e4)
    own = model.sample(e, seed).energies
    saved = buffer.clone()
    buffer.fill_(float("inf"))
    try:
        lowest = model.sample(e, seed).energies
    finally:
        buffer.copy_(saved)
    np.testing.assert_allclose(own.sum(1), lowest.sum(1), rtol=0.02)
    assert not np.array_equal(own, lowest)


@pytest.mark.parametrize("name", MODELS)
def test_shower_depends_only_on_seed_and_index(name, trained):
    """Shower i of a run is a function of (seed, i): batch size, threads and shards
    (first_index) do not change it."""
    model, _ = trained(name)
    config = model.config
    # Raw output: a model trained for 12 steps may still put every cell under threshold.
    model.config = config.replace(threshold_output=False)
    try:
        _check_seed_and_index(model)
    finally:
        model.config = config


def _check_seed_and_index(model):
    e = np.exp(np.random.default_rng(5).uniform(np.log(2e3), np.log(9e4), 100))
    ref = model.sample(e, 21, batch_size=100).energies
    assert (ref > 0).mean() > 0.05  # a real test: the showers are not empty
    for bs in (1, 7):
        assert_same_showers(model.sample(e, 21, batch_size=bs).energies, ref)
    shard = model.sample(e[60:], 21, batch_size=13, first_index=60).energies
    assert_same_showers(shard, ref[60:])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert_same_showers(model.sample(e, 21, batch_size=100).energies, ref)
    finally:
        torch.set_num_threads(before)
    assert not np.allclose(model.sample(e, 22, batch_size=100).energies, ref)  # seed matters


def test_model_folder_records_conditions(trained):
    import yaml
    model, out = trained("l2lflows")
    meta = yaml.safe_load((out / "model" / "model.yaml").read_text())
    assert meta["representation"] == "voxels"
    assert meta["conditions"]["fixed"]["theta"] == 0.0  # toy showers: normal incidence
    loaded = load(out)
    assert loaded.condition_space == model.condition_space
    with pytest.raises(InputError, match="not trained on theta"):
        loaded.sample(Conditions(np.array([1e4]), theta=np.array([0.2])), 1)
