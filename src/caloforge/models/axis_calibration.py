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
  (``1 / core_divisions``) wide inside ``inner_rings`` pitches (the core, where most
  energy lies), one pitch wide outside, the last ring open-ended;
- tables are fitted per *theta bin* (equal numbers of calibration showers per bin,
  edges saved with the model), since the lateral spread of a ring's hits still grows
  with the angle;
- optionally the occupancy cuts and hit-energy maps are also fitted per *energy bin*
  (``n_hit_energy_bins``, equal counts in log E) and interpolated linearly in log E
  between the bins' median energies, so that they follow the incident energy smoothly:
  a flow whose number of hits grows too slowly with the energy (too many hits at 10 GeV,
  too few at 100 GeV) is corrected at every energy, not on average, and no cut jumps at
  a bin edge.  A group with fewer than ``min_hits`` training hits in an energy bin takes
  its theta bin's table pooled over energies;
- optionally also per *response bin* (``n_response_bins``): the shower's calibrated
  visible energy relative to the training median at its energy and theta, in bins of
  equal training counts per energy bin.  Hadron showers rich in electromagnetic
  sub-showers deposit more visible energy in denser hits (what software compensation
  uses); pooled tables impose one hit spectrum whatever the response, and cut the
  generated showers' correlation between the two from 0.55 (reference) to 0.2 (90 GeV
  pions).  Per response bin each shower's hits follow the training showers of like
  response;
- optionally also per *layer-energy bin* (``n_layer_energy_bins``): the layer's own
  sampled energy, in bins of equal training counts per layer (edges in log MeV, saved).
  The group is then (layer, layer-energy bin, ring).  Which hits a layer holds depends
  on its energy far more than on the shower's: a pion layer before the interaction
  holds one MIP on the beam line, a late layer of a few MeV a few isolated hits far
  apart; tables pooled over layer energies split the first into two hits and bunch the
  second around the axis (late AHCAL layers: mean x width 39 mm against 67 mm);
- optionally (``core_window`` >= 0) the rings go around each shower's own *core* in
  each layer instead of the direction's axis: the centroid of layers k - w .. k + w
  weighted by log(E / threshold) of their hits (training showers: their read-out;
  generation: the flow's drawn features before any cut).  A hadron shower's core
  wanders off the beam line and follows from layer to layer; rings around the fixed
  axis cut an off-axis core away with the cuts of outer rings and let noise through on
  the axis, which took the layer-to-layer correlation of the pion centroids from 0.36 /
  0.44 / 0.51 (the flow's own, layers 10 / 20 / 30; simulation 0.35 / 0.44 / 0.52) to
  0.16 / 0.24 / 0.34.  Measured on the pion default: its software-compensated width
  came 13.2 -> 9.8 % off, while the correlation stayed low (the hits that the cuts add
  from the flow's empty mode, a quarter of them, lie anywhere in the layer).

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
>>> AxisCalibration(toy_geometry(), 2, 1, 5, 3, n_hit_energy_bins=4).cut.shape[0]
8
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


def _identity_maps(n_groups: int, m: int) -> tuple[Tensor, Tensor]:
    """Steps and tables of hit maps out = in over 0..10, on the grid uniform in sqrt(h)."""
    step = math.sqrt(10.0) / (m - 1)
    return torch.full((n_groups,), step), ((torch.arange(m) * step) ** 2).expand(n_groups, m) \
        .clone()


def _pitch(xy: np.ndarray) -> float:
    ux = np.unique(np.round(xy[:, 0], 3))
    return float(np.min(np.diff(ux))) if len(ux) > 1 else 1.0


class AxisCalibration(nn.Module):
    """Calibration tables in (theta bin, layer, ring around the shower axis) groups."""

    def __init__(self, geometry: Geometry, n_theta_bins: int, inner_rings: int,
                 n_knots: int, n_energy_bins: int, n_hit_energy_bins: int = 1,
                 layer_shares: bool = False, core_divisions: int = 2,
                 n_response_bins: int = 1, n_layer_energy_bins: int = 1,
                 core_window: int = -1) -> None:
        super().__init__()
        self.core_window = int(core_window)  # -1: rings around the direction's axis
        self.fit_layer_shares = bool(layer_shares)  # fit :attr:`hit_log_weight` (else 0)
        centres = np.array(geometry.cell_centres, dtype=np.float64)  # a writable copy
        self.pitch = _pitch(centres[:, :2])
        self.inner_rings = int(inner_rings)
        # rings 1 / core_divisions of a pitch wide inside ``inner_rings`` pitches: finer
        # rings tell the cell on the axis from one whose edge the axis crosses
        self.core_divisions = max(int(core_divisions), 1)
        extent = np.hypot(np.ptp(centres[:, 0]), np.ptp(centres[:, 1])) / self.pitch
        # axes outside the window still see every cell within the window's diagonal
        self.ring_count = self.core_divisions * self.inner_rings + int(math.ceil(extent)) + 1
        layer = np.asarray(geometry.layer_of_voxel, dtype=np.int64)
        self.n_layers = int(geometry.n_layers)
        self.n_le = max(int(n_layer_energy_bins), 1)  # layer-energy bins per layer
        self.layer_rows = self.n_le * self.ring_count  # groups per layer
        self.n_groups = self.n_layers * self.layer_rows  # per theta bin
        self.n_bins = int(n_theta_bins)
        self.n_e = max(int(n_hit_energy_bins), 1)  # energy bins of the cuts and hit maps
        self.n_r = max(int(n_response_bins), 1)  # response bins within each energy bin
        self.n_sub = self.n_e * self.n_r  # tables per theta bin
        self.register_buffer("cell_xy", torch.as_tensor(centres[:, :2], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_z", torch.as_tensor(centres[:, 2], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_offset", torch.as_tensor(layer * self.layer_rows),
                             persistent=False)
        self.register_buffer("cell_layer", torch.as_tensor(layer), persistent=False)
        t, g, m, nb = self.n_bins, self.n_groups, max(n_knots, 2), max(n_energy_bins, 1)
        # cuts and hit maps: one table per (theta bin, energy bin, response bin),
        # theta-major
        n_tab = t * self.n_sub
        # Identity until fitted: cut at the threshold, hit maps out = in.
        self.register_buffer("ready", torch.zeros(()))
        self.register_buffer("theta_edges", torch.full((max(t - 1, 1),), math.inf))
        # log(E / MeV) at which each energy bin's tables apply (the bin's median)
        self.register_buffer("energy_knots", torch.linspace(0.0, 1.0, self.n_e))
        # inner edges of the response bins per energy bin, in E_vis / median - 1
        self.register_buffer("response_edges", torch.zeros(self.n_e, max(self.n_r - 1, 1)))
        # inner edges of the layer-energy bins per layer, log(E_layer / MeV)
        self.register_buffer("layer_energy_edges",
                             torch.full((self.n_layers, max(self.n_le - 1, 1)), math.inf))
        self.register_buffer("cut", torch.zeros(n_tab, g))
        # Hit maps are tabulated at h_j = (j step)^2, j = 0 .. m-1: uniform in sqrt(h), so
        # that the many hits just above the cut (a tenth of a group's hits within
        # h < 0.1, where the map is steepest) get a fine map.  The step is each group's own
        # (its largest h at the last point), so that the soft hits of the halo keep a
        # fine map when the core's features reach far higher.  Folders saved before this
        # have tables uniform in h (``hit_grid_sqrt`` = 0).
        self.register_buffer("hit_grid_sqrt", torch.ones(()))
        self.sqrt_grid = True  # python mirror of ``hit_grid_sqrt``
        step, table = _identity_maps(n_tab * g, m)
        self.register_buffer("hit_step", step)
        self.register_buffer("hit_map", table)
        # Per group, the log of a factor on the hits' energies (a hit stays at least at the
        # threshold) that makes the mean share of its layer's energy that the group
        # carries in a shower the training showers' (the widths of the layers see these
        # shares; the hit maps alone match the energies per hit, and the layer flow's halo
        # grows with its layer total more than the training showers' do, so that after
        # rescaling to the sampled layer energy the halo came out 5-15 % short).  Added
        # to the log feature: no exp or log per cell, whose vectorised loops round by
        # position.  0 everywhere: off.
        self.register_buffer("hit_log_weight", torch.zeros(n_tab, g))
        self.weighted = False  # python mirror: any weight != 0
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
        if prefix + "energy_knots" not in state_dict and self.n_e == 1:  # before energy bins
            state_dict = {**state_dict, prefix + "energy_knots": self.energy_knots.clone()}
        if prefix + "response_edges" not in state_dict and self.n_r == 1:  # before them
            state_dict = {**state_dict, prefix + "response_edges": self.response_edges.clone()}
        if prefix + "layer_energy_edges" not in state_dict and self.n_le == 1:  # before them
            state_dict = {**state_dict,
                          prefix + "layer_energy_edges": self.layer_energy_edges.clone()}
        if prefix + "hit_grid_sqrt" not in state_dict:  # tables uniform in h (before)
            state_dict = {**state_dict, prefix + "hit_grid_sqrt": torch.zeros(())}
        if prefix + "hit_log_weight" not in state_dict:  # before the layer-share weights
            state_dict = {**state_dict,
                          prefix + "hit_log_weight": torch.zeros_like(self.hit_log_weight)}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_fitted = bool(self.ready > 0)
        self.sqrt_grid = bool(self.hit_grid_sqrt > 0)
        self.weighted = bool((self.hit_log_weight != 0).any())

    # ---- groups ------------------------------------------------------------------------------
    def theta_bin(self, theta: Tensor) -> Tensor:
        """(B,) theta bin of each shower (inner edges, right-closed)."""
        return torch.searchsorted(self.theta_edges, theta.contiguous(), right=True)

    def groups(self, angles: Tensor, cells: slice, layer_energy: Tensor | None = None,
               centre: Tensor | None = None) -> Tensor:
        """(B, cells) flat group index (theta bin, layer, layer-energy bin, ring around
        the axis) of the voxels ``cells`` for showers of direction ``angles`` (B, 2) in
        rad and layer energies ``layer_energy`` (B, layers of the geometry; MeV; needed
        with layer-energy bins), in the tables of the first energy bin
        (:meth:`energy_offsets` gives the others); ``centre``: the rings' centres
        (:meth:`core_centres`; needed with ``core_window`` >= 0)."""
        local, tbin = self._local(angles, cells, layer_energy, centre)
        return (tbin * (self.n_sub * self.n_groups))[:, None] + local

    def layer_energy_bin(self, layer_energy: Tensor) -> Tensor:
        """(B, layers) bin of each layer's energy (MeV; 0: the lowest bin)."""
        log_e = torch.log(layer_energy.to(self.layer_energy_edges).clamp_min(1e-30))
        # a sum of comparisons rather than searchsorted: the same in a trace (the exporters)
        return (log_e[:, :, None] > self.layer_energy_edges[None]).sum(2)

    def layer_energies(self, x: Tensor, threshold_mev: float) -> Tensor:
        """(B, layers) energy (MeV) of each layer of showers ``x`` (B, voxels) in its cells
        at or above ``threshold_mev`` (the read-out; 0: every cell)."""
        xs = x.to(self.cell_xy)
        xs = torch.where(xs >= threshold_mev, xs, torch.zeros_like(xs))
        return xs.new_zeros(len(xs), self.n_layers).index_add_(1, self.cell_layer, xs)

    def energy_offsets(self, e_inc: Tensor, response: Tensor | None = None,
                       theta: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
        """Where each shower's energy falls between the energy bins' tables: offsets (B, 1)
        of the lower and upper bin's tables from :meth:`groups` and the weight (B, 1) of
        the upper one (linear in log E, constant beyond the outer bins); with response
        bins, both tables are those of the shower's :meth:`response_bin` (``response``:
        calibrated E_vis / E_inc, ``theta``: rad).  None with one energy and response bin."""
        if self.n_sub == 1:
            return None
        j, w = self._energy_weight(e_inc)
        if self.n_r > 1 and (response is None or theta is None):
            raise ValueError("tables per response bin need each shower's response and theta")
        rb = torch.zeros_like(j) if self.n_r == 1 else \
            self.response_bin(e_inc, response, theta, (j, w))
        lower = (j * self.n_r + rb) * self.n_groups
        upper = lower + self.n_r * self.n_groups if self.n_e > 1 else lower
        return lower[:, None], upper[:, None], w[:, None]

    def _energy_weight(self, e_inc: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) lower energy bin and weight of the upper one (0 with one energy bin)."""
        knots, log_e = self.energy_knots, torch.log(e_inc).to(self.energy_knots)
        if self.n_e == 1:
            return torch.zeros_like(log_e, dtype=torch.long), torch.zeros_like(log_e)
        j = torch.searchsorted(knots, log_e.contiguous()).clamp(1, self.n_e - 1) - 1
        x0, x1 = knots[j], knots[j + 1]
        return j, ((log_e - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1)

    def relative_response(self, e_inc: Tensor, response: Tensor, theta: Tensor) -> Tensor:
        """(B,) calibrated E_vis / E_inc relative to the response table's target median
        at (E, theta), minus 1: the training median (after ``refine_response``, the
        median the sampled energies aim at so that the read-out has the training one;
        the bins keep their meaning either way)."""
        b = self.theta_bin(theta)
        median = calib.interpolate(torch.log(e_inc), self.resp_log_e[b], self.resp_mu_ref[b])
        return response / median.clamp_min(1e-30) - 1.0

    def calibrated_ratio(self, e_inc: Tensor, ratio: Tensor, theta: Tensor) -> Tensor:
        """(B,) E_vis / E_inc after :meth:`calibrate_response` of showers whose raw
        ratio is ``ratio``."""
        b = self.theta_bin(theta)
        return calib.response_ratio(ratio, e_inc, self.resp_log_e[b], self.resp_mu_gen[b],
                                    self.resp_mu_ref[b], self.resp_k[b])

    def response_bin(self, e_inc: Tensor, response: Tensor, theta: Tensor,
                     energy: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """(B,) response bin of showers of calibrated E_vis / E_inc ``response``: edges
        interpolated in log E between the energy bins' (``energy``: their
        :meth:`_energy_weight`)."""
        j, w = self._energy_weight(e_inc) if energy is None else energy
        e0 = self.response_edges[j]
        e1 = self.response_edges[(j + 1).clamp(max=self.n_e - 1)]
        edges = e0 + w[:, None] * (e1 - e0)
        u = self.relative_response(e_inc, response, theta)
        return (u[:, None] > edges).sum(1)

    def axis_distance(self, angles: Tensor, cells: slice, centre: Tensor | None = None
                      ) -> Tensor:
        """(B, cells) distance of the voxels ``cells`` from the axis of showers of
        direction ``angles`` (B, 2) in rad, in cell pitches, in the plane of their layer;
        ``centre`` (B, layers, 2; mm): a point per layer to measure from instead."""
        if centre is not None:
            layer = self.cell_layer[cells]
            dx = self.cell_xy[cells, 0] - centre[:, :, 0].index_select(1, layer)
            dy = self.cell_xy[cells, 1] - centre[:, :, 1].index_select(1, layer)
            return torch.sqrt(dx * dx + dy * dy) * (1.0 / self.pitch)
        theta, phi = angles[:, 0], angles[:, 1]
        tan = torch.tan(theta)
        z = self.cell_z[cells]
        dx = (self.cell_xy[cells, 0] - self.impact[0]) - z * (tan * torch.cos(phi))[:, None]
        dy = (self.cell_xy[cells, 1] - self.impact[1]) - z * (tan * torch.sin(phi))[:, None]
        return torch.sqrt(dx * dx + dy * dy) * (1.0 / self.pitch)

    @staticmethod
    def core_weights(features: Tensor) -> Tensor:
        """Centroid weights of cells of log features ``features`` = log(E / threshold)
        (read-out showers: of their energies; generation: the flow's drawn features):
        the feature of a hit, 0 below the threshold.  Log weights find a core among a
        few hot cells as well as among many soft ones, and need no exp."""
        return features.clamp_min(0.0)

    def core_centres(self, weights: Tensor, angles: Tensor) -> Tensor:
        """(B, layers, 2) centre (mm) of each layer's rings with ``core_window`` = w:
        the centroid of the cells of layers k - w .. k + w with ``weights`` (B, voxels;
        :meth:`core_weights`); where those layers hold nothing, the direction's axis
        (``angles`` (B, 2), rad).  Row by row, so independent of the batch."""
        w = weights.to(self.cell_xy)
        b, n_l, k = w.shape[0], self.n_layers, max(self.core_window, 0)

        def per_layer(v: Tensor) -> Tensor:
            if torch.jit.is_tracing():  # the ONNX exporter refuses repeated index_add indices
                return w.new_zeros(b, n_l).scatter_add_(1, self.cell_layer.expand(b, -1), v)
            return w.new_zeros(b, n_l).index_add_(1, self.cell_layer, v)

        sums = torch.stack([per_layer(v) for v in (w, w * self.cell_xy[:, 0],
                                                   w * self.cell_xy[:, 1])], 1)
        if k:  # layers k - w .. k + w (those that exist)
            pad = torch.nn.functional.pad(sums, (k, k))
            sums = sum(pad[:, :, j:j + n_l] for j in range(2 * k + 1))
        total = sums[:, 0]
        # the direction's axis where the window is empty
        z = self.cell_z.new_zeros(n_l).scatter_(0, self.cell_layer, self.cell_z)  # one per layer
        theta, phi = angles[:, 0].to(w), angles[:, 1].to(w)
        tan = torch.tan(theta)
        ax = self.impact[0] + z[None] * (tan * torch.cos(phi))[:, None]
        ay = self.impact[1] + z[None] * (tan * torch.sin(phi))[:, None]
        some = total > 0
        safe = total.clamp_min(1e-30)
        return torch.stack([torch.where(some, sums[:, 1] / safe, ax),
                            torch.where(some, sums[:, 2] / safe, ay)], 2)

    def _local(self, angles: Tensor, cells: slice, layer_energy: Tensor | None = None,
               centre: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, cells) group within a table (layer, layer-energy bin, ring around the
        axis, or around ``centre`` with ``core_window`` >= 0) and (B,) theta bin."""
        theta = angles[:, 0]
        if self.core_window >= 0 and centre is None:
            raise ValueError("rings around the shower's core need each shower's centres")
        d = self.axis_distance(angles, cells, centre if self.core_window >= 0 else None)
        # fine rings below c pitches, then one pitch wide: k c + floor(d - c)
        c, k = self.inner_rings, self.core_divisions
        ring = torch.floor(torch.where(d < c, k * d, d + (k - 1) * c)) \
            .clamp(max=self.ring_count - 1)
        local = self.cell_offset[cells][None] + ring.long()
        if self.n_le > 1:
            if layer_energy is None:
                raise ValueError("tables per layer-energy bin need each shower's layer "
                                 "energies")
            lbin = self.layer_energy_bin(layer_energy).index_select(1, self.cell_layer[cells])
            local = local + lbin * self.ring_count
        return local, self.theta_bin(theta)

    # ---- generation ----------------------------------------------------------------------------
    def read_out(self, f: Tensor, group: Tensor,
                 energy: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Per-element cut and hit-energy map: (mapped log feature, cut) of features
        ``f`` of cells in ``group`` (both (B, cells)); ``energy``: the showers'
        :meth:`energy_offsets` (cut and mapped feature interpolated between the two
        energy bins' tables).  The mapped feature is meaningful where ``f >= cut`` only.

        Interpolations are written out as a + w (b - a): ``torch.lerp`` fuses a
        multiply-add in its vectorised loop only, so its last bit would depend on where an
        element sits in the tensor, i.e. on the batch size."""
        cut = self.cuts(group, energy)
        if not torch.jit.is_tracing():  # few hits (one shower at a time): map only them
            hit = f >= cut
            if int(hit.sum()) * 4 < hit.numel():
                rows, cols = hit.nonzero(as_tuple=True)
                part = None if energy is None else tuple(v[rows, 0] for v in energy)
                out = f.new_zeros(f.shape)
                out[rows, cols] = self._mapped(f[rows, cols], cut[rows, cols],
                                               group[rows, cols], part)
                return out, cut
        return self._mapped(f, cut, group, energy), cut

    def cuts(self, group: Tensor, energy: tuple[Tensor, Tensor, Tensor] | None = None
             ) -> Tensor:
        """The occupancy cut of every element of ``group`` (as :meth:`read_out`)."""
        flat_cut = self.cut.reshape(-1)
        if energy is None:
            return flat_cut[group]
        c0 = flat_cut[group + energy[0]]
        return c0 + energy[2] * (flat_cut[group + energy[1]] - c0)

    def _mapped(self, f: Tensor, cut: Tensor, group: Tensor,
                energy: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        """The mapped (and weighted) log feature of elements ``f`` with their ``cut``,
        ``group`` and energy-bin offsets and weight (same shape, or (B, 1))."""
        h = (f - cut).clamp_min(0)
        lw = self.hit_log_weight.reshape(-1)
        if energy is None:
            g = self._map(group, h)
            return (g + lw[group]).clamp_min(0) if self.weighted else g
        g0, g1, w = group + energy[0], group + energy[1], energy[2]
        a = self._map(g0, h)
        g = a + w * (self._map(g1, h) - a)
        if self.weighted:
            l0 = lw[g0]
            g = (g + (l0 + w * (lw[g1] - l0))).clamp_min(0)
        return g

    def _map(self, group: Tensor, h: Tensor) -> Tensor:
        """The hit-energy map of each element's ``group`` at its excess ``h`` over the cut."""
        m = self.hit_map.shape[1]
        step = self.hit_step[group]
        u = (torch.sqrt(h) if self.sqrt_grid else h) / step
        j = torch.floor(u).clamp(max=m - 2)
        at = group * m + j.long()
        flat = self.hit_map.reshape(-1)
        y0, y1 = flat[at], flat[at + 1]
        out = y0 + (u - j) * (y1 - y0)
        # Beyond the last grid point (the group's hottest calibration hit): the hottest
        # training hit of the group.  A far tail of the flow would otherwise map to a hit
        # that takes most of its layer's energy.  (Tables uniform in h: unit slope.)
        if self.sqrt_grid:
            return torch.where(u > m - 1, y1, out)
        return torch.where(u > m - 1, y1 + (h - (m - 1) * step), out)

    def calibrate_response(self, el: Tensor, e_inc: Tensor, theta: Tensor) -> Tensor:
        """Layer energies rescaled with the response table of each shower's theta bin."""
        b = self.theta_bin(theta)
        return calib.calibrate_response(el, e_inc, self.resp_log_e[b], self.resp_mu_gen[b],
                                        self.resp_mu_ref[b], self.resp_k[b])

    # ---- fitting (models/axis_calibration_fit.py) ------------------------------------------------
    def refine_response(self, x: Tensor, e_inc: Tensor, angles: Tensor,
                        read_out_ratio: Tensor, threshold_mev: float) -> None:
        """Refit the response table on showers read out with every table
        (:func:`~caloforge.models.axis_calibration_fit.refine_response`)."""
        from caloforge.models.axis_calibration_fit import refine_response

        refine_response(self, x, e_inc, angles, read_out_ratio, threshold_mev)

    def fit(self, x: Tensor, e_inc: Tensor, angles: Tensor, feats: Tensor, gen_ratio: Tensor,
            threshold_mev: float, zero_width: float, hit_maps: bool = True,
            min_hits: int = 50, occupancy_scale: Tensor | None = None,
            gen_layer_energy: Tensor | None = None) -> None:
        """Fit every table: training showers ``x`` (N, voxels) at ``e_inc``, ``angles``
        (N, 2); generated raw log features ``feats`` (n, voxels) and visible-energy ratios
        ``gen_ratio`` (n,) at the conditions of the first n training showers, and with
        layer-energy bins their layer energies ``gen_layer_energy`` (n, layers; MeV).
        Without ``hit_maps`` the hit energies keep the identity map."""
        from caloforge.models.axis_calibration_fit import fit

        fit(self, x, e_inc, angles, feats, gen_ratio, threshold_mev, zero_width, hit_maps,
            min_hits, occupancy_scale, gen_layer_energy)
