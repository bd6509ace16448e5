import json

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.data.io import read_showers, write_showers


def test_info_text_and_json(ecal_file, capsys):
    assert main(["info", str(ecal_file)]) == 0
    out = capsys.readouterr().out
    assert "calochallenge" in out and "ild-ecal" in out and "showers     5" in out
    assert main(["info", "--json", str(ecal_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_showers"] == 5 and info["geometry"] == "ild-ecal"
    assert 10 <= info["incident_energy_gev"][0] <= info["incident_energy_gev"][1] <= 100
    assert 0.04 < info["occupancy"] < 0.06


@pytest.mark.parametrize("fmt", ["caloforge", "ild", "pointcloud", "calochallenge"])
def test_convert_every_target(tmp_path, ecal_file, fmt, capsys):
    out = tmp_path / f"out_{fmt}.h5"
    assert main(["convert", str(ecal_file), str(out), "--to", fmt]) == 0
    assert f"wrote 5 showers to {out}" in capsys.readouterr().out
    np.testing.assert_allclose(read_showers(out).energies, read_showers(ecal_file).energies,
                               rtol=1e-6)
    # and back again to CaloChallenge
    back = tmp_path / f"back_{fmt}.h5"
    assert main(["convert", str(out), str(back), "--to", "calochallenge"]) == 0
    np.testing.assert_allclose(read_showers(back).energies, read_showers(ecal_file).energies,
                               rtol=1e-6)


def test_convert_errors_are_one_line(tmp_path, ecal_file, capsys):
    out = tmp_path / "x.h5"
    assert main(["convert", str(ecal_file), str(out), "--to", "calogan"]) == 1
    err = capsys.readouterr().err.strip()
    assert "CaloGAN format holds calogan showers" in err and "\n" not in err
    assert not out.exists()
    out.write_text("x")
    assert main(["convert", str(ecal_file), str(out), "--to", "ild"]) == 1
    assert "output exists" in capsys.readouterr().err
    assert main(["convert", str(ecal_file), str(out), "--to", "ild", "--overwrite"]) == 0
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x00" * 100)
    assert main(["info", str(bad)]) == 1
    assert "not an HDF5 file" in capsys.readouterr().err


def test_calogan_convert(tmp_path, showers):
    src = tmp_path / "cg.h5"
    b = showers("calogan", 3)
    b.overflow = np.ones((3, 3), np.float32)
    with write_showers(src, "calogan", "calogan") as w:
        w.append(b)
    assert main(["convert", str(src), str(tmp_path / "cc.h5"), "--to", "calochallenge"]) == 1
    assert main(["convert", str(src), str(tmp_path / "cc.h5"), "--to", "calochallenge",
                 "--lossy"]) == 0
    assert main(["convert", str(src), str(tmp_path / "n.h5"), "--to", "caloforge"]) == 0
    assert np.array_equal(read_showers(tmp_path / "n.h5").overflow, b.overflow)


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "info" in out and "convert" in out


def test_geometry_command(capsys):
    assert main(["geometry"]) == 0
    out = capsys.readouterr().out
    assert "ild-ecal: 30 layers, 27000 voxels" in out and "calochallenge-3" in out
    assert main(["geometry", "calogan"]) == 0
    out = capsys.readouterr().out
    assert "3x96" in out and "12x6" in out and "LAr" in out
    assert main(["geometry", "nope"]) == 1
    assert "unknown geometry 'nope'" in capsys.readouterr().err
