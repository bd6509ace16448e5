"""Angle-aware post-training calibration for direction-conditioned L2LFlows models.

The calibration of :mod:`caloforge.models.calibration` works per fixed cell of the grid.
For a model trained over a range of directions that pools showers whose axes cross a
layer at different places: at theta = 30 deg the axis of an ILD photon crosses the last
layer 57 mm from the impact point, in the direction phi.  A per-cell occupancy cut fitted
on that mixture lets through, at small theta, the hits that the oblique showers leave
far from the centre, and those scattered hits tilt the reconstructed shower axis.

Here every table is indexed by the cell's position *relative to the shower axis*:

- the axis of a shower with direction (theta, phi) crosses layer k at
  ``impact + z_k tan(theta) (cos phi, sin phi)`` (geometry frame: front face at z = 0);
- a cell's group is its layer and its *ring* around that point: rings half a cell pitch
  wide inside ``inner_rings`` pitches (the core, where most energy lies), one pitch wide
  outside, the last ring open-ended;
- tables are fitted per *theta bin* (equal numbers of calibration showers per bin,
  edges saved with the model), since the lateral spread of a ring's hits still grows
  with the angle.

Rings are symmetric around the axis, so no table depends on phi, while every shower's
cells are classified at its own phi; a per-cell table per theta bin would instead have
to pool over phi and smear each ring around the impact point.  The tables are:
occupancy cuts (one per group: the fraction of the group's cells read out matches the
training showers), hit-energy maps (one monotone piecewise-linear map of log(E / threshold)
per group, tabulated on a uniform grid over the group's own range, so that generation needs
no search) and the mu90 / sigma90 response in log-energy bins, one table per theta bin.

>>> from caloforge.models.toy import toy_geometry
>>> cal = AxisCalibration(toy_geometry(), n_theta_bins=2, inner_rings=1, n_knots=5, n_energy_bins=3)
>>> cal.ring_count, tuple(cal.cut.shape)
(11, (2, 66))
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.geometry import Geometry
from caloforge.models import calibration as calib

_CUT_NEVER = 50.0  # a cut no generated feature reaches: the group stays empty
_CUT_FLOOR = 1.0  # lowest cut, in units of -zero_width (the empty mode)
_HIST_BINS = 512  # histogram of generated features per group, for the occupancy cuts
_HIST_TOP = 20.0  # features above this (log(E / threshold) = 20) share the top bin
_CHUNK = 250  # showers per chunk while fitting: (chunk, voxels) int64 group indices


def _pitch(xy: np.ndarray) -> float:
    ux = np.unique(np.round(xy[:, 0], 3))
    return float(np.min(np.diff(ux))) if len(ux) > 1 else 1.0


class AxisCalibration(nn.Module):
    """Calibration tables in (theta bin, layer, ring around the shower axis) groups."""

    def __init__(self, geometry: Geometry, n_theta_bins: int, inner_rings: int,
                 n_knots: int, n_energy_bins: int) -> None:
        super().__init__()
        centres = np.array(geometry.cell_centres, dtype=np.float64)  # a writable copy
        self.pitch = _pitch(centres[:, :2])
        self.inner_rings = int(inner_rings)
        extent = np.hypot(np.ptp(centres[:, 0]), np.ptp(centres[:, 1])) / self.pitch
        # axes outside the window still see every cell within the window's diagonal
        self.ring_count = 2 * self.inner_rings + int(math.ceil(extent)) + 1
        layer = np.asarray(geometry.layer_of_voxel, dtype=np.int64)
        self.n_layers = int(geometry.n_layers)
        self.n_groups = self.n_layers * self.ring_count  # per theta bin
        self.n_bins = int(n_theta_bins)
        self.register_buffer("cell_xy", torch.as_tensor(centres[:, :2], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_z", torch.as_tensor(centres[:, 2], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_offset", torch.as_tensor(layer * self.ring_count),
                             persistent=False)
        t, g, m, nb = self.n_bins, self.n_groups, max(n_knots, 2), max(n_energy_bins, 1)
        # Identity until fitted: cut at the threshold, hit maps out = in.
        self.register_buffer("ready", torch.zeros(()))
        self.register_buffer("theta_edges", torch.full((max(t - 1, 1),), math.inf))
        self.register_buffer("cut", torch.zeros(t, g))
        # grid step of each group's table: its own range, so that the soft hits of the
        # halo keep a fine map when the core's features reach far higher
        self.register_buffer("hit_step", torch.full((t * g,), 10.0 / (m - 1)))
        self.register_buffer("hit_map", (torch.arange(m) * (10.0 / (m - 1))).expand(t * g, m)
                             .clone())
        self.register_buffer("resp_log_e", torch.linspace(0.0, 1.0, nb).expand(t, nb).clone())
        self.register_buffer("resp_mu_gen", torch.ones(t, nb))
        self.register_buffer("resp_mu_ref", torch.ones(t, nb))
        self.register_buffer("resp_k", torch.ones(t, nb))
        self.impact = (0.0, 0.0)  # mm, the model's fixed impact point (set by the model)
        self.is_fitted = False  # python mirror of ``ready`` (no tensor test while tracing)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        """Model folders saved before these tables existed load without them: the model
        then keeps its per-cell (pooled) calibration, exactly as it generated before."""
        if prefix + "ready" not in state_dict:
            self.is_fitted = False
            return
        step = state_dict.get(prefix + "hit_step")
        if step is not None and step.dim() == 0:  # one step for every group (before)
            state_dict = {**state_dict, prefix + "hit_step": step.expand(self.hit_step.shape)}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_fitted = bool(self.ready > 0)

    # ---- groups ------------------------------------------------------------------------------
    def theta_bin(self, theta: Tensor) -> Tensor:
        """(B,) theta bin of each shower (inner edges, right-closed)."""
        return torch.searchsorted(self.theta_edges, theta.contiguous(), right=True)

    def groups(self, angles: Tensor, cells: slice) -> Tensor:
        """(B, cells) flat group index (theta bin, layer, ring around the axis) of the
        voxels ``cells`` for showers of direction ``angles`` (B, 2) in rad."""
        theta, phi = angles[:, 0], angles[:, 1]
        tan = torch.tan(theta)
        z = self.cell_z[cells]
        # offsets of the cells from the axis, in cell pitches
        dx = (self.cell_xy[cells, 0] - self.impact[0]) - z * (tan * torch.cos(phi))[:, None]
        dy = (self.cell_xy[cells, 1] - self.impact[1]) - z * (tan * torch.sin(phi))[:, None]
        d = torch.sqrt(dx * dx + dy * dy) * (1.0 / self.pitch)
        c = self.inner_rings  # half-pitch rings below c pitches, then 2c + floor(d - c)
        ring = torch.floor(torch.where(d < c, 2 * d, d + c)).clamp(max=self.ring_count - 1)
        return (self.theta_bin(theta) * self.n_groups)[:, None] + self.cell_offset[cells][None] \
            + ring.long()

    # ---- generation ----------------------------------------------------------------------------
    def read_out(self, f: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
        """Per-element cut and hit-energy map: (mapped log feature, cut) of features
        ``f`` of cells in ``group`` (both (B, cells))."""
        cut = self.cut.reshape(-1)[group]
        h = (f - cut).clamp_min(0)
        m = self.hit_map.shape[1]
        step = self.hit_step[group]
        u = h / step
        j = torch.floor(u).clamp(max=m - 2)
        at = group * m + j.long()
        flat = self.hit_map.reshape(-1)
        y0, y1 = flat[at], flat[at + 1]
        out = y0 + (u - j) * (y1 - y0)
        # beyond the last grid point: unit slope (rare, very energetic hits)
        return torch.where(u > m - 1, y1 + (u - (m - 1)) * step, out), cut

    def calibrate_response(self, el: Tensor, e_inc: Tensor, theta: Tensor) -> Tensor:
        """Layer energies rescaled with the response table of each shower's theta bin."""
        b = self.theta_bin(theta)
        return calib.calibrate_response(el, e_inc, self.resp_log_e[b], self.resp_mu_gen[b],
                                        self.resp_mu_ref[b], self.resp_k[b])

    # ---- fitting --------------------------------------------------------------------------------
    def _all_groups(self, angles: Tensor) -> Tensor:
        return self.groups(angles.to(self.cell_xy), slice(None))

    @torch.no_grad()
    def fit(self, x: Tensor, e_inc: Tensor, angles: Tensor, feats: Tensor, gen_ratio: Tensor,
            threshold_mev: float, zero_width: float, hit_maps: bool = True,
            min_hits: int = 50) -> None:
        """Fit every table: training showers ``x`` (N, voxels) at ``e_inc``, ``angles``
        (N, 2); generated raw log features ``feats`` (n, voxels) and visible-energy ratios
        ``gen_ratio`` (n,) at the conditions of the first n training showers.  Without
        ``hit_maps`` the hit energies keep the identity map."""
        n = len(feats)
        self._fit_edges(angles[:n, 0].double().cpu())
        t, g = self.n_bins, self.n_groups
        total, ref_hits, ref_v, ref_g = torch.zeros(t * g), torch.zeros(t * g), [], []
        for i in range(0, len(x), _CHUNK):
            xs, grp = x[i:i + _CHUNK].cpu(), self._all_groups(angles[i:i + _CHUNK]).cpu()
            hit = xs >= threshold_mev
            total += torch.bincount(grp.reshape(-1), minlength=t * g)
            ref_hits += torch.bincount(grp[hit], minlength=t * g)
            ref_v.append(torch.log(xs[hit] / threshold_mev))
            ref_g.append(grp[hit])
        occ = ref_hits / total.clamp_min(1)
        cut = self._occupancy_cuts(feats, angles[:n], occ, zero_width)
        gen_v, gen_g = [], []
        for i in range(0, n if hit_maps else 0, _CHUNK):
            fs, grp = feats[i:i + _CHUNK], self._all_groups(angles[i:i + _CHUNK]).cpu()
            c = cut[grp]
            hit = fs >= c
            gen_v.append((fs - c)[hit])
            gen_g.append(grp[hit])
        if hit_maps:
            self._fit_hit_maps(torch.cat(ref_v), torch.cat(ref_g), torch.cat(gen_v),
                               torch.cat(gen_g), min_hits)
        self.cut.copy_(cut.view(t, g))
        self._fit_response(x, e_inc, angles, gen_ratio, threshold_mev)
        self._fill_empty_bins(angles[:n, 0])
        self.ready.fill_(1.0)
        self.is_fitted = True

    def _fit_edges(self, theta: Tensor) -> None:
        """Inner bin edges at the theta quantiles of the calibration showers (a theta that
        takes few values gives fewer, unique edges; the rest are +inf: empty bins)."""
        q = torch.quantile(theta, torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64))
        inner = torch.unique(q[1:-1])
        inner = inner[(inner > q[0]) & (inner < q[-1])] if self.n_bins > 1 else inner[:0]
        edges = torch.full_like(self.theta_edges, math.inf)
        edges[:len(inner)] = inner.to(edges)
        self.theta_edges.copy_(edges)

    def _occupancy_cuts(self, feats: Tensor, angles: Tensor, occ: Tensor,
                        zero_width: float) -> Tensor:
        """Per-group cut keeping the training fraction ``occ`` of the group's generated
        features above it (from a fine histogram, linear within a bin)."""
        lo, h = -_CUT_FLOOR * zero_width, _HIST_BINS
        width = (_HIST_TOP - lo) / h
        n_grp = self.n_bins * self.n_groups
        hist = torch.zeros(n_grp * h, dtype=torch.float64)
        for i in range(0, len(feats), _CHUNK):
            grp = self._all_groups(angles[i:i + _CHUNK]).cpu()
            k = ((feats[i:i + _CHUNK] - lo) / width).floor().clamp(0, h - 1).long()
            hist += torch.bincount((grp * h + k).reshape(-1), minlength=n_grp * h)
        hist = hist.view(n_grp, h)
        above = hist.flip(1).cumsum(1).flip(1)  # elements in bins j.. (feature >= edge j)
        count = above[:, 0]
        want = occ.double() * count
        j = ((above >= want[:, None]).sum(1) - 1).clamp(0, h - 1)
        nxt = torch.cat([above[:, 1:], above.new_zeros(n_grp, 1)], 1).gather(1, j[:, None])[:, 0]
        in_bin = hist.gather(1, j[:, None])[:, 0]
        frac = ((want - nxt) / in_bin.clamp_min(1e-12)).clamp(0, 1)
        cut = lo + (j + 1 - frac) * width
        cut = torch.where((occ > 0) & (count > 0), cut, torch.full_like(cut, _CUT_NEVER))
        return cut.float().clamp(lo, _CUT_NEVER)

    def _fit_hit_maps(self, ref_v: Tensor, ref_g: Tensor, gen_v: Tensor, gen_g: Tensor,
                      min_hits: int) -> None:
        n_grp, m = self.hit_map.shape
        q_ref, n_ref = calib.group_quantiles(ref_v, ref_g, n_grp, m)
        q_gen, n_gen = calib.group_quantiles(gen_v, gen_g, n_grp, m)
        ok = (n_ref >= min_hits) & (n_gen >= min_hits)
        identity = torch.linspace(0.0, 10.0, m).expand(n_grp, m)
        q_gen = torch.where(ok[:, None], q_gen, identity) + torch.arange(m) * 1e-6
        q_ref = torch.where(ok[:, None], q_ref, identity)
        # each group's table spans its own generated features (at least 0..1)
        step = q_gen[:, -1].clamp_min(1.0) / (m - 1)
        grid = torch.arange(m, dtype=torch.float32)[:, None] * step[None, :]
        table = calib.map_hits(grid, torch.arange(n_grp), q_gen, q_ref).t()
        self.hit_step.copy_(step)
        self.hit_map.copy_(table)

    def _fit_response(self, x: Tensor, e_inc: Tensor, angles: Tensor, gen_ratio: Tensor,
                      threshold_mev: float) -> None:
        n = len(gen_ratio)
        real = torch.cat([(x[i:i + 1000].double() * (x[i:i + 1000] >= threshold_mev)).sum(1)
                          .cpu() for i in range(0, len(x), 1000)]) / e_inc.double().cpu()
        b_real = self.theta_bin(angles[:, 0].to(self.theta_edges)).cpu()
        b_gen = b_real[:n]
        e = e_inc.cpu()
        for b in range(self.n_bins):
            sr, sg = b_real == b, b_gen == b
            table = calib.response_table(e[sr], real[sr], e[:n][sg], gen_ratio[sg],
                                         self.resp_log_e.shape[1]) if sg.any() else None
            if table is None:
                continue  # too few showers: filled from a neighbour (_fill_empty_bins)
            for buf, val in zip((self.resp_log_e, self.resp_mu_ref, self.resp_mu_gen,
                                 self.resp_k), table):
                buf[b].copy_(val.to(buf))

    def _fill_empty_bins(self, theta: Tensor) -> None:
        """Theta bins without calibration showers take the tables of the nearest bin that
        has some (a request can still land there, e.g. below the lowest trained theta)."""
        counts = torch.bincount(self.theta_bin(theta.to(self.theta_edges)).cpu(),
                                minlength=self.n_bins)
        filled = torch.nonzero(counts > 0)[:, 0]
        g = self.n_groups
        for b in range(self.n_bins):
            if counts[b] > 0:
                continue
            src = int(filled[(filled - b).abs().argmin()])
            self.cut[b] = self.cut[src]
            self.hit_map[b * g:(b + 1) * g] = self.hit_map[src * g:(src + 1) * g]
            for buf in (self.resp_log_e, self.resp_mu_gen, self.resp_mu_ref, self.resp_k):
                buf[b] = buf[src]
