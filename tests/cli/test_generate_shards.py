"""``caloforge generate --shard i/N``: shards of one run tile it, give the same showers as
the whole run, and ``merge`` joins them (and refuses an incomplete or mixed set)."""

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.data.io import open_showers, read_showers

MODEL = "ild-ecal-photons"
RUN = ["generate", "--model", MODEL, "--energy", "10:100", "-n", "7", "--seed", "3",
       "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("gshards")
    assert main([*RUN, "-o", str(d / "whole.h5")]) == 0
    for i, bs in ((0, "1"), (1, "5"), (2, "2")):  # batch size must not matter either
        assert main([*RUN, "--shard", f"{i}/3", "--batch-size", bs,
                     "-o", str(d / f"s{i}.h5")]) == 0
    return d


def test_shards_tile_the_run_and_merge_to_it(runs):
    sizes = [len(read_showers(runs / f"s{i}.h5")) for i in range(3)]
    assert sizes == [2, 2, 3]
    with open_showers(runs / "s1.h5") as f:
        meta = f.metadata
    assert (meta["first_index"], meta["stop_index"], meta["run_size"]) == (2, 4, 7)
    out = runs / "merged.h5"
    assert main(["merge", str(out), str(runs / "s2.h5"), str(runs / "s0.h5"),
                 str(runs / "s1.h5")]) == 0
    whole, merged = read_showers(runs / "whole.h5"), read_showers(out)
    np.testing.assert_array_equal(merged.conditions.incident_energy,
                                  whole.conditions.incident_energy)
    # batched matrix products differ in the last bits between batch sizes (models tests)
    np.testing.assert_allclose(merged.energies, whole.energies, rtol=1e-4, atol=1e-4)


def test_merge_refuses_a_missing_or_foreign_shard(runs, capsys):
    assert main(["merge", str(runs / "x.h5"), str(runs / "s0.h5"), str(runs / "s2.h5")]) == 1
    assert "miss" in capsys.readouterr().err
    other = runs / "other.h5"
    other_seed = [("4" if prev == "--seed" else a) for prev, a in zip(["", *RUN], RUN)]
    assert main([*other_seed, "--shard", "1/3", "-o", str(other)]) == 0
    capsys.readouterr()
    assert main(["merge", str(runs / "y.h5"), str(runs / "s0.h5"), str(other),
                 str(runs / "s2.h5")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (runs / "x.h5").exists() and not (runs / "y.h5").exists()


@pytest.mark.parametrize("spec", ["3/3", "1/0", "a/b", "0/8"])
def test_bad_shard_spec(spec, tmp_path, capsys):
    assert main([*RUN, "--shard", spec, "-o", str(tmp_path / "g.h5")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
