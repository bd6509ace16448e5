"""Streamed training data: reproducible windowed shuffling, bounded reads, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.data.io import write_showers
from caloforge.errors import InputError
from caloforge.training import TrainConfig, train
from caloforge.training.dataset import MemorySource, ShowerStream, open_source


class CountingSource(MemorySource):
    """Records how many showers each read asks for."""

    def __init__(self, batch):
        super().__init__(batch)
        self.reads = []

    def read(self, start, stop):
        self.reads.append(stop - start)
        return super().read(start, stop)


@pytest.fixture(scope="module")
def sparse_file(toy_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy_sparse.h5"
    with write_showers(path, "caloforge", toy_data.geometry, sparse=True) as w:
        w.append(toy_data)
    return path


def test_epoch_order_is_a_seeded_permutation_of_the_training_showers(toy_data):
    s = ShowerStream(MemorySource(toy_data), seed=3, holdout=20, chunk_showers=16,
                     buffer_showers=48)
    order = s.epoch_order(0)
    assert sorted(order) == list(s.train_index) and s.n_train == 236
    assert not set(order) & set(s.val_index) and len(s.val_index) == 20
    again = ShowerStream(MemorySource(toy_data), seed=3, holdout=20, chunk_showers=16,
                         buffer_showers=48)
    assert np.array_equal(again.epoch_order(0), order)
    assert not np.array_equal(s.epoch_order(1), order)  # a new order every epoch
    other = ShowerStream(MemorySource(toy_data), seed=4, holdout=20, chunk_showers=16,
                         buffer_showers=48)
    assert not np.array_equal(other.epoch_order(0), order)
    # Windows of 3 chunks: the first 48-ish showers come from 3 chunks of 16 only.
    assert len(np.unique(order[:40] // 16)) <= 3


def test_rows_follow_the_order_across_windows_with_bounded_reads(toy_data):
    src = CountingSource(toy_data)
    s = ShowerStream(src, seed=1, holdout=0, chunk_showers=10, buffer_showers=30)
    order = s.epoch_order(2)
    got = [s.rows(2, a, a + 7) for a in range(0, 250, 7)]  # batches straddle windows
    x = np.concatenate([g.energies for g in got])
    assert np.array_equal(x, toy_data.energies[order[:len(x)]])
    e = np.concatenate([g.incident_energy for g in got])
    assert np.array_equal(e, toy_data.incident_energy[order[:len(x)]])
    assert max(src.reads) <= 10  # never more than one chunk per read
    assert len(s._cache) <= 2 and sum(len(b) for b in s._cache.values()) <= 60


def test_one_window_is_a_full_shuffle_and_gather_keeps_the_order(toy_data):
    s = ShowerStream(MemorySource(toy_data), seed=0, chunk_showers=32, buffer_showers=10**6)
    assert len(s._windows) == 0 and len(s.epoch_order(0)) == 256
    assert len(s._windows) == 1
    idx = np.array([200, 3, 77, 4])
    assert np.array_equal(s.gather(idx).energies, toy_data.energies[idx])


@pytest.mark.parametrize("layout", ["dense", "sparse", "points"])
def test_file_and_memory_streams_agree(layout, toy_data, tmp_path):
    path = tmp_path / f"toy_{layout}.h5"
    with write_showers(path, "caloforge", toy_data.geometry,
                       **({} if layout == "points" else {"sparse": layout == "sparse"})) as w:
        w.append(toy_data.to_points() if layout == "points" else toy_data)
    with open_source(path) as src:
        assert src.layout == layout
        f = ShowerStream(src, seed=5, holdout=10, chunk_showers=20, buffer_showers=60)
        m = ShowerStream(MemorySource(toy_data), seed=5, holdout=10, chunk_showers=20,
                         buffer_showers=60)
        assert f.state() == m.state()
        a, b = f.rows(1, 30, 90), m.rows(1, 30, 90)  # points are voxelised by the reader
        np.testing.assert_allclose(a.energies, b.energies, rtol=1e-6)
        np.testing.assert_allclose(f.validation_rows().energies, m.validation_rows().energies,
                                   rtol=1e-6)


def test_training_from_a_file_equals_training_from_memory(toy_data, sparse_file, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=16, validate_every=3, chunk_showers=32,
                      shuffle_buffer_mb=1)  # 1 MB = 1213 toy showers: one window
    a = train("wgan", sparse_file, tmp_path / "a", preset="tiny", train_config=cfg,
              progress=False)
    b = train("wgan", toy_data, tmp_path / "b", preset="tiny", train_config=cfg,
              progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_small_windows_resume_bit_for_bit(toy_data, tmp_path):
    """Windows of 2 chunks and an epoch end inside the run; stop, resume, compare."""
    cfg = TrainConfig(steps=24, batch_size=16, validate_every=0, checkpoint_every=100,
                      chunk_showers=16, shuffle_buffer_mb=0.03)  # 36 showers: 2 chunks
    data = toy_data
    straight = train("bibae", data, tmp_path / "a", preset="tiny", train_config=cfg,
                     progress=False)
    train("bibae", data, tmp_path / "b", preset="tiny", train_config=cfg.replace(stop_after=9),
          progress=False)
    resumed = train("bibae", data, tmp_path / "b", resume=True, progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_on_other_data_is_refused(toy_data, tmp_path):
    cfg = TrainConfig(steps=10, batch_size=16, validate_every=0, stop_after=2)
    train("wgan", toy_data, tmp_path / "r", preset="tiny", train_config=cfg, progress=False)
    with pytest.raises(InputError, match="cannot be resumed exactly"):
        train("wgan", toy_data[:200], tmp_path / "r", resume=True, progress=False)


def test_preprocessing_sees_a_bounded_random_subsample(toy_data, tmp_path, monkeypatch):
    from caloforge.models.wgan import WGAN
    seen = {}
    real = WGAN.fit_preprocessing

    def spy(self, x, e_inc, angles=None):
        seen["x"], seen["e"] = x.clone(), e_inc.clone()
        return real(self, x, e_inc, angles=angles)

    monkeypatch.setattr(WGAN, "fit_preprocessing", spy)
    # All training showers when they fit: the fit equals the whole-set fit (up to order).
    cfg = TrainConfig(steps=1, batch_size=16, validate_every=1, validation_showers=16)
    train("wgan", toy_data, tmp_path / "a", preset="tiny", train_config=cfg, progress=False)
    assert len(seen["x"]) == 240
    val = ShowerStream(MemorySource(toy_data), seed=0, holdout=16).val_index
    train_rows = np.setdiff1d(np.arange(256), val)
    assert np.array_equal(np.sort(seen["e"].numpy()),
                          np.sort(toy_data.incident_energy[train_rows].astype(np.float32)))
    # Bounded by memory: 0.05 MB of 216-voxel float32 showers is 60 showers, random ones.
    cfg = cfg.replace(fit_memory_mb=0.05, finalize_showers=100)
    train("wgan", toy_data, tmp_path / "b", preset="tiny", train_config=cfg, progress=False)
    assert len(seen["x"]) == 60
    e = toy_data.incident_energy.astype(np.float32)
    assert not np.array_equal(seen["e"].numpy(), e[:60])
    assert np.isin(seen["e"].numpy(), e[train_rows]).all()
