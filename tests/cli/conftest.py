import pytest

from caloforge.data.io import write_showers


@pytest.fixture
def ecal_file(tmp_path, showers):
    """Five ILD ECAL showers in a CaloChallenge-format file."""
    path = tmp_path / "ecal.h5"
    with write_showers(path, "calochallenge", "ild-ecal") as w:
        w.append(showers("ild-ecal", 5))
    return path
