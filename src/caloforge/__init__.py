"""caloforge: generative fast simulation of particle showers in granular calorimeters."""

__version__ = "0.1.0"

from caloforge.errors import CaloforgeError  # noqa: E402

__all__ = ["CaloforgeError", "__version__"]
