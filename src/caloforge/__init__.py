"""caloforge: generative fast simulation of particle showers in granular calorimeters.

The light-weight parts (geometries, shower data, file formats) are importable from the
top level; simulation, models and evaluation live in their subpackages.

>>> import caloforge
>>> caloforge.get_geometry("ild-ecal").n_voxels
27000
"""

__version__ = "0.1.0"

from caloforge.data import Conditions, PointCloudBatch, ShowerBatch  # noqa: E402
from caloforge.data.io import (  # noqa: E402
    detect_format,
    open_showers,
    read_showers,
    write_showers,
)
from caloforge.errors import CaloforgeError  # noqa: E402
from caloforge.geometry import get_geometry, list_geometries  # noqa: E402

__all__ = [
    "CaloforgeError",
    "Conditions",
    "PointCloudBatch",
    "ShowerBatch",
    "__version__",
    "detect_format",
    "get_geometry",
    "list_geometries",
    "open_showers",
    "read_showers",
    "write_showers",
]
