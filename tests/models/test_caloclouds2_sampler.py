"""caloclouds2's EDM sampler (step count respected, bad options one clear error, through
the CLI too) and the consistency student (1 network call; its teacher by reference:
missing, changed or wrong teachers are one clear error)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from caloforge.cli import main
from caloforge.data.io import open_showers
from caloforge.errors import CaloforgeError, ConfigError, InputError
from caloforge.models import load
from caloforge.models.caloclouds2 import karras_sigmas
from caloforge.training import TrainConfig, train


def _cfg(**kw):
    base = dict(steps=6, batch_size=16, validate_every=0, checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def runs(write_toy_points, tmp_path_factory):
    """A point file, a caloclouds2 teacher folder and a student distilled from it."""
    root = tmp_path_factory.mktemp("edm")
    data = write_toy_points(root / "points.h5", 64, seed=9)
    train("caloclouds2", data, root / "teacher", preset="tiny", train_config=_cfg(),
          progress=False)
    teacher = root / "teacher" / "model"
    train("caloclouds2-cm", data, root / "student", preset="tiny",
          train_config=_cfg(frozen_models={"teacher": str(teacher)}), progress=False)
    return {"data": data, "teacher": teacher, "student": root / "student" / "model"}


def test_rho_schedule_matches_the_edm_formula():
    sig = karras_sigmas(5, 0.002, 80.0, 7.0).double()
    i = np.arange(5)
    want = (80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sig[:-1].numpy(), want, rtol=1e-5)
    assert sig[-1] == 0 and sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002)


@pytest.mark.parametrize("steps", [1, 4, 13])
def test_edm_sampler_uses_2n_minus_1_network_calls(runs, steps):
    model = load(runs["teacher"])
    assert model.sampler_settings()["steps"] == 13  # default: 25 evaluations
    model.set_sampler(steps=steps)
    before = model.calls
    model.sample(np.array([5e3]), 0)
    assert model.calls - before == 2 * steps - 1 == model.evaluations()


def test_fewer_steps_change_the_sample_and_are_recorded(runs, tmp_path):
    model = load(runs["teacher"])
    e = np.array([5e3, 2e4])
    default = model.sample(e, 2)
    model.set_sampler(steps=3)
    few = model.sample(e, 2)
    np.testing.assert_array_equal(few.offsets, default.offsets)  # same ShowerFlow draw
    assert not np.allclose(few.x, default.x)
    out = tmp_path / "g.h5"
    rc = main(["generate", "--model", str(runs["teacher"]), "--energy", "5", "-n", "2",
               "--format", "pointcloud", "--sampler", "steps=3", "-o", str(out),
               "--no-progress"])
    assert rc == 0
    with open_showers(out) as f:
        assert f.metadata["sampler"]["steps"] == 3


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "steps=0: need an integer >= 1"),
    ({"steps": 2.5}, "steps=2.5"),
    ({"sigma_min": -1.0}, "sigma_min=-1.0: noise levels must be positive"),
    ({"sigma_max": 0.001}, "sigma_max=0.001 must exceed sigma_min"),
    ({"solver": "euler"}, "no sampler option 'solver'"),
])
def test_bad_sampler_options_are_one_clear_error(runs, options, message):
    model = load(runs["teacher"])
    with pytest.raises(InputError, match=message):
        model.set_sampler(**options)
    assert model.sampler_settings()["steps"] == 13  # unchanged


@pytest.mark.parametrize("option, message", [
    ("steps=0", "steps=0: need an integer >= 1"),
    ("sigma_max=-3", "noise levels must be positive"),
    ("steps", "expect KEY=VALUE"),
])
def test_bad_sampler_options_through_the_cli(runs, tmp_path, capsys, option, message):
    out = tmp_path / "g.h5"
    rc = main(["generate", "--model", str(runs["teacher"]), "--energy", "5", "-n", "2",
               "--format", "pointcloud", "--sampler", option, "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and message in err
    assert err.startswith("caloforge generate: error:")
    assert not out.exists()


def test_voxel_models_refuse_sampler_options(toy_data, tmp_path):
    model = train("wgan", toy_data, tmp_path / "w", preset="tiny",
                  train_config=_cfg(steps=2, checkpoint_every=0), progress=False)
    with pytest.raises(InputError, match="takes no sampler options"):
        model.set_sampler(steps=3)


def test_consistency_student_samples_in_one_call(runs):
    student = load(runs["student"])
    assert student.name == "caloclouds2-cm" and student.evaluations() == 1
    before = student.calls
    pts = student.sample(np.array([5e3, 3e4]), 4)
    assert student.calls - before == 1 and (pts.n_points >= 1).all()
    student.set_sampler(steps=2)
    before = student.calls
    two = student.sample(np.array([5e3, 3e4]), 4)
    assert student.calls - before == 2
    np.testing.assert_array_equal(two.offsets, pts.offsets)  # the teacher's ShowerFlow draw
    with pytest.raises(InputError, match="1 or 2 steps"):
        student.set_sampler(steps=3)
    with pytest.raises(InputError, match="sigma_mid"):
        student.set_sampler(steps=2, sigma_mid=100.0)


def test_student_references_its_teacher_and_borrows_its_showerflow(runs):
    meta = yaml.safe_load((runs["student"] / "model.yaml").read_text())
    ref = meta["teacher"]
    assert ref["path"] == str(runs["teacher"].resolve()) and len(ref["sha256"]) == 64
    assert ref["model"] == "caloclouds2" and ref["config"]["steps"] == 13
    from safetensors.torch import load_file
    names = load_file(str(runs["student"] / "model.safetensors"))
    assert not any(k.startswith("showerflow.") for k in names)  # referenced, not copied
    student, teacher = load(runs["student"]), load(runs["teacher"])
    e = np.array([5e3, 3e4])
    np.testing.assert_array_equal(student.sample(e, 6).offsets, teacher.sample(e, 6).offsets)


def test_missing_or_changed_teacher_is_one_clear_error(runs, tmp_path, capsys):
    copy = tmp_path / "teacher"
    shutil.copytree(runs["teacher"], copy)
    student = tmp_path / "student"
    shutil.copytree(runs["student"], student)
    meta = yaml.safe_load((student / "model.yaml").read_text())
    meta["teacher"]["path"] = str(copy)
    (student / "model.yaml").write_text(yaml.safe_dump(meta))
    assert load(student).name == "caloclouds2-cm"
    weights = copy / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(CaloforgeError, match="frozen teacher model changed since the student was distilled"):
        load(student)
    shutil.rmtree(copy)
    with pytest.raises(CaloforgeError, match="frozen teacher model is missing"):
        load(student)
    out = tmp_path / "g.h5"
    rc = main(["generate", "--model", str(student), "--energy", "5", "-n", "2",
               "--format", "pointcloud", "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "teacher" in err and not out.exists()


def test_bad_teachers_are_refused(runs, toy_data, tmp_path):
    with pytest.raises(ConfigError, match="frozen_models: {teacher"):
        train("caloclouds2-cm", runs["data"], tmp_path / "a", preset="tiny",
              train_config=_cfg(), progress=False)
    wgan = tmp_path / "wgan"
    train("wgan", toy_data, wgan, preset="tiny", train_config=_cfg(steps=2), progress=False)
    with pytest.raises(InputError, match="must be a caloclouds2 model, not 'wgan'"):
        train("caloclouds2-cm", runs["data"], tmp_path / "b", preset="tiny",
              train_config=_cfg(frozen_models={"teacher": str(wgan / "model")}),
              progress=False)
    with pytest.raises(InputError, match="hidden must equal the teacher's.*init_from_teacher"):
        train("caloclouds2-cm", runs["data"], tmp_path / "c", preset="tiny",
              model_config={"hidden": 24},
              train_config=_cfg(frozen_models={"teacher": str(runs["teacher"])}),
              progress=False)
    # another data space is refused whatever the initialisation
    with pytest.raises(InputError, match="sigma_data must equal the teacher's"):
        train("caloclouds2-cm", runs["data"], tmp_path / "d", preset="tiny",
              model_config={"sigma_data": 0.5, "init_from_teacher": False},
              train_config=_cfg(frozen_models={"teacher": str(runs["teacher"])}),
              progress=False)
    assert not any((tmp_path / d).exists() for d in "acd")


def test_a_student_of_its_own_size_starts_from_random_weights(runs, tmp_path):
    """init_from_teacher: false: another network size, the teacher's standardisation and
    ShowerFlow; it trains, samples and reloads (the teacher checked on load too)."""
    teacher = load(runs["teacher"])
    student = train("caloclouds2-cm", runs["data"], tmp_path / "s", preset="tiny",
                    model_config={"hidden": 24, "init_from_teacher": False},
                    train_config=_cfg(frozen_models={"teacher": str(runs["teacher"])}),
                    progress=False)
    assert student.config.hidden == 24 != teacher.config.hidden
    assert not bool(student.from_teacher)
    assert torch.equal(student.feat_mean, teacher.feat_mean)
    pts = student.sample(np.array([5e3, 2e4]), 3)
    assert len(pts) == 2 and (pts.n_points >= 1).all() and np.isfinite(pts.x).all()
    again = load(tmp_path / "s" / "model").sample(np.array([5e3, 2e4]), 3)
    np.testing.assert_array_equal(again.x, pts.x)


def test_student_resumes_exactly(runs, tmp_path):
    cfg = _cfg(frozen_models={"teacher": str(runs["teacher"])})
    straight = train("caloclouds2-cm", runs["data"], tmp_path / "a", preset="tiny",
                     train_config=cfg, progress=False)
    train("caloclouds2-cm", runs["data"], tmp_path / "b", preset="tiny",
          train_config=cfg.replace(stop_after=3), progress=False)
    resumed = train("caloclouds2-cm", runs["data"], tmp_path / "b", resume=True,
                    progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_bad_teacher_through_the_train_cli(runs, toy_data, tmp_path, capsys):
    wgan = tmp_path / "wgan"
    train("wgan", toy_data, wgan, preset="tiny", train_config=_cfg(steps=2), progress=False)
    config = tmp_path / "cm.yaml"
    config.write_text(yaml.safe_dump({"training": {"frozen_models": {
        "teacher": str(wgan / "model")}}}))
    out = tmp_path / "student"
    rc = main(["train", "--model", "caloclouds2-cm", "--data", str(runs["data"]), "--out",
               str(out), "--config", str(config), "--preset", "tiny", "--steps", "2",
               "--batch-size", "8",
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("caloforge train: error:") and "caloclouds2 model, not 'wgan'" in err
    assert not out.exists()


def test_shipped_teacher_is_recorded_by_name(runs, tmp_path, monkeypatch):
    import caloforge.models.folder as folder

    zoo = tmp_path / "zoo"
    shutil.copytree(runs["teacher"], zoo / "points-teacher")
    monkeypatch.setattr(folder, "zoo_dir", lambda: zoo)
    train("caloclouds2-cm", runs["data"], tmp_path / "s", preset="tiny",
          train_config=_cfg(steps=2, frozen_models={"teacher": str(zoo / "points-teacher")}),
          progress=False)
    meta = yaml.safe_load((tmp_path / "s" / "model" / "model.yaml").read_text())
    assert meta["teacher"]["path"] == "points-teacher"
    assert len(load(tmp_path / "s" / "model").sample(np.array([5e3]), 0)) == 1


def test_a_relative_teacher_path_is_taken_from_the_zoo(tmp_path, monkeypatch):
    # Shipped students record their teacher by its name in the zoo, not by a path on
    # the machine that trained them; it must not be looked up in the working directory.
    from caloforge.errors import InputError
    from caloforge.models import folder

    monkeypatch.setattr(folder, "zoo_dir", lambda: tmp_path / "zoo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "some-teacher").mkdir()
    with pytest.raises(InputError, match="frozen teacher model is missing") as info:
        folder.load_referenced({"path": "some-teacher", "sha256": "0" * 64}, "teacher",
                               relative_to=folder.zoo_dir())
    assert str(tmp_path / "zoo" / "some-teacher") in str(info.value)
