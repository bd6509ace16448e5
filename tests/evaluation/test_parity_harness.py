"""The parsing and the pass/fail rules of benchmarks/parity_calochallenge.py (the harness
that compares --protocol calochallenge with the official code); the official code itself
is never imported or run here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import parity_calochallenge as parity  # noqa: E402

# Written as the official evaluate_plotting_helper writes it (str() of numpy floats).
OFFICIAL_HIST = ("List of chi2 of the plotted histograms, see eq. 15 of 2009.03796 for its "
                 "definition.\nEtot / Einc: \n0.0141178\n\nE layer 0: \n0.00161\n\n"
                 "EC Eta layer 12: \n2.5e-05\n\nVoxel distribution: \n0.3\n\n")


def test_separation_powers_are_read_with_their_official_names():
    got = parity.parse_separation_powers(OFFICIAL_HIST)
    assert got == {"Etot / Einc": 0.0141178, "E layer 0": 0.00161,
                   "EC Eta layer 12": 2.5e-05, "Voxel distribution": 0.3}


def test_fpd_kpd_lines_are_read_and_a_missing_one_is_an_error():
    text = "FPD (x10^3): 42.7699 ± 0.5700\nKPD (x10^3): 0.0778 ± 0.0362"
    assert parity.parse_fpd_kpd(text) == {"fpd": (42.7699, 0.57), "kpd": (0.0778, 0.0362)}
    with pytest.raises(ValueError, match="KPD"):
        parity.parse_fpd_kpd(text.splitlines()[0])


def test_histogram_tolerance_is_5_percent_or_0p002_and_missing_names_are_listed():
    official = {"a": 0.100, "b": 0.100, "c": 0.001, "d": 0.5}
    mine = {"a": 0.104,      # 4 % relative (0.004 absolute): passes on the relative rule
            "b": 0.107,      # 7 % and 0.007: fails
            "c": 0.0029}     # 190 % but 0.0019 absolute: passes on the absolute rule
    res = parity.compare_histograms(official, mine)
    assert (res["n"], res["passed"], res["missing"]) == (3, 2, ["d"])
    assert [f[0] for f in res["failures"]] == ["b"]
    assert res["worst"][0] == "b"
