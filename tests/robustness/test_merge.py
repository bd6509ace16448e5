"""``caloforge merge``: only complete, consistent runs are labelled complete."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from cli_checks import expect_failure, leftovers, run_cli, snapshot

from caloforge.cli.merge import merge
from caloforge.data.io import open_showers, read_showers, write_showers
from caloforge.data.io.base import METADATA_ATTR

RUN = ["--detector", "ild-ecal", "--particle", "photon", "--energy", "1:2", "-n", "6"]


def _simulate(folder, name, *extra) -> str:
    path = folder / name
    assert run_cli(["simulate", *RUN, "-o", path, *extra]) == 0
    return str(path)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """Shards 0..2 of 3 of one 6-shower run, the run made in one go, and shards of other
    runs (another seed, another size)."""
    d = tmp_path_factory.mktemp("shards")
    files = {f"s{i}": _simulate(d, f"s{i}.h5", "--shard", f"{i}/3") for i in range(3)}
    files["whole"] = _simulate(d, "whole.h5")
    files["seed1"] = _simulate(d, "seed1.h5", "--shard", "1/3", "--seed", "1")
    files["n9"] = _simulate(d, "n9.h5", "--shard", "1/3", "-n", "9")
    files["dir"] = d
    return files


@pytest.fixture
def untouched(run_files):
    """Asserts after the test that no input file was changed or joined by a temp file."""
    before = snapshot(run_files["dir"])
    yield
    assert snapshot(run_files["dir"]) == before


def _meta(path) -> dict:
    with open_showers(path) as f:
        return dict(f.metadata)


def test_complete_set_in_any_order_equals_the_unsharded_run(run_files, tmp_path, capsys):
    out = tmp_path / "all.h5"
    assert run_cli(["merge", out, run_files["s2"], run_files["s0"], run_files["s1"],
                    "--batch-size", "1"]) == 0
    assert "6 showers" in capsys.readouterr().out
    merged, whole = read_showers(out), read_showers(run_files["whole"])
    np.testing.assert_array_equal(merged.energies, whole.energies)
    np.testing.assert_array_equal(merged.incident_energy, whole.incident_energy)
    meta = _meta(out)
    assert meta["complete"] is True and (meta["first_index"], meta["stop_index"]) == (0, 6)
    assert meta["run_size"] == 6 and "missing_ranges" not in meta and "shard" not in meta


@pytest.mark.parametrize("parts, missing", [(["s0", "s2"], "2..3"), (["s1"], "0..1, 4..5"),
                                            (["s0", "s1"], "4..5")])
def test_gaps_are_refused_naming_the_missing_indices(run_files, tmp_path, capsys, untouched,
                                                     parts, missing):
    out = tmp_path / "m.h5"
    expect_failure(capsys, ["merge", out, *(run_files[p] for p in parts)],
                   f"indices {missing}", "--allow-partial")
    assert not out.exists() and not leftovers(tmp_path)


def test_allow_partial_records_the_ranges_and_never_claims_completeness(run_files, tmp_path,
                                                                         capsys):
    part = tmp_path / "part.h5"
    assert run_cli(["merge", part, run_files["s2"], run_files["s0"], "--allow-partial"]) == 0
    assert "incomplete run: showers 2..3 of 6 missing" in capsys.readouterr().out
    meta = _meta(part)
    assert meta["complete"] is False
    assert meta["index_ranges"] == [[0, 2], [4, 6]] and meta["missing_ranges"] == [[2, 4]]
    assert "first_index" not in meta and "stop_index" not in meta
    # the partial file is itself a shard: adding the missing one completes the run, in
    # index order although the partial file holds ranges on both sides of it
    full = tmp_path / "full.h5"
    assert run_cli(["merge", full, part, run_files["s1"]]) == 0
    np.testing.assert_array_equal(read_showers(full).incident_energy,
                                  read_showers(run_files["whole"]).incident_energy)
    assert _meta(full)["complete"] is True
    # and it still does not pass for a complete run on its own
    expect_failure(capsys, ["merge", tmp_path / "again.h5", part], "indices 2..3")


@pytest.mark.parametrize("other, word", [("seed1", "seed"), ("n9", "n")])
def test_shards_of_another_run_are_refused(run_files, tmp_path, capsys, untouched, other,
                                           word):
    out = tmp_path / "m.h5"
    line = expect_failure(capsys, ["merge", out, run_files["s0"], run_files[other],
                                   run_files["s2"]], run_files[other], "not a shard of the "
                          "same run")
    assert f"differs in: {word}" in line or f"{word}," in line
    assert not out.exists() and not leftovers(tmp_path)


def test_overlapping_shards_are_refused(run_files, tmp_path, capsys, untouched):
    out = tmp_path / "m.h5"
    expect_failure(capsys, ["merge", out, run_files["s0"], run_files["whole"]],
                   "showers 0..1 are also in", "same shard given twice")
    expect_failure(capsys, ["merge", out, run_files["s1"], run_files["s1"]], "also in")
    assert not out.exists()


def test_existing_output_survives_a_refused_merge(run_files, tmp_path, capsys, untouched):
    out = tmp_path / "m.h5"
    out.write_bytes(b"precious")
    expect_failure(capsys, ["merge", out, run_files["s0"], run_files["s2"], "--overwrite"],
                   "indices 2..3")
    expect_failure(capsys, ["merge", out, run_files["s0"], run_files["s1"], run_files["s2"]],
                   "output exists")
    expect_failure(capsys, ["merge", run_files["s0"], run_files["s0"], run_files["s1"],
                            "--overwrite"], "the output is also an input")
    assert out.read_bytes() == b"precious" and not leftovers(tmp_path)


def _copy_with_meta(src: str, dst, **changes) -> str:
    """``src`` copied to ``dst`` with metadata keys changed (None removes a key)."""
    batch = read_showers(src)
    meta = {**batch.metadata, **changes}
    with write_showers(dst, "caloforge", "ild-ecal",
                       metadata={k: v for k, v in meta.items() if v is not None}) as w:
        w.append(batch)
    return str(dst)


@pytest.mark.parametrize("changes, words", [
    ({"first_index": "0"}, ["first_index is '0'"]),
    ({"stop_index": 7}, ["index range 2:7 outside the run's 0:6"]),
    ({"first_index": 0, "stop_index": 5}, ["holds 2 showers but its metadata says 5"]),
    ({"index_ranges": [[0, 1], [1]]}, ["index_ranges is"]),
    ({"index_ranges": [[2, 4], [3, 4]]}, ["overlap"]),
    ({"run_id": 5}, ["run_id is 5"]),
    ({"simulation": None}, ["records no run"]),
])
def test_corrupt_shard_metadata_is_refused(run_files, tmp_path, capsys, changes, words):
    bad = _copy_with_meta(run_files["s1"], tmp_path / "bad.h5", **changes)
    out = tmp_path / "m.h5"
    expect_failure(capsys, ["merge", out, run_files["s0"], bad, run_files["s2"]], *words)
    assert not out.exists() and not leftovers(tmp_path)


def test_generic_run_metadata(run_files, tmp_path, capsys):
    """Shards of other producers (e.g. generation) only need run_id, run_size and their
    index range."""
    src = run_files["whole"]
    whole = read_showers(src)

    def shard(name, lo, hi, run_id="gen-run-a"):
        with write_showers(tmp_path / name, "caloforge", "ild-ecal",
                           metadata={"run_id": run_id, "run_size": 6, "first_index": lo,
                                     "stop_index": hi, "model": "toy", "n_showers": hi - lo,
                                     "time_per_shower_ms": 1.0 + lo}) as w:
            w.append(whole[lo:hi])
        return str(tmp_path / name)

    a, b, c = shard("a.h5", 2, 6), shard("b.h5", 0, 2), shard("c.h5", 0, 2, "gen-run-b")
    out = tmp_path / "gen.h5"
    assert run_cli(["merge", out, a, b]) == 0
    np.testing.assert_array_equal(read_showers(out).incident_energy, whole.incident_energy)
    meta = _meta(out)
    assert meta["complete"] and meta["run_id"] == "gen-run-a" and meta["model"] == "toy"
    # values that differ between the shards are not presented as the merged file's
    assert "n_showers" not in meta and "time_per_shower_ms" not in meta
    assert meta["per_input_metadata"] == {"n_showers": [4, 2],
                                          "time_per_shower_ms": [3.0, 1.0]}
    expect_failure(capsys, ["merge", tmp_path / "x.h5", a], "indices 0..1")
    expect_failure(capsys, ["merge", tmp_path / "x.h5", a, c], "run gen-run-b of 6 showers")


def test_plain_files_are_still_concatenated(run_files, tmp_path):
    whole = read_showers(run_files["whole"])
    plain = []
    for i in range(2):
        plain.append(tmp_path / f"p{i}.h5")
        with write_showers(plain[-1], "calochallenge", "ild-ecal", lossy=True) as w:
            w.append(whole)
    assert merge(str(tmp_path / "cat.h5"), [str(p) for p in plain], progress_bar=False)[0] == 12


def test_merge_api_refuses_a_bad_batch_size(run_files, tmp_path):
    from caloforge.errors import InputError

    with pytest.raises(InputError, match="batch size"):
        merge(str(tmp_path / "m.h5"), [run_files["whole"]], batch_size=0)


def test_foreign_metadata_does_not_crash(run_files, tmp_path, capsys):
    """A metadata attribute that is JSON but not an object counts as no metadata."""
    path = tmp_path / "odd.h5"
    _copy_with_meta(run_files["whole"], path)
    with h5py.File(path, "a") as h5:
        h5.attrs[METADATA_ATTR] = json.dumps([1, 2])
    out = tmp_path / "m.h5"
    expect_failure(capsys, ["merge", out, run_files["s0"], path], "records no run")
    assert not out.exists()


def test_gap_in_a_subprocess(run_files, tmp_path):
    out = tmp_path / "m.h5"
    proc = subprocess.run([sys.executable, "-m", "caloforge.cli", "merge", str(out),
                           run_files["s0"], run_files["s2"]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("caloforge merge: error: the shards miss 2 of the run's 6")
    assert not out.exists() and not leftovers(tmp_path)


def test_info_says_which_part_of_a_run_a_file_holds(run_files, tmp_path, capsys):
    part = tmp_path / "part.h5"
    assert run_cli(["merge", part, run_files["s0"], run_files["s2"], "--allow-partial"]) == 0
    capsys.readouterr()
    assert run_cli(["info", run_files["s1"], part, run_files["whole"]]) == 0
    runs = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("run ")]
    assert runs[0].endswith("part of it: indices 2..3 of 0..5")
    assert runs[1].endswith("part of it: indices 0..1, 4..5 of 0..5")
    assert runs[2].endswith("complete (6 showers)")
    bad = _copy_with_meta(run_files["s1"], tmp_path / "bad.h5", stop_index=9)
    assert run_cli(["info", "--json", bad]) == 0
    assert "outside the run's 0:6" in json.loads(capsys.readouterr().out)["run"]


def test_files_of_another_format_are_refused(run_files, tmp_path, capsys, untouched):
    other = tmp_path / "cc.h5"
    assert run_cli(["convert", run_files["s1"], other, "--to", "calochallenge", "--lossy"]) == 0
    out = tmp_path / "m.h5"
    expect_failure(capsys, ["merge", out, run_files["s0"], other, run_files["s2"]],
                   "cc.h5", "format 'calochallenge' differs from 'caloforge'")
    assert not out.exists()


def test_whole_runs_of_other_settings_are_concatenated_on_request(run_files, tmp_path,
                                                                   capsys, untouched):
    """--concatenate: e.g. single-energy samples of their own seeds joined into one file,
    in the order given, each input's run settings kept per input."""
    d = tmp_path / "runs"
    d.mkdir()
    one = _simulate(d, "e1.h5", "--energy", "1", "--seed", "3")
    two = _simulate(d, "e2.h5", "--energy", "2", "-n", "4", "--seed", "4")
    out = tmp_path / "joined.h5"
    expect_failure(capsys, ["merge", out, one, two], two, "not a shard of the same run")
    assert run_cli(["merge", out, one, two, "--concatenate", "--batch-size", "4"]) == 0
    joined, a, b = read_showers(out), read_showers(one), read_showers(two)
    np.testing.assert_array_equal(joined.energies, np.concatenate([a.energies, b.energies]))
    np.testing.assert_array_equal(joined.incident_energy, [1e3] * 6 + [2e3] * 4)
    meta = _meta(out)
    assert "run_id" not in meta and "complete" not in meta
    assert [s["seed"] for s in meta["per_input_metadata"]["simulation"]] == [3, 4]
