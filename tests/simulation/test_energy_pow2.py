"""--energy LO:HI:pow2: the discrete CaloChallenge dataset-1 spectrum (powers of two)."""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.data.io import read_showers
from caloforge.errors import InputError
from caloforge.simulation import Range


def test_pow2_range_values_and_draws():
    r = Range.parse("0.256:4194.304:pow2", 1000.0, "--energy")
    assert r.values() == [256.0 * 2 ** k for k in range(15)]
    rng = np.random.default_rng(0)
    draws = {r.sample(rng) for _ in range(600)}
    assert draws == set(r.values())  # every value reached, nothing else
    assert Range.parse("2:2:pow2").values() == [2.0]


@pytest.mark.parametrize("text, message", [
    ("0.256:1000:pow2", "not a power of two"),
    ("0:4:pow2", "needs LO > 0"),
    ("1:2:cubic", "LO:HI:pow2"),
])
def test_pow2_range_bad_input(text, message):
    with pytest.raises(InputError, match=message):
        Range.parse(text, 1000.0, "--energy")


def test_simulate_cli_draws_the_dataset1_energies(tmp_path, capsys):
    out = tmp_path / "cc1.h5"
    assert main(["simulate", "--detector", "calochallenge-1-photons", "--particle", "photon",
                 "--energy", "0.256:2.048:pow2", "-n", "8", "--seed", "3", "-o", str(out)]) == 0
    e = read_showers(out).incident_energy
    assert set(np.unique(e)) <= {256.0, 512.0, 1024.0, 2048.0} and len(np.unique(e)) > 1
    # the builtin engine does not reach the pion end of the spectrum: one clear error
    code = main(["simulate", "--detector", "calochallenge-1-pions", "--particle", "pi+",
                 "--energy", "0.256:4194.304:pow2", "-n", "2", "-o", str(tmp_path / "p.h5")])
    err = capsys.readouterr().err
    assert code == 1 and "outside the range of the builtin engine" in err
    assert not (tmp_path / "p.h5").exists()
