"""Optional Geant4 engine (``pip install caloforge[geant4]``).

Importing this package does not import geant4_pybind; that happens when an engine is
created, with a clear :class:`Geant4SetupError` if it or the datasets are missing.
"""

from caloforge.simulation.geant4.engine import Crossings, Geant4Engine
from caloforge.simulation.geant4.layout import (
    GEANTINO_PHYSICS,
    NIST_MATERIALS,
    Geant4SetupError,
    Slab,
    SlabLayout,
    check_datasets,
    find_datasets,
    nist_material,
    required_datasets,
    slab_layout,
)

__all__ = [
    "GEANTINO_PHYSICS",
    "NIST_MATERIALS",
    "Crossings",
    "Geant4Engine",
    "Geant4SetupError",
    "Slab",
    "SlabLayout",
    "check_datasets",
    "find_datasets",
    "nist_material",
    "required_datasets",
    "slab_layout",
]
