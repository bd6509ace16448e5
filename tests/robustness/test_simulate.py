"""`caloforge simulate` under bad input, a full disk and signals: one clear line, a
non-zero exit, no traceback, nothing left behind, no worker process outliving the run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from caloforge.cli import main

BASE = ["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy", "1",
        "-n", "4"]


def assert_clean_failure(code: int, err: str, folder: Path, *words: str) -> None:
    """Exit 1, exactly one line on stderr containing ``words``, no file left in ``folder``."""
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("caloforge simulate: error:")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert sorted(p.name for p in folder.iterdir()) == []


BAD_INPUT = [
    (["-n", "0"], "-n"),
    (["-n", "-5"], "-n"),
    (["-n", "2.5"], "-n"),
    (["-n", "many"], "-n"),
    (["--chunk-size", "0"], "--chunk-size"),
    (["--chunk-size", "-10"], "--chunk-size"),
    (["--workers", "0"], "--workers"),
    (["--workers", "-2"], "--workers"),
    (["--workers", "100000"], "--workers"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--shard", "4/4"], "shard"),
    (["--shard", "0/0"], "shard"),
    (["--shard", "0/9"], "more shards than showers"),
    (["--shard", "1-2"], "--shard"),
    (["--min-hits", "-1"], "--min-hits"),
    (["--energy", "0"], "> 0"),
    (["--energy=-3"], "> 0"),
    (["--energy", "nan"], "--energy"),
    (["--energy", "inf"], "--energy"),
    (["--energy", "0.001"], "outside the range"),
    (["--energy", "2000"], "outside the range"),
    (["--energy", "5:1"], "reversed"),
    (["--energy", "0:5:log"], "log-uniform"),
    (["--particle", "pi+", "--energy", "1"], "outside the range"),
    (["--particle", "pi-", "--energy", "600"], "outside the range"),
    (["--theta", "90"], "theta"),
    (["--theta", "-5"], "theta"),
    (["--theta", "nan"], "--theta"),
    (["--theta", "10:95"], "theta"),
    (["--phi", "inf"], "--phi"),
    (["--impact", "1e6,0"], "outside the ild-ecal front face"),
    (["--impact", "0,-80"], "outside the ild-ecal front face"),
    (["--impact", "nan,0"], "--impact"),
    (["--impact", "1"], "--impact"),
    (["--impact", "a,b"], "--impact"),
    (["--impact", "1,2,3"], "--impact"),
    (["--energy", "10GeV"], "--energy '10GeV'"),  # units belong to the option, not the value
    (["--energy", "1:2:cubic"], "--energy"),
    (["--detector", "nope"], "unknown geometry"),
    (["--particle", "kaon"], "unknown particle"),
    (["--points", "--format", "calochallenge"], "--points"),
]


@pytest.mark.parametrize("extra,word", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_option(tmp_path, capsys, extra, word):
    code = main(BASE + extra + ["-o", str(tmp_path / "out.h5")])
    assert_clean_failure(code, capsys.readouterr().err, tmp_path, word)


def test_output_in_missing_folder(tmp_path, capsys):
    code = main(BASE + ["-o", str(tmp_path / "no" / "out.h5")])
    assert_clean_failure(code, capsys.readouterr().err, tmp_path, "does not exist")


def test_full_disk_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """The free-space guard stops the run before HDF5 meets ENOSPC (which crashed it)."""
    import caloforge.cli.simulate as cli_simulate

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cli_simulate.shutil, "disk_usage",
                        lambda path: usage(10 << 20, 10 << 20, 100 << 10))
    code = main(BASE + ["-o", str(tmp_path / "out.h5")])
    assert_clean_failure(code, capsys.readouterr().err, tmp_path, "out.h5",
                         "not enough free disk space")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped elsewhere)."""
    where = tmp_path / "tiny"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, CALOFORGE_NO_PROGRESS="1")
    return subprocess.Popen([sys.executable, "-m", "caloforge.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_real_full_disk(tiny_tmpfs):
    """20 GeV photons fill a 1 MiB tmpfs after a few hundred showers: before the guard this
    ended in a segfault (exit 139) with the .part file left."""
    proc = run_cli(["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy",
                    "20", "-n", "500", "--chunk-size", "50", "-o", str(tiny_tmpfs / "a.h5")])
    out, err = proc.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert proc.returncode == 1, err[-3000:]
    assert len(lines) == 1 and "not enough free disk space" in lines[0]
    assert list(tiny_tmpfs.iterdir()) == []


def wait_for(condition, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


LONG_RUN = ["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy", "10",
            "-n", "4000", "--chunk-size", "2"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_ends_cleanly(tmp_path, sig):
    proc = run_cli(LONG_RUN + ["-o", str(tmp_path / "out.h5")])
    wait_for(lambda: any(p.name.endswith(".part") for p in tmp_path.iterdir()))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "caloforge simulate: interrupted"]
    assert list(tmp_path.iterdir()) == []


def _workers(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_die_with_the_parent(tmp_path, sig):
    proc = run_cli(LONG_RUN + ["--workers", "2", "-o", str(tmp_path / "out.h5")])
    try:
        # two pool workers (plus possibly multiprocessing's resource tracker)
        wait_for(lambda: len(_workers(proc)) >= 2)
        time.sleep(1.0)
        children = _workers(proc)
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        _, alive = psutil.wait_procs(children, timeout=60)
        assert alive == [], f"still running after the parent died: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130
        assert list(tmp_path.iterdir()) == []


def test_stray_values_name_the_subcommand(tmp_path, capsys):
    """``--impact 1 2 3`` leaves ``2 3`` over: refused by simulate's parser in one line."""
    with pytest.raises(SystemExit) as done:
        main(BASE + ["--impact", "1", "2", "3", "-o", str(tmp_path / "out.h5")])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.strip() == "caloforge simulate: error: unrecognized arguments: 2 3"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_inside_an_hdf5_callback_is_deferred(tmp_path, monkeypatch):
    """simulate's SIGTERM handler must not raise inside a guarded file's method (HDF5
    calls them from C; an exception there crashed the process with SIGSEGV): it hands the
    interrupt to the file, which raises it at the next safe point."""
    from caloforge.cli.simulate import _sigterm_interrupts
    from caloforge.utils import safe_io

    guarded = safe_io.GuardedFile(tmp_path / "f.bin")
    real_fstat = os.fstat
    try:
        with _sigterm_interrupts():
            handler = signal.getsignal(signal.SIGTERM)

            def fstat_then_sigterm(fd):
                handler(signal.SIGTERM, sys._getframe(1))  # lands inside GuardedFile.seek
                return real_fstat(fd)

            monkeypatch.setattr(os, "fstat", fstat_then_sigterm)
            assert guarded.seek(0, os.SEEK_END) == 0  # nothing raised in the "callback"
            monkeypatch.undo()
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # cleanup not cut short
            with pytest.raises(KeyboardInterrupt):
                guarded.raise_if_failed(tmp_path / "f.bin")
    finally:
        monkeypatch.undo()
        guarded.close()
        safe_io.note_interrupt(None)
