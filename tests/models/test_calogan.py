"""CaloGAN: locally connected units, training on the CaloGAN and CaloChallenge-1 grids,
the energy loss, overflow, batch-size independence, the model folder, the CLI, bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from caloforge.cli import main
from caloforge.data import Conditions, ShowerBatch
from caloforge.data.io import read_showers, write_showers
from caloforge.errors import InputError
from caloforge.geometry import get_geometry
from caloforge.models import build, load
from caloforge.models.calogan import ACCUMULATE_FROM, LocallyConnected2d
from caloforge.training import TrainConfig, train


def blob_showers(geometry: str, n: int, seed: int) -> ShowerBatch:
    """Showers on any geometry of 2-D layers: a blob in the centre of every layer whose
    share of the energy varies from shower to shower, a visible fraction of 20 % and, where
    the geometry records it, up to 1 % of the energy per layer in the overflow."""
    rng = np.random.default_rng(seed)
    g = get_geometry(geometry)
    e = np.exp(rng.uniform(np.log(1e3), np.log(1e5), n))
    x = np.zeros((n, g.n_voxels), np.float32)
    ids = [k for k in range(g.n_layers) if g.cells_per_layer[k]]
    share = rng.dirichlet(np.full(len(ids), 5.0), n)
    visible = e * 0.2 * (1 + 0.05 * rng.standard_normal(n))
    for j, k in enumerate(ids):
        a, b = g.layer_shape(k)
        ia, ib = np.meshgrid(np.arange(a) - (a - 1) / 2, np.arange(b) - (b - 1) / 2,
                             indexing="ij")
        prof = np.exp(-0.5 * (ia ** 2 + ib ** 2) / (0.2 * max(a, b)) ** 2).ravel()
        prof = prof[None] * rng.gamma(4.0, 0.25, (n, a * b))
        prof /= prof.sum(1, keepdims=True)
        x[:, g.layer_offsets[k]:g.layer_offsets[k + 1]] = prof * (visible * share[:, j])[:, None]
    overflow = None
    if "overflow" in g.tags:
        overflow = (0.01 * e[:, None] * rng.random((n, g.n_layers))).astype(np.float32)
    return ShowerBatch(geometry, x, Conditions(e), overflow)


def _mismatch(model, batch: ShowerBatch) -> float:
    """Mean |E - E_hat| / E of generated showers (cells + overflow over the mean response)."""
    total = batch.energies.sum(1, dtype=np.float64)
    if batch.overflow is not None:
        total = total + batch.overflow.sum(1)
    return float(np.abs(1 - total / batch.incident_energy / float(model.response)).mean())


@pytest.fixture(scope="module")
def calogan_data():
    return blob_showers("calogan", 192, seed=5)


@pytest.fixture(scope="module")
def trained_calogan(calogan_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("calogan") / "run"
    cfg = TrainConfig(steps=12, batch_size=32, validate_every=6, checkpoint_every=6)
    return train("calogan", calogan_data, out, preset="tiny", train_config=cfg,
                 progress=False), out


def test_locally_connected_equals_convolution_with_shared_weights():
    conv = torch.nn.Conv2d(3, 4, 2, stride=2, padding=1)
    lc = LocallyConnected2d(3, 4, (5, 7), kernel=2, stride=2, padding=1)
    with torch.no_grad():  # every position gets the convolution's kernel
        lc.weight.copy_(conv.weight.reshape(4, -1, 1).expand_as(lc.weight))
        lc.bias.copy_(conv.bias[:, None].expand_as(lc.bias))
    x = torch.randn(6, 3, 5, 7)
    torch.testing.assert_close(lc(x), conv(x), rtol=1e-5, atol=1e-5)
    # unshared: identical patches (a constant input) give different outputs per position
    free = LocallyConnected2d(3, 4, (5, 7), kernel=2)
    y = free(torch.ones(1, 3, 5, 7))
    assert y.shape == (1, 4, 4, 6) and not torch.allclose(y[..., 0, 0], y[..., 1, 1])


def test_locally_connected_generation_path_equals_the_training_path():
    """Without gradients, from ACCUMULATE_FROM showers on, the unit sums in place; it
    must give the products-and-sum of training."""
    lc = LocallyConnected2d(3, 4, (6, 9), kernel=2)
    x = torch.randn(ACCUMULATE_FROM + 5, 3, 6, 9)
    with torch.no_grad():
        fast = lc(x)
    torch.testing.assert_close(fast, lc(x).detach(), rtol=1e-5, atol=1e-6)


def test_calogan_trains_with_finite_losses_and_generates_overflow(trained_calogan):
    model, out = trained_calogan
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r for r in records if "discriminator" in r]
    assert steps and all(np.isfinite([r["discriminator"], r["generator"], r["energy"],
                                      r["energy_real"]]).all() for r in steps)
    assert 0 < float(model.response) < 1
    e = np.array([1.5e3, 2e4, 9e4])
    batch = model.sample(Conditions(e), seed=3)
    assert batch.energies.shape == (3, 504) and batch.geometry == "calogan"
    assert (batch.energies >= 0).all() and np.isfinite(batch.energies).all()
    assert batch.overflow is not None and batch.overflow.shape == (3, 3)
    assert (batch.overflow >= 0).all()


def test_calogan_generation_is_batch_size_independent(trained_calogan):
    model, _ = trained_calogan
    e = np.geomspace(1.2e3, 9e4, ACCUMULATE_FROM + 8)  # big batches take the in-place sums
    whole = model.sample(e, seed=11)
    ones = model.sample(e, seed=11, batch_size=1)
    scale = float(whole.energies.max())
    np.testing.assert_allclose(ones.energies, whole.energies, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(ones.overflow, whole.overflow, rtol=1e-4, atol=1e-5 * scale)
    tail = model.sample(e[4:], seed=11, first_index=4)
    np.testing.assert_allclose(tail.energies, whole.energies[4:], rtol=1e-4,
                               atol=1e-5 * scale)
    assert not np.allclose(whole.energies[0], whole.energies[1])  # showers differ


def test_calogan_folder_roundtrip_gives_identical_samples(trained_calogan):
    model, out = trained_calogan
    loaded = load(out)
    e = np.array([3e3, 6e4])
    a, b = model.sample(e, seed=7), loaded.sample(e, seed=7)
    np.testing.assert_array_equal(a.energies, b.energies)
    np.testing.assert_array_equal(a.overflow, b.overflow)
    assert float(loaded.response) == float(model.response)


def test_calogan_energy_loss_pulls_generated_energy_to_the_incident_energy(calogan_data,
                                                                          tmp_path):
    """With the energy term dominating, a few steps bring E_hat close to E from wherever
    the random initialisation starts (the adversarial term alone needs far longer)."""
    config = {"energy_weight": 50.0}
    model = build("calogan", "calogan", config, preset="tiny", seed=1)
    x = torch.as_tensor(calogan_data.energies)
    e = torch.as_tensor(calogan_data.incident_energy, dtype=torch.float32)
    model.fit_preprocessing(x, e)
    model.fit_overflow(torch.as_tensor(calogan_data.overflow), e)
    probe = calogan_data.incident_energy[:64]
    before = _mismatch(model, model.sample(probe, seed=2))
    cfg = TrainConfig(steps=40, batch_size=32, validate_every=0, checkpoint_every=40)
    trained = train("calogan", calogan_data, tmp_path / "run", model_config=config,
                    preset="tiny", train_config=cfg, seed=1, progress=False)
    after = _mismatch(trained, trained.sample(probe, seed=2))
    assert before > 0.3  # untrained: far off
    assert after < 0.5 * before and after < 0.2


def test_calogan_on_calochallenge_dataset1_layers(tmp_path):
    """Layers of different (alpha, r) shapes, empty layer ids skipped, no overflow."""
    data = blob_showers("calochallenge-1-pions", 64, seed=2)
    cfg = TrainConfig(steps=3, batch_size=16, validate_every=0, checkpoint_every=3)
    model = train("calogan", data, tmp_path / "run", preset="tiny", train_config=cfg,
                  progress=False)
    assert [tuple(s) for s in model.layer_shapes] == [
        (1, 8), (10, 10), (10, 10), (1, 5), (10, 15), (10, 16), (1, 10)]
    batch = model.sample(np.array([5e3, 5e4]), seed=1)
    assert batch.energies.shape == (2, 533) and batch.overflow is None
    assert np.isfinite(batch.energies).all() and (batch.energies >= 0).all()


def _calogan_file(path, batch, overflow=True):
    with write_showers(path, "calogan", "calogan", overwrite=True) as w:
        w.append(batch)
    if not overflow:
        with h5py.File(path, "a") as f:
            del f["overflow"]
    return path


def test_calogan_cli_train_generate_roundtrip(calogan_data, tmp_path):
    data = _calogan_file(tmp_path / "train.h5", calogan_data)
    out = tmp_path / "run"
    assert main(["train", "--model", "calogan", "--data", str(data), "--out", str(out),
                 "--preset", "tiny", "--steps", "3", "--batch-size", "16",
                 "--threads", "1", "--no-progress"]) == 0
    gen = tmp_path / "gen.h5"
    assert main(["generate", "--model", str(out), "--energy", "5:50", "-n", "6", "-o",
                 str(gen), "--format", "calogan", "--seed", "4", "--batch-size", "4",
                 "--no-progress"]) == 0
    batch = read_showers(gen)
    assert batch.geometry == "calogan" and batch.energies.shape == (6, 504)
    assert batch.overflow is not None and batch.overflow.shape == (6, 3)
    assert batch.overflow.sum() > 0  # the generated overflow is written, not zeros
    with h5py.File(gen) as f:
        assert f["layer_0"].shape == (6, 3, 96) and f["overflow"].shape == (6, 3)


def test_calogan_refuses_calogan_file_without_overflow(calogan_data, tmp_path, capsys):
    data = _calogan_file(tmp_path / "no_overflow.h5", calogan_data, overflow=False)
    with pytest.raises(InputError, match="no per-layer overflow") as info:
        train("calogan", data, tmp_path / "a", preset="tiny",
              train_config=TrainConfig(steps=1, batch_size=16), progress=False)
    assert "no_overflow.h5" in str(info.value)
    code = main(["train", "--model", "calogan", "--data", str(data), "--out",
                 str(tmp_path / "b"), "--preset", "tiny", "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "no_overflow.h5" in err and "overflow" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "model").exists()


@pytest.mark.parametrize("previous, shape", [((3, 96), (12, 12)), ((12, 12), (12, 6)),
                                             ((5, 7), (3, 4)), ((2, 2), (6, 5))])
def test_attention_pooling_equals_adaptive_avg_pool(previous, shape):
    """The fixed separable matrices reproduce F.adaptive_avg_pool2d (which does not export
    to ONNX with a dynamic batch)."""
    from caloforge.models.calogan import pool_matrix

    img = torch.rand(4, 1, *previous, generator=torch.Generator().manual_seed(0))
    rows, cols = pool_matrix(previous[0], shape[0]), pool_matrix(previous[1], shape[1])
    torch.testing.assert_close(rows @ img @ cols.T,
                               torch.nn.functional.adaptive_avg_pool2d(img, shape))
