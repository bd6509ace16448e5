"""Physics observables of calorimeter showers, vectorised and computed chunk by chunk.

All observables are computed *after* the readout threshold: cells below it are set to
zero (the threshold is applied by :func:`apply_threshold`, energies in MeV).  Positions
are cell centres in mm from :attr:`Geometry.cell_centres`; the beam axis is x = y = 0
and z grows with depth.

Three kinds of quantities are produced:

- per-shower scalars (:func:`shower_scalars`): E_vis, E_vis/E_inc, n_hits, centres of
  gravity and second moments in x, y, z, the shower start layer, energy fractions in
  the thirds of the depth;
- per-shower, per-layer arrays (:func:`layer_features`): energy, number of hits,
  energy-weighted centre and width in x, y and r, sparsity.  For the cylindrical
  CaloChallenge geometries these are the challenge's high-level features (x/y play the
  role of eta/phi: the challenge's voxel centres are x = r cos(alpha), y = r sin(alpha));
- CaloGAN shower shapes for the 3-layer geometry (:func:`calogan_shapes`, seed 004).

Distributions that cannot be kept per shower (the cell energy spectrum, mean profiles,
overlay images) are accumulated with fixed binning by :class:`SampleAccumulator`.

>>> import numpy as np
>>> from caloforge.geometry import get_geometry
>>> geo = GeometryFeatures.of(get_geometry("calogan"))
>>> e = np.zeros((1, 504), np.float32); e[0, 300] = 10.0
>>> s = shower_scalars(e, np.array([100.0]), geo)
>>> float(s["e_vis"][0]), int(s["n_hits"][0])
(10.0, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from caloforge.geometry import CartesianGeometry, CylindricalGeometry, Geometry

# ---------------------------------------------------------------------------------------
# Catalogue of the per-shower scalar observables: name -> (label, unit, log-x hint).
SCALAR_OBSERVABLES: dict[str, tuple[str, str]] = {
    "e_vis": (r"$E_\mathrm{vis}$", "MeV"),
    "e_ratio": (r"$E_\mathrm{vis}/E_\mathrm{inc}$", ""),
    "n_hits": (r"$n_\mathrm{hits}$", ""),
    "cog_x": (r"centre of gravity $x$", "mm"),
    "cog_y": (r"centre of gravity $y$", "mm"),
    "cog_z": (r"centre of gravity $z$", "mm"),
    "width_x": (r"second moment $\sigma_x$", "mm"),
    "width_y": (r"second moment $\sigma_y$", "mm"),
    "width_z": (r"second moment $\sigma_z$", "mm"),
    "shower_start": ("shower start layer", ""),
    "frac_first": (r"$E_\mathrm{1st\,third}/E_\mathrm{vis}$", ""),
    "frac_second": (r"$E_\mathrm{2nd\,third}/E_\mathrm{vis}$", ""),
    "frac_last": (r"$E_\mathrm{last\,third}/E_\mathrm{vis}$", ""),
}

# Seed 001 (Fig. 5) correlation set: first and second moments in x, y, z, E_vis, E_inc,
# n_hits and the thirds fractions.
CORRELATION_OBSERVABLES: tuple[str, ...] = (
    "cog_x", "cog_y", "cog_z", "width_x", "width_y", "width_z",
    "e_vis", "e_inc", "n_hits", "frac_first", "frac_second", "frac_last",
)

LAYER_FEATURES: dict[str, tuple[str, str]] = {
    "e_layer": (r"$E_\mathrm{layer}$", "MeV"),
    "hits_layer": ("hits per layer", ""),
    "cx_layer": (r"energy centre $x$", "mm"),
    "cy_layer": (r"energy centre $y$", "mm"),
    "wx_layer": (r"energy width $x$", "mm"),
    "wy_layer": (r"energy width $y$", "mm"),
    "cr_layer": (r"energy centre $r$", "mm"),
    "wr_layer": (r"energy width $r$", "mm"),
    "sparsity_layer": ("sparsity (fraction of empty cells)", ""),
}

# Observables histogrammed with integer bins.
INTEGER_OBSERVABLES = frozenset({"n_hits", "shower_start", "d"})

CALOGAN_OBSERVABLES: dict[str, tuple[str, str]] = {
    **{f"E_{i}": (f"$E_{i}$", "MeV") for i in range(3)},
    "E_tot": (r"$E_\mathrm{tot}$", "MeV"),
    **{f"f_{i}": (f"$f_{i}=E_{i}/E_\\mathrm{{tot}}$", "") for i in range(3)},
    **{f"E_ratio_{i}": (f"$E_{{\\mathrm{{ratio}},{i}}}$", "") for i in range(3)},
    "d": ("deepest layer $d$", ""),
    "l_d": ("depth-weighted energy $l_d$", "MeV"),
    "s_d": ("shower depth $s_d$", "layer"),
    "sigma_sd": (r"shower depth width $\sigma_{s_d}$", "layer"),
}


# ---------------------------------------------------------------------------------------
@dataclass
class GeometryFeatures:
    """Per-voxel constants of a geometry that the observables need, computed once."""

    geometry: Geometry
    x: np.ndarray  # (V,) mm
    y: np.ndarray
    z: np.ndarray
    x_edges: np.ndarray  # bin edges (mm) of the x and y profiles
    y_edges: np.ndarray
    r_edges: np.ndarray  # bin edges (mm) of the radial profile
    thirds: np.ndarray  # (L,) 0, 1, 2: which third of the depth each layer belongs to
    image_x_edges: np.ndarray  # pixel edges of the projected images (mm)
    image_y_edges: np.ndarray
    x_bin: np.ndarray = field(repr=False, default=None)  # (V,) profile bin of each voxel
    y_bin: np.ndarray = field(repr=False, default=None)

    @staticmethod
    def of(geometry: Geometry) -> GeometryFeatures:
        c = np.asarray(geometry.cell_centres, dtype=np.float64)
        x, y, z = c[:, 0].copy(), c[:, 1].copy(), c[:, 2].copy()
        x_edges, y_edges = _profile_edges(geometry, x, 0), _profile_edges(geometry, y, 1)
        r_edges = _radial_edges(geometry, x, y)
        thirds = np.zeros(geometry.n_layers, dtype=np.int64)
        for k, part in enumerate(np.array_split(np.arange(geometry.n_layers), 3)):
            thirds[part] = k
        gf = GeometryFeatures(geometry, x, y, z, x_edges, y_edges, r_edges, thirds,
                              x_edges, y_edges)
        gf.x_bin = np.clip(np.searchsorted(x_edges, x, side="right") - 1, 0, len(x_edges) - 2)
        gf.y_bin = np.clip(np.searchsorted(y_edges, y, side="right") - 1, 0, len(y_edges) - 2)
        return gf

    @property
    def n_layers(self) -> int:
        return self.geometry.n_layers

    @property
    def offsets(self) -> np.ndarray:
        return self.geometry.layer_offsets

    @cached_property
    def nonempty_layers(self) -> np.ndarray:
        """Indices of layers that have cells (dataset 1 has empty layer ids)."""
        return np.flatnonzero(np.diff(self.offsets) > 0)

    @cached_property
    def cells_per_layer(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def x_matrix(self) -> np.ndarray:
        """(V, n_x) indicator matrix: voxel -> x-profile bin (energies @ M = profile)."""
        return _indicator(self.x_bin, len(self.x_edges) - 1)

    @cached_property
    def y_matrix(self) -> np.ndarray:
        return _indicator(self.y_bin, len(self.y_edges) - 1)

    @cached_property
    def xyz_matrix(self) -> np.ndarray:
        """(V, 6) columns x, y, z, x^2, y^2, z^2 for the moments by one matmul."""
        return np.stack([self.x, self.y, self.z, self.x ** 2, self.y ** 2, self.z ** 2],
                        axis=1).astype(np.float64)

    @cached_property
    def layer_moment_matrix(self) -> np.ndarray:
        """(V, 7 L): per-layer indicator times 1, x, x^2, y, y^2, r, r^2.

        ``energies @ M`` gives every per-layer energy moment in one BLAS call, which is
        much faster than reducing seven (N, V) temporaries.
        """
        n_l, lay = self.n_layers, self.geometry.layer_of_voxel
        r = np.hypot(self.x, self.y)
        cols = (np.ones_like(self.x), self.x, self.x ** 2, self.y, self.y ** 2, r, r ** 2)
        m = np.zeros((len(self.x), 7 * n_l), dtype=np.float64)
        rows = np.arange(len(self.x))
        for j, c in enumerate(cols):
            m[rows, j * n_l + lay] = c
        return m

    @cached_property
    def image_xy_pixel(self) -> np.ndarray:
        """(V,) flat pixel of each voxel in the layer-summed x-y image."""
        nx, ny = len(self.image_x_edges) - 1, len(self.image_y_edges) - 1
        return self.x_bin * ny + self.y_bin if nx and ny else np.zeros(0, np.int64)

    @cached_property
    def image_xz_pixel(self) -> np.ndarray:
        """(V,) flat pixel of each voxel in the x-z (layer vs x) image."""
        nx = len(self.image_x_edges) - 1
        return self.geometry.layer_of_voxel * nx + self.x_bin


def _indicator(bins: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((len(bins), n), dtype=np.float32)
    m[np.arange(len(bins)), bins] = 1.0
    return m


def _profile_edges(geometry: Geometry, coord: np.ndarray, axis: int) -> np.ndarray:
    """Bin edges (mm) for the x (axis 0) or y (axis 1) profile.

    Regular Cartesian grids get one bin per cell column, so the profile is exact;
    other layouts get 40 uniform bins over the range of the cell centres.
    """
    if isinstance(geometry, CartesianGeometry) and geometry.is_regular \
            and len(set(geometry.cell_mm)) == 1:
        n = geometry.grid[0][axis]
        size = geometry.cell_mm[0][axis]
        return (np.arange(n + 1) - 0.5 * n) * size
    lo, hi = float(coord.min()), float(coord.max())
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.5 * (hi - lo) / 39
    return np.linspace(lo - pad, hi + pad, 41)


def _radial_edges(geometry: Geometry, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Radial bin edges (mm): the union of the binning radii for cylindrical geometries,
    else bins one cell pitch wide out to the largest cell-centre radius."""
    if isinstance(geometry, CylindricalGeometry):
        edges = np.unique(np.concatenate([np.asarray(e, float) for e in geometry.r_edges
                                          if len(e) > 1]))
        return edges
    if isinstance(geometry, CartesianGeometry):
        pitch = min(min(c) for c in geometry.cell_mm)
    else:  # pragma: no cover - no other layouts exist
        pitch = 1.0
    r_max = float(np.hypot(x, y).max()) + pitch
    n = max(int(math.ceil(r_max / pitch)), 1)
    return np.arange(n + 1) * pitch


# ---------------------------------------------------------------------------------------
def apply_threshold(energies: np.ndarray, threshold_mev: float) -> np.ndarray:
    """Float32 copy of ``energies`` (MeV) with cells below ``threshold_mev`` set to 0."""
    e = np.asarray(energies, dtype=np.float32)
    return np.where(e >= threshold_mev, e, np.float32(0.0)) if threshold_mev > 0 \
        else np.where(e > 0, e, np.float32(0.0))


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with 0 where b == 0 (empty showers / layers have no centre)."""
    out = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(b)), dtype=np.float64)
    np.divide(a, b, out=out, where=np.asarray(b) > 0)
    return out


def layer_sums(values: np.ndarray, gf: GeometryFeatures) -> np.ndarray:
    """(N, L) sum of (N, V) ``values`` over the cells of each layer (0 for empty layers)."""
    out = np.zeros((values.shape[0], gf.n_layers), dtype=np.float64)
    ne = gf.nonempty_layers
    if len(ne):
        starts = gf.offsets[ne]
        out[:, ne] = np.add.reduceat(values, starts, axis=1, dtype=np.float64)
    return out


def shower_start_layer(layer_energy_mip: np.ndarray, layer_hits: np.ndarray,
                       incident_energy_gev: np.ndarray) -> np.ndarray:
    """Shower start layer with a CALICE-style two-layer criterion (vectorised).

    The CALICE AHCAL analyses (Adloff et al., "Tests of a particle flow algorithm with
    CALICE test beam data", JINST 6 (2011) P07005, cited as [49] by seed 001) find the
    first interaction layer as the first layer where the deposited energy and the number
    of hits in that layer *and the next one* rise clearly above a MIP-like track.  We use
    the thresholds of the CALICE Marlin shower-start finder:
    ``E_k + E_(k+1) > (6 + 0.1 E_inc/GeV)`` MIP and
    ``n_k + n_(k+1) > round(3.77 + 1.44 ln(E_inc/GeV))`` hits.  Unlike that processor we
    use the raw layer sums instead of a 6-layer running average (a documented
    simplification that keeps the computation a single vectorised pass).  Showers that
    never satisfy the criterion get ``n_layers`` (punch-through).
    """
    e = np.asarray(layer_energy_mip, dtype=np.float64)
    n = np.asarray(layer_hits, dtype=np.float64)
    n_layers = e.shape[1]
    e_gev = np.maximum(np.asarray(incident_energy_gev, dtype=np.float64), 1e-3)
    e_lim = 6.0 + 0.1 * e_gev
    n_lim = np.floor(3.77 + 1.44 * np.log(e_gev) + 0.5)
    e_pair = e + np.concatenate([e[:, 1:], np.zeros((len(e), 1))], axis=1)
    n_pair = n + np.concatenate([n[:, 1:], np.zeros((len(n), 1))], axis=1)
    ok = (e_pair > e_lim[:, None]) & (n_pair > n_lim[:, None])
    first = np.argmax(ok, axis=1)
    return np.where(ok.any(axis=1), first, n_layers).astype(np.float64)


def shower_scalars(energies: np.ndarray, incident_energy: np.ndarray,
                   gf: GeometryFeatures, mip_mev: float | None = None,
                   layer_e: np.ndarray | None = None,
                   layer_n: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-shower scalar observables of thresholded ``energies`` (N, V) in MeV.

    ``incident_energy`` (N,) in MeV.  Moments are energy-weighted over the cell centres:
    ``cog_x = sum E x / sum E`` and ``width_x = sqrt(sum E x^2 / sum E - cog_x^2)``.
    Empty showers get 0 for centres, widths and fractions.
    """
    e = np.asarray(energies, dtype=np.float32)
    e_inc = np.asarray(incident_energy, dtype=np.float64)
    mip = gf.geometry.mip_mev if mip_mev is None else mip_mev
    hit = e > 0
    e_vis = e.sum(axis=1, dtype=np.float64)
    # float64: second moments subtract two large numbers.
    mom = e.astype(np.float64) @ gf.xyz_matrix
    first = _safe_div(mom[:, :3], e_vis[:, None])
    second = _safe_div(mom[:, 3:], e_vis[:, None]) - first ** 2
    width = np.sqrt(np.clip(second, 0.0, None))
    if layer_e is None:
        layer_e = layer_sums(e, gf)
    if layer_n is None:
        layer_n = layer_sums(hit, gf)
    thirds = np.stack([layer_e[:, gf.thirds == k].sum(axis=1) for k in range(3)], axis=1)
    frac = _safe_div(thirds, e_vis[:, None])
    return {
        "e_vis": e_vis,
        "e_ratio": _safe_div(e_vis, e_inc),
        "n_hits": hit.sum(axis=1).astype(np.float64),
        "cog_x": first[:, 0], "cog_y": first[:, 1], "cog_z": first[:, 2],
        "width_x": width[:, 0], "width_y": width[:, 1], "width_z": width[:, 2],
        "shower_start": shower_start_layer(layer_e / mip, layer_n, e_inc / 1000.0),
        "frac_first": frac[:, 0], "frac_second": frac[:, 1], "frac_last": frac[:, 2],
        "e_inc": e_inc.copy(),
    }


def layer_features(energies: np.ndarray, gf: GeometryFeatures) -> dict[str, np.ndarray]:
    """Per-layer features (N, L) of thresholded ``energies`` (N, V) in MeV.

    These are the CaloChallenge high-level features (E_layer, energy centre and width in
    two transverse directions per layer, sparsity; Krause et al., arXiv:2410.21611,
    Sec. 4) plus the number of hits and the centre and width in r.  Sparsity is the
    fraction of a layer's cells *without* a hit above threshold; empty layers get centre
    and width 0.  All layer sums come from one matrix product with
    :attr:`GeometryFeatures.layer_moment_matrix`.
    """
    e = np.asarray(energies, dtype=np.float32)
    n_l = gf.n_layers
    w = gf.layer_moment_matrix
    # float64 (the widths subtract two large numbers); the streaming evaluation uses the
    # faster per-hit :func:`sparse_observables`.
    s = e.astype(np.float64) @ w  # (N, 7L): sums of E, E x, E x^2, E y, E y^2, E r, E r^2
    layer_e = s[:, :n_l]
    layer_n = (e > 0).astype(np.float64) @ w[:, :n_l]
    out = {"e_layer": layer_e, "hits_layer": np.rint(layer_n)}
    for j, name in enumerate(("x", "y", "r")):
        m1 = s[:, (1 + 2 * j) * n_l:(2 + 2 * j) * n_l]
        m2 = s[:, (2 + 2 * j) * n_l:(3 + 2 * j) * n_l]
        centre = _safe_div(m1, layer_e)
        var = _safe_div(m2, layer_e) - centre ** 2
        # Single-cell layers have zero width; clip float32 round-off below zero.
        out[f"c{name}_layer"] = centre
        out[f"w{name}_layer"] = np.sqrt(np.clip(var, 0.0, None))
    cells = gf.cells_per_layer.astype(np.float64)
    out["sparsity_layer"] = np.where(cells > 0, 1.0 - _safe_div(out["hits_layer"],
                                                                  cells[None, :]), 0.0)
    return out


def calogan_shapes(energies: np.ndarray, gf: GeometryFeatures,
                   layer_e: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """CaloGAN shower shapes (seed 004 table; Paganini et al., arXiv:1712.10321).

    E_i (energy of layer i), E_tot, f_i = E_i/E_tot, E_ratio_i = (I1 - I2)/(I1 + I2) of
    the two most energetic cells of layer i, d = deepest layer with a non-zero cell,
    l_d = sum_i i E_i, s_d = l_d/E_tot and the depth width
    sigma_sd = sqrt(sum_i i^2 E_i / E_tot - s_d^2) (layer units).
    """
    e = np.asarray(energies, dtype=np.float32)
    n_layers = gf.n_layers
    if layer_e is None:
        layer_e = layer_sums(e, gf)
    e_tot = layer_e.sum(axis=1)
    idx = np.arange(n_layers, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for i in range(n_layers):
        out[f"E_{i}"] = layer_e[:, i]
    out["E_tot"] = e_tot
    for i in range(n_layers):
        out[f"f_{i}"] = _safe_div(layer_e[:, i], e_tot)
    for i in range(n_layers):
        cells = e[:, gf.offsets[i]:gf.offsets[i + 1]]
        if cells.shape[1] >= 2:
            top2 = -np.partition(-cells, 1, axis=1)[:, :2].astype(np.float64)
            out[f"E_ratio_{i}"] = _safe_div(top2[:, 0] - top2[:, 1], top2[:, 0] + top2[:, 1])
        else:
            out[f"E_ratio_{i}"] = np.zeros(len(e))
    has = layer_e > 0
    out["d"] = np.where(has.any(axis=1), n_layers - 1 - np.argmax(has[:, ::-1], axis=1),
                        0).astype(np.float64)
    l_d = layer_e @ idx
    out["l_d"] = l_d
    s_d = _safe_div(l_d, e_tot)
    out["s_d"] = s_d
    out["sigma_sd"] = np.sqrt(np.clip(_safe_div(layer_e @ idx ** 2, e_tot) - s_d ** 2, 0, None))
    return out


# ---------------------------------------------------------------------------------------
def mu90_sigma90(values: np.ndarray) -> tuple[float, float]:
    """Mean and RMS of the narrowest interval holding 90% of ``values`` (seed 001, Fig. 7).

    Returns (nan, nan) for fewer than 10 values.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    n = len(v)
    if n < 10:
        return math.nan, math.nan
    k = int(math.ceil(0.9 * n))
    widths = v[k - 1:] - v[:n - k + 1]
    i = int(np.argmin(widths))
    core = v[i:i + k]
    return float(core.mean()), float(core.std())


def energy_bins(reference_e_inc: np.ndarray, max_discrete: int = 30,
                n_bins: int = 8) -> tuple[np.ndarray, bool]:
    """Incident-energy bins (MeV) for the response and energy-binned panels.

    If the reference has at most ``max_discrete`` distinct incident energies (fixed-energy
    samples as in seed 001 Fig. 7) every energy is its own bin (returned edges lie half
    way between them, ``discrete=True``); otherwise ``n_bins`` quantile bins.
    """
    e = np.asarray(reference_e_inc, dtype=np.float64)
    uniq = np.unique(e)
    if 1 <= len(uniq) <= max_discrete:
        mids = 0.5 * (uniq[1:] + uniq[:-1])
        lo = uniq[0] * 0.999 if len(uniq) == 1 else uniq[0] - (mids[0] - uniq[0])
        hi = uniq[-1] * 1.001 if len(uniq) == 1 else uniq[-1] + (uniq[-1] - mids[-1])
        return np.concatenate([[lo], mids, [hi]]), True
    edges = np.unique(np.quantile(e, np.linspace(0, 1, n_bins + 1)))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges, False


def shower_axis_angles(rows: np.ndarray, positions: np.ndarray, weights: np.ndarray, n: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Polar and azimuthal angle (rad) of the principal axis of each shower's hits.

    ``rows``: shower index of each hit (0..n-1); ``positions``: (H, 3) hit positions
    (mm, z along the calorimeter normal); ``weights``: hit energies.  The axis is
    oriented into the calorimeter (positive z), so theta lies in [0, pi/2].  Showers
    with fewer than two hits or no energy get NaN.

    >>> th, ph = np.radians(30), np.radians(45)  # hits along a line in this direction
    >>> direction = np.array([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)])
    >>> pos = np.linspace(0, 50, 6)[:, None] * direction
    >>> theta, phi = shower_axis_angles(np.zeros(6, int), pos, np.ones(6), 1)
    >>> round(float(np.degrees(theta[0])), 6), round(float(np.degrees(phi[0])), 6)
    (30.0, 45.0)
    """
    rows = np.asarray(rows, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    p = np.asarray(positions, dtype=np.float64)
    total = np.bincount(rows, w, minlength=n)
    hits = np.bincount(rows, minlength=n)
    ok = (total > 0) & (hits >= 2)
    safe = np.where(ok, total, 1.0)
    mean = np.stack([np.bincount(rows, w * p[:, k], minlength=n) for k in range(3)], 1) / \
        safe[:, None]
    d = p - mean[rows]  # centred first: no cancellation of large second moments
    cov = np.empty((n, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = np.bincount(rows, w * d[:, a] * d[:, b],
                                                      minlength=n) / safe
    cov[~ok] = np.eye(3)
    _, vecs = np.linalg.eigh(cov)
    axis = vecs[:, :, -1]  # eigenvalues ascend: the last is the principal axis
    axis *= np.where(axis[:, 2] < 0, -1.0, 1.0)[:, None]
    theta = np.arccos(np.clip(axis[:, 2], 0.0, 1.0))
    phi = np.arctan2(axis[:, 1], axis[:, 0])
    theta[~ok] = np.nan
    phi[~ok] = np.nan
    return theta, phi


# ---------------------------------------------------------------------------------------
def sparse_observables(rows: np.ndarray, cells: np.ndarray, values: np.ndarray, n: int,
                       incident_energy: np.ndarray, gf: GeometryFeatures,
                       mip_mev: float | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`shower_scalars` and :func:`layer_features` from hits above threshold.

    ``rows``/``cells``/``values`` list the hits (shower in the chunk, flat voxel index,
    energy in MeV) of ``n`` showers.  Showers have ~1-5% of their cells hit after the
    cut, so per-hit sums (``np.bincount``) are an order of magnitude faster than dense
    (N, V) products; the results equal the dense functions (tested).
    """
    geo = gf.geometry
    n_l = gf.n_layers
    v = np.asarray(values, dtype=np.float64)
    x, y, z = gf.x[cells], gf.y[cells], gf.z[cells]
    rad = np.hypot(x, y)
    lay = geo.layer_of_voxel[cells]

    def per_shower(w: np.ndarray | None) -> np.ndarray:
        return np.bincount(rows, weights=w, minlength=n).astype(np.float64)

    key = rows * n_l + lay

    def per_layer(w: np.ndarray | None) -> np.ndarray:
        return np.bincount(key, weights=w, minlength=n * n_l).astype(np.float64).reshape(n, n_l)

    layer_e = per_layer(v)
    layer_n = per_layer(None)
    lf: dict[str, np.ndarray] = {"e_layer": layer_e, "hits_layer": layer_n}
    for name, coord in (("x", x), ("y", y), ("r", rad)):
        vc = v * coord
        centre = _safe_div(per_layer(vc), layer_e)
        var = _safe_div(per_layer(vc * coord), layer_e) - centre ** 2
        lf[f"c{name}_layer"] = centre
        lf[f"w{name}_layer"] = np.sqrt(np.clip(var, 0.0, None))
    cells_pl = gf.cells_per_layer.astype(np.float64)
    lf["sparsity_layer"] = np.where(cells_pl > 0, 1.0 - _safe_div(layer_n, cells_pl[None, :]),
                                    0.0)
    e_inc = np.asarray(incident_energy, dtype=np.float64)
    e_vis = per_shower(v)
    sc: dict[str, np.ndarray] = {"e_vis": e_vis, "e_ratio": _safe_div(e_vis, e_inc),
                                 "n_hits": per_shower(None)}
    for name, coord in (("x", x), ("y", y), ("z", z)):
        vc = v * coord
        c1 = _safe_div(per_shower(vc), e_vis)
        sc[f"cog_{name}"] = c1
        sc[f"width_{name}"] = np.sqrt(np.clip(_safe_div(per_shower(vc * coord), e_vis)
                                              - c1 ** 2, 0.0, None))
    mip = geo.mip_mev if mip_mev is None else mip_mev
    sc["shower_start"] = shower_start_layer(layer_e / mip, layer_n, e_inc / 1000.0)
    thirds = np.stack([layer_e[:, gf.thirds == k].sum(axis=1) for k in range(3)], axis=1)
    frac = _safe_div(thirds, e_vis[:, None])
    sc["frac_first"], sc["frac_second"], sc["frac_last"] = frac[:, 0], frac[:, 1], frac[:, 2]
    sc["e_inc"] = e_inc.copy()
    return sc, lf
