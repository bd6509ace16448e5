"""`caloforge train` under bad input, full disks, read-only folders and signals: one clear
line and a non-zero exit, nothing half-written, and SIGINT/SIGTERM resumable bit for bit."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from caloforge.cli import main
from caloforge.training.checkpoint import latest_checkpoint, load_checkpoint

# The toy geometry is registered at run time, so the child process registers it first.
CHILD = ("import sys; from caloforge.models.toy import toy_geometry; toy_geometry(); "
         "from caloforge.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def gan_config(tmp_path_factory):
    """Tiny WGAN that leaves its constrainer phase after 2 of 2000 steps, so that the
    steps around an interruption draw generator noise."""
    path = tmp_path_factory.mktemp("cfg") / "wgan.yaml"
    path.write_text("model:\n  preset: tiny\n  constrainer_fraction: 0.001\n")
    return path


def _args(toy_file, out, *extra, length=("--steps", "4")):
    return ["train", "--model", "wgan", "--data", str(toy_file), "--out", str(out),
            *length, "--batch-size", "16", "--no-progress", *extra]


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("caloforge train: error:") and "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("option,value,message", [
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--batch-size", "-3", "--batch-size must be >= 1, got -3"),
    ("--steps", "0", "--steps must be >= 1"),
    ("--epochs", "-1", "--epochs must be >= 1"),
    ("--threads", "0", "--threads must be >= 1"),
    ("--max-showers", "0", "--max-showers must be >= 1"),
    ("--stop-after", "-2", "--stop-after must be >= 1"),
    ("--checkpoint-every", "0", "--checkpoint-every must be >= 1"),
    ("--validate-every", "-1", "--validate-every must be >= 0"),
    ("--seed", "-1", "--seed must be >= 0"),
    ("--device", "tpu9", "--device: unknown device 'tpu9'"),
    ("--device", "cuda:7", "--device: "),
])
def test_bad_option_is_one_line_and_writes_nothing(option, value, message, toy_file,
                                                   tmp_path, capsys):
    out = tmp_path / "run"
    if option in ("--steps", "--epochs"):
        args = _args(toy_file, out, length=(option, value))
    else:
        args = _args(toy_file, out, option, value)
    assert main(args) == 1
    _one_error_line(capsys, message)
    assert not out.exists()


@pytest.mark.parametrize("yaml_text,message", [
    ("training:\n  validation_showers: -5\n", "'validation_showers' must be >= 0"),
    ("training:\n  ema_decay: 1.5\n", "'ema_decay' must lie in [0, 1)"),
    ("training:\n  grad_clip: -1\n", "'grad_clip' must be a number >= 0"),
    ("training:\n  grad_clip_by_optimizer: {gen: 1.0}\n", "unknown optimiser(s) gen"),
    ("training:\n  frozen_models: {teacher: /no/such/folder}\n", "frozen teacher model"),
    ("training:\n  shuffle_buffer_mb: 0\n", "'shuffle_buffer_mb' must be > 0"),
])
def test_bad_training_config_value(yaml_text, message, toy_file, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    assert main(_args(toy_file, tmp_path / "run", "--config", str(cfg))) == 1
    _one_error_line(capsys, message)
    assert not (tmp_path / "run").exists()


def test_missing_data_file_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tmp_path / "missing.h5", out)) == 1
    _one_error_line(capsys, "missing.h5", "does not exist")
    assert not out.exists()


def test_output_is_a_file(toy_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("keep me")
    assert main(_args(toy_file, out)) == 1
    _one_error_line(capsys, "not a folder")
    assert out.read_text() == "keep me"


def test_resume_without_checkpoint(toy_file, tmp_path, capsys):
    assert main(_args(toy_file, tmp_path / "run", "--resume")) == 1
    _one_error_line(capsys, "nothing to resume")


def test_read_only_output_folder(toy_file, tmp_path, capsys, monkeypatch):
    """Refused before the data are read (the write probe fails), nothing left behind."""
    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-test"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    out = tmp_path / "run"
    assert main(_args(toy_file, out)) == 1
    _one_error_line(capsys, "cannot write the output folder: Read-only file system")
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_output_folder_for_real(toy_file, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(_args(toy_file, ro / "run")) == 1
        _one_error_line(capsys, "cannot write the output folder")
    finally:
        ro.chmod(0o755)


def test_full_disk_keeps_the_previous_checkpoint(toy_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_args(toy_file, out, "--checkpoint-every", "2", "--stop-after", "2")) == 0
    capsys.readouterr()
    before = latest_checkpoint(out)
    weights = (before / "model.safetensors").read_bytes()

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert main(_args(toy_file, out, "--checkpoint-every", "2", "--resume")) == 1
    _one_error_line(capsys, "No space left on device", "step-00000002 is intact")
    assert latest_checkpoint(out) == before
    assert (before / "model.safetensors").read_bytes() == weights
    assert not [p for p in out.rglob("*") if ".part" in p.name or ".old" in p.name]
    assert not (out / "model").exists()


def test_stale_temporaries_of_a_killed_run_are_removed_on_resume(toy_file, tmp_path):
    out = tmp_path / "run"
    assert main(_args(toy_file, out, "--checkpoint-every", "2", "--stop-after", "2")) == 0
    stale = out / "checkpoints" / ".step-00000004.1234abcd.part"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert main(_args(toy_file, out, "--resume")) == 0
    assert not stale.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_is_bit_for_bit(signum, toy_file, gan_config, tmp_path):
    """A real `caloforge train` process gets the signal at an arbitrary moment (mostly in
    the middle of a step); it exits 128+signal with a checkpoint of its last complete step
    k; resuming for 4 steps gives exactly the checkpoint of an uninterrupted k+4 steps."""
    common = ["--config", str(gan_config), "--steps", "2000", "--seed", "5", "--threads", "1",
              "--validate-every", "0"]
    out = tmp_path / "interrupted"
    args = _args(toy_file, out, "--checkpoint-every", "3", *common, length=())
    env = dict(os.environ, OMP_NUM_THREADS="1", CALOFORGE_NO_PROGRESS="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "latest.json").exists():  # training is under way
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signum, err[-2000:]
    assert f"interrupted by {signal.Signals(signum).name} after step" in err
    assert "Traceback" not in err
    k = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert 3 <= k < 2000
    args = [a for a in args if a != "--checkpoint-every" and a != "3"]
    assert main(args + ["--resume", "--stop-after", "4", "--checkpoint-every", "1000"]) == 0
    straight = tmp_path / "straight"
    cli = [a if a != str(out) else str(straight) for a in args]
    assert main(cli + ["--stop-after", str(k + 4), "--checkpoint-every", "1000"]) == 0
    a_model, a_state, _ = load_checkpoint(latest_checkpoint(out))
    b_model, b_state, _ = load_checkpoint(latest_checkpoint(straight))
    assert a_state["step"] == b_state["step"] == k + 4
    for key, value in a_model.state_dict().items():
        assert torch.equal(value, b_model.state_dict()[key]), key
    assert torch.equal(a_state["noise_generator"], b_state["noise_generator"])
