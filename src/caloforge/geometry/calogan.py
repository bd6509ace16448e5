"""The 3-layer ATLAS-like lead / liquid-argon calorimeter of CaloGAN (seed 004).

Cell sizes and layer depths from seed 004, Table I (Paganini, de Oliveira, Nachman,
arXiv:1712.10321): layer 0: 3 x 96 cells of 160 mm (phi) x 5 mm (eta), 90 mm deep;
layer 1: 12 x 12 cells of 40 x 40 mm, 347 mm deep; layer 2: 12 x 6 cells of
40 mm (phi) x 80 mm (eta), 43 mm deep.  The file arrays are (phi, eta), so axis i (x)
is phi and axis j (y) is eta.  The sampling structure (2 mm lead, 4 mm liquid argon)
follows the CaloGAN Geant4 setup; the number of repeats makes each layer as deep as in
Table I.  Each shower also carries one "overflow" energy per layer (energy outside the
cells), stored in :attr:`ShowerBatch.overflow`.
"""

from __future__ import annotations

from caloforge.geometry.base import CartesianGeometry, LayerSpec

LAYER_DEPTH_MM = (90.0, 347.0, 43.0)  # seed 004 Table I
PB_MM, LAR_MM = 2.0, 4.0


def _layer(depth_mm: float) -> LayerSpec:
    repeats = max(1, round(depth_mm / (PB_MM + LAR_MM)))
    scale = depth_mm / (repeats * (PB_MM + LAR_MM))  # keep the exact depth of Table I
    return LayerSpec("Pb", PB_MM * scale, "LAr", LAR_MM * scale, repeats=repeats)


def calogan() -> CartesianGeometry:
    return CartesianGeometry(
        name="calogan",
        description="CaloGAN 3-layer Pb/LAr calorimeter (3x96, 12x12, 12x6) + overflow",
        layers=tuple(_layer(d) for d in LAYER_DEPTH_MM),
        grid=((3, 96), (12, 12), (12, 6)),
        cell_mm=((160.0, 5.0), (40.0, 40.0), (40.0, 80.0)),
        threshold_mev=0.0,  # CaloGAN files store raw cell energies, no readout cut
        source="seed 004 Table I; arXiv:1712.10321",
        tags=("calogan", "overflow"),
    )
