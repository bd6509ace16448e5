"""Bad input to info, convert, merge, quickstart and geometry: one clear line, exit != 0,
no traceback, nothing written, nothing on disk harmed."""

from __future__ import annotations

import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
from cli_checks import expect_failure, leftovers, run_cli, snapshot

from caloforge.data.io import read_showers, write_showers
from caloforge.data.io.base import METADATA_ATTR


class _Payload:
    """Unpickling this creates the file named in it: proof that something unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good little shower file and hostile look-alikes."""
    d = tmp_path_factory.mktemp("inputs")
    good = d / "good.h5"
    assert run_cli(["simulate", "--detector", "ild-ecal", "--particle", "photon", "--energy",
                    "1:2", "-n", "4", "-o", good]) == 0
    made = {"good": good, "dir": d / "folder.h5", "missing": d / "missing.h5"}
    made["dir"].mkdir()
    made["text"] = d / "text.h5"
    made["text"].write_text("energy,showers\n1,2\n")
    made["empty"] = d / "empty.h5"
    made["empty"].write_bytes(b"")
    made["truncated"] = d / "truncated.h5"
    made["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    made["wrong"] = d / "wrong.h5"
    with h5py.File(made["wrong"], "w") as h5:
        h5["something"] = np.zeros((3, 4))
    made["shape"] = d / "shape.h5"  # CaloChallenge keys, but 10 voxels: no known geometry
    with h5py.File(made["shape"], "w") as h5:
        h5["incident_energies"] = np.full((3, 1), 1e4)
        h5["showers"] = np.ones((3, 10))
    made["nan"] = d / "nan.h5"
    batch = read_showers(good)
    batch.energies[1, 5] = np.nan
    with write_showers(made["nan"], "calochallenge", "ild-ecal", lossy=True) as w:
        w._check_loss = lambda b: None  # write the NaN on purpose
        w.append(batch)
    made["pickle"] = d / "pickle.h5"
    marker = d / "UNPICKLED"
    with write_showers(made["pickle"], "calochallenge", "ild-ecal", lossy=True) as w:
        w.append(read_showers(good))
    with h5py.File(made["pickle"], "a") as h5:
        payload = np.void(pickle.dumps(_Payload(str(marker))))
        h5.attrs[METADATA_ATTR] = payload
        h5.attrs["extra"] = payload
        h5["pickled"] = payload
    made["marker"] = marker
    return made


@pytest.fixture
def untouched(files):
    before = snapshot(files["good"].parent)
    yield
    assert snapshot(files["good"].parent) == before
    assert not files["marker"].exists(), "a pickled payload was executed"


# ---- options, checked before any work ------------------------------------------------
OPTION_CASES = [
    (["convert", "{good}", "{out}", "--to", "ild", "--batch-size", "0"], "--batch-size"),
    (["convert", "{good}", "{out}", "--to", "ild", "--batch-size", "-1"], "--batch-size"),
    (["convert", "{good}", "{out}", "--to", "ild", "--batch-size", "nan"], "--batch-size"),
    (["convert", "{good}", "{out}", "--to", "ild", "--batch-size", "1e3"], "--batch-size"),
    (["convert", "{good}", "{out}", "--to", "root"], "--to"),
    (["merge", "{out}", "{good}", "--batch-size", "0"], "--batch-size"),
    (["merge", "{out}", "{good}", "--batch-size", "-5"], "--batch-size"),
    (["info", "{good}", "--max-showers", "-1"], "--max-showers"),
    (["info", "{good}", "--max-showers", "inf"], "--max-showers"),
    (["quickstart", "--out", "{out}", "--n", "0"], "--n"),
    (["quickstart", "--out", "{out}", "--n", "-3"], "--n"),
    (["quickstart", "--out", "{out}", "--workers", "0"], "--workers"),
    (["quickstart", "--out", "{out}", "--threads", "0"], "--threads"),
    (["quickstart", "--out", "{out}", "--threads", "-2"], "--threads"),
    (["quickstart", "--out", "{out}", "--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("argv, option", OPTION_CASES,
                         ids=[" ".join(a[0:1] + a[-2:]) for a, _ in OPTION_CASES])
def test_bad_option_values(files, tmp_path, capsys, untouched, argv, option):
    out = tmp_path / "out.h5"
    argv = [a.format(good=files["good"], out=out) for a in argv]
    line = expect_failure(capsys, argv, f"argument {option}")
    assert ("must be" in line or "invalid choice" in line) and argv[-1] in line
    assert not out.exists() and not leftovers(tmp_path)


def test_bounds_are_accepted(files, tmp_path, capsys):
    out = tmp_path / "one.h5"
    assert run_cli(["convert", files["good"], out, "--to", "caloforge", "--batch-size",
                    "1"]) == 0
    np.testing.assert_array_equal(read_showers(out).energies,
                                  read_showers(files["good"]).energies)
    assert run_cli(["info", files["good"], "--max-showers", "0"]) == 0  # 0 = all
    assert run_cli(["merge", tmp_path / "m.h5", files["good"], "--batch-size", "1"]) == 0
    assert "showers     4" in capsys.readouterr().out


# ---- hostile and broken files ---------------------------------------------------------
FILE_CASES = [
    ("missing", "does not exist"),
    ("dir", "is a directory"),
    ("text", "not an HDF5 file"),
    ("empty", "HDF5"),
    ("truncated", "truncated"),
    ("wrong", "not a known shower format"),
    ("shape", "10"),
    ("pickle", None),
]


def _commands(path, out):
    return {"info": ["info", path],
            "convert": ["convert", path, out, "--to", "calochallenge", "--lossy"],
            "merge": ["merge", out, path]}


@pytest.mark.parametrize("command", ["info", "convert", "merge"])
@pytest.mark.parametrize("kind, problem", FILE_CASES, ids=[k for k, _ in FILE_CASES])
def test_broken_input_files(files, tmp_path, capsys, untouched, command, kind, problem):
    out = tmp_path / "out.h5"
    argv = _commands(files[kind], out)[command]
    if kind == "pickle":  # readable data with hostile attributes: works, unpickles nothing
        assert run_cli(argv) == 0
        assert "Traceback" not in capsys.readouterr().err
        return
    expect_failure(capsys, argv, files[kind].name, problem)
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("command", ["convert", "merge"])
def test_nan_showers_are_refused_and_nothing_written(files, tmp_path, capsys, untouched,
                                                     command):
    out = tmp_path / "out.h5"
    expect_failure(capsys, _commands(files["nan"], out)[command], "nan.h5", "NaN")
    assert not out.exists() and not leftovers(tmp_path)


def test_failed_convert_keeps_the_existing_output(files, tmp_path, capsys, untouched):
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    for kind in ("truncated", "nan", "text"):
        expect_failure(capsys, ["convert", files[kind], out, "--to", "ild", "--overwrite",
                                "--lossy"], files[kind].name)
    expect_failure(capsys, ["convert", files["good"], out, "--to", "ild"], "output exists")
    expect_failure(capsys, ["convert", files["good"], tmp_path, "--to", "ild", "--overwrite"],
                   "directory")
    expect_failure(capsys, ["convert", files["good"], tmp_path / "no" / "x.h5", "--to", "ild"],
                   "does not exist")
    assert out.read_bytes() == b"precious" and not leftovers(tmp_path)


def test_unknown_geometry(files, tmp_path, capsys, untouched):
    expect_failure(capsys, ["geometry", "nope"], "unknown geometry 'nope'")
    expect_failure(capsys, ["info", files["good"], "--geometry", "nope"], "nope")
    out = tmp_path / "o.h5"
    expect_failure(capsys, ["convert", files["shape"], out, "--to", "ild", "--geometry",
                            "calogan"], "shape.h5")
    assert not out.exists() and not leftovers(tmp_path)


# ---- quickstart: everything checked before simulating ---------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--n", "25"], ["--n 25 is too small", "FPD 509"]),
    (["--n", "300", "--no-classifier"], ["--n 300 is too small", "use --n 509"]),
    (["--model", "no-such-model"], ["no-such-model"]),
    (["--model", "{file}"], ["model"]),
])
def test_quickstart_refuses_before_simulating(files, tmp_path, capsys, untouched, argv,
                                              words):
    out = tmp_path / "qs"
    argv = [a.format(file=files["good"]) for a in argv]
    expect_failure(capsys, ["quickstart", "--out", out, *argv], *words)
    assert not out.exists()


def test_quickstart_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "qs"
    out.write_text("mine")
    expect_failure(capsys, ["quickstart", "--out", out], "not a folder")
    expect_failure(capsys, ["quickstart", "--out", out / "sub"], "cannot write")
    assert out.read_text() == "mine"


def test_subprocess_option_error(files, tmp_path):
    out = tmp_path / "o.h5"
    proc = subprocess.run([sys.executable, "-m", "caloforge.cli", "convert", str(files["good"]),
                           str(out), "--to", "ild", "--batch-size", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "caloforge convert: error: argument --batch-size: must be an integer >= 1, got '0'")
    assert not out.exists()


# ---- option errors: one line, whatever parser refuses ----------------------------------
ARGPARSE_CASES = [
    (["nosuchcommand"], "caloforge: error: argument COMMAND: invalid choice"),
    (["--bogus"], "caloforge: error: unrecognized arguments: --bogus"),
    (["info"], "caloforge info: error: the following arguments are required: FILE"),
    (["simulate", "--nosuch"], "caloforge simulate: error: the following arguments"),
    (["geometry", "ild-ecal", "extra"], "caloforge geometry: error: unrecognized arguments"),
    (["convert", "a.h5", "b.h5", "--to", "nosuch"], "caloforge convert: error: argument --to"),
    (["evaluate", "a.h5", "b.h5"], "caloforge evaluate: error: the following arguments are "
                                   "required: --report"),
]


@pytest.mark.parametrize("argv, start", ARGPARSE_CASES, ids=[a[0] for a, _ in ARGPARSE_CASES])
def test_option_errors_are_one_line_without_usage(capsys, argv, start):
    line = expect_failure(capsys, argv)
    assert line.startswith(start), line


def test_option_error_of_a_real_process_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "caloforge.cli", "merge", "--nosuch"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("caloforge merge: error:")


# ---- no work to do, or work that would destroy its input -------------------------------
@pytest.fixture(scope="module")
def no_showers(tmp_path_factory):
    path = tmp_path_factory.mktemp("zero") / "zero.h5"
    with write_showers(path, "caloforge", "ild-ecal"):
        pass
    return path


def test_info_reports_zero_showers(no_showers, capsys):
    assert run_cli(["info", no_showers]) == 0
    assert "showers     0" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["convert", "merge"])
def test_zero_showers_are_not_work_done(no_showers, tmp_path, capsys, command):
    out = tmp_path / "out.h5"
    argv = _commands(no_showers, out)[command]
    expect_failure(capsys, argv, str(no_showers), "holds no showers", f"nothing to {command}")
    expect_failure(capsys, ["merge", out, no_showers, no_showers], "none of the 2 inputs")
    assert not out.exists() and not leftovers(tmp_path)


def _aliases(good, folder):
    """The same file under another name: a symbolic and a hard link."""
    (folder / "sym.h5").symlink_to(good)
    (folder / "hard.h5").hardlink_to(good)
    return [good, folder / "sym.h5", folder / "hard.h5"]


def test_convert_onto_its_input_is_refused(files, tmp_path, capsys):
    good = tmp_path / "good.h5"
    good.write_bytes(files["good"].read_bytes())
    before = good.read_bytes()
    for alias in _aliases(good, tmp_path):
        expect_failure(capsys, ["convert", good, alias, "--to", "caloforge", "--overwrite"],
                       str(alias), "the output is the input")
    assert good.read_bytes() == before and not leftovers(tmp_path)


def test_merge_onto_one_of_its_inputs_is_refused(files, tmp_path, capsys):
    good = tmp_path / "good.h5"
    good.write_bytes(files["good"].read_bytes())
    before = good.read_bytes()
    for alias in _aliases(good, tmp_path):
        expect_failure(capsys, ["merge", alias, files["good"], good, "--overwrite"],
                       str(alias), "the output is also an input")
    assert good.read_bytes() == before and not leftovers(tmp_path)


# ---- inputs that are not plain files --------------------------------------------------
def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "caloforge.cli", "info", str(fifo)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"caloforge info: error: {fifo}: is not a regular file "
                                   "(a pipe or device?): HDF5 shower files must be plain files")


@pytest.mark.parametrize("command", ["info", "convert", "merge"])
def test_device_and_symlink_loop_inputs(tmp_path, capsys, command):
    out = tmp_path / "out.h5"
    expect_failure(capsys, _commands("/dev/zero", out)[command], "/dev/zero",
                   "not a regular file")
    (tmp_path / "a.h5").symlink_to(tmp_path / "b.h5")
    (tmp_path / "b.h5").symlink_to(tmp_path / "a.h5")
    expect_failure(capsys, _commands(tmp_path / "a.h5", out)[command], "a.h5",
                   "broken or looping symbolic link")
    assert not out.exists() and not leftovers(tmp_path)


def test_lossy_error_names_the_option(tmp_path, capsys):
    from caloforge.evaluation.toy import toy_showers

    varying = tmp_path / "varying.h5"
    batch = toy_showers(6, "calogan", seed=1)
    batch.conditions.theta = np.linspace(0.0, 0.3, 6)
    with write_showers(varying, "caloforge", "calogan") as w:
        w.append(batch)
    out = tmp_path / "out.h5"
    expect_failure(capsys, ["convert", varying, out, "--to", "calochallenge"], "theta",
                   "use --lossy (lossy=True in the API)")
    assert not out.exists() and not leftovers(tmp_path)
