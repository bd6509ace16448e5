"""A tiny vectorised toy shower generator for tests and benchmarks of the evaluation.

Not physics: a gamma-function longitudinal profile, a Gaussian lateral profile around
the beam axis, multiplicative gamma noise per cell and a sprinkling of MIP-like hits
(energy ~ 1 MIP with a Landau-like tail).  Its knobs produce the distortions the
evaluation must catch: ``energy_scale`` (shifted response), ``width_scale`` (wider
showers) and ``mip_peak=False`` (the MIP hits are spread flat over 0-3 MIP).

>>> from caloforge.evaluation.toy import toy_showers
>>> b = toy_showers(5, "calogan", seed=1)
>>> b.energies.shape
(5, 504)
"""

from __future__ import annotations

import numpy as np

from caloforge.data.batch import Conditions, ShowerBatch
from caloforge.geometry import get_geometry


def toy_showers(n: int, geometry: str = "calogan", seed: int | np.random.Generator = 0,
                energy_range_gev: tuple[float, float] = (10.0, 100.0),
                energies_gev: np.ndarray | None = None, energy_scale: float = 1.0,
                width_scale: float = 1.0, mip_peak: bool = True,
                sampling_fraction: float = 0.02, n_mip_hits: float = 30.0,
                zero_below_mip: float = 0.0, metadata: dict | None = None) -> ShowerBatch:
    """``n`` toy showers (MeV) on ``geometry`` with incident energies uniform in
    ``energy_range_gev`` (or the given ``energies_gev``).  Cells below
    ``zero_below_mip`` MIP are zeroed, which makes the showers sparse like simulated ones
    (every cell of the toy has some energy otherwise)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    geo = get_geometry(geometry)
    c = geo.cell_centres
    n_l = geo.n_layers
    lay = geo.layer_of_voxel
    if energies_gev is None:
        e_inc = rng.uniform(*energy_range_gev, size=n) * 1e3
    else:
        e_inc = np.asarray(energies_gev, dtype=np.float64).reshape(-1)[:n] * 1e3
    depth = (np.arange(n_l) + 0.5) / n_l * 10.0  # depth in arbitrary "X0" units
    # Longitudinal: gamma profile whose maximum moves with log E (per shower jitter).
    a = 1.0 + 0.5 * np.log(e_inc / 1e3)[:, None] + rng.normal(0, 0.3, (n, 1))
    long = np.clip(depth[None, :], 1e-3, None) ** np.clip(a - 1, 0.2, None) * np.exp(-depth)
    long /= long.sum(axis=1, keepdims=True)
    # Lateral: Gaussian around the axis, width growing with depth.
    pitch = np.sqrt(np.ptp(c[:, 0]) * np.ptp(c[:, 1]) / max(geo.n_voxels / n_l, 1)) + 1e-9
    sigma = width_scale * pitch * (0.8 + 0.15 * np.arange(n_l))  # mm per layer
    r2 = c[:, 0] ** 2 + c[:, 1] ** 2
    lat = np.exp(-0.5 * r2 / sigma[lay] ** 2)
    norm = np.zeros(n_l)
    np.add.at(norm, lay, lat)
    lat = lat / norm[lay]
    e_vis = e_inc * sampling_fraction * energy_scale * rng.normal(1.0, 0.05, n)
    mean = e_vis[:, None] * long[:, lay] * lat[None, :]
    # Multiplicative gamma noise (shape 4, mean 1) per cell.
    e = mean * rng.gamma(4.0, 0.25, size=mean.shape)
    # MIP-like hits spread laterally twice as wide as the core.
    mip = geo.mip_mev
    k = rng.poisson(n_mip_hits, size=n)
    shower = np.repeat(np.arange(n), k)
    layer = rng.integers(0, n_l, size=len(shower))
    x = rng.normal(0, 2 * sigma[layer])
    y = rng.normal(0, 2 * sigma[layer])
    cell = geo.locate(x, y, layer)
    ok = cell >= 0
    if mip_peak:
        amp = mip * (1.0 + 0.1 * rng.gumbel(0.0, 1.0, size=len(shower)))
    else:
        amp = mip * rng.uniform(0.0, 3.0, size=len(shower))
    np.add.at(e, (shower[ok], cell[ok]), np.clip(amp[ok], 0, None))
    if zero_below_mip > 0:
        e[e < zero_below_mip * mip] = 0.0
    return ShowerBatch(geo.name, e.astype(np.float32), Conditions(e_inc),
                       metadata=dict(metadata or {}))
