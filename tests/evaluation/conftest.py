import os

import pytest

# Quiet progress bars in tests.
os.environ.setdefault("CALOFORGE_NO_PROGRESS", "1")


AHCAL_LIKE = "toy-ahcal-hadron"  # registered by the ahcal_like fixture, per module


@pytest.fixture(scope="module")
def ahcal_like():
    """``write(path, energies_gev, seed)``: toy showers on a 48-layer steel-scintillator
    grid of 6 x 6 tiles of 30 mm (the AHCAL's sampling structure on a small face; a hadron
    calorimeter for the reco stage) written as a caloforge file.  The geometry is
    registered for the module that uses it and removed afterwards."""
    import numpy as np

    from caloforge import geometry
    from caloforge.data.io import write_showers
    from caloforge.evaluation.toy import toy_showers
    from caloforge.geometry import CartesianGeometry, LayerSpec

    geometry.register_geometry(CartesianGeometry(
        name=AHCAL_LIKE, description="48 x 6 x 6 AHCAL-like steel-scintillator grid (tests)",
        layers=tuple(LayerSpec("Fe", 17.4, "polystyrene", 3.0) for _ in range(48)),
        grid=((6, 6),) * 48, cell_mm=((30.0, 30.0),) * 48), overwrite=True)

    def write(path, energies_gev, seed):
        e = np.asarray(energies_gev, float)
        with write_showers(path, "caloforge", AHCAL_LIKE) as w:
            w.append(toy_showers(len(e), AHCAL_LIKE, seed=seed, energies_gev=e,
                                 zero_below_mip=0.3))
        return str(path)

    yield write
    geometry._FACTORIES.pop(AHCAL_LIKE, None)
    geometry.get_geometry.cache_clear()
