"""CaloChallenge 2022 datasets 1-3: cylindrical (layer, alpha, r) binnings.

The binnings are read from the challenge's public binning XML files, shipped as package
data (``caloforge/geometry/binning/``): dataset 1 photons (368 voxels) and pions (533),
dataset 2 (45 layers x 16 alpha x 9 r = 6480) and dataset 3 (45 x 50 x 18 = 40500).
Voxel order: radial bins fastest, then angular bins, then layers (challenge convention).

Material budget (the XML files give only the binning):
- datasets 2 and 3: 90 physical layers of 1.4 mm tungsten + 0.3 mm silicon, read out in
  pairs as 45 layers (CaloChallenge paper, arXiv:2410.21611, Sec. 2.2).
- dataset 1: the ATLAS barrel sampling layers at |eta| ~ 0.2 (layers 0-3: presampler and
  the three Pb/LAr accordion layers, 12-14: the Tile steel/scintillator layers; the other
  layer ids have no voxels here).  Their depths (EM: ~2, 4.3, 16, 2 X0; Tile: 1.5, 4.1,
  1.8 lambda_I, ATLAS detector paper JINST 3 S08003) are modelled with flat Pb/LAr and
  Fe/scintillator sandwiches.  This is an approximation for the reference simulation,
  not the ATLAS geometry.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from importlib import resources

from caloforge.errors import GeometryError
from caloforge.geometry.base import CylindricalGeometry, LayerSpec

BINNING_FILES = {
    "calochallenge-1-photons": "binning_1_photons.xml",
    "calochallenge-1-pions": "binning_1_pions.xml",
    "calochallenge-2": "binning_2.xml",
    "calochallenge-3": "binning_3.xml",
}

# Energy convention of the challenge files (CaloChallenge/homepage README and evaluation
# code): datasets 2 and 3 store the energy deposited in the silicon divided by the
# sampling fraction 0.033 (so that a shower's sum is close to its incident energy); the
# readout threshold of 0.5 keV deposited is therefore 0.5 keV / 0.033 = 15.15 keV in the
# files.  Dataset 1 stores ATLAS cell energies calibrated to the electromagnetic scale
# (no single sampling fraction: presampler, LAr accordion and Tile layers differ).
# Inside caloforge, showers on datasets 2 and 3 hold deposited energies (as the
# simulation produces them); data/io/calochallenge.py converts at the file boundary.
SAMPLING_FRACTION = {"calochallenge-2": 0.033, "calochallenge-3": 0.033}
# The official evaluation's per-voxel cut (its ``min_energy``), in file units (MeV):
# 1 MeV for dataset 1, 0.5 keV / 0.033 for datasets 2 and 3.
OFFICIAL_THRESHOLD_FILE_MEV = {
    "calochallenge-1-photons": 1.0,
    "calochallenge-1-pions": 1.0,
    "calochallenge-2": 0.5e-3 / 0.033,
    "calochallenge-3": 0.5e-3 / 0.033,
}

_SIW = LayerSpec("W", 1.4, "Si", 0.3, repeats=2)
_EMPTY = LayerSpec("air", 0.0, "LAr", 0.0)
# ATLAS barrel layers (approximate, see module docstring): presampler behind ~2 X0 of
# dead material (modelled as 11 mm lead), EMB1-3 as 1.5 mm Pb + 2 mm LAr periods,
# Tile as 14 mm Fe + 3 mm scintillator periods.
_ATLAS_LAYERS = {
    0: LayerSpec("Pb", 11.0, "LAr", 11.0),
    1: LayerSpec("Pb", 1.5, "LAr", 2.0, repeats=15),
    2: LayerSpec("Pb", 1.5, "LAr", 2.0, repeats=57),
    3: LayerSpec("Pb", 1.5, "LAr", 2.0, repeats=7),
    12: LayerSpec("Fe", 14.0, "polystyrene", 3.0, repeats=17),
    13: LayerSpec("Fe", 14.0, "polystyrene", 3.0, repeats=47),
    14: LayerSpec("Fe", 14.0, "polystyrene", 3.0, repeats=21),
}


def parse_binning(xml_text: str, source: str = "<xml>") -> tuple[list[tuple[float, ...]], list[int]]:
    """Per-layer radial edges (mm) and number of angular bins from a binning XML."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise GeometryError(f"not a valid binning XML: {exc}", source) from None
    layers = root.findall(".//Layer")
    if not layers:
        raise GeometryError("binning XML has no <Layer> elements", source)
    r_edges, n_alpha = [], []
    for el in sorted(layers, key=lambda e: int(e.get("id", "0"))):
        edges = tuple(float(v) for v in el.get("r_edges", "0").split(",") if v.strip())
        r_edges.append(edges)
        n_alpha.append(int(el.get("n_bin_alpha", "1")))
    return r_edges, n_alpha


def calochallenge(name: str) -> CylindricalGeometry:
    if name not in BINNING_FILES:
        raise GeometryError(f"unknown CaloChallenge geometry {name!r}")
    text = resources.files("caloforge.geometry").joinpath("binning", BINNING_FILES[name]).read_text()
    r_edges, n_alpha = parse_binning(text, BINNING_FILES[name])
    if name.startswith("calochallenge-1"):
        layers = tuple(_ATLAS_LAYERS.get(k, _EMPTY) for k in range(len(r_edges)))
        particle = "photons" if name.endswith("photons") else "pions"
        desc = f"CaloChallenge dataset 1 ({particle}), ATLAS-like, {len(r_edges)} layer ids"
    else:
        layers = (_SIW,) * len(r_edges)
        desc = f"CaloChallenge dataset {name[-1]}, 45 layers Si-W, cylindrical binning"
    # Thresholds (internal units): dataset 1 files carry no readout threshold (ATLAS
    # cells use noise thresholds), so none is applied; datasets 2/3 read out deposits
    # above 0.5 keV (15.15 keV in the files' scaled units, see SAMPLING_FRACTION).
    threshold = 0.0 if name.startswith("calochallenge-1") else 0.5e-3
    return CylindricalGeometry(
        name=name,
        description=desc,
        layers=layers,
        r_edges=tuple(r_edges),
        n_alpha=tuple(n_alpha),
        threshold_mev=threshold,
        source=f"CaloChallenge 2022 {BINNING_FILES[name]}",
        tags=("calochallenge",),
    )
