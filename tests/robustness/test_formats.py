"""Hostile and broken files fed to every reader (through ``caloforge info`` and
``caloforge convert``): pickled attributes, huge declared shapes, NaN/inf and negative
energies, wrong data types, truncated files.  Each gives one line naming the file and the
problem; nothing is ever unpickled; no output and no temporary file is left."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
from robust_helpers import assert_no_temporaries, assert_one_line_error, run_cli

# One minimal valid layout per format: dataset name -> array (geometry: calogan or ild-ecal).
LAYOUTS = {
    "calochallenge": lambda n: {"incident_energies": np.full((n, 1), 1e4),
                                "showers": np.zeros((n, 368), np.float32)},
    "ild": lambda n: {"30x30/energy": np.full((n, 1), 10.0, np.float32),
                      "30x30/layers": np.zeros((n, 30, 30, 30))},
    "calogan": lambda n: {"energy": np.full((n, 1), 10.0), "layer_0": np.zeros((n, 3, 96)),
                          "layer_1": np.zeros((n, 12, 12)), "layer_2": np.zeros((n, 12, 6))},
    "pointcloud": lambda n: {"energy": np.full((n, 1), 10.0),
                             "events": np.tile(np.array([[1.0], [0.0], [1.0], [0.001]]),
                                               (n, 1, 1))},
    "caloforge": lambda n: {"conditions/incident_energy": np.full(n, 1e4),
                            "showers": np.zeros((n, 504), np.float32)},
}
ENERGY_KEY = {"calochallenge": "incident_energies", "ild": "30x30/energy",
              "calogan": "energy", "pointcloud": "energy",
              "caloforge": "conditions/incident_energy"}
CELLS_KEY = {"calochallenge": "showers", "ild": "30x30/layers", "calogan": "layer_1",
             "pointcloud": "events", "caloforge": "showers"}


def _write(path, fmt, n=3, **replace):  # noqa: ANN001, ANN003, ANN202
    data = {**LAYOUTS[fmt](n), **replace}
    with h5py.File(path, "w") as h5:
        if fmt == "caloforge":
            h5.attrs.update(caloforge_format="caloforge", format_version=1, geometry="calogan",
                            layout="dense")
        for key, value in data.items():
            h5[key] = value
    return path


def _both_commands_fail(path, capsys, *needles):  # noqa: ANN001, ANN202
    out = path.with_name("out.h5")
    for args in (["info", path], ["convert", path, out, "--to", "caloforge"]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, str(path), *needles)
    assert not out.exists()
    assert_no_temporaries(path.parent)


FORMATS = list(LAYOUTS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_minimal_files_are_read(tmp_path, capsys, fmt):
    """The layouts below are valid as given, so each failure is due to the one change."""
    path = _write(tmp_path / "ok.h5", fmt)
    code, out, err = run_cli(["info", path], capsys)
    assert code == 0, err
    assert f"format      {fmt}" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickled_attributes_are_never_unpickled(tmp_path, capsys, fmt):
    marker = tmp_path / "unpickled"
    payload = np.void(pickle.dumps(_Marker(str(marker))))
    path = _write(tmp_path / "p.h5", fmt)
    with h5py.File(path, "r+") as h5:
        h5.attrs["caloforge_metadata"] = payload
        h5.attrs["caloforge_condition_theta"] = payload
        h5.attrs["extra"] = payload
    _both_commands_fail(path, capsys, "caloforge_condition_theta")
    with h5py.File(path, "r+") as h5:
        del h5.attrs["caloforge_condition_theta"]
    code, _, err = run_cli(["info", path], capsys)  # metadata is informative: ignored
    assert code == 0, err
    assert not marker.exists()


class _Marker:
    """Unpickling this would create a file (it never is)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_huge_declared_shape(tmp_path, capsys, fmt):
    """10^12 declared rows without data: refused at once, not read as endless zeros."""
    path = _write(tmp_path / "h.h5", fmt, n=1)
    with h5py.File(path, "r+") as h5:
        for key in (ENERGY_KEY[fmt], CELLS_KEY[fmt]):
            ds = h5[key]
            shape, dtype = ds.shape, ds.dtype
            del h5[key]
            h5.create_dataset(key, shape=(10**12,) + shape[1:], dtype=dtype,
                              chunks=(1,) + shape[1:], fillvalue=1)
    _both_commands_fail(path, capsys, "declares 1000000000000 rows")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value,needle", [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"),
                                          (-10.0, "<= 0")])
def test_bad_incident_energies(tmp_path, capsys, fmt, value, needle):
    energies = LAYOUTS[fmt](3)[ENERGY_KEY[fmt]].copy()
    energies[1] = value
    path = _write(tmp_path / "e.h5", fmt, **{ENERGY_KEY[fmt]: energies})
    _both_commands_fail(path, capsys, "incident energies", needle)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value,needle", [(np.nan, "NaN/inf"), (-1.0, "negative")])
def test_bad_cell_energies(tmp_path, capsys, fmt, value, needle):
    cells = LAYOUTS[fmt](3)[CELLS_KEY[fmt]].copy()
    if fmt == "pointcloud":
        cells[1, 3, 0] = value
    else:
        cells.reshape(3, -1)[1, 5] = value
    path = _write(tmp_path / "c.h5", fmt, **{CELLS_KEY[fmt]: cells})
    code, _, err = run_cli(["convert", path, tmp_path / "out.h5", "--to", "caloforge"], capsys)
    assert_one_line_error(code, err, str(path), needle)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["text", "complex"])
def test_wrong_dtypes(tmp_path, capsys, fmt, kind):
    cells = LAYOUTS[fmt](3)[CELLS_KEY[fmt]]
    bad = cells.astype("S8") if kind == "text" else cells.astype(np.complex64)
    path = _write(tmp_path / "d.h5", fmt, **{CELLS_KEY[fmt]: bad})
    _both_commands_fail(path, capsys, "expected numbers")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files(tmp_path, capsys, fmt):
    good = _write(tmp_path / "g.h5", fmt, n=20)
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    good.unlink()
    _both_commands_fail(cut, capsys)
    assert cut.read_bytes() == data[: len(data) // 2]  # inputs are never modified


def test_unusable_geometry_attribute_names_the_file(tmp_path, capsys):
    path = _write(tmp_path / "g.h5", "caloforge")
    with h5py.File(path, "r+") as h5:
        h5.attrs["geometry"] = np.void(b"\x80\x04junk")
    _both_commands_fail(path, capsys, "geometry attribute")


def test_file_being_written_by_another_process(tmp_path, capsys):
    import subprocess
    import sys

    path = tmp_path / "busy.h5"
    writer = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; "
                               f"f = h5py.File({str(path)!r}, 'w'); print('open', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        code, _, err = run_cli(["info", path], capsys)
        assert_one_line_error(code, err, str(path), "locked")
    finally:
        writer.kill()
        writer.wait()


# ---- caloforge's own sparse and point layouts -----------------------------------------
def _native_flat(path, points=False):  # noqa: ANN001, ANN202
    from caloforge.data.io import write_showers
    from caloforge.evaluation.toy import toy_showers

    batch = toy_showers(6, "calogan", seed=1)
    with write_showers(path, "caloforge", "calogan", sparse=True) as w:
        w.append(batch.to_points() if points else batch)
    return path


@pytest.mark.parametrize("column", ["hits/cell", "hits/energy", "points/x", "points/energy"])
def test_native_missing_column(tmp_path, capsys, column):
    path = _native_flat(tmp_path / "m.h5", points=column.startswith("points"))
    with h5py.File(path, "r+") as h5:
        del h5[column]
    _both_commands_fail(path, capsys, f"missing dataset '{column}'")


def test_native_decreasing_offsets(tmp_path, capsys):
    path = _native_flat(tmp_path / "o.h5")
    with h5py.File(path, "r+") as h5:
        offsets = h5["hits/offsets"][:]
        offsets[3] = offsets[1] - 1
        h5["hits/offsets"][:] = offsets
    _both_commands_fail(path, capsys, "hits/offsets decrease")


def test_native_offsets_beyond_the_hits(tmp_path, capsys):
    path = _native_flat(tmp_path / "b.h5")
    with h5py.File(path, "r+") as h5:
        h5["hits/offsets"][-1] += 100
    _both_commands_fail(path, capsys, "hits/offsets run from 0 to", "hits/cell has")


@pytest.mark.parametrize("fmt, option", [("caloforge", {"layout": "sparse"}),
                                         ("calochallenge", {"sparse": True})])
def test_writer_option_that_does_not_exist(tmp_path, fmt, option):
    """A misspelt or misplaced writer option is refused, not silently dropped."""
    from caloforge.data.io import write_showers
    from caloforge.errors import InputError

    out = tmp_path / "o.h5"
    with pytest.raises(InputError, match=f"format '{fmt}' has no option {next(iter(option))}"):
        with write_showers(out, fmt, "calogan", **option):
            pass
    assert not out.exists()
    assert_no_temporaries(tmp_path)
