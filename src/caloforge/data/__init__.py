"""Shower data model and file formats.

>>> from caloforge.data import open_showers  # doctest: +SKIP
>>> with open_showers("photons.h5") as f:  # doctest: +SKIP
...     for batch in f.iter_batches(1000):
...         print(batch.total_energy().mean())
"""

from caloforge.data.batch import (
    PARTICLES,
    PDG_NAMES,
    Conditions,
    Hits,
    PointCloudBatch,
    ShowerBatch,
)

__all__ = ["PARTICLES", "PDG_NAMES", "Conditions", "Hits", "PointCloudBatch", "ShowerBatch"]
