"""Checkpoints: exact resume, atomic writes, interruption, corrupt or foreign files."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from caloforge.errors import CaloforgeError, FormatError, InputError, OutputExistsError
from caloforge.training import TrainConfig, train
from caloforge.training.checkpoint import latest_checkpoint, load_checkpoint


def _cfg(**kw):
    base = dict(steps=20, batch_size=16, validate_every=10, checkpoint_every=5)
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", ["wgan", "bibae", "l2lflows"])
def test_exact_resume_bit_for_bit(name, toy_data, tmp_path):
    """2N steps in one go == N steps, stop, resume, N steps (crossing an epoch end and a
    phase change: optimiser moments, schedulers, noise and critic resets all restored)."""
    straight = train(name, toy_data, tmp_path / "a", preset="tiny", train_config=_cfg(),
                     seed=3, progress=False)
    first = train(name, toy_data, tmp_path / "b", preset="tiny",
                  train_config=_cfg(stop_after=10), seed=3, progress=False)
    assert not (tmp_path / "b" / "model").exists()  # not finished: no final model yet
    assert latest_checkpoint(tmp_path / "b").name == "step-00000010"
    del first
    resumed = train(name, toy_data, tmp_path / "b", resume=True, progress=False)
    _assert_same_weights(straight, resumed)
    e = np.array([3e3, 3e4])
    assert np.array_equal(straight.sample(e, generator=1).energies,
                          resumed.sample(e, generator=1).energies)


def test_checkpoint_contents_and_pruning(toy_data, tmp_path):
    train("wgan", toy_data, tmp_path / "r", preset="tiny", train_config=_cfg(), progress=False)
    ck = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert ck == ["latest.json", "step-00000015", "step-00000020"]  # keep_checkpoints=2
    model, state, run = load_checkpoint(tmp_path / "r" / "checkpoints" / "step-00000020")
    assert state["step"] == 20 and set(state["optimizers"]) == {"constrainer", "generator",
                                                                  "critic"}
    assert run["model"] == "wgan" and run["training"]["steps"] == 20
    assert (tmp_path / "r" / "config.yaml").is_file()
    assert (tmp_path / "r" / "checkpoints" / "step-00000020" / "run.yaml").is_file()
    assert not list((tmp_path / "r").rglob("*.part"))


def test_failed_checkpoint_write_loses_nothing(toy_data, tmp_path, monkeypatch):
    out = tmp_path / "r"
    train("wgan", toy_data, out, preset="tiny", train_config=_cfg(stop_after=5),
          progress=False)
    before = latest_checkpoint(out)
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CaloforgeError, match="No space left on device; the last checkpoint "
                                             "step-00000005 is intact"):
        train("wgan", toy_data, out, resume=True, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert latest_checkpoint(out) == before
    assert not list(out.rglob("*.part"))
    model, state, _ = load_checkpoint(before)  # still complete and loadable
    assert state["step"] == 5


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_and_resumes_bit_for_bit(signum, toy_data, tmp_path,
                                                              monkeypatch):
    """The signal arrives in the middle of step 8 (after it drew noise): the run finishes
    that step, checkpoints step 8 and stops; the resumed run equals an uninterrupted one."""
    from caloforge.models.l2lflows import L2LFlows
    from caloforge.training.interrupt import TrainingInterrupted
    cfg = _cfg(steps=12, checkpoint_every=100)
    straight = train("l2lflows", toy_data, tmp_path / "a", preset="tiny", train_config=cfg,
                     seed=2, progress=False)
    real_step = L2LFlows.training_step
    calls = {"n": 0}

    def signalled(self, batch, phase, ctx):
        calls["n"] += 1
        losses = real_step(self, batch, phase, ctx)
        if calls["n"] == 8:
            os.kill(os.getpid(), signum)
        return losses

    monkeypatch.setattr(L2LFlows, "training_step", signalled)
    with pytest.raises(TrainingInterrupted) as info:
        train("l2lflows", toy_data, tmp_path / "r", preset="tiny", train_config=cfg, seed=2,
              progress=False)
    assert info.value.step == 8 and info.value.exit_code == 128 + signum
    assert latest_checkpoint(tmp_path / "r").name == "step-00000008"
    assert signal.getsignal(signum) is not None  # handlers restored
    monkeypatch.setattr(L2LFlows, "training_step", real_step)
    resumed = train("l2lflows", toy_data, tmp_path / "r", resume=True, progress=False)
    _assert_same_weights(straight, resumed)


def test_interrupt_inside_a_step_keeps_the_last_consistent_checkpoint(toy_data, tmp_path,
                                                                    monkeypatch):
    """An exception that aborts a step half-way (a second Ctrl-C) writes no checkpoint of
    the half-updated state: the last periodic checkpoint stays the latest."""
    from caloforge.models.wgan import WGAN
    real_step = WGAN.training_step
    calls = {"n": 0}

    def interrupting(self, batch, phase, ctx):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_step(self, batch, phase, ctx)

    monkeypatch.setattr(WGAN, "training_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train("wgan", toy_data, tmp_path / "r", preset="tiny", train_config=_cfg(steps=12),
              progress=False)
    assert latest_checkpoint(tmp_path / "r").name == "step-00000005"


def test_stop_after_does_not_stick_and_metrics_have_no_duplicates(toy_data, tmp_path,
                                                                 recwarn):
    out = tmp_path / "r"
    cfg = _cfg(steps=20, validate_every=2, stop_after=7)
    train("wgan", toy_data, out, preset="tiny", train_config=cfg, seed=4, progress=False)
    assert latest_checkpoint(out).name == "step-00000007"
    # A kill after step 8 was logged but before it was checkpointed, with a torn last line.
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 8, "phase": "gan"}) + "\n" + '{"step": 1')
    # Resuming with the original options (less --stop-after) warns of nothing and runs on.
    train("wgan", toy_data, out, preset="tiny", train_config=cfg.replace(stop_after=0),
          seed=4, resume=True, progress=False)
    assert not [w for w in recwarn if "ignoring" in str(w.message)]
    assert (out / "model" / "model.yaml").is_file()  # ran to the end, not 7 more steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [*range(2, 21, 2), 20]  # the last: final validation
    assert rows[-1]["phase"] == "final"
    with pytest.warns(UserWarning, match="ignoring batch_size, seed"):
        train("wgan", toy_data, tmp_path / "r", train_config=cfg.replace(batch_size=8),
              seed=9, resume=True, progress=False)


def test_corrupt_and_foreign_checkpoints(toy_data, tmp_path):
    out = tmp_path / "r"
    train("l2lflows", toy_data, out, preset="tiny", train_config=_cfg(stop_after=5),
          progress=False)
    ck = latest_checkpoint(out)
    state = ck / "training_state.pt"
    good = state.read_bytes()
    state.write_bytes(b"garbage" * 10)
    with pytest.raises(FormatError, match="corrupt or foreign training state"):
        train("l2lflows", toy_data, out, resume=True, progress=False)
    # A pickle that would run code / build arbitrary objects is refused, not executed.
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    state.write_bytes(pickle.dumps({"step": Evil()}, protocol=2))
    with pytest.raises(FormatError, match="corrupt or foreign"):
        train("l2lflows", toy_data, out, resume=True, progress=False)
    state.write_bytes(good)
    (out / "checkpoints" / "latest.json").write_text("{not json")
    with pytest.raises(FormatError, match="corrupt checkpoint pointer"):
        train("l2lflows", toy_data, out, resume=True, progress=False)
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": ck.name}))
    with pytest.raises(InputError, match="'l2lflows' model, not 'wgan'"):
        train("wgan", toy_data, out, resume=True, progress=False)
    train("l2lflows", toy_data, out, resume=True, progress=False)  # intact again


def test_output_folder_rules(toy_data, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        train("wgan", toy_data, out, preset="tiny", train_config=_cfg(), progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        train("wgan", toy_data, tmp_path / "new", resume=True, progress=False)
    with pytest.raises(InputError, match="fewer than one batch"):
        train("wgan", toy_data[:20], tmp_path / "small", preset="tiny",
              train_config=_cfg(batch_size=64), progress=False)



def test_divergence_is_a_clear_error_and_keeps_the_checkpoint(toy_data, tmp_path):
    from caloforge.models.base import TrainingDiverged
    from caloforge.training import loop
    out = tmp_path / "r"
    train("l2lflows", toy_data, out, preset="tiny", train_config=_cfg(stop_after=5),
          progress=False)
    trainer = loop.Trainer("l2lflows", toy_data, out, resume=True, show_progress=False)
    with torch.no_grad():  # poison the weights: the next loss is NaN
        next(trainer.model.energy_flow.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite flows loss at step 5"):
        trainer.run()
    assert latest_checkpoint(out).name == "step-00000005"
    load_checkpoint(latest_checkpoint(out))  # intact
