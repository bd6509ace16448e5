"""Material constants (PDG Review of Particle Physics, "Atomic and nuclear properties
of materials", pdg.lbl.gov/AtomicNuclearProperties) and the most probable MIP deposit.

Lengths in mm, densities in g/cm^3, energies in MeV.  The numbers are the PDG table
values for the elements / compounds (radiation length X0, nuclear interaction length
lambda_I, <Z/A>, mean excitation energy I, critical energy E_c for electrons (Rossi
definition), Moliere radius R_M) and the Sternheimer density-effect parameters used by
the Bethe formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ELECTRON_MASS_MEV = 0.51099895  # PDG 2022
K_BETHE = 0.307075  # MeV cm^2 / mol, 4 pi N_A r_e^2 m_e c^2 (PDG eq. 34.5)


@dataclass(frozen=True)
class Material:
    """One homogeneous material.  Lengths in mm, density in g/cm^3, energies in MeV."""

    name: str
    Z: float  # effective atomic number (element Z, or electron-weighted for mixtures)
    A: float  # g/mol (effective)
    z_over_a: float  # <Z/A>
    density: float  # g/cm^3
    radiation_length_mm: float  # X0
    interaction_length_mm: float  # lambda_I (nuclear interaction length)
    mean_excitation_mev: float  # I
    critical_energy_mev: float  # E_c for e- (PDG, Rossi definition)
    moliere_radius_mm: float  # R_M
    # Sternheimer density-effect parameters (x0, x1, a, k, -C, delta0), PDG tables.
    sternheimer: tuple[float, float, float, float, float, float]

    @property
    def electron_density_per_mm3(self) -> float:
        """Electrons per mm^3 (N_A * rho * Z/A)."""
        return 6.02214076e23 * self.density * self.z_over_a / 1000.0


# PDG AtomicNuclearProperties pages (tungsten_W, silicon_Si, iron_Fe,
# polystyrene, lead_Pb, liquid_argon), values as listed there.
TUNGSTEN = Material(
    "W", 74, 183.84, 0.40250, 19.30, 3.504, 99.46, 727.0e-6, 7.97, 9.327,
    (0.2167, 3.4960, 0.15509, 2.8447, 5.4059, 0.14),
)
SILICON = Material(
    "Si", 14, 28.0855, 0.49848, 2.329, 93.70, 465.2, 173.0e-6, 40.19, 48.82,
    (0.2015, 2.8716, 0.14921, 3.2546, 4.4355, 0.14),
)
IRON = Material(
    "Fe", 26, 55.845, 0.46557, 7.874, 17.57, 167.7, 286.0e-6, 21.68, 17.19,
    (-0.0012, 3.1531, 0.14680, 2.9632, 4.2911, 0.12),
)
# Stainless steel of the AHCAL absorber is modelled as iron (CALICE AHCAL papers
# quote X0 = 1.757 cm and lambda_I = 16.77 cm for their steel, the iron values).
STEEL = IRON
POLYSTYRENE = Material(
    "polystyrene", 3.5, 6.5, 0.53768, 1.060, 413.1, 775.1, 68.7e-6, 93.11, 94.13,
    (0.1647, 2.5031, 0.16454, 3.2224, 3.2999, 0.0),
)
LEAD = Material(
    "Pb", 82, 207.2, 0.39575, 11.35, 5.612, 175.9, 823.0e-6, 7.43, 16.02,
    (0.3776, 3.8073, 0.09359, 3.1608, 6.2018, 0.14),
)
LIQUID_ARGON = Material(
    "LAr", 18, 39.948, 0.45059, 1.396, 140.0, 857.7, 188.0e-6, 32.84, 90.43,
    (0.2, 3.0, 0.19559, 3.0, 5.2146, 0.0),
)
AIR = Material(
    "air", 7.3, 14.7, 0.49919, 1.205e-3, 303900.0, 7.5e5, 85.7e-6, 87.92, 73.0e3,
    (1.7418, 4.2759, 0.10914, 3.3994, 10.5961, 0.0),
)

MATERIALS: dict[str, Material] = {
    m.name: m for m in (TUNGSTEN, SILICON, IRON, POLYSTYRENE, LEAD, LIQUID_ARGON, AIR)
}


def get_material(name: str) -> Material:
    """Look a material up by its short name ("W", "Si", "Fe", "polystyrene", ...)."""
    try:
        return MATERIALS[name]
    except KeyError:
        from caloforge.errors import GeometryError

        raise GeometryError(
            f"unknown material {name!r}; known: {', '.join(sorted(MATERIALS))}"
        ) from None


def density_effect(material: Material, beta_gamma: float) -> float:
    """Sternheimer density-effect correction delta(beta*gamma) (PDG eq. 34.7)."""
    x0, x1, a, k, minus_c, delta0 = material.sternheimer
    x = math.log10(beta_gamma)
    two_ln10 = 2.0 * math.log(10.0)
    if x >= x1:
        return two_ln10 * x - minus_c
    if x >= x0:
        return two_ln10 * x - minus_c + a * (x1 - x) ** k
    return delta0 * 10 ** (2.0 * (x - x0))


def mip_most_probable_deposit(
    material: Material, thickness_mm: float, beta_gamma: float = 3.6
) -> float:
    """Most probable energy loss (MeV) of a unit-charge MIP crossing ``thickness_mm``.

    Landau-Vavilov-Bichsel formula, PDG eq. 34.12:
    Delta_p = xi [ ln(2 m c^2 beta^2 gamma^2 / I) + ln(xi / I) + j - beta^2 - delta ],
    with xi = (K/2) <Z/A> x / beta^2 and j = 0.200.  At beta*gamma = 3.6 (the minimum of
    ionisation) this gives ~0.15 MeV in 0.5 mm of silicon and ~0.47 MeV in 3 mm of
    polystyrene-based scintillator; for thin layers it is well below the mean dE/dx.
    """
    gamma = math.sqrt(1.0 + beta_gamma**2)
    beta2 = (beta_gamma / gamma) ** 2
    areal_density = material.density * thickness_mm / 10.0  # g/cm^2
    xi = 0.5 * K_BETHE * material.z_over_a * areal_density / beta2
    i_mev = material.mean_excitation_mev
    return xi * (
        math.log(2.0 * ELECTRON_MASS_MEV * beta_gamma**2 / i_mev)
        + math.log(xi / i_mev)
        + 0.200
        - beta2
        - density_effect(material, beta_gamma)
    )
