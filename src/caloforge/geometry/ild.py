"""ILD calorimeters used in the DESY/Hamburg generative-model papers (seeds 000-002).

ILD ECAL (silicon-tungsten): 30 layers of 30 x 30 cells of 5.088 mm, the first 20 with
2.1 mm and the last 10 with 4.2 mm tungsten absorber, 0.5 mm silicon sensors
(seed 000 slide "ILD Calorimeters", seed 002 "ILD ECAL layer structure"; Buhmann et al.,
"Getting High", arXiv:2005.05334, Sec. 2).  Seed 002 shows the dead wafer borders and
the staggering of alternate layers; they are an option of the projection onto the
regular grid (:meth:`CartesianGeometry.project`).

ILD AHCAL (steel-scintillator): 48 layers of 25 x 25 tiles of 30 mm (seed 001,
"Hadrons, Better, Faster, Stronger", arXiv:2112.09709, Sec. 2), stainless-steel
absorber and 3 mm scintillator tiles (CALICE AHCAL technological prototype; the ILD
model uses about 20 mm of steel per layer).  Readout threshold 0.25 MeV = 0.5 MIP
(seed 001, Sec. 4.1), hence a MIP of 0.5 MeV.
"""

from __future__ import annotations

from caloforge.geometry.base import CartesianGeometry, LayerSpec

ECAL_CELL_MM = 5.088  # seed issue / "Getting High" Sec. 2 (5.08 mm rounded in seed 000)
ECAL_THIN_W_MM = 2.1  # layers 1-20 ("Getting High" Sec. 2)
ECAL_THICK_W_MM = 4.2  # layers 21-30
ECAL_SI_MM = 0.5  # silicon sensor thickness (seed issue)
# Wafer structure for the realistic projection: 16 x 16 pads per sensor and a ~1 mm
# dead border (guard ring + gap) between sensors, odd layers staggered by half a cell.
# These are approximations of the layout shown in seed 002, not engineering values.
ECAL_CELLS_PER_WAFER = 16
ECAL_WAFER_GAP_MM = 1.0
ECAL_STAGGER_MM = 0.5 * ECAL_CELL_MM

HCAL_TILE_MM = 30.0  # seed 001
HCAL_STEEL_MM = 20.0  # ILD AHCAL absorber plate (ILD IDR, arXiv:2003.01116)
HCAL_SCINT_MM = 3.0  # scintillator tile thickness (CALICE AHCAL)
HCAL_PASSIVE_MM = 2.5  # PCB, reflector foil and air gap, counted as air
HCAL_MIP_MEV = 0.5  # seed 001: 0.5 MIP = 0.25 MeV
HCAL_THRESHOLD_MEV = 0.25  # seed 001


def ild_ecal() -> CartesianGeometry:
    layers = tuple(
        LayerSpec("W", ECAL_THIN_W_MM if k < 20 else ECAL_THICK_W_MM, "Si", ECAL_SI_MM)
        for k in range(30)
    )
    return CartesianGeometry(
        name="ild-ecal",
        description="ILD Si-W ECAL, 30 layers x 30 x 30 cells of 5.088 mm",
        layers=layers,
        grid=((30, 30),) * 30,
        cell_mm=((ECAL_CELL_MM, ECAL_CELL_MM),) * 30,
        cells_per_wafer=ECAL_CELLS_PER_WAFER,
        wafer_gap_mm=ECAL_WAFER_GAP_MM,
        stagger_mm=ECAL_STAGGER_MM,
        source="seeds 000/002; arXiv:2005.05334",
        tags=("ild",),
    )


def ild_ahcal() -> CartesianGeometry:
    layers = tuple(
        LayerSpec("Fe", HCAL_STEEL_MM, "polystyrene", HCAL_SCINT_MM, passive_mm=HCAL_PASSIVE_MM)
        for _ in range(48)
    )
    return CartesianGeometry(
        name="ild-ahcal",
        description="ILD AHCAL steel-scintillator, 48 layers x 25 x 25 tiles of 30 mm",
        layers=layers,
        grid=((25, 25),) * 48,
        cell_mm=((HCAL_TILE_MM, HCAL_TILE_MM),) * 48,
        threshold_mev=HCAL_THRESHOLD_MEV,
        mip_override_mev=HCAL_MIP_MEV,
        source="seed 001; arXiv:2112.09709",
        tags=("ild",),
    )
