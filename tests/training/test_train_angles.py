"""`caloforge train` on showers of varying direction: the model declares theta and phi as
conditions from the streamed data, records their ranges in model.yaml, gets the angles in
every training batch, resumes exactly, and `caloforge generate` refuses angles outside."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from caloforge.cli import main
from caloforge.data.io import open_showers
from caloforge.models import load

THETA_MAX = 30.0  # degrees


def _train(data, out, *extra):
    return main(["train", "--model", "wgan", "--data", str(data), "--out", str(out),
                 "--preset", "tiny", "--steps", "6", "--batch-size", "16", "--seed", "2",
                 "--validate-every", "3", "--checkpoint-every", "3", "--no-progress", *extra])


@pytest.fixture(scope="module")
def angled_run(angled_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    assert _train(angled_file, out) == 0
    return out


def test_train_records_the_angle_ranges(angled_run, angled_file):
    meta = yaml.safe_load((angled_run / "model" / "model.yaml").read_text())
    assert list(meta["config"]["conditions"]) == ["theta", "phi"]
    lo, hi = meta["conditions"]["ranges"]["theta"]
    with open_showers(angled_file) as f:
        theta = f.read_conditions().theta
    # the training showers (the held-out ones aside) span the file's range
    assert theta.min() <= lo < math.radians(3) and math.radians(27) < hi <= theta.max()
    assert load(angled_run / "model").condition_space.ranges["theta"] == (lo, hi)


def test_generate_inside_the_theta_range_only(angled_run, tmp_path, capsys):
    args = ["generate", "--model", str(angled_run), "--energy", "5", "-n", "6", "--seed", "1",
            "--no-progress", "--phi", "40"]
    out = tmp_path / "in.h5"
    assert main([*args, "--theta", "20", "-o", str(out)]) == 0
    with open_showers(out) as f:
        batch = f.read()
    np.testing.assert_allclose(batch.conditions.theta, math.radians(20))
    assert np.isfinite(batch.energies).all()
    capsys.readouterr()
    bad = tmp_path / "out.h5"
    assert main([*args, "--theta", "60", "-o", str(bad)]) == 1
    assert "theta values lie outside the trained range" in capsys.readouterr().err
    assert not bad.exists()


def test_every_batch_carries_its_angles(angled_file, tmp_path):
    from caloforge.training.loop import TrainConfig, Trainer

    trainer = Trainer("wgan", angled_file, tmp_path / "t", preset="tiny",
                      train_config=TrainConfig(steps=8, batch_size=16, validate_every=0))
    try:
        for step in (0, 7):  # the first epoch and the next one
            batch = trainer._batch(step)
            epoch, pos = divmod(step, trainer.steps_per_epoch)
            rows = trainer.stream.rows(epoch, pos * 16, pos * 16 + 16).conditions
            assert batch.angles is not None and batch.angles.shape == (16, 2)
            np.testing.assert_allclose(batch.angles.numpy(), np.stack([rows.theta, rows.phi], 1),
                                       rtol=1e-6)
            np.testing.assert_allclose(batch.e_inc.numpy(), rows.incident_energy, rtol=1e-6)
    finally:
        trainer.close()


def test_resume_with_angles_is_exact(angled_run, angled_file, tmp_path):
    out = tmp_path / "split"
    assert _train(angled_file, out, "--stop-after", "3") == 0
    assert _train(angled_file, out, "--resume") == 0
    once, split = load(angled_run / "model").state_dict(), load(out / "model").state_dict()
    assert once.keys() == split.keys()
    for k in once:
        assert np.array_equal(once[k].numpy(), split[k].numpy()), k
