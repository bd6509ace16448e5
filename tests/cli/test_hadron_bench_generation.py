"""benchmarks/bench_generation.py --model: the marginal cost of ``caloforge generate`` per
shower (N=10000 minus N=100) for any model folder or shipped name.  The timing itself is
not asserted (benchmarks print figures); the arithmetic, the command and the refusal are."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from caloforge.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_generation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("hadron_bench_generation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _linear_runner(bench, calls):
    """A fake process: 3 s start-up plus 2 ms (wall) / 1.5 ms (CPU) per shower, slower by
    1 s on every second call (so the fastest of the repeats must be taken)."""
    def run(model, energy, n, batch_size, threads, out):
        calls.append((model, energy, n, batch_size, threads))
        slow = 1.0 if len(calls) % 2 == 0 else 0.0
        return bench.Timing(3.0 + slow + 2e-3 * n * (100 / batch_size) ** 0.1,
                            2.0 + 1.5e-3 * n)
    return run


def test_marginal_cost_removes_the_start_up(bench):
    calls = []
    res = bench.marginal_cli_ms("runs/pions", "10:100", [100, 1000], 2, 100, 10000,
                                repeats=2, run=_linear_runner(bench, calls))
    assert res[100].wall == pytest.approx(2.0) and res[100].cpu == pytest.approx(1.5)
    assert res[1000].wall < res[100].wall  # the fake is faster at the larger batch
    assert {c[:2] for c in calls} == {("runs/pions", "10:100")}
    assert sorted({(c[2], c[3]) for c in calls}) == [(100, 100), (100, 1000), (10000, 100),
                                                      (10000, 1000)]
    assert len(calls) == 8 and all(c[4] == 2 for c in calls)


@pytest.mark.parametrize("n,repeats", [((100, 100), 1), ((0, 10), 1), ((100, 10000), 0)])
def test_bad_counts_are_refused(bench, n, repeats):
    with pytest.raises(ValueError):
        bench.marginal_cli_ms("m", "50", [10], 2, *n, repeats=repeats,
                              run=_linear_runner(bench, []))


def test_the_timed_command_is_a_valid_generate_call(bench, tmp_path):
    cmd = bench.generate_command("ild-ecal-photons", "10:100", 10000, 1000, 2,
                                 tmp_path / "g.h5")
    assert cmd[:3] == [sys.executable, "-m", "caloforge.cli"]
    args = build_parser().parse_args(cmd[3:])
    assert (args.model, args.energy, args.n, args.batch_size, args.threads) == \
        ("ild-ecal-photons", "10:100", 10000, 1000, 2)


def test_directions_reach_the_timed_command(bench, monkeypatch, tmp_path):
    """--theta / --phi (degrees) are passed to every timed generate call unchanged."""
    seen = []

    def run(model, energy, n, batch_size, threads, out, extra=()):
        seen.append(bench.generate_command(model, energy, n, batch_size, threads, out,
                                           extra=extra))
        return bench.Timing(1.0 + 1e-3 * n, 1.0)
    monkeypatch.setattr(bench, "generate_seconds", run)
    monkeypatch.setattr(sys, "argv", ["bench_generation.py", "--model", "m", "--theta",
                                      "0:40", "--phi", "0:360", "--batch-sizes", "100"])
    assert bench.main() == 0
    assert len(seen) == 2
    for cmd in seen:
        args = build_parser().parse_args(cmd[3:])
        assert (args.theta, args.phi) == ("0:40", "0:360")


def test_a_refused_generate_is_one_error_line_and_exit_1(bench, monkeypatch, capsys):
    def refuse(*args):
        raise bench.GenerateFailed("caloforge generate: error: 2 requested incident_energy "
                                   "values lie outside the trained range")
    monkeypatch.setattr(bench, "generate_seconds", refuse)
    monkeypatch.setattr(sys, "argv", ["bench_generation.py", "--model", "m",
                                      "--energy", "500", "--n", "1", "2"])
    assert bench.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench_generation: error: caloforge generate")


def test_best_batch_and_target_are_printed(bench, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench, "generate_seconds", _linear_runner(bench, calls))
    monkeypatch.setattr(sys, "argv", ["bench_generation.py", "--model", "m",
                                      "--batch-sizes", "100", "1000"])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "best: batch 1000" in out and "meets the 5 ms target" in out
    assert {c[2] for c in calls} == {100, 10000}  # the default counts


@pytest.mark.slow
def test_real_generate_runs_are_timed(bench, tmp_path):
    """One real pair of tiny runs of the shipped model (seconds of start-up each)."""
    t = bench.generate_seconds("ild-ecal-photons", "10:100", 2, 2, 1, tmp_path / "g.h5")
    assert t.wall > 0 and t.cpu > 0 and (tmp_path / "g.h5").is_file()
    with pytest.raises(bench.GenerateFailed, match="outside the trained range"):
        bench.generate_seconds("ild-ecal-photons", "500", 2, 2, 1, tmp_path / "h.h5")
