"""Weight averaging (EMA), gradient clipping and frozen models attached by reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from caloforge.errors import ConfigError, InputError
from caloforge.training import TrainConfig, train
from caloforge.training.checkpoint import latest_checkpoint, load_checkpoint, load_model_dir
from caloforge.training.ema import EMA_FILE, clip_gradients


def _cfg(**kw):
    base = dict(steps=10, batch_size=16, validate_every=0, checkpoint_every=5)
    base.update(kw)
    return TrainConfig(**base)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_ema_is_saved_chosen_for_sampling_and_resumes_exactly(toy_data, tmp_path):
    cfg = _cfg(ema_decay=0.8)
    straight = train("l2lflows", toy_data, tmp_path / "a", preset="tiny", train_config=cfg,
                     progress=False)
    folder = tmp_path / "a" / "model"
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    assert meta["ema"] == {"decay": 0.8, "use_for_sampling": True}
    assert (folder / EMA_FILE).is_file()
    ema = load_model_dir(folder)
    live = load_model_dir(folder, weights="live")
    assert not _same(ema.state_dict(), live.state_dict())  # the average lags the weights
    assert _same(ema.state_dict(), straight.state_dict())  # train() returns what loads
    e = np.array([3e3, 3e4])
    assert np.array_equal(ema.sample(e, generator=1).energies,
                          straight.sample(e, generator=1).energies)
    # The shadow is part of the checkpoint: stop at 5, resume, same averaged weights.
    train("l2lflows", toy_data, tmp_path / "b", preset="tiny",
          train_config=cfg.replace(stop_after=5), progress=False)
    assert (latest_checkpoint(tmp_path / "b") / EMA_FILE).is_file()
    resumed = train("l2lflows", toy_data, tmp_path / "b", resume=True, progress=False)
    assert _same(resumed.state_dict(), straight.state_dict())
    # use_ema false: the folder keeps the average, but sampling uses the live weights.
    train("l2lflows", toy_data, tmp_path / "c", preset="tiny",
          train_config=cfg.replace(use_ema=False), progress=False)
    plain = load_model_dir(tmp_path / "c" / "model")
    assert _same(plain.state_dict(), live.state_dict())
    assert _same(load_model_dir(tmp_path / "c" / "model", weights="ema").state_dict(),
                 ema.state_dict())


def test_finalize_sees_the_weights_the_model_samples_with(toy_data, tmp_path, monkeypatch):
    """Calibrations fitted after training (finalize) use the averaged weights when those
    are the ones sampled with; the live weights are back afterwards (they are saved)."""
    from caloforge.models.l2lflows import L2LFlows

    seen = {}

    def spy(self, x, e_inc, generator, angles=None):
        seen[len(seen)] = {k: p.detach().clone() for k, p in self.named_parameters()}

    monkeypatch.setattr(L2LFlows, "finalize", spy)
    for run, use in (("ema", True), ("live", False)):
        train("l2lflows", toy_data, tmp_path / run, preset="tiny",
              train_config=_cfg(ema_decay=0.8, use_ema=use), progress=False)
    folder = tmp_path / "ema" / "model"
    assert _same(seen[0], dict(load_model_dir(folder).named_parameters()))
    assert _same(seen[1], dict(load_model_dir(tmp_path / "live" / "model").named_parameters()))
    assert not _same(seen[0], dict(load_model_dir(folder, weights="live").named_parameters()))


def test_sampling_weights_are_put_back_after_an_error():
    from caloforge.models.ema import EMA

    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    live = net.weight.detach().clone()
    with pytest.raises(RuntimeError), ema.sampling_weights(net):
        assert torch.equal(net.weight, ema.shadow["weight"])
        raise RuntimeError("fit failed")
    assert torch.equal(net.weight, live)


def test_ema_needs_a_decay_below_one():
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0).validate()


def test_clip_gradients_bounds_each_optimisers_step():
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    opts = {"a": torch.optim.SGD(a.parameters(), lr=1.0),
            "b": torch.optim.SGD(b.parameters(), lr=1.0)}
    clip_gradients(opts, 0.0, {"a": 0.01})
    before = [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
    for net in (a, b):
        net(torch.full((8, 4), 100.0)).pow(2).sum().backward()
    for o in opts.values():
        o.step()
    delta_a = torch.cat([(p.detach() - q).flatten() for p, q in zip(a.parameters(), before[:2])])
    delta_b = torch.cat([(p.detach() - q).flatten() for p, q in zip(b.parameters(), before[2:])])
    assert float(delta_a.norm()) == pytest.approx(0.01, rel=1e-4)  # clipped to the limit
    assert float(delta_b.norm()) > 1.0  # 0 = not clipped


def test_grad_clip_in_training_and_bad_names(toy_data, tmp_path):
    free = train("wgan", toy_data, tmp_path / "a", preset="tiny", train_config=_cfg(),
                 progress=False)
    clipped = train("wgan", toy_data, tmp_path / "b", preset="tiny",
                    train_config=_cfg(grad_clip=1e-3, grad_clip_by_optimizer={"critic": 0.5}),
                    progress=False)
    assert not _same(free.state_dict(), clipped.state_dict())
    with pytest.raises(ConfigError, match="unknown optimiser.*gen.*has constrainer, generator"):
        train("wgan", toy_data, tmp_path / "c", preset="tiny",
              train_config=_cfg(grad_clip_by_optimizer={"gen": 1.0}), progress=False)
    with pytest.raises(ConfigError, match="grad_clip_by_optimizer.critic"):
        _cfg(grad_clip_by_optimizer={"critic": -1.0}).validate()


@pytest.fixture(scope="module")
def teacher(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train("wgan", toy_data, out, preset="tiny", train_config=_cfg(steps=4), progress=False)
    return out / "model"


def test_frozen_model_by_reference(toy_data, teacher, tmp_path, monkeypatch):
    from caloforge.models.l2lflows import L2LFlows
    seen = []
    real_step = L2LFlows.training_step

    def spy(self, batch, phase, ctx):
        t = ctx.frozen["teacher"]
        seen.append((t.name, t.training, any(p.requires_grad for p in t.parameters())))
        return real_step(self, batch, phase, ctx)

    monkeypatch.setattr(L2LFlows, "training_step", spy)
    out = tmp_path / "student"
    cfg = _cfg(frozen_models={"teacher": str(teacher)}, stop_after=5)
    train("l2lflows", toy_data, out, preset="tiny", train_config=cfg, progress=False)
    assert seen[0] == ("wgan", False, False)  # loaded, in eval mode, frozen
    ck = latest_checkpoint(out)
    _, _, run = load_checkpoint(ck)
    ref = run["frozen_models"]["teacher"]
    assert ref["path"] == str(teacher.resolve()) and len(ref["sha256"]) == 64
    assert not (ck / "frozen").exists()  # referenced, not copied
    student_files = {p.name for p in ck.iterdir()}
    assert "frozen" not in student_files
    # A changed teacher is refused on resume; so is a missing one.
    weights = teacher / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(InputError, match="frozen teacher model changed since the run started"):
        train("l2lflows", toy_data, out, resume=True, progress=False)
    weights.write_bytes(good)
    moved = teacher.with_name("moved")
    teacher.rename(moved)
    try:
        with pytest.raises(InputError, match="frozen teacher model is missing"):
            train("l2lflows", toy_data, out, resume=True, progress=False)
    finally:
        moved.rename(teacher)
    train("l2lflows", toy_data, out, resume=True, progress=False)
    assert (out / "model" / "model.yaml").is_file()


def test_copied_frozen_model_survives_its_original(toy_data, teacher, tmp_path):
    import shutil
    private = tmp_path / "teacher_copy"
    shutil.copytree(teacher, private)
    out = tmp_path / "student"
    cfg = _cfg(frozen_models={"teacher": str(private)}, copy_frozen_models=True, stop_after=5)
    train("l2lflows", toy_data, out, preset="tiny", train_config=cfg, progress=False)
    assert (latest_checkpoint(out) / "frozen" / "teacher" / "model.safetensors").is_file()
    shutil.rmtree(private)
    train("l2lflows", toy_data, out, resume=True, progress=False)  # uses the checkpoint copy


def test_unknown_frozen_model_path_is_one_clear_error(toy_data, tmp_path):
    with pytest.raises(InputError, match="frozen teacher model: .*nowhere"):
        train("wgan", toy_data, tmp_path / "s", preset="tiny",
              train_config=_cfg(frozen_models={"teacher": str(tmp_path / "nowhere")}),
              progress=False)
