"""Energy calibration and software compensation, fitted on the reference only.

Two-step calibration (seed 001, Sec. 2.2): the digitised amplitudes are in MIP (step i,
:mod:`.digitise`); step ii converts the MIP sum S of a shower into GeV with one factor c
fitted so that the hit sum equals the incident energy: a least-squares line through the
origin of the incident energy E against mu90(S/E_inc) E of each incident-energy bin (each
energy of a single-energy sample, else quantile bins).

Software compensation (CALICE, JINST 7 (2012) P09017; the PandoraPFA method of seed 001's
reference [51]): the hits of a shower are binned by their energy density (amplitude per
cell in MIP; the tiles of one calorimeter have one volume) and the calibrated energy E_k
of density bin k gets a weight that depends on the shower energy,

    E_SC = sum_k w_k(E_0) E_k,   w_k(E) = a_k + b_k u + c_k u^2,   u = E / E_scale,

where E_0 = sum_k E_k is the uncompensated energy (the true energy is unknown at
reconstruction).  The 3K coefficients minimise sum (E_SC - E_true)^2 / E_true over the
reference (each shower weighted by the inverse of its stochastic variance, so every
energy counts alike), with a small ridge towards w = 1 that keeps empty density bins
defined.  Dense hits come from electromagnetic sub-showers, sparse ones from the hadronic
part; a non-compensating calorimeter (e/h > 1) gets w < 1 for the dense bins.

The calibration is a small JSON file that records its geometry, digitisation settings and
fit; :meth:`RecoCalibration.load` refuses a file of another geometry or a damaged one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge import __version__
from caloforge.errors import GeometryMismatchError, InputError
from caloforge.evaluation.observables import energy_bins, mu90_sigma90
from caloforge.evaluation.reco.digitise import DigitisationConfig
from caloforge.utils import atomic_path

FORMAT = "caloforge-reco-calibration"
FORMAT_VERSION = 1
# Upper edges of the hit-energy-density bins (MIP per cell); the first bin starts at the
# threshold and the last is open.
DENSITY_EDGES_MIP = (1.2, 2.0, 3.5, 6.0, 10.0, 16.0, 28.0)
RIDGE = 1e-3  # relative strength of the pull towards w = 1

# Statistical error of sigma90/mu90: 0.82/sqrt(n) (relative), measured on Gaussian
# samples of n = 50..400 with 2000 repetitions each (mu90_sigma90 of caloforge).
SIGMA90_REL_ERROR_COEFF = 0.82


def min_showers(max_rel_error: float) -> int:
    """Showers per energy for a relative statistical error of sigma90/mu90 at most
    ``max_rel_error`` (0.10 -> 68; 0.03, the issue's noise-floor target, -> 748).

    >>> min_showers(0.10)
    68
    """
    return math.ceil((SIGMA90_REL_ERROR_COEFF / max_rel_error) ** 2 - 1e-9)


@dataclass
class RecoCalibration:
    """A fitted calibration: MIP -> GeV factor and software-compensation weights."""

    geometry: str
    mip_mev: float
    digitisation: DigitisationConfig
    gev_per_mip: float
    density_edges_mip: tuple[float, ...] = DENSITY_EDGES_MIP
    sc_coefficients: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    energy_scale_gev: float = 1.0
    n_showers: int = 0
    fitted_on: str = ""

    @property
    def n_density_bins(self) -> int:
        return len(self.density_edges_mip) + 1

    # ---- application ----------------------------------------------------------------
    def energy(self, density_sums_mip: np.ndarray) -> np.ndarray:
        """Uncompensated energy (GeV) from the per-density-bin MIP sums (N, K)."""
        return self.gev_per_mip * np.asarray(density_sums_mip, np.float64).sum(axis=1)

    def compensated(self, density_sums_mip: np.ndarray) -> np.ndarray:
        """Software-compensated energy (GeV)."""
        return _design(self.gev_per_mip * np.asarray(density_sums_mip, np.float64),
                       self.energy_scale_gev) @ self.sc_coefficients.T.ravel()

    def weights(self, energy_gev: np.ndarray) -> np.ndarray:
        """(len(E), K) weights w_k(E) (for plots and tests)."""
        u = np.asarray(energy_gev, np.float64)[:, None] / self.energy_scale_gev
        a, b, c = self.sc_coefficients.T
        return a + b * u + c * u ** 2

    # ---- file ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "caloforge_version": __version__, "geometry": self.geometry,
                "mip_mev": self.mip_mev, "digitisation": self.digitisation.to_dict(),
                "gev_per_mip": self.gev_per_mip,
                "density_edges_mip": list(self.density_edges_mip),
                "sc_coefficients": self.sc_coefficients.tolist(),
                "energy_scale_gev": self.energy_scale_gev, "n_showers": self.n_showers,
                "fitted_on": self.fitted_on}

    def save(self, path: str | Path, overwrite: bool = True) -> None:
        with atomic_path(path, overwrite) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, geometry: str | None = None) -> RecoCalibration:
        """Read a calibration file; refuse a damaged one or one of another geometry."""
        path = Path(path)
        if not path.is_file():
            raise InputError("reco calibration file not found", path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {data.get('version')} is not "
                                 f"{FORMAT_VERSION}")
            cal = cls(geometry=str(data["geometry"]), mip_mev=float(data["mip_mev"]),
                      digitisation=DigitisationConfig.from_dict(data["digitisation"]),
                      gev_per_mip=float(data["gev_per_mip"]),
                      density_edges_mip=tuple(float(x) for x in data["density_edges_mip"]),
                      sc_coefficients=np.asarray(data["sc_coefficients"], np.float64),
                      energy_scale_gev=float(data["energy_scale_gev"]),
                      n_showers=int(data["n_showers"]), fitted_on=str(data["fitted_on"]))
            cal.check()
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise InputError(f"not a valid reco calibration file ({exc})", path) from None
        if geometry is not None and cal.geometry != geometry:
            raise GeometryMismatchError(f"reco calibration was made for geometry "
                                        f"{cal.geometry}, not {geometry}; fit one on a "
                                        f"{geometry} reference", path)
        return cal

    def check(self) -> None:
        """Raise ValueError if the numbers cannot be a calibration."""
        if not (math.isfinite(self.gev_per_mip) and self.gev_per_mip > 0):
            raise ValueError(f"gev_per_mip must be > 0, got {self.gev_per_mip}")
        if not (math.isfinite(self.mip_mev) and self.mip_mev > 0):
            raise ValueError(f"mip_mev must be > 0, got {self.mip_mev}")
        if self.sc_coefficients.shape != (self.n_density_bins, 3):
            raise ValueError(f"sc_coefficients must have shape ({self.n_density_bins}, 3), "
                             f"got {self.sc_coefficients.shape}")
        if not np.isfinite(self.sc_coefficients).all() or not self.energy_scale_gev > 0:
            raise ValueError("non-finite software-compensation coefficients")
        if list(self.density_edges_mip) != sorted(self.density_edges_mip):
            raise ValueError("density_edges_mip must increase")


# ---- per-shower features -------------------------------------------------------------
def density_sums(rows: np.ndarray, amplitudes_mip: np.ndarray, n: int,
                 edges_mip: tuple[float, ...] = DENSITY_EDGES_MIP) -> np.ndarray:
    """(n, K) MIP sums per shower and hit-energy-density bin of the hits (already above
    the threshold)."""
    k = len(edges_mip) + 1
    b = np.searchsorted(np.asarray(edges_mip), amplitudes_mip, side="right")
    return np.bincount(rows * k + b, weights=amplitudes_mip, minlength=n * k).reshape(n, k)


def _design(e_k: np.ndarray, scale: float) -> np.ndarray:
    """(N, 3K) columns E_k, E_k u, E_k u^2 (coefficient order a_1..a_K, b_1.., c_1..)."""
    u = e_k.sum(axis=1, keepdims=True) / scale
    return np.concatenate([e_k, e_k * u, e_k * u ** 2], axis=1)


# ---- fit -----------------------------------------------------------------------------
def fit_calibration(e_inc_mev: np.ndarray, sums_mip: np.ndarray, geometry: str,
                    mip_mev: float, digitisation: DigitisationConfig,
                    max_rel_error: float = 0.10, fitted_on: str = "",
                    edges_mip: tuple[float, ...] = DENSITY_EDGES_MIP) -> RecoCalibration:
    """Fit the MIP -> GeV factor and the compensation weights on reference showers.

    ``sums_mip`` are the (N, K) :func:`density_sums`.  Every incident-energy bin (each
    energy of a single-energy file, else quantile bins) needs :func:`min_showers` showers.
    """
    e_true = np.asarray(e_inc_mev, np.float64) / 1e3
    sums = np.asarray(sums_mip, np.float64)
    s = sums.sum(axis=1)
    ok = s > 0
    e_true, sums, s = e_true[ok], sums[ok], s[ok]
    bins = check_sample_size(e_true * 1e3, max_rel_error, "reference")
    # mu90 of S/E_true times the bin's energy: the mu90 of S at that energy, without the
    # spread of E_true inside a bin of a continuous spectrum
    e_bin = np.array([np.median(e_true[bins == k]) for k in range(bins.max() + 1)])
    mu = np.array([mu90_sigma90(s[bins == k] / e_true[bins == k])[0]
                   for k in range(bins.max() + 1)]) * e_bin
    gev_per_mip = float(e_bin @ mu / (mu @ mu))
    e_k = gev_per_mip * sums
    scale = float(np.median(e_true))
    x = _design(e_k, scale)
    w = 1.0 / e_true
    k = sums.shape[1]
    prior = np.concatenate([np.ones(k), np.zeros(2 * k)])
    xtw = x.T * w
    gram = xtw @ x
    lam = RIDGE * np.trace(gram) / gram.shape[0]
    coef = np.linalg.solve(gram + lam * np.eye(len(prior)), xtw @ e_true + lam * prior)
    cal = RecoCalibration(geometry, float(mip_mev), digitisation, gev_per_mip,
                          tuple(edges_mip), coef.reshape(3, k).T.copy(), scale,
                          int(len(e_true)), fitted_on)
    cal.check()
    return cal


def check_sample_size(e_inc_mev: np.ndarray, max_rel_error: float, what: str,
                      edges: np.ndarray | None = None) -> np.ndarray:
    """Incident-energy bin of each shower; raise :class:`InputError` if any bin has too
    few showers for sigma90/mu90 to ``max_rel_error`` (relative)."""
    if edges is None:
        edges, _ = energy_bins(e_inc_mev)
    b = np.clip(np.searchsorted(edges, e_inc_mev, side="right") - 1, 0, len(edges) - 2)
    need = min_showers(max_rel_error)
    counts = np.bincount(b, minlength=len(edges) - 1)
    small = [f"{0.5 * (edges[i] + edges[i + 1]) / 1e3:.3g} GeV: {c}"
             for i, c in enumerate(counts) if c < need]
    if small:
        raise InputError(f"reco: the {what} sample is too small for a stable sigma90: "
                         f"{', '.join(small)} showers; at least {need} per incident energy "
                         f"are needed for a {100 * max_rel_error:.3g}% statistical error "
                         f"of sigma90/mu90 (relative error 0.82/sqrt(n); option "
                         f"reco_max_rel_error, --reco-max-rel-error)")
    return b
