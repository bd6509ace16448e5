"""Physics tables for the builtin Monte Carlo: cross sections and stopping powers.

Everything the compiled transport kernel needs is precomputed here with numpy on a
logarithmic kinetic-energy grid per material, so that the kernel only interpolates.
Units: energies in MeV, lengths in mm, cross sections as inverse mean free paths (1/mm).

References for the formulas:

* Bremsstrahlung and pair production in the complete-screening limit, Y.-S. Tsai,
  Rev. Mod. Phys. 46 (1974) 815, as summarised in the PDG review "Passage of particles
  through matter" (eqs. 34.29 and 34.31): dsigma/dk = A/(X0 N_A k) (4/3 - 4/3 y + y^2)
  and dsigma/dx = A/(X0 N_A) (1 - 4/3 x (1 - x)), total pair cross section 7/(9 X0).
  Below the complete-screening regime the pair cross section is interpolated towards
  the unscreened Bethe-Heitler value (28/9 ln(2k/m) - 218/27), Bethe & Heitler,
  Proc. R. Soc. A 146 (1934) 83.
* Compton scattering: Klein-Nishina total cross section per electron.
* Photoelectric absorption: a Z^4 k^-2.6 power law per atom fitted to the NIST XCOM
  photo-absorption coefficients of W, Fe and Si between 0.1 and 1 MeV (within ~30 %,
  which is enough because it only decides where photons below ~0.5 MeV are absorbed).
* Restricted electron stopping power (energy transfers below the delta-ray cut):
  Berger-Seltzer formula with the Sternheimer density effect (ICRU report 37; as used
  by Geant4's G4MollerBhabhaModel), plus the radiative loss below the photon cut.
* Moller cross section for delta rays above the cut (Moller, Ann. Phys. 14 (1932) 531).
* Landau distribution for ionisation straggling below the delta-ray cut
  (L. Landau, J. Phys. USSR 8 (1944) 201; PDG eq. 34.12 for its most probable value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from caloforge.geometry.materials import ELECTRON_MASS_MEV, K_BETHE, Material, get_material
from caloforge.simulation import libm

ME = ELECTRON_MASS_MEV
R_E_MM = 2.8179403262e-12  # classical electron radius (mm)
TWO_PI_RE2_MC2 = 2.0 * math.pi * R_E_MM**2 * ME  # MeV mm^2
AVOGADRO = 6.02214076e23

# Energy grid shared by all tables (kinetic energy for charged particles, energy for
# photons): 1 keV .. 10 TeV, 40 points per decade.
LOG_E_MIN = math.log(1e-3)
LOG_E_MAX = math.log(1e7)
N_GRID = 401
INV_DLOG = (N_GRID - 1) / (LOG_E_MAX - LOG_E_MIN)
E_GRID = libm.exp(np.linspace(LOG_E_MIN, LOG_E_MAX, N_GRID))

# Fit of the photoelectric coefficient (cm^2/g) at 0.1 MeV: C * Z^4 / A (NIST XCOM W:
# 3.7 cm^2/g at 100 keV, Fe ~0.19, energy slope ~k^-2.6 between 0.1 and 0.5 MeV).
_PHOTO_C = 2.275e-5
_PHOTO_SLOPE = 2.6


@dataclass(frozen=True)
class Cuts:
    """Production and tracking cuts of the builtin engine (MeV).

    ``photon_mev``: photons below are absorbed on the spot; ``brems_mev``: photons
    below are not produced, their energy counts as continuous loss; ``delta_mev``:
    knock-on electrons above are produced explicitly (below: straggling);
    ``electron_mev``: e+- below are stopped on the spot (the positron annihilates);
    ``range_rejection_mev``: in passive media e+- below this energy whose CSDA range
    cannot reach the next slab boundary are stopped on the spot (no effect on the
    active deposits, large speed gain); ``hadron_mev``: heavy charged particles below
    are stopped on the spot.
    """

    photon_mev: float = 0.1
    brems_mev: float = 0.5
    delta_mev: float = 0.5
    electron_mev: float = 0.1
    range_rejection_mev: float = 3.0
    hadron_mev: float = 2.0
    # Maximum fractional continuous energy loss in one step.
    max_loss_fraction: float = 0.2

    def as_array(self) -> np.ndarray:
        return np.array([self.photon_mev, self.brems_mev, self.delta_mev, self.electron_mev,
                         self.range_rejection_mev, self.hadron_mev, self.max_loss_fraction])


def _density_effect(m: Material, beta_gamma: np.ndarray) -> np.ndarray:
    x0, x1, a, k, minus_c, delta0 = m.sternheimer
    x = libm.log10(np.maximum(beta_gamma, 1e-12))
    two_ln10 = 2.0 * math.log(10.0)
    out = np.where(x >= x1, two_ln10 * x - minus_c,
                   two_ln10 * x - minus_c + a * libm.power(np.clip(x1 - x, 0, None), k))
    return np.where(x < x0, delta0 * libm.power(10.0, 2.0 * (x - x0)), out)


def electron_restricted_dedx(m: Material, t: np.ndarray, cut: float) -> np.ndarray:
    """Restricted collision stopping power of electrons (MeV/mm), Berger-Seltzer form."""
    tau = t / ME
    gamma = tau + 1.0
    beta2 = tau * (tau + 2.0) / gamma**2
    d = np.minimum(cut, 0.5 * t) / ME
    eexc2 = (m.mean_excitation_mev / ME) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        val = (libm.log(2.0 * (tau + 2.0) / eexc2) - 1.0 - beta2 + libm.log((tau - d) * d)
               + tau / (tau - d)
               + (0.5 * d * d + (2.0 * tau + 1.0) * libm.log1p(-d / tau)) / gamma**2)
    val = val - _density_effect(m, np.sqrt(tau * (tau + 2.0)))
    n_el = m.electron_density_per_mm3
    out = TWO_PI_RE2_MC2 * n_el * val / beta2
    return np.maximum(np.nan_to_num(out, nan=0.0), 0.0)


def brems_sigma(m: Material, t: np.ndarray, kc: float) -> np.ndarray:
    """Inverse mean free path (1/mm) for bremsstrahlung photons above ``kc``."""
    e = t + ME  # total energy carries the spectrum's upper limit (y = k / E)
    yc = np.clip(kc / e, 1e-300, 1.0)
    integral = (4.0 / 3.0) * libm.log(1.0 / yc) - (4.0 / 3.0) * (1.0 - yc) + 0.5 * (1.0 - yc**2)
    return np.where(t > kc, integral / m.radiation_length_mm, 0.0)


def brems_soft_loss(m: Material, t: np.ndarray, kc: float) -> np.ndarray:
    """Continuous radiative loss (MeV/mm) from photons below ``kc``."""
    e = t + ME
    yc = np.minimum(kc / e, 1.0)
    # E * int_0^yc (4/3 - 4/3 y + y^2) dy / X0
    return e * ((4.0 / 3.0) * yc - (2.0 / 3.0) * yc**2 + yc * yc * yc / 3.0) / m.radiation_length_mm


def moller_sigma(m: Material, t: np.ndarray, cut: float) -> np.ndarray:
    """Inverse mean free path (1/mm) for Moller delta rays above ``cut``."""
    gam = t / ME + 1.0
    gamma2 = gam * gam
    beta2 = 1.0 - 1.0 / gamma2
    gg = (2.0 * gam - 1.0) / gamma2
    xmin = np.minimum(cut / np.maximum(t, 1e-300), 0.5)
    xmax = 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = ((xmax - xmin) * (1.0 - gg + 1.0 / (xmin * xmax) + 1.0 / ((1 - xmin) * (1 - xmax)))
                 - gg * libm.log(xmax * (1 - xmin) / (xmin * (1 - xmax)))) / beta2
        cross = cross * TWO_PI_RE2_MC2 / t
    out = np.where(t > 2.0 * cut, cross * m.electron_density_per_mm3, 0.0)
    return np.maximum(np.nan_to_num(out, nan=0.0), 0.0)


def klein_nishina_per_electron(k: np.ndarray) -> np.ndarray:
    """Klein-Nishina total cross section per electron (mm^2)."""
    kap = k / ME
    l2 = libm.log1p(2.0 * kap)
    return 2.0 * math.pi * R_E_MM**2 * (
        (1.0 + kap) / kap**2 * (2.0 * (1.0 + kap) / (1.0 + 2.0 * kap) - l2 / kap)
        + l2 / (2.0 * kap) - (1.0 + 3.0 * kap) / (1.0 + 2.0 * kap) ** 2)


def pair_sigma(m: Material, k: np.ndarray) -> np.ndarray:
    """Pair-production inverse mean free path (1/mm): Tsai complete screening, reduced
    near threshold by the ratio of the unscreened to the screened Bethe-Heitler value."""
    full = 7.0 / (9.0 * m.radiation_length_mm)
    screened = 28.0 / 9.0 * math.log(183.0 * m.Z ** (-1.0 / 3.0)) - 2.0 / 27.0
    with np.errstate(divide="ignore", invalid="ignore"):
        unscreened = 28.0 / 9.0 * libm.log(2.0 * k / ME) - 218.0 / 27.0
    ratio = np.clip(np.nan_to_num(unscreened / screened, nan=0.0), 0.0, 1.0)
    return np.where(k > 2.0 * ME, full * ratio, 0.0)


def photo_sigma(m: Material, k: np.ndarray) -> np.ndarray:
    """Photoelectric inverse mean free path (1/mm), power-law fit (see module doc)."""
    per_gram = _PHOTO_C * m.Z**4 / m.A * libm.power(np.maximum(k, 1e-6) / 0.1, -_PHOTO_SLOPE)
    return per_gram * m.density / 10.0  # cm^2/g * g/cm^3 = 1/cm -> 1/mm


def csda_range(e_grid: np.ndarray, total_loss: np.ndarray) -> np.ndarray:
    """Continuous-slowing-down range (mm) on the grid from the total loss (MeV/mm)."""
    loss = np.maximum(total_loss, 1e-12)
    integrand = 1.0 / loss
    # Below the first grid point assume range ~ E / loss (tiny anyway).
    rng = np.empty_like(e_grid)
    rng[0] = e_grid[0] / loss[0]
    rng[1:] = rng[0] + np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(e_grid))
    return rng


# Birks' constant kB of organic scintillators: visible dE = dE / (1 + kB dE/dx)
# (J. B. Birks, Proc. Phys. Soc. A 64 (1951) 874; 0.126 mm/MeV is the value commonly used
# for polystyrene-based scintillator, e.g. by the CALICE AHCAL simulations).
BIRKS_MM_PER_MEV = {"polystyrene": 0.126}

# Column layout of the per-material table array ``tab[m, column, grid]``.
COL_MU_GAMMA, COL_F_COMPTON, COL_F_PAIR, COL_DEDX_E, COL_SIG_BREM, COL_SIG_MOLLER, \
    COL_RANGE_E = range(7)
N_COLS = 7

# Per-material scalar array ``mat[m, :]``.
M_X0, M_LAMBDA, M_ELDENS, M_XI, M_I, M_ZA_RHO, M_BIRKS, M_DENSITY = range(8)
N_MAT = 8 + 6  # + Sternheimer parameters
M_STERN = 8


def material_tables(materials: list[Material], cuts: Cuts) -> tuple[np.ndarray, np.ndarray]:
    """Tables ``(tab, scalars)`` for the kernel, one row per material in order."""
    tab = np.zeros((len(materials), N_COLS, N_GRID))
    scal = np.zeros((len(materials), N_MAT))
    e = E_GRID
    for i, m in enumerate(materials):
        compton = klein_nishina_per_electron(e) * m.electron_density_per_mm3
        pair = pair_sigma(m, e)
        photo = photo_sigma(m, e)
        mu = compton + pair + photo
        tab[i, COL_MU_GAMMA] = mu
        tab[i, COL_F_COMPTON] = compton / mu
        tab[i, COL_F_PAIR] = pair / mu
        restricted = electron_restricted_dedx(m, e, cuts.delta_mev)
        tab[i, COL_DEDX_E] = restricted + brems_soft_loss(m, e, cuts.brems_mev)
        tab[i, COL_SIG_BREM] = brems_sigma(m, e, cuts.brems_mev)
        tab[i, COL_SIG_MOLLER] = moller_sigma(m, e, cuts.delta_mev)
        # CSDA range from the collision loss alone: an upper bound of the true range, so
        # range rejection never stops an electron that could reach the next slab.
        tab[i, COL_RANGE_E] = csda_range(e, electron_restricted_dedx(m, e, 1e30))
        scal[i, M_X0] = m.radiation_length_mm
        scal[i, M_LAMBDA] = m.interaction_length_mm
        scal[i, M_ELDENS] = m.electron_density_per_mm3
        # xi per mm at beta = 1: (K/2) <Z/A> rho (PDG eq. 34.12), rho in g/cm^3 -> per mm
        scal[i, M_XI] = 0.5 * K_BETHE * m.z_over_a * m.density / 10.0
        scal[i, M_I] = m.mean_excitation_mev
        scal[i, M_ZA_RHO] = m.z_over_a * m.density
        scal[i, M_DENSITY] = m.density
        scal[i, M_BIRKS] = BIRKS_MM_PER_MEV.get(m.name, 0.0)
        scal[i, M_STERN:M_STERN + 6] = m.sternheimer
    return tab, scal


@lru_cache(maxsize=1)
def landau_tables() -> np.ndarray:
    """Inverse CDF of the standard Landau distribution (scipy's, location 0, scale 1):
    lambda at 4096 equidistant probabilities in [0, 0.999] for table sampling."""
    from scipy.stats import landau

    u = np.linspace(0.0, 0.999, 4096)
    return landau.ppf(np.clip(u, 1e-9, None))


def geometry_materials(names: list[str]) -> list[Material]:
    return [get_material(n) for n in names]
