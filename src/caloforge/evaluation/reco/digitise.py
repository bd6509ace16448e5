"""Digitisation of simulated or generated cell energies (seed 001, Sec. 2.2).

A cell energy E (MeV) becomes a read-out amplitude in MIP:

1. MIP scale: ``a = E / MIP`` with the geometry's most probable MIP deposit;
2. scintillator light yield: ``N_pe ~ Poisson(a * light_yield)`` photo-electrons;
3. SiPM pixel statistics with saturation: each of the ``N_pix`` pixels fires with
   probability ``1 - exp(-N_pe / N_pix)``, so ``N_fired ~ Binomial(N_pix, p)`` whose mean
   is the standard saturation curve ``N_pix (1 - exp(-N_pe / N_pix))``;
4. desaturation by the inverse curve, ``N_pe' = -N_pix ln(1 - N_fired / N_pix)`` (as the
   ILD digitiser does; optional), and back to MIP, ``a' = N_pe' / light_yield``;
5. electronics noise: Gaussian, ``noise_mip`` wide, added to every hit;
6. the readout threshold (default 0.5 MIP).

Noise is added to cells with a deposit only: a cell without one would need a 10 sigma
fluctuation of the default 0.05 MIP noise to pass the 0.5 MIP threshold.  Steps 2-4 apply
to scintillator tiles read out by SiPMs (``sipm=True``); other readouts get 1, 5 and 6.

Random numbers come from one generator per shower, seeded by (seed, shower index in the
file), so the result does not depend on how the sample is chunked.

>>> float(np.round(saturation_curve(np.array([2000.0]), 2000)[0], 1))
1264.2
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from caloforge.errors import ConfigError

SCINTILLATORS = frozenset({"polystyrene"})


@dataclass(frozen=True)
class DigitisationConfig:
    """Settings of :func:`digitise`.  Defaults follow the ILD AHCAL digitiser: 15
    photo-electrons per MIP, 2000-pixel SiPMs, 0.5 MIP threshold; 0.05 MIP noise."""

    sipm: bool = True
    light_yield: float = 15.0  # photo-electrons per MIP
    sipm_pixels: int = 2000
    noise_mip: float = 0.05
    threshold_mip: float = 0.5
    desaturate: bool = True

    def validate(self) -> None:
        for name, low in (("light_yield", 0.0), ("sipm_pixels", 0)):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > low):
                raise ConfigError(f"reco digitisation: {name} must be > {low}, got {v}")
        for name in ("noise_mip", "threshold_mip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"reco digitisation: {name} must be a finite number "
                                  f">= 0, got {v}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DigitisationConfig:
        cfg = cls(**data)
        cfg.validate()
        return cfg


def saturation_curve(n_pe: np.ndarray, n_pixels: int) -> np.ndarray:
    """Mean number of fired pixels for ``n_pe`` photo-electrons on ``n_pixels``."""
    return n_pixels * -np.expm1(-np.asarray(n_pe, np.float64) / n_pixels)


def desaturate(n_fired: np.ndarray, n_pixels: int) -> np.ndarray:
    """Inverse of :func:`saturation_curve` (all pixels fired: capped at N_pix - 0.5)."""
    f = np.minimum(np.asarray(n_fired, np.float64), n_pixels - 0.5) / n_pixels
    return -n_pixels * np.log1p(-f)


def digitise_shower(energy_mip: np.ndarray, cfg: DigitisationConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """Read-out amplitudes (MIP) of one shower's cells with deposits (before threshold)."""
    a = np.asarray(energy_mip, np.float64)
    if cfg.sipm:
        n_pe = rng.poisson(a * cfg.light_yield)
        p = -np.expm1(-n_pe / cfg.sipm_pixels)
        n_fired = rng.binomial(cfg.sipm_pixels, p).astype(np.float64)
        a = (desaturate(n_fired, cfg.sipm_pixels) if cfg.desaturate else n_fired) \
            / cfg.light_yield
    if cfg.noise_mip > 0:
        a = a + rng.normal(0.0, cfg.noise_mip, size=a.shape)
    return a


def digitise(rows: np.ndarray, values_mev: np.ndarray, shower_index: np.ndarray,
             mip_mev: float, cfg: DigitisationConfig, seed: int) -> np.ndarray:
    """Amplitudes (MIP) of the hits of a chunk; ``rows`` (sorted, as from np.nonzero) is
    each hit's row in the chunk and ``shower_index`` each row's index in its file."""
    out = np.empty(len(values_mev), np.float64)
    bounds = np.searchsorted(rows, np.arange(len(shower_index) + 1))
    a = np.asarray(values_mev, np.float64) / mip_mev
    for r, idx in enumerate(shower_index):
        lo, hi = bounds[r], bounds[r + 1]
        if hi > lo:
            rng = np.random.default_rng([seed, 53, int(idx)])
            out[lo:hi] = digitise_shower(a[lo:hi], cfg, rng)
    return out
