"""Bad input to ``caloforge evaluate``: one clear line naming the file or option, a
non-zero exit whenever a requested comparison was not made, the report of what could be
done still written, no traceback and no temporary folder left behind."""

from __future__ import annotations

import errno
import json
import os
import pathlib

import pytest

from caloforge.cli import main
from caloforge.data.io import write_showers
from caloforge.evaluation.toy import toy_showers

N = 300  # enough showers for every histogram metric of a toy sample


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("robust_eval")

    def write(name, batch, geometry="calogan"):
        with write_showers(d / name, geometry=geometry) as w:
            if batch is not None:
                w.append(batch)
        return d / name

    ref = write("ref.h5", toy_showers(N, "calogan", seed=1))
    gen = write("gen.h5", toy_showers(N, "calogan", seed=2))
    truncated = d / "truncated.h5"
    truncated.write_bytes(gen.read_bytes()[:30000])
    foreign = d / "foreign.h5"
    foreign.write_text("not a shower file\n")
    return {"dir": d, "ref": ref, "gen": gen, "truncated": truncated, "foreign": foreign,
            "empty": write("empty.h5", None),
            "other": write("other.h5", toy_showers(N, "calochallenge-1-photons", seed=3),
                           "calochallenge-1-photons")}


def _run(capsys, *args) -> tuple[int, str, list[str]]:
    rc = main(["evaluate", *map(str, args), "--no-classifier", "--no-progress"])
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip()]
    assert "Traceback" not in cap.err + cap.out
    return rc, cap.out, err


def _error_line(err: list[str]) -> str:
    """The last stderr line is the one error line (warnings come before it)."""
    assert err and err[-1].startswith("caloforge evaluate: error: "), err
    return err[-1]


def _no_leftovers(folder: pathlib.Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".part", ".old"))]


def _report_of_nothing_compared(report: pathlib.Path) -> dict:
    assert (report / "index.html").exists()
    m = json.loads((report / "metrics.json").read_text())
    assert m["not_compared"] and m["generated"][0]["status"] == "failed"
    return m


@pytest.mark.parametrize("key,problem", [
    ("missing", "file not found"),
    ("empty", "no showers"),
    ("foreign", "not an HDF5 file"),
    ("truncated", "truncated"),
    ("other", "geometry calochallenge-1-photons differs"),
])
def test_generated_file_not_compared(files, capsys, tmp_path, key, problem):
    gen = files.get(key, files["dir"] / "missing.h5")
    report = tmp_path / "rep"
    rc, out, err = _run(capsys, files["ref"], gen, "--report", report)
    assert rc == 1
    line = _error_line(err)
    assert gen.name in line and problem in line and "not compared" in line
    assert "not compared" in out  # the summary says it too
    _report_of_nothing_compared(report)
    _no_leftovers(tmp_path)


def test_partial_comparison_exits_nonzero_but_reports_what_was_done(files, capsys, tmp_path):
    """A good sample, a missing one and an unusable --train-ref in one run; a stale
    staging folder of a killed earlier run is removed and reported."""
    report = tmp_path / "rep"
    stale = tmp_path / ".rep.part"
    (stale / "figures").mkdir(parents=True)
    missing = files["dir"] / "nope.h5"
    settings = tmp_path / "eval.yaml"  # settings from a file, one overridden on the CLI
    settings.write_text("seed: 5\nthreshold_mip: 0.25\n")
    rc, out, err = _run(capsys, files["ref"], files["gen"], missing, "--train-ref",
                        files["other"], "--report", report, "--config", settings,
                        "--threshold-mip", "0.5")
    assert rc == 1
    line = _error_line(err)
    assert "nope.h5" in line and "memorisation" in line and "other.h5" in line
    assert any("left by an interrupted run" in e for e in err)
    m = json.loads((report / "metrics.json").read_text())
    good, bad = m["generated"]
    assert good["status"] == "ok" and "observables" in good and "memorisation" not in good
    assert bad["status"] == "failed"
    assert len(m["not_compared"]) == 2
    assert (report / "figures" / "obs_e_vis.png").exists()
    assert m["config"]["train_reference"] == str(files["other"])
    assert (m["config"]["seed"], m["config"]["threshold_mip"], m["seed"]) == (5, 0.5, 5)
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("args,option", [
    (["--device", "gpu0"], "--device"),
    (["--threshold-mip", "-1"], "--threshold-mip"),
    (["--threshold-mip", "nan"], "--threshold-mip"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lowlevel-memory-gib", "-0.5"], "--lowlevel-memory-gib"),
    (["--threads", "-2"], "--threads"),
    (["--labels", "a", "b"], "--labels"),
    (["--device", "foo"], "--device"),
])
def test_bad_option_refused_before_any_work(files, capsys, tmp_path, args, option):
    report = tmp_path / "rep"
    rc, out, err = _run(capsys, files["ref"], files["gen"], *args, "--report", report)
    assert rc == 1 and len(err) == 1 and option in _error_line(err)
    assert not out
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_absent_cuda_device_refused(files, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = _run(capsys, files["ref"], files["gen"], "--device", "cuda",
                      "--report", tmp_path / "rep")
    assert rc == 1 and len(err) == 1
    assert "--device: cuda requested but not available" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_reference(files, capsys, tmp_path):
    rc, _, err = _run(capsys, files["dir"] / "noref.h5", files["gen"],
                      "--report", tmp_path / "rep")
    assert rc == 1 and len(err) == 1 and "noref.h5" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["nonempty_folder", "file"])
def test_existing_output_untouched(files, capsys, tmp_path, kind):
    report = tmp_path / "rep"
    if kind == "file":
        report.write_text("keep me")
    else:
        report.mkdir()
        (report / "index.html").write_text("keep me")
    rc, _, err = _run(capsys, files["ref"], files["gen"], "--report", report)
    assert rc == 1 and len(err) == 1 and str(report) in err[0]
    assert ("report path is a file" if kind == "file" else "--overwrite") in err[0]
    kept = report if kind == "file" else report / "index.html"
    assert kept.read_text() == "keep me"
    _no_leftovers(tmp_path)


def test_unwritable_output_folder(files, capsys, tmp_path, monkeypatch):
    """A read-only folder (mocked: root ignores permissions) fails before any work."""
    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *a, **kw):
        if self.name == ".rep.part":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    rc, out, err = _run(capsys, files["ref"], files["gen"], "--report", tmp_path / "rep")
    assert rc == 1 and len(err) == 1 and not out
    assert "rep: cannot create the report folder: Permission denied" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions that apply to the user")
def test_read_only_output_folder(files, capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        rc, _, err = _run(capsys, files["ref"], files["gen"], "--report", parent / "rep")
    finally:
        parent.chmod(0o755)
    assert rc == 1 and len(err) == 1 and "Permission denied" in err[0]
    assert list(parent.iterdir()) == []


def test_full_disk_while_writing_report(files, capsys, tmp_path, monkeypatch):
    """ENOSPC in the middle of the report: one line, no partial report, no staging."""
    from caloforge.evaluation import report as report_pkg

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report_pkg, "render_html", full)
    rc, _, err = _run(capsys, files["ref"], files["empty"], "--report", tmp_path / "rep")
    line = _error_line(err)
    assert rc == 1 and "cannot write the report: No space left on device" in line
    assert list(tmp_path.iterdir()) == []


def test_interrupt_removes_staging(files, capsys, tmp_path, monkeypatch):
    from caloforge.evaluation import report as report_pkg

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_pkg, "render_html", interrupt)
    rc, _, err = _run(capsys, files["ref"], files["empty"], "--report", tmp_path / "rep")
    assert rc == 130 and err == ["caloforge evaluate: interrupted"]
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_old_report(files, capsys, tmp_path):
    report = tmp_path / "rep"
    report.mkdir()
    (report / "stale.txt").write_text("from an older report")
    rc, _, err = _run(capsys, files["ref"], files["empty"], "--report", report, "--overwrite")
    assert rc == 1 and "empty.h5" in _error_line(err)
    assert not (report / "stale.txt").exists() and (report / "metrics.json").exists()
    _no_leftovers(tmp_path)


def test_negative_seed_refused_by_the_parser(files, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        _run(capsys, files["ref"], files["gen"], "--seed", "-1", "--report", tmp_path / "rep")
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.strip() == (
        "caloforge evaluate: error: argument --seed: must be an integer >= 0, got '-1'")
    assert list(tmp_path.iterdir()) == []


def test_negative_seed_in_a_config_file(files, capsys, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("seed: -1\n")
    rc, out, err = _run(capsys, files["ref"], files["gen"], "--config", config,
                        "--report", tmp_path / "rep")
    assert rc == 1 and len(err) == 1 and "seed (--seed) must be >= 0" in _error_line(err)
    assert not (tmp_path / "rep").exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("alias", ["same", "dot", "link"])
def test_reference_compared_with_itself(files, capsys, tmp_path, alias):
    """A sample compared with itself passes every test: refused, not reported as a match."""
    ref = files["ref"]
    same = {"same": ref, "dot": ref.parent / "." / ref.name, "link": tmp_path / "ln.h5"}[alias]
    if alias == "link":
        same.symlink_to(ref)
    rc, out, err = _run(capsys, ref, files["gen"], same, "--labels", "gen", "self",
                        "--report", tmp_path / "rep")
    line = _error_line(err)
    assert rc == 1 and len(err) == 1 and str(same) in line and "reference file itself" in line
    assert not (tmp_path / "rep").exists()


def test_same_generated_file_twice_with_a_wrong_label_count(files, capsys, tmp_path):
    rc, _, err = _run(capsys, files["ref"], files["gen"], files["gen"], "--labels", "one",
                      "--report", tmp_path / "rep")
    assert rc == 1 and len(err) == 1 and "1 labels given for 2 generated files" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_report_inside_a_read_only_mount(files, capsys, readonly_dir):
    rc, _, err = _run(capsys, files["ref"], files["gen"], "--report", readonly_dir / "rep")
    line = _error_line(err)
    assert rc == 1 and len(err) == 1 and str(readonly_dir / "rep") in line
    assert "Read-only file system" in line
    assert list(readonly_dir.iterdir()) == []


def test_report_on_a_really_full_disk(files, capsys, tiny_disk):
    """No monkeypatching: a 256 KiB tmpfs fills while figures are written."""
    rc, _, err = _run(capsys, files["ref"], files["gen"], "--report", tiny_disk / "rep")
    line = _error_line(err)
    assert rc == 1 and str(tiny_disk / "rep") in line and "No space left on device" in line
    assert list(tiny_disk.iterdir()) == []  # no .rep.part/ staging folder
