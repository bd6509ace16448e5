"""Reconstruction level (seed 001): digitisation, two-step energy calibration fitted on
the reference, and software compensation with hit-energy-density weights.

In an evaluation the stage runs by itself (``reco`` in :class:`EvaluationConfig`, on by
default for SiPM-on-tile hadron calorimeters such as ild-ahcal; ``caloforge evaluate
--reco``); its result is the ``reco`` section of ``metrics.json`` and the ``reco_*``
figures, and the calibration it fitted is saved as ``reco_calibration.json`` in the
report.  :func:`calibrate_file` makes a calibration file from a reference sample alone,
for use with ``--reco-calibration``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caloforge.data.batch import ShowerBatch
from caloforge.errors import InputError
from caloforge.evaluation.reco.calibration import (
    RecoCalibration,
    density_sums,
    fit_calibration,
    min_showers,
)
from caloforge.evaluation.reco.digitise import (
    DigitisationConfig,
    desaturate,
    digitise,
    saturation_curve,
)
from caloforge.evaluation.reco.stage import RecoStream, is_hadron_calorimeter
from caloforge.geometry import get_geometry

__all__ = ["DigitisationConfig", "RecoCalibration", "calibrate_file", "density_sums",
           "desaturate", "digitise", "fit_calibration", "is_hadron_calorimeter",
           "min_showers", "saturation_curve"]


def calibrate_file(reference: str | Path | ShowerBatch, output: str | Path | None = None,
                   digitisation: DigitisationConfig | None = None, seed: int = 0,
                   max_rel_error: float = 0.10, batch_size: int = 1000,
                   overwrite: bool = False) -> RecoCalibration:
    """Fit a calibration on a reference sample (file or ShowerBatch) and optionally save
    it to ``output`` (JSON)."""
    from caloforge.evaluation.stream import Source

    src = Source(reference, "reference", None, batch_size)
    geo = get_geometry(src.geometry)
    digi = digitisation or DigitisationConfig()
    digi.validate()
    stream = RecoStream(digi, geo.mip_mev, seed)
    sums, e_inc, start = [], [], 0
    for batch in src.batches():
        idx = np.arange(start, start + len(batch))
        start += len(batch)
        ok = np.isfinite(batch.energies).all(axis=1) & \
            (batch.conditions.incident_energy > 0)
        rows, cols = np.nonzero(np.where(ok[:, None], batch.energies, 0) > 0)
        sums.append(stream.features(rows, batch.energies[rows, cols], idx)[ok])
        e_inc.append(batch.conditions.incident_energy[ok])
    if not sums or sum(len(s) for s in sums) == 0:
        raise InputError("reference sample has no usable showers", src.name)
    cal = fit_calibration(np.concatenate(e_inc), np.concatenate(sums), geo.name,
                          geo.mip_mev, digi, max_rel_error, src.name)
    if output is not None:
        cal.save(output, overwrite)
    return cal
