"""Resource failures: full disk (real tmpfs and mocked errno), read-only folders, outputs
that are folders, closed pipes, signals, temporaries of killed runs, devices.

Every case asserts: non-zero exit, one line naming the file or option and the problem, no
traceback, no output or temporary file left behind, nothing already on disk harmed.
Read-only folders use a read-only tmpfs mount where allowed (as root, chmod does not stop
writes) and mocked EROFS/EACCES otherwise (those cases always run).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from robust_helpers import (
    assert_no_temporaries,
    assert_one_line_error,
    cli_env,
    run_cli,
    run_process,
)

from caloforge.data.io import read_showers, write_showers
from caloforge.errors import ConfigError, ResourceError
from caloforge.utils import atomic_dir, resolve_device
from caloforge.utils.atomic import clean_stale_temporaries, temp_path
from caloforge.utils.safe_io import GuardedFile, as_resource_error


# ---- full disk ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["caloforge", "calochallenge", "ild", "pointcloud"])
def test_full_tmpfs_convert_is_a_clean_error(tiny_disk, shower_file, fmt):
    """Was a segfault (exit 139) inside HDF5: every writer now fails with one line."""
    out = tiny_disk / "out.h5"
    done = run_process(["convert", shower_file, out, "--to", fmt])
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.returncode, done.stderr, str(out), "no space left on device")
    assert list(tiny_disk.iterdir()) == []


def test_full_tmpfs_merge_is_a_clean_error(tiny_disk, shower_file):
    out = tiny_disk / "merged.h5"
    copy = shower_file.with_name("copy.h5")
    copy.write_bytes(shower_file.read_bytes())
    done = run_process(["merge", out, shower_file, copy])
    assert_one_line_error(done.returncode, done.stderr, str(out), "no space left on device")
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("command", ["simulate", "generate"])
def test_full_tmpfs_simulate_and_generate(tiny_disk, command):
    """Were a segfault (simulate) and a traceback (generate)."""
    out = tiny_disk / "s.h5"
    args = {"simulate": ["simulate", "--detector", "ild-ecal", "--particle", "photon",
                         "--energy", "10", "-n", "4", "--chunk-size", "1"],
            "generate": ["generate", "--model", "ild-ecal-photons", "--energy", "10:20",
                         "-n", "6", "--batch-size", "1", "--threads", "1"]}[command]
    done = run_process([*args, "-o", out, "--format", "calochallenge"])
    # simulate refuses up front when the free space cannot hold the next batch (an HDF5
    # write failure would crash the process); generate meets the full disk on writing
    needle = "free disk space" if command == "simulate" else "no space left on device"
    assert_one_line_error(done.returncode, done.stderr, str(out), needle)
    assert list(tiny_disk.iterdir()) == []


class _FailAfter:
    """Stands in for os.pwrite: fails with ``code`` once ``budget`` bytes are written."""

    def __init__(self, code: int, budget: int) -> None:
        self.code, self.budget = code, budget

    def __call__(self, fd, data, offset):  # noqa: ANN001, ANN204
        if self.budget < len(data):
            raise OSError(self.code, os.strerror(self.code))
        self.budget -= len(data)
        return os.write(fd, data) if os.lseek(fd, offset, 0) >= 0 else 0


@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded"),
    (errno.EIO, "input/output error"), (errno.EFBIG, "file too large"),
])
@pytest.mark.parametrize("fmt", ["caloforge", "ild"])
def test_mocked_write_failures(tmp_path, shower_file, capsys, monkeypatch, code, reason, fmt):
    """Always runs (no mount needed): the first write beyond 64 KiB fails with ``code``."""
    monkeypatch.setattr("caloforge.utils.safe_io.os.pwrite", _FailAfter(code, 65536))
    out = tmp_path / "out.h5"
    result = run_cli(["convert", shower_file, out, "--to", fmt], capsys)
    assert_one_line_error(result[0], result[2], str(out), reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_failed_overwrite_keeps_the_old_output(tmp_path, shower_file, capsys, monkeypatch):
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    monkeypatch.setattr("caloforge.utils.safe_io.os.pwrite", _FailAfter(errno.ENOSPC, 4096))
    code, _, err = run_cli(["convert", shower_file, out, "--to", "caloforge", "--overwrite"],
                           capsys)
    assert_one_line_error(code, err, "no space left on device")
    assert out.read_bytes() == b"precious"
    assert_no_temporaries(tmp_path)


def test_h5py_and_safetensors_error_texts_are_recognised(tmp_path):
    """h5py hides errno in RuntimeError text and names the temporary; safetensors says
    '(os error N)'.  Both become one line naming the real output."""
    tmp = temp_path(tmp_path / "x.h5")
    h5 = RuntimeError(f"Unable to flush (file write failed: filename = '{tmp}', "
                      "file descriptor = 4, errno = 28, error message = 'No space left')")
    err = as_resource_error(h5)
    assert isinstance(err, ResourceError) and str(err) == f"{tmp_path / 'x.h5'}: no space " \
                                                          "left on device"
    report = OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".rep.part"))
    assert str(as_resource_error(report)) == f"{tmp_path / 'rep'}: read-only file system"
    rust = Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)")
    assert "disk quota exceeded" in str(as_resource_error(rust, "m/model.safetensors"))
    assert as_resource_error(RuntimeError("a plain bug")) is None


def test_unrecognised_exceptions_stay_bugs(monkeypatch):
    """Only OS-level failures are turned into one line; anything else is a traceback."""
    from caloforge.cli import info

    def boom(args):  # noqa: ANN001, ANN202
        raise RuntimeError("a plain bug")

    monkeypatch.setattr(info, "run", boom)
    from caloforge.cli import main

    with pytest.raises(RuntimeError, match="a plain bug"):
        main(["info", "x.h5"])


# ---- read-only folders -------------------------------------------------------------------
@pytest.mark.parametrize("command", ["convert", "merge", "simulate"])
def test_readonly_mount(readonly_dir, shower_file, capsys, command):
    out = readonly_dir / "o.h5"
    args = {"convert": ["convert", shower_file, out, "--to", "caloforge"],
            "merge": ["merge", out, shower_file],
            "simulate": ["simulate", "--detector", "ild-ecal", "--particle", "photon",
                         "--energy", "10", "-n", "2", "-o", out]}[command]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, str(out), "read-only file system")


@pytest.mark.parametrize("code,reason", [(errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_mocked_unwritable_folder(tmp_path, shower_file, capsys, monkeypatch, code, reason):
    """The folder looks writable but creating the temporary file fails (ACLs, races)."""
    def refuse(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise OSError(code, os.strerror(code), str(args[0]))

    monkeypatch.setattr(GuardedFile, "__init__", refuse)
    out = tmp_path / "o.h5"
    result = run_cli(["convert", shower_file, out, "--to", "ild"], capsys)
    assert_one_line_error(result[0], result[2], str(out), reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_output_is_a_directory(tmp_path, shower_file, capsys):
    for args in (["convert", shower_file, tmp_path, "--to", "caloforge"],
                 ["merge", tmp_path, shower_file],
                 ["convert", shower_file, tmp_path, "--to", "caloforge", "--overwrite"]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, str(tmp_path), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


# ---- pipes and signals -------------------------------------------------------------------
def test_closed_pipe_exits_quietly(shower_file):
    """``caloforge info f.h5 | head -c1``: the reader is gone before we print."""
    proc = subprocess.Popen([sys.executable, "-m", "caloforge.cli", "info", shower_file],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    proc.stdout.close()  # the reader went away
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert err == ""


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """4000 ild-ecal showers: converting them to ILD takes seconds."""
    from caloforge.data import Conditions, ShowerBatch

    path = tmp_path_factory.mktemp("long") / "long.h5"
    rng = np.random.default_rng(0)
    with write_showers(path, "caloforge", "ild-ecal", sparse=True) as w:
        for _ in range(20):
            e = (rng.random((200, 27000)) < 0.02) * rng.exponential(1.0, (200, 27000))
            w.append(ShowerBatch("ild-ecal", e.astype(np.float32),
                                 Conditions(rng.uniform(1e4, 1e5, 200))))
    return path


def _start_convert(src, out):  # noqa: ANN001, ANN202
    proc = subprocess.Popen([sys.executable, "-m", "caloforge.cli", "convert", str(src),
                             str(out), "--to", "ild", "--batch-size", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
                            text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part") for p in out.parent.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGHUP, 129, "terminated (SIGHUP)"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_signal_during_convert_leaves_nothing(tmp_path, long_file, sig, code, word):
    out = tmp_path / "o.h5"
    proc = _start_convert(long_file, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert_one_line_error(proc.returncode, err, word)
    assert list(tmp_path.iterdir()) == []


def test_temporary_of_killed_run_is_cleaned_by_next_run(tmp_path, shower_file, long_file):
    out = tmp_path / "o.h5"
    proc = _start_convert(long_file, out)
    proc.kill()  # kill -9: no cleanup code runs
    proc.wait(timeout=60)
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(stale) == 1
    done = run_process(["convert", shower_file, out, "--to", "caloforge"])
    assert done.returncode == 0, done.stderr
    assert "removed 1 temporary file" in done.stderr and stale[0].name in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "o.h5"]
    assert len(read_showers(out)) == 40


def test_live_and_foreign_temporaries_are_kept(tmp_path):
    out = tmp_path / "o.h5"
    sleeper = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine = temp_path(out)
        live = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{sleeper.pid}-"))
        stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
        other_host = out.with_name(f".o.h5.otherhost-{dead.pid}-abcdef.part")
        reused = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{sleeper.pid}-")
                                .replace(mine.name[-11:-5], "0badc0"))
        for p in (mine, live, stale, other_host, reused):
            p.write_bytes(b"x")
        old = time.time() - 3600  # written an hour before the sleeper started: pid reused
        os.utime(reused, (old, old))
        removed = clean_stale_temporaries(out)
        assert sorted(removed) == sorted([stale, reused])
        assert mine.exists() and live.exists() and other_host.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_dir_cleans_up_and_replaces(tmp_path):
    target = tmp_path / "rep"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


# ---- devices -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,match", [
    ("foo", "unknown device 'foo'"), ("", "no device given"), ("cpu:1", "unknown device"),
    ("meta", "unsupported device 'meta'"), ("cuda:x", "unknown device 'cuda:x'"),
    ("cuda:99", "cuda:99 requested but"),
])
def test_resolve_device_refuses(name, match):
    with pytest.raises(ConfigError, match=f"--device: {match}"):
        resolve_device(name)
    assert str(resolve_device("cpu")) == "cpu"


def test_absent_cuda_is_named():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="--device: cuda requested but not available"):
        resolve_device("cuda")


def test_signal_inside_hdf5_write_is_deferred_to_a_safe_point(tmp_path, shower_file, capsys,
                                                               monkeypatch):
    """A signal whose handler runs inside HDF5's write callback must not raise there (h5py
    would swallow it or HDF5 would be left with a failed write); it ends the run after the
    batch, and the temporary file is removed."""
    from caloforge.cli import _on_signal

    real_pwrite = os.pwrite
    calls = []

    def pwrite_with_signal(fd, data, offset):  # noqa: ANN001, ANN202
        if not calls:  # the signal arrives during the first write
            calls.append(1)
            _on_signal(signal.SIGINT, sys._getframe())
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr("caloforge.utils.safe_io.os.pwrite", pwrite_with_signal)
    code, _, err = run_cli(["convert", shower_file, tmp_path / "o.h5", "--to", "ild"], capsys)
    assert calls and code == 130
    assert_one_line_error(code, err, "interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_interrupt_inside_write_without_cli_handlers(tmp_path, showers, monkeypatch):
    """Library use (no CLI signal handlers): a KeyboardInterrupt raised inside a write is
    held, the write is redone at the same offset, and the interrupt is raised afterwards."""
    real_pwrite = os.pwrite
    raised = []

    def flaky(fd, data, offset):  # noqa: ANN001, ANN202
        if not raised:
            raised.append(1)
            raise KeyboardInterrupt
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr("caloforge.utils.safe_io.os.pwrite", flaky)
    with pytest.raises(KeyboardInterrupt):
        with write_showers(tmp_path / "o.h5", "calochallenge", "calogan") as w:
            w.append(showers("calogan", 3))
            pytest.fail("the interrupt must surface after the first batch")
    assert list(tmp_path.iterdir()) == []


def test_swallowed_signal_still_ends_the_run(tmp_path, shower_file, capsys, monkeypatch):
    """A handler's exception raised inside a __del__ or weakref callback is printed and
    lost by Python; the noted interrupt is raised at the writer's next safe point."""
    from caloforge.errors import Terminated
    from caloforge.utils.safe_io import note_interrupt

    real_pwrite = os.pwrite

    def pwrite_noting(fd, data, offset):  # noqa: ANN001, ANN202
        note_interrupt(Terminated(signal.SIGTERM))  # as if the raise had been swallowed
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr("caloforge.utils.safe_io.os.pwrite", pwrite_noting)
    code, _, err = run_cli(["convert", shower_file, tmp_path / "o.h5", "--to", "ild"], capsys)
    assert code == 143
    assert_one_line_error(code, err, "terminated (SIGTERM)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]
    monkeypatch.undo()
    code, _, err = run_cli(["convert", shower_file, tmp_path / "o.h5", "--to", "ild"], capsys)
    assert code == 0, err  # the note does not outlive the command


def test_signal_raised_inside_a_destructor_is_not_lost(tmp_path, shower_file, capsys,
                                                        monkeypatch):
    """Python prints and drops exceptions raised in __del__ (where a signal handler can
    run); the run must still end with 143, one line on stderr and no temporary file."""
    from caloforge.cli import _on_signal
    from caloforge.data.io.base import ShowerWriter

    class _Dying:
        def __del__(self) -> None:
            _on_signal(signal.SIGTERM, sys._getframe())

    real_append = ShowerWriter.append

    def append_once_signalled(self, batch):  # noqa: ANN001, ANN202
        if self.n_written == 0:
            _Dying()  # destroyed at once: the handler's exception is "ignored" by Python
        return real_append(self, batch)

    monkeypatch.setattr(ShowerWriter, "append", append_once_signalled)
    code, _, err = run_cli(["convert", shower_file, tmp_path / "o.h5", "--to", "caloforge",
                            "--batch-size", "10"], capsys)
    assert code == 143, err
    assert_one_line_error(code, err, "terminated (SIGTERM)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]
