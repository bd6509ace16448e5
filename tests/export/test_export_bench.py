"""caloforge bench: timing table, JSON and plot; time limit; one-line bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caloforge.cli import main
from caloforge.export.bench import BenchSettings, bench, bench_conditions, write_outputs
from caloforge.models import build


@pytest.fixture(scope="module")
def model_dir(toy_data, tmp_path_factory):
    """A tiny l2lflows with fitted preprocessing (untrained weights time the same)."""
    model = build("l2lflows", toy_data.geometry, preset="tiny", seed=1)
    model.fit_preprocessing(torch.from_numpy(toy_data.energies).float(),
                            torch.from_numpy(toy_data.incident_energy).float())
    model.fit_conditions(toy_data.conditions)
    folder = tmp_path_factory.mktemp("bench") / "model"
    model.save(folder)
    return folder


QUICK = dict(batch_sizes=(1, 4), threads=(1,), min_time_s=0.01, max_repeats=2,
             device="cpu")


def test_every_backend_and_the_simulation_timed(model_dir, tmp_path):
    result = bench([model_dir], BenchSettings(**QUICK))
    rows = {(t.backend, t.batch): t for t in result.timings}
    for backend in ("pytorch", "onnx", "torchscript"):
        for batch in (1, 4):
            t = rows[(backend, batch)]
            assert t.ms_per_shower > 0 and 1 <= t.repeats <= 2 and t.threads == 1
    assert result.simulation_ms(str(model_dir)) > 0
    table = result.table()
    assert "reference simulation" in table and table.count("x)") == 6
    written = write_outputs(result, tmp_path / "b.json", tmp_path / "b.png")
    assert len(written) == 2 and (tmp_path / "b.png").stat().st_size > 1000
    data = json.loads((tmp_path / "b.json").read_text())
    speedups = [t["speedup_vs_simulation"] for t in data["timings"] if t["backend"] != "simulation"]
    assert len(speedups) == 6 and all(s > 0 for s in speedups)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.png"]


def test_time_limit_skips_settings_and_says_so(model_dir):
    # 1 ns: spent before the first timing on any machine (1 ms was not, on a fast run)
    settings = BenchSettings(**{**QUICK, "time_limit_s": 1e-9}, backends=("pytorch",),
                             simulation=False)
    result = bench([model_dir], settings)
    smallest, larger = result.timings  # the smallest batch is always timed
    assert smallest.batch == 1 and smallest.ms_per_shower > 0 and smallest.repeats == 1
    assert larger.ms_per_shower is None and "time limit" in larger.note
    assert "skipped" in result.table()


def test_conditions_reproducible_and_inside_the_trained_range(model_dir):
    from caloforge.models import load

    model = load(model_dir)
    a = bench_conditions(model, BenchSettings(seed=3), 50).incident_energy
    b = bench_conditions(model, BenchSettings(seed=3), 50).incident_energy
    lo, hi = model.energy_range_mev
    np.testing.assert_array_equal(a, b)
    assert lo <= a.min() and a.max() <= hi
    c = bench_conditions(model, BenchSettings(seed=3, energy_gev="20"), 5).incident_energy
    np.testing.assert_array_equal(c, np.full(5, 20e3))


def test_bad_input_one_line(model_dir, tmp_path, capsys, monkeypatch):
    base = ["bench", str(model_dir), "--threads", "1", "--no-simulation"]
    cases = [
        (["bench", str(tmp_path / "nope")], 1, "nope"),
        ([*base, "--batch-sizes", "0"], 2, "--batch-sizes"),
        ([*base, "--batch-sizes", "-3"], 2, "--batch-sizes"),
        ([*base, "--batch-sizes", "10001"], 2, "at most 10000"),
        (["bench", str(model_dir), "--threads", "4096"], 1, "--threads"),
        ([*base, "--seed", "-1"], 1, "--seed"),
        ([*base, "--plot", str(tmp_path / "p.txt")], 1, ".png"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*base, "--device", "cuda"], 1, "not available"))
    for argv, code, message in cases:
        rc = _exit_code(argv)
        err = capsys.readouterr().err.strip()
        assert rc == code and message in err and len(err.splitlines()) == 1, (argv, err)

    def untraceable(*args, **kwargs):
        raise RuntimeError("Could not export a data-dependent loop")

    monkeypatch.setattr(torch.onnx, "export", untraceable)
    out = tmp_path / "r.json"
    assert main([*base, "--formats", "onnx", "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "could not be traced to onnx" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _exit_code(argv: list[str]) -> int:
    """main's return value, or argparse's exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_interrupt_leaves_nothing(model_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C (SIGTERM arrives the same way) while timing: exit 130, no output, the
    temporary export folder removed."""
    import tempfile

    from caloforge.export import bench as bench_module

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_module, "time_call", interrupted)
    out = tmp_path / "r.json"
    argv = ["bench", str(model_dir), "--threads", "1", "--formats", "pytorch", "onnx",
            "--batch-sizes", "1", "--json", str(out), "--plot", str(tmp_path / "r.png")]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]
    assert list(scratch.iterdir()) == []
