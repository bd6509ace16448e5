"""CaloFlow teacher (MAF layer + shower flows) and its IAF student distilled by reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from caloforge.cli import main
from caloforge.data.io import write_showers
from caloforge.models import load
from caloforge.models.noise import ShowerNoise
from caloforge.training import TrainConfig, train

STEPS = 40


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float32 rounding (batched products may sum in another order)."""
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(float(np.abs(a).max()), 1e-12))


def _train_cli(*args: str) -> int:
    return main(["train", "--preset", "tiny", "--batch-size", "32", "--validate-every", "0",
                 "--no-progress", *args])


@pytest.fixture(scope="module")
def teacher_dir(toy_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("caloflow") / "teacher"
    assert _train_cli("--model", "caloflow", "--data", str(toy_file), "--out", str(out),
                      "--steps", str(STEPS)) == 0
    return out / "model"


@pytest.fixture(scope="module")
def student_dir(toy_file, teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("caloflow") / "student"
    assert _train_cli("--model", "caloflow-student", "--data", str(toy_file), "--out", str(out),
                      "--steps", "30", "--teacher", str(teacher_dir)) == 0
    return out / "model"


def _layer_sums(model, x: np.ndarray) -> np.ndarray:
    return model.layer_energies(torch.as_tensor(x, dtype=torch.float32)).numpy()


def test_teacher_log_likelihood_improves(toy_data, tmp_path):
    held_out = toy_data[200:]
    x = torch.as_tensor(held_out.energies, dtype=torch.float32)
    e = torch.as_tensor(held_out.incident_energy, dtype=torch.float32)

    def log_likelihood(steps: int) -> float:
        cfg = TrainConfig(steps=steps, batch_size=32, validate_every=0)
        model = train("caloflow", toy_data[:200], tmp_path / str(steps), preset="tiny",
                      train_config=cfg, progress=False)  # same seed: same preprocessing
        with torch.no_grad():
            lp_layers, lp_shower = model.log_likelihood(x, e, gen=torch.Generator().manual_seed(0))
        return float(lp_layers.mean() + lp_shower.mean())

    assert log_likelihood(STEPS) > log_likelihood(1) + 0.3  # nats per feature, both flows


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_layers_carry_exactly_the_drawn_layer_energies(which, teacher_dir, student_dir):
    model = load(teacher_dir if which == "teacher" else student_dir)
    teacher = model if which == "teacher" else model.teacher
    e = np.array([1.5e3, 8e3, 3e4, 9e4])
    showers = model.sample(e, seed=5).energies
    # The layer flow's draw (the student's distilled one): the first normals of each
    # shower's own stream.
    sampler = None if which == "teacher" else model.sample_layer_features
    drawn = teacher.sample_layer_energies(torch.as_tensor(e, dtype=torch.float32),
                                          ShowerNoise.for_showers(5, range(len(e))),
                                          sampler=sampler).numpy()
    assert (drawn > 0).any(1).all()
    # a layer below the cell floor is empty (as the training showers' empty layers)
    expected = np.where(drawn >= teacher.cell_floor_mev, drawn, 0.0)
    assert (expected > 0).sum() > expected.size // 2
    np.testing.assert_allclose(_layer_sums(teacher, showers), expected, rtol=1e-5,
                               atol=1e-6 * drawn.max())


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_no_generated_cell_below_the_fitted_floor(which, teacher_dir, student_dir, toy_data):
    model = load(teacher_dir if which == "teacher" else student_dir)
    teacher = model if which == "teacher" else model.teacher
    cells = toy_data.energies[:, teacher.cell_columns.numpy()]
    expected = np.quantile(cells[cells > 0].astype(np.float64), teacher.config.cell_floor_quantile)
    assert teacher.cell_floor_mev == pytest.approx(max(expected, teacher.config.dequantize_mev),
                                                   rel=1e-6)
    x = model.sample(np.geomspace(1.5e3, 9e4, 40), seed=3).energies
    off = teacher.geometry.layer_offsets
    faint = 0
    for k in range(teacher.geometry.n_layers):
        layer = x[:, off[k]:off[k + 1]]
        below = ((layer > 0) & (layer < teacher.cell_floor_mev)).any(1)
        # no faint cell: a layer above the floor keeps at least its largest cell, one
        # below it is empty
        faint += int(below.sum())
    assert faint == 0
    assert (x >= teacher.cell_floor_mev).sum() > 0


def test_a_folder_without_a_fitted_floor_keeps_the_dequantisation_floor(teacher_dir, tmp_path):
    import yaml

    old = tmp_path / "old"
    shutil.copytree(teacher_dir, old)
    meta = yaml.safe_load((old / "model.yaml").read_text())
    assert "cell_floor_mev" in meta
    del meta["cell_floor_mev"]
    (old / "model.yaml").write_text(yaml.safe_dump(meta))
    assert load(old).cell_floor_mev == load(old).config.dequantize_mev


def test_generation_does_not_depend_on_batch_size(teacher_dir, student_dir):
    e = np.exp(np.random.default_rng(5).uniform(np.log(2e3), np.log(9e4), 40))
    teacher, student = load(teacher_dir), load(student_dir)
    ref = teacher.sample(e[:6], 21).energies
    assert (ref > 0).mean() > 0.05  # the showers are not empty
    for bs in (1, 4):
        _same(teacher.sample(e[:6], 21, batch_size=bs).energies, ref)
    ref = student.sample(e, 21).energies
    for bs in (1, 7):
        _same(student.sample(e, 21, batch_size=bs).energies, ref)
    _same(student.sample(e[30:], 21, first_index=30).energies, ref[30:])
    assert not np.allclose(student.sample(e, 22).energies, ref)  # the seed matters


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_folder_roundtrip_gives_identical_samples(which, teacher_dir, student_dir, tmp_path):
    model = load(teacher_dir if which == "teacher" else student_dir)
    model.save(tmp_path / "copy")
    again = load(tmp_path / "copy")
    e = np.array([2e3, 5e4])
    assert np.array_equal(model.sample(e, seed=7).energies, again.sample(e, seed=7).energies)


def test_student_references_its_teacher_and_holds_only_its_flow(student_dir, teacher_dir):
    import yaml
    from safetensors.torch import load_file

    meta = yaml.safe_load((student_dir / "model.yaml").read_text())
    assert meta["teacher"]["path"] == str(teacher_dir.resolve())
    assert len(meta["teacher"]["sha256"]) == 64
    keys = set(load_file(str(student_dir / "model.safetensors")))
    assert keys and not any("flow" in k or "std" in k for k in keys)  # nothing of the teacher
    assert any(k.startswith("blocks.") for k in keys)


def test_student_samples_in_one_pass_per_block(teacher_dir, student_dir, monkeypatch):
    from caloforge.models import made

    student = load(student_dir)
    teacher = student.teacher
    calls = {"student": 0, "teacher": 0}
    student_blocks = {id(b) for b in [*student.blocks, *student.layer_blocks]}
    raw = made._made_raw

    def counted_raw(block, context, x):  # one call = one evaluation of a student network
        calls["student"] += id(block) in student_blocks
        return raw(block, context, x)

    def counter(*_):
        calls["teacher"] += 1

    monkeypatch.setattr(made, "_made_raw", counted_raw)
    monkeypatch.setattr(made, "_traced_sampler", lambda *_: None)  # count the eager passes
    # The teacher's feature-by-feature inverse calls each block's first activation once
    # per feature.
    hooks = [b.hyper[1].register_forward_hook(counter)
             for b in [*teacher.shower_flow.transform.transforms,
                       *teacher.layer_flow.transform.transforms]]
    try:
        student.sample(np.full(3, 2e4), seed=1)
        # both flows distilled: one pass per block, nothing of the teacher's flows
        assert calls == {"student": len(student.blocks) + len(student.layer_blocks),
                         "teacher": 0}
        teacher.sample(np.full(3, 2e4), seed=1)
        # MAF: one pass per feature and block
        assert calls["teacher"] == len(student.blocks) * teacher.n_features \
            + len(student.layer_blocks) * teacher.n_layer_features
    finally:
        for h in hooks:
            h.remove()


def _linear_calls(blocks) -> int:
    return sum(isinstance(m, torch.nn.Linear) for b in blocks for m in b.hyper)


def test_student_samples_through_a_trace_of_its_eager_path(student_dir, monkeypatch):
    """The traced sampler gives the eager path's showers bit for bit at any batch size,
    runs one network pass per block, and is rebuilt when a weight changes."""
    from caloforge.models import made

    student = load(student_dir)
    e = np.exp(np.random.default_rng(3).uniform(np.log(2e3), np.log(9e4), 9))
    sizes = (1, 4, 9)
    traced = [student.sample(e, 5, batch_size=bs).energies for bs in sizes]
    for blocks in (student.blocks, student.layer_blocks):
        trace = blocks.__dict__["_traced_sampler"][1]
        assert trace is not None  # the eager path below would otherwise prove nothing
        ops = str(trace.inlined_graph)
        assert ops.count("aten::linear") == _linear_calls(blocks)
    with monkeypatch.context() as patch:
        patch.setattr(made, "_traced_sampler", lambda *_: None)
        eager = [student.sample(e, 5, batch_size=bs).energies for bs in sizes]
    assert (eager[0] > 0).any()
    for x, y in zip(traced, eager):  # products at batch 1 and more may round differently
        assert np.array_equal(x, y)
    with torch.no_grad():  # an in-place update (as an optimiser step) must not be missed
        student.blocks[0].hyper[0].bias.add_(0.5)
    changed = student.sample(e, 5).energies
    assert not np.allclose(changed, eager[-1])
    with monkeypatch.context() as patch:
        patch.setattr(made, "_traced_sampler", lambda *_: None)
        assert np.array_equal(student.sample(e, 5).energies, changed)


def test_calogan_geometry(showers, tmp_path):
    data = showers("calogan", n=64, occupancy=0.3)
    cfg = TrainConfig(steps=3, batch_size=16, validate_every=0)
    teacher = train("caloflow", data, tmp_path / "t", preset="tiny", train_config=cfg,
                    progress=False)
    student = train("caloflow-student", data, tmp_path / "s", {"bins": 0}, preset="tiny",
                    progress=False,  # affine blocks, as the default preset (tiny: splines)
                    train_config=cfg.replace(frozen_models={"teacher": str(tmp_path / "t" / "model")}))
    e = np.array([2e4, 7e4])
    for model, sampler in ((teacher, None), (student, student.sample_layer_features)):
        x = model.sample(e, seed=3).energies
        assert x.shape == (2, 504) and np.isfinite(x).all()
        drawn = teacher.sample_layer_energies(torch.as_tensor(e, dtype=torch.float32),
                                              ShowerNoise.for_showers(3, range(2)),
                                              sampler=sampler).numpy()
        np.testing.assert_allclose(_layer_sums(teacher, x), drawn, rtol=1e-5,
                                   atol=1e-6 * drawn.max())


def test_student_without_layer_distillation_samples_the_teachers_layer_flow(
        teacher_dir, toy_data, tmp_path):
    cfg = TrainConfig(steps=2, batch_size=16, validate_every=0,
                      frozen_models={"teacher": str(teacher_dir)})
    student = train("caloflow-student", toy_data[:64], tmp_path / "s", {"distil_layers": False},
                    preset="tiny", train_config=cfg, progress=False)
    assert student.layer_blocks is None
    e = np.array([2e3, 4e4])
    x = student.sample(e, seed=2).energies
    drawn = student.teacher.sample_layer_energies(torch.as_tensor(e, dtype=torch.float32),
                                                  ShowerNoise.for_showers(2, range(2))).numpy()
    kept = np.where(drawn >= student.teacher.cell_floor_mev, drawn, 0.0)
    np.testing.assert_allclose(_layer_sums(student.teacher, x), kept, rtol=1e-5,
                               atol=1e-6 * drawn.max())


def test_a_student_folder_from_before_layer_distillation_still_loads(student_dir, tmp_path):
    """Such a folder has no layer blocks and no ``distil_layers`` key: it samples the
    teacher's layer flow, as it did when it was saved."""
    import yaml
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(student_dir, old)
    meta = yaml.safe_load((old / "model.yaml").read_text())
    del meta["config"]["distil_layers"]
    (old / "model.yaml").write_text(yaml.safe_dump(meta))
    for name in ("model.safetensors", "ema.safetensors"):
        if (old / name).is_file():
            state = load_file(str(old / name))
            save_file({k: v for k, v in state.items() if not k.startswith("layer_blocks.")},
                      str(old / name))
    student = load(old)
    assert student.layer_blocks is None and not student.config.distil_layers
    e = np.array([3e3, 6e4])
    drawn = student.teacher.sample_layer_energies(torch.as_tensor(e, dtype=torch.float32),
                                                  ShowerNoise.for_showers(4, range(2))).numpy()
    kept = np.where(drawn >= student.teacher.cell_floor_mev, drawn, 0.0)
    np.testing.assert_allclose(_layer_sums(student.teacher, student.sample(e, seed=4).energies),
                               kept, rtol=1e-5, atol=1e-6 * drawn.max())


def test_student_distils_the_layer_flow_too(student_dir, toy_data):
    """The layer flow's terms are in the loss and train the student's layer blocks."""
    student = load(student_dir)
    x = torch.as_tensor(toy_data.energies[:32], dtype=torch.float32)
    e = torch.as_tensor(toy_data.incident_energy[:32], dtype=torch.float32)
    losses = student.distillation_losses(x, e, None, torch.Generator().manual_seed(0))
    names = {"data", "density", "latent", "block", "kl"}
    assert set(losses) == names | {f"layer_{n}" for n in names}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses[f"layer_{n}"] for n in names).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in student.layer_blocks.parameters() if p.dim() == 2)


def test_student_layer_blocks_must_match_the_teachers(teacher_dir, toy_data, tmp_path):
    from caloforge.errors import ConfigError
    cfg = TrainConfig(steps=1, batch_size=16, validate_every=0,
                      frozen_models={"teacher": str(teacher_dir)})
    with pytest.raises(ConfigError, match="layer-flow blocks.*'layer_transforms: 2'"):
        train("caloflow-student", toy_data[:64], tmp_path / "s", {"layer_transforms": 3},
              preset="tiny", train_config=cfg, progress=False)


# ---- bad input: one line, exit 1 ---------------------------------------------------------
def _one_error(capsys, command: str, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"caloforge {command}: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]


def _student_cli(data, teacher, out) -> int:
    return _train_cli("--model", "caloflow-student", "--data", str(data), "--out", str(out),
                      "--steps", "2", *(["--teacher", str(teacher)] if teacher else []))


@pytest.fixture(scope="module")
def other_teachers(two_energy_data, angled_file, toy_data, toy_file, tmp_path_factory):
    """Tiny trained models that cannot teach a toy-6x6x6 student on 1-100 GeV: another
    geometry, other conditions (angles), fewer energies, another architecture."""
    root = tmp_path_factory.mktemp("others")
    small, low = root / "small.h5", root / "low.h5"
    with write_showers(small, "caloforge", two_energy_data.geometry) as w:
        w.append(two_energy_data)
    with write_showers(low, "caloforge", toy_data.geometry) as w:
        w.append(toy_data[np.flatnonzero(toy_data.incident_energy < 2e4)])
    runs = {"geometry": ("caloflow", small), "angles": ("caloflow", angled_file),
            "energies": ("caloflow", low), "architecture": ("l2lflows", toy_file)}
    for key, (model, data) in runs.items():
        assert _train_cli("--model", model, "--data", str(data), "--out", str(root / key),
                          "--steps", "2") == 0
    return {key: root / key / "model" for key in runs}


@pytest.mark.parametrize("case, needles", [
    ("geometry", ("geometry 'toy-6x4x4'", "'toy-6x6x6'")),
    ("angles", ("conditioned on (incident_energy, theta, phi)",)),
    ("energies", ("span incident energies", "teacher was trained on")),
    ("architecture", ("must be a trained 'caloflow'", "'l2lflows'")),
    ("none", ("needs its teacher", "--teacher")),
])
def test_student_refuses_a_teacher_that_does_not_fit(case, needles, other_teachers, toy_file,
                                                     tmp_path, capsys):
    teacher = other_teachers.get(case)
    assert _student_cli(toy_file, teacher, tmp_path / "s") == 1
    _one_error(capsys, "train", *needles)
    assert not (tmp_path / "s").exists()  # refused before any work


def test_student_refuses_a_missing_or_changed_teacher(teacher_dir, toy_file, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    assert _student_cli(toy_file, teacher, tmp_path / "s") == 0
    generate = ["generate", "--model", str(tmp_path / "s"), "--energy", "20", "-n", "2",
                "-o", str(tmp_path / "g.h5"), "--no-progress"]
    weights = teacher / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert main(generate) == 1
    _one_error(capsys, "generate", "frozen teacher model changed since the student was")
    weights.write_bytes(good)
    teacher.rename(tmp_path / "moved")
    assert main(generate) == 1
    _one_error(capsys, "generate", "frozen teacher model is missing", "sha256")
    (tmp_path / "moved").rename(teacher)
    assert main(generate) == 0 and (tmp_path / "g.h5").is_file()


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_energies_outside_the_trained_range(which, teacher_dir, student_dir, tmp_path, capsys):
    folder = teacher_dir if which == "teacher" else student_dir
    out = tmp_path / "g.h5"
    assert main(["generate", "--model", str(folder), "--energy", "500", "-n", "2",
                 "-o", str(out), "--no-progress"]) == 1
    _one_error(capsys, "generate", "500 GeV")
    assert not out.exists()


def test_student_resumes_against_its_recorded_teacher(teacher_dir, toy_file, tmp_path):
    out = tmp_path / "s"
    assert _train_cli("--model", "caloflow-student", "--data", str(toy_file), "--out", str(out),
                      "--steps", "4", "--stop-after", "2", "--teacher", str(teacher_dir)) == 0
    assert not (out / "model").exists()
    assert main(["train", "--model", "caloflow-student", "--data", str(toy_file), "--out",
                 str(out), "--resume", "--no-progress"]) == 0
    resumed = load(out)
    assert resumed.teacher_reference["path"] == str(teacher_dir.resolve())
    straight = train("caloflow-student", toy_file, tmp_path / "straight", preset="tiny",
                     train_config=TrainConfig(steps=4, batch_size=32, validate_every=0,
                                              frozen_models={"teacher": str(teacher_dir)}),
                     progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_a_shipped_teacher_is_recorded_by_its_zoo_name(teacher_dir, toy_file, tmp_path,
                                                       monkeypatch):
    """A student distilled from a teacher in the zoo records the teacher's name, not an
    absolute path, so the shipped pair works wherever the package is installed."""
    import yaml

    import caloforge.models.folder as folder

    zoo = tmp_path / "zoo"
    shutil.copytree(teacher_dir, zoo / "toy-teacher")
    monkeypatch.setattr(folder, "zoo_dir", lambda: zoo)
    assert _student_cli(toy_file, "toy-teacher", tmp_path / "s") == 0  # --teacher NAME
    meta = yaml.safe_load((tmp_path / "s" / "model" / "model.yaml").read_text())
    assert meta["teacher"]["path"] == "toy-teacher"
    # the installed package moves: the student still finds its teacher in the (new) zoo
    moved = tmp_path / "site" / "zoo"
    shutil.copytree(zoo, moved)
    shutil.rmtree(zoo)
    monkeypatch.setattr(folder, "zoo_dir", lambda: moved)
    student = load(tmp_path / "s")
    e = np.full(3, 20_000.0)
    assert student.sample(e, seed=1).energies.shape[0] == 3
    assert student.teacher_reference["path"] == "toy-teacher"


def _fresh_student(teacher_dir, toy_data, **config):
    """A tiny untrained student bound to the fixture's teacher, its transforms fitted."""
    from caloforge.models.caloflow_student import CaloFlowStudent
    from caloforge.models.folder import folder_hash

    student = CaloFlowStudent.from_config(config, toy_data.geometry, preset="tiny", seed=3)
    student.fit_conditions(toy_data.conditions)
    student.bind_teacher(load(teacher_dir), {"path": str(teacher_dir),
                                             "sha256": folder_hash(teacher_dir)})
    return student


def test_a_new_student_starts_as_its_teachers_inverse(teacher_dir, toy_data):
    """Spline blocks start as their teacher blocks' inverses: the distillation losses at
    the start are a fraction of a random student's."""
    x = torch.as_tensor(toy_data.energies, dtype=torch.float32)
    e = torch.as_tensor(toy_data.incident_energy, dtype=torch.float32)
    start = {}
    for init in (False, True):
        student = _fresh_student(teacher_dir, toy_data, init_from_teacher=init)
        student.fit_preprocessing(x, e)
        assert student.initialised_from_teacher == (
            {"shower": 2, "layer": 2} if init else None)
        with torch.no_grad():
            start[init] = student.distillation_losses(x, e, None,
                                                      torch.Generator().manual_seed(0))
    for name in ("data", "latent", "block", "layer_data", "layer_latent"):
        assert start[True][name] < 0.5 * start[False][name], (name, start)


def test_the_student_folder_records_which_blocks_started_from_the_teacher(student_dir):
    import yaml

    meta = yaml.safe_load((student_dir / "model.yaml").read_text())
    assert meta["initialised_from_teacher"] == {"shower": 2, "layer": 2}
    assert load(student_dir).initialised_from_teacher == {"shower": 2, "layer": 2}


def test_a_spline_student_folder_from_before_inverse_splines_keeps_its_forward_splines(
        student_dir, tmp_path):
    import yaml
    from zuko.transforms import MonotonicRQSTransform

    from caloforge.models.splines import InverseRQSTransform

    assert load(student_dir).blocks[0].univariate is InverseRQSTransform
    old = tmp_path / "old"
    shutil.copytree(student_dir, old)
    meta = yaml.safe_load((old / "model.yaml").read_text())
    del meta["config"]["inverse_splines"]
    (old / "model.yaml").write_text(yaml.safe_dump(meta))
    student = load(old)
    assert not student.config.inverse_splines
    assert all(b.univariate is MonotonicRQSTransform
               for b in (*student.blocks, *student.layer_blocks))
    e = np.array([3e3, 6e4])
    new, forward = load(student_dir).sample(e, seed=4).energies, student.sample(e, seed=4).energies
    assert np.isfinite(forward).all() and not np.allclose(new, forward)
