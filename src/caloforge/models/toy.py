"""Synthetic toy showers for tests, examples and speed benchmarks (not physics).

The toys have the features a conditional model must learn: the visible-energy fraction
and the depth of the shower maximum both depend on the incident energy, the transverse
width grows with depth, and cell energies fluctuate (gamma-distributed) with a readout
threshold.  Use the reference simulation (:mod:`caloforge.simulation`) for physics.

>>> import numpy as np
>>> geo = toy_geometry()
>>> b = toy_showers(geo.name, np.full(3, 20e3), np.random.default_rng(0))
>>> b.energies.shape
(3, 216)
"""

from __future__ import annotations

import numpy as np

from caloforge.data.batch import Conditions, ShowerBatch
from caloforge.geometry import CartesianGeometry, Geometry, LayerSpec, get_geometry
from caloforge.geometry import register_geometry as _register

TOY_NAME = "toy-6x6x6"


def toy_geometry(name: str = TOY_NAME, layers: int = 6, cells: int = 6) -> CartesianGeometry:
    """A small Si-W Cartesian geometry (``layers`` x ``cells`` x ``cells``), registered."""
    try:
        geo = get_geometry(name)
        if isinstance(geo, CartesianGeometry) and geo.n_layers == layers \
                and geo.grid[0] == (cells, cells):
            return geo
    except Exception:  # noqa: BLE001 - unknown name: build it below
        pass
    geo = CartesianGeometry(
        name=name, description=f"toy {layers}x{cells}x{cells} Si-W grid for tests",
        layers=tuple(LayerSpec("W", 5.6, "Si", 0.5) for _ in range(layers)),
        grid=((cells, cells),) * layers, cell_mm=((10.0, 10.0),) * layers)
    _register(geo, overwrite=True)
    return geo


def visible_fraction(e_inc_mev: np.ndarray) -> np.ndarray:
    """Toy mean E_vis/E_inc: falls with energy (leakage), 1.5% at 1 GeV."""
    return 0.015 * (np.asarray(e_inc_mev) / 1e3) ** -0.08


def toy_showers(geometry: str | Geometry, e_inc_mev: np.ndarray,
                rng: np.random.Generator, theta: np.ndarray | None = None,
                phi: np.ndarray | None = None) -> ShowerBatch:
    """Toy showers on a regular geometry for incident energies in MeV; with ``theta``
    and ``phi`` (rad) the shower axis leaves the front-face centre in that direction."""
    geo = get_geometry(geometry) if isinstance(geometry, str) else geometry
    e = np.asarray(e_inc_mev, dtype=np.float64).reshape(-1)
    n, n_l = len(e), geo.n_layers
    depth = (np.arange(n_l) + 0.5) / n_l  # 0..1 through the stack
    # Shower maximum moves deeper with log(E): 0.25 of the depth at 1 GeV, 0.65 at 100 GeV.
    t_max = 0.25 + 0.2 * np.log10(e / 1e3) + 0.04 * rng.standard_normal(n)
    prof = np.exp(-0.5 * ((depth[None] - t_max[:, None]) / 0.22) ** 2)
    prof /= prof.sum(1, keepdims=True)
    e_vis = visible_fraction(e) * e * (1 + 0.05 * rng.standard_normal(n))
    out = np.zeros((n, geo.n_voxels), np.float32)
    centres = geo.cell_centres
    if theta is not None:
        theta = np.broadcast_to(np.asarray(theta, dtype=np.float64), (n,))
        phi = np.broadcast_to(np.asarray(0.0 if phi is None else phi, dtype=np.float64), (n,))
        axis = np.tan(theta)[:, None] * np.stack([np.cos(phi), np.sin(phi)], 1)  # mm / mm
    for k in range(n_l):
        lo, hi = geo.layer_offsets[k], geo.layer_offsets[k + 1]
        xy = centres[lo:hi, :2]
        scale = max(float(np.abs(xy).max()), 1.0)
        width = scale * (0.15 + 0.25 * depth[k])
        if theta is None:
            w = np.exp(-0.5 * (xy ** 2).sum(1) / width ** 2)
            w = (w / w.sum())[None]
        else:  # the axis crosses layer k at its depth times tan(theta)
            shift = axis * float(geo.layer_z_mm[k])
            w = np.exp(-0.5 * ((xy[None] - shift[:, None]) ** 2).sum(2) / width ** 2)
            w /= w.sum(1, keepdims=True)
        mean = (e_vis * prof[:, k])[:, None] * w
        # Gamma fluctuations with shape 2: relative spread of 70% per cell.
        out[:, lo:hi] = rng.gamma(2.0, mean / 2.0 + 1e-12)
    thr = geo.readout_threshold_mev
    out[out < thr] = 0.0
    angles = {} if theta is None else {"theta": theta, "phi": phi}
    return ShowerBatch(geo.name, out, Conditions(e, **angles))


def toy_layered_showers(geometry: str | Geometry, e_inc_mev: np.ndarray,
                        rng: np.random.Generator) -> ShowerBatch:
    """Toy showers on any geometry (also irregular ones such as CaloGAN): layer energies
    from a fixed longitudinal profile, cells within a layer from a sparse Dirichlet."""
    geo = get_geometry(geometry) if isinstance(geometry, str) else geometry
    e = np.asarray(e_inc_mev, dtype=np.float64).reshape(-1)
    depth = (np.arange(geo.n_layers) + 0.5) / geo.n_layers
    prof = np.exp(-0.5 * ((depth - 0.4) / 0.3) ** 2)
    prof /= prof.sum()
    out = np.zeros((len(e), geo.n_voxels), np.float32)
    for k in range(geo.n_layers):
        lo, hi = geo.layer_offsets[k], geo.layer_offsets[k + 1]
        if hi > lo:
            w = rng.dirichlet(np.full(hi - lo, 0.3), size=len(e))
            out[:, lo:hi] = (visible_fraction(e) * e * prof[k])[:, None] * w
    return ShowerBatch(geo.name, out, Conditions(e))
