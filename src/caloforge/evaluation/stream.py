"""One streaming pass over a shower sample: per-shower observables and fixed-bin sums.

A sample (a file or an in-memory :class:`ShowerBatch`) is read in chunks; each chunk is
thresholded, its per-shower observables are appended (a few dozen floats per shower),
and the distributions that are not per shower (cell spectrum, mean profiles, overlay
images) are added into histograms whose binning is fixed before the pass.  Peak memory
is therefore one chunk plus the per-shower tables plus the optional classifier and
memorisation subsamples, whatever the number of showers.

Showers with NaN/inf voxel energies or non-finite/non-positive incident energies are
skipped and counted (:attr:`SampleSummary.bad_showers`), never fatal.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.data.batch import PointCloudBatch, ShowerBatch
from caloforge.data.projection import check_points, project_points
from caloforge.errors import CaloforgeError, InputError
from caloforge.evaluation.observables import (
    GeometryFeatures,
    calogan_shapes,
    shower_axis_angles,
    sparse_observables,
)
from caloforge.evaluation.points import PointAccumulator, PointSummary
from caloforge.utils import progress

N_OVERLAY = 2000  # showers summed in the overlay images (seed 002 "2k events overlay")
N_EXAMPLES = 3  # single showers kept for the example images
MEMO_DIM = 128  # random-projection dimension for the memorisation check


# ---------------------------------------------------------------------------------------
class Source:
    """A shower sample to evaluate: a file path (streamed) or a :class:`ShowerBatch`."""

    def __init__(self, data: str | Path | ShowerBatch | PointCloudBatch,
                 label: str | None = None, geometry: str | None = None,
                 batch_size: int = 1000, realistic: bool = False) -> None:
        self.data = data
        self.batch_size = batch_size
        self.requested_geometry = geometry
        self.realistic = realistic  # wafer gaps and staggering when projecting points
        if isinstance(data, (ShowerBatch, PointCloudBatch)):
            self.path = None
            self.label = label or "sample"
            self.geometry = data.geometry or geometry
            if self.geometry is None:
                raise InputError("in-memory point clouds carry no geometry; name one")
            self.n_showers = len(data)
            self.metadata = dict(data.metadata)
            self.is_points = isinstance(data, PointCloudBatch)
        else:
            self.path = Path(data)
            self.label = label or self.path.stem
            if not self.path.exists():
                raise InputError("file not found", self.path)
            with self._open() as f:
                self.geometry = f.geometry
                self.n_showers = int(f.n_showers)
                self.metadata = dict(f.metadata or {})
                self.is_points = bool(f.is_point_cloud)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"<in-memory {self.label}>"

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        try:
            from caloforge.data.io import open_showers
        except ImportError as exc:  # pragma: no cover - io lands with the foundation issue
            raise InputError(f"file reading is unavailable ({exc})", self.path) from None
        # validate=False: we skip bad showers ourselves (and report them) instead of
        # failing a whole chunk.
        with open_showers(self.path, geometry=self.requested_geometry, validate=False) as f:
            yield f

    def batches(self) -> Iterator[ShowerBatch]:
        """Consecutive chunks of at most ``batch_size`` showers (points projected)."""
        for voxels, _, _ in self.chunks():
            yield voxels

    def chunks(self) -> Iterator[tuple[ShowerBatch, PointCloudBatch | None,
                                       np.ndarray | None]]:
        """(voxels, points, energy outside the cells per shower) chunk by chunk; points
        and outside energies are None for voxel samples.  Point samples are projected by
        :meth:`PointCloudBatch.to_voxels`, as ``caloforge generate --project`` does."""
        if self.path is None:
            for lo in range(0, self.n_showers, self.batch_size):
                part = self.data[lo:lo + self.batch_size]
                yield self._project(part, lo) if self.is_points else (part, None, None)
            return
        with self._open() as f:
            if not self.is_points:
                for batch in f.iter_batches(batch_size=self.batch_size):
                    yield batch, None, None
                return
            for lo in range(0, self.n_showers, self.batch_size):
                pts = f.read_points(lo, lo + self.batch_size)
                yield self._project(pts, lo)

    def _project(self, pts: PointCloudBatch, first: int = 0
                 ) -> tuple[ShowerBatch, PointCloudBatch, np.ndarray]:
        # a point file's shower without points is a broken file, not an empty shower
        check_points(pts, self.name, first, allow_empty=False)
        voxels, outside = project_points(pts, self.geometry, self.realistic)
        voxels.metadata = dict(self.metadata)
        return voxels, pts, outside


# ---------------------------------------------------------------------------------------
@dataclass
class StreamConfig:
    """Binning and subsample sizes fixed before the pass (from the reference)."""

    threshold_mev: float
    spectrum_edges_mip: np.ndarray  # log-spaced cell-spectrum bin edges, MIP units
    n_lowlevel: int = 0  # showers kept (float16) for the low-level classifier
    n_memo: int = 0  # showers projected for the memorisation check
    memo_projection: np.ndarray | None = None  # (V, D) or None for exact distances
    seed: int = 0
    reco: Any = None  # caloforge.evaluation.reco.stage.RecoStream: digitise and keep sums


@dataclass
class SampleSummary:
    """Everything the metrics and plots need from one sample, after one pass."""

    label: str
    source: str
    geometry: str
    n_total: int
    metadata: dict[str, Any]
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    calogan: dict[str, np.ndarray] = field(default_factory=dict)
    # theta, phi (conditions, rad; NaN if the file has none), theta_reco, phi_reco
    angles: dict[str, np.ndarray] = field(default_factory=dict)
    half: np.ndarray | None = None  # (N,) 0/1 random split for noise floors
    index: np.ndarray | None = None  # (N,) shower number in the source file
    spectrum: np.ndarray | None = None  # (2, n_bins + 2) per half, under/overflow at ends
    profiles: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (2, 2, nb)
    overlay_xy: np.ndarray | None = None
    overlay_xz: np.ndarray | None = None
    n_overlay: int = 0
    examples: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)
    lowlevel: np.ndarray | None = None  # (M, V+1) float16: 1e3 E/E_inc, log(E_inc/GeV)
    lowlevel_e_inc: np.ndarray | None = None
    memo: np.ndarray | None = None  # (K, D) projections of E / E_vis
    bad_showers: list[int] = field(default_factory=list)
    bad_reasons: dict[str, int] = field(default_factory=dict)
    reco: np.ndarray | None = None  # (N, K) digitised MIP sums per hit-density bin
    points: PointSummary | None = None  # point-level observables of point samples

    @property
    def n_used(self) -> int:
        return len(self.half) if self.half is not None else 0


def _bad_rows(batch: ShowerBatch) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean mask of showers to skip and a count per reason."""
    e_inc = batch.conditions.incident_energy
    nan_vox = ~np.isfinite(batch.energies).all(axis=1)
    bad_inc = ~np.isfinite(e_inc) | (e_inc <= 0)
    reasons = {}
    if nan_vox.any():
        reasons["NaN/inf voxel energies"] = int(nan_vox.sum())
    if bad_inc.any():
        reasons["NaN/inf or non-positive incident energy"] = int(bad_inc.sum())
    return nan_vox | bad_inc, reasons


def spectrum_edges_from(batch: ShowerBatch, mip_mev: float, n_bins: int = 100) -> np.ndarray:
    """Log-spaced cell-spectrum edges (MIP units) from a first reference chunk.

    The range spans the 0.1% quantile of the positive cell energies (at most 0.01 MIP, so
    the region below a 0.5 MIP cut is always visible) to twice the largest cell.
    """
    e = batch.energies[np.isfinite(batch.energies).all(axis=1)]
    pos = e[e > 0] / mip_mev
    if len(pos) == 0:
        return np.logspace(-2, 3, n_bins + 1)
    lo = min(float(np.quantile(pos, 0.001)), 1e-2)
    hi = max(float(pos.max()) * 2.0, 10.0)
    lo = max(lo, hi * 1e-9)
    return np.logspace(math.log10(lo), math.log10(hi), n_bins + 1)


def summarise(source: Source, gf: GeometryFeatures, config: StreamConfig,
              is_calogan: bool = False, progress_bar: bool | None = None) -> SampleSummary:
    """Stream ``source`` once and return its :class:`SampleSummary`."""
    geo = gf.geometry
    summ = SampleSummary(source.label, source.name, source.geometry, source.n_showers,
                         dict(source.metadata))
    n_tot = source.n_showers
    rng = np.random.default_rng([config.seed, 7])
    ll_index = np.sort(rng.choice(n_tot, size=min(config.n_lowlevel, n_tot), replace=False)) \
        if config.n_lowlevel else np.zeros(0, np.int64)
    memo_index = np.sort(rng.choice(n_tot, size=min(config.n_memo, n_tot), replace=False)) \
        if config.n_memo else np.zeros(0, np.int64)
    split_rng = np.random.default_rng([config.seed, 11])
    log_edges = np.log10(config.spectrum_edges_mip)
    n_spec = len(log_edges) - 1
    spectrum = np.zeros((2, n_spec + 2), dtype=np.int64)
    prof_bins = {"x": len(gf.x_edges) - 1, "y": len(gf.y_edges) - 1,
                 "r": len(gf.r_edges) - 1}
    profiles = {k: np.zeros((2, 2, nb)) for k, nb in prof_bins.items()}
    nx, ny = len(gf.image_x_edges) - 1, len(gf.image_y_edges) - 1
    overlay_xy = np.zeros(nx * ny)
    overlay_xz = np.zeros(geo.n_layers * nx)
    scalars: dict[str, list[np.ndarray]] = {}
    layers: dict[str, list[np.ndarray]] = {}
    cg: dict[str, list[np.ndarray]] = {}
    angles: dict[str, list[np.ndarray]] = {}
    xyz = np.stack([gf.x, gf.y, gf.z], axis=1)
    halves, indices, ll_rows, ll_einc, memo_rows, reco_rows = [], [], [], [], [], []
    r_bin = np.clip(np.searchsorted(gf.r_edges, np.hypot(gf.x, gf.y), side="right") - 1, 0,
                    prof_bins["r"] - 1)
    prof_index = {"x": gf.x_bin, "y": gf.y_bin, "r": r_bin}
    log_step = (log_edges[-1] - log_edges[0]) / n_spec
    bar = progress(total=n_tot, desc=f"evaluating {source.label}", unit="shower",
                   enabled=progress_bar)
    point_acc = PointAccumulator(geo, gf.r_edges) if source.is_points else None
    start = 0
    try:
        for batch, pts, outside in source.chunks():
            n = len(batch)
            idx = np.arange(start, start + n)
            start += n
            bad, reasons = _bad_rows(batch)
            if bad.any():
                summ.bad_showers.extend(idx[bad].tolist())
                for k, v in reasons.items():
                    summ.bad_reasons[k] = summ.bad_reasons.get(k, 0) + v
                batch = batch[np.flatnonzero(~bad)]
                idx = idx[~bad]
                n = len(batch)
            if n == 0:
                bar.update(int(bad.sum()))
                continue
            raw = batch.energies
            half = split_rng.integers(0, 2, size=n).astype(np.int8)
            if point_acc is not None:  # same showers, same halves as the voxel observables
                point_acc.add(pts, half, outside, keep=~bad)
            e_inc = batch.conditions.incident_energy
            # One pass to the sparse view; everything below works on the hits.
            rows, cols = np.nonzero(raw > 0)
            vals = raw[rows, cols]
            # Cell spectrum of all cells before the cut (the cut region is hatched in the
            # plot); log-uniform edges, so the bin is arithmetic on log10(E/MIP).
            lv = np.log10(vals / np.float32(geo.mip_mev))
            b = np.floor((lv - log_edges[0]) / log_step).astype(np.int64) + 1
            np.clip(b, 0, n_spec + 1, out=b)
            for h in (0, 1):
                spectrum[h] += np.bincount(b[half[rows] == h], minlength=n_spec + 2)
            if config.reco is not None:  # digitised from all deposits, its own threshold
                reco_rows.append(config.reco.features(rows, vals, idx))
            keep = vals >= config.threshold_mev if config.threshold_mev > 0 else vals > 0
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            sc, lf = sparse_observables(rows, cols, vals, n, e_inc, gf)
            for k, v in sc.items():
                scalars.setdefault(k, []).append(v)
            for k, v in lf.items():
                layers.setdefault(k, []).append(v.astype(np.float32))
            for k, v in _angles(batch, rows, cols, vals, xyz).items():
                angles.setdefault(k, []).append(v)
            if is_calogan:
                e = _dense(rows, cols, vals, np.arange(n), geo.n_voxels)
                for k, v in calogan_shapes(e, gf, layer_e=lf["e_layer"]).items():
                    cg.setdefault(k, []).append(v)
            vals64 = vals.astype(np.float64)
            for k, bins in prof_index.items():
                nb = prof_bins[k]
                p = np.bincount(rows * nb + bins[cols], weights=vals64,
                                minlength=n * nb).reshape(n, nb)
                for h in (0, 1):
                    sel = half == h
                    profiles[k][h, 0] += p[sel].sum(axis=0)
                    profiles[k][h, 1] += (p[sel] ** 2).sum(axis=0)
            # Overlay images of the first N_OVERLAY showers and a few single showers.
            if summ.n_overlay < N_OVERLAY:
                take = min(N_OVERLAY - summ.n_overlay, n)
                sel = rows < take
                overlay_xy += np.bincount(gf.image_xy_pixel[cols[sel]], weights=vals64[sel],
                                          minlength=nx * ny)
                overlay_xz += np.bincount(gf.image_xz_pixel[cols[sel]], weights=vals64[sel],
                                          minlength=geo.n_layers * nx)
                summ.n_overlay += take
            for j in range(min(N_EXAMPLES - len(summ.examples), n)):
                sel = rows == j
                summ.examples.append((
                    np.bincount(gf.image_xy_pixel[cols[sel]], weights=vals64[sel],
                                minlength=nx * ny).reshape(nx, ny),
                    np.bincount(gf.image_xz_pixel[cols[sel]], weights=vals64[sel],
                                minlength=geo.n_layers * nx).reshape(geo.n_layers, nx),
                    float(e_inc[j])))
            # Subsamples for the classifier and the memorisation check.
            if len(ll_index):
                pick = np.flatnonzero(np.isin(idx, ll_index))
                if len(pick):
                    e = _dense(rows, cols, vals, pick, geo.n_voxels)
                    ll = np.empty((len(pick), geo.n_voxels + 1), np.float16)
                    ll[:, :-1] = 1e3 * e / e_inc[pick, None]
                    ll[:, -1] = np.log(e_inc[pick] / 1000.0)  # log(E_inc / GeV)
                    ll_rows.append(ll)
                    ll_einc.append(e_inc[pick])
            if len(memo_index):
                pick = np.flatnonzero(np.isin(idx, memo_index))
                if len(pick):
                    e = _dense(rows, cols, vals, pick, geo.n_voxels)
                    memo_rows.append(memo_features(e, config.memo_projection))
            halves.append(half)
            indices.append(idx)
            bar.update(n + int(bad.sum()))
    except CaloforgeError:
        raise
    except OSError as exc:
        raise InputError(f"reading failed after {start} showers: {exc}", source.name) from None
    finally:
        bar.close()
    if not halves:
        summ.half = np.zeros(0, np.int8)
        summ.index = np.zeros(0, np.int64)
        return summ
    summ.points = point_acc.finish() if point_acc is not None else None
    summ.scalars = {k: np.concatenate(v) for k, v in scalars.items()}
    summ.layers = {k: np.concatenate(v) for k, v in layers.items()}
    summ.calogan = {k: np.concatenate(v) for k, v in cg.items()}
    summ.angles = {k: np.concatenate(v) for k, v in angles.items()}
    summ.half = np.concatenate(halves)
    summ.index = np.concatenate(indices)
    summ.spectrum = spectrum
    summ.profiles = profiles
    summ.overlay_xy = overlay_xy.reshape(nx, ny)
    summ.overlay_xz = overlay_xz.reshape(geo.n_layers, nx)
    if ll_rows:
        summ.lowlevel = np.concatenate(ll_rows)
        summ.lowlevel_e_inc = np.concatenate(ll_einc)
    if memo_rows:
        summ.memo = np.concatenate(memo_rows)
    if reco_rows:
        summ.reco = np.concatenate(reco_rows)
    return summ


def _angles(batch: ShowerBatch, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
            cell_xyz: np.ndarray) -> dict[str, np.ndarray]:
    """True (condition) and reconstructed (shower axis) incidence angles of a chunk.

    Without a theta condition nothing uses the axis, so it is not reconstructed (NaN).
    """
    n = len(batch)
    cond = batch.conditions
    nan = np.full(n, np.nan)
    theta, phi = (nan, nan) if cond.theta is None else \
        shower_axis_angles(rows, cell_xyz[cols], vals, n)
    return {"theta": nan if cond.theta is None else cond.theta.astype(np.float64),
            "phi": nan if cond.phi is None else cond.phi.astype(np.float64),
            "theta_reco": theta, "phi_reco": phi}


def _dense(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, pick: np.ndarray,
           n_voxels: int) -> np.ndarray:
    """Dense (len(pick), V) float32 showers of the chunk rows ``pick`` from the hits."""
    out = np.zeros((len(pick), n_voxels), np.float32)
    pos = np.full(int(rows.max(initial=-1)) + 1 if len(rows) else 0, -1, np.int64)
    pick = np.asarray(pick, dtype=np.int64)
    pick_in = pick[pick < len(pos)]
    pos[pick_in] = np.flatnonzero(pick < len(pos))
    sel = pos[rows] >= 0 if len(rows) else np.zeros(0, bool)
    out[pos[rows[sel]], cols[sel]] = vals[sel]
    return out


def memo_features(energies: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """Shower shape vectors for nearest-neighbour distances: E / E_vis, optionally
    randomly projected (Johnson-Lindenstrauss: distances preserved to a few per cent)."""
    e = np.asarray(energies, dtype=np.float32)
    tot = e.sum(axis=1, keepdims=True)
    shape = np.divide(e, tot, out=np.zeros_like(e), where=tot > 0)
    return shape if projection is None else shape @ projection


def memo_projection(n_voxels: int, seed: int, dim: int = MEMO_DIM) -> np.ndarray | None:
    """Seeded Gaussian random projection (V, dim), or None when V is small enough for
    exact distances."""
    if n_voxels <= 4 * dim:
        return None
    rng = np.random.default_rng([seed, 13])
    return (rng.standard_normal((n_voxels, dim)) / math.sqrt(dim)).astype(np.float32)
