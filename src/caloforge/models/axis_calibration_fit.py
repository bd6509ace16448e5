"""Fitting the tables of :class:`~caloforge.models.axis_calibration.AxisCalibration`
after training: the response table, then occupancy cuts, hit-energy maps (per theta bin,
optionally per energy and response bin with a pooled fallback) and the layer-share
weights.  Called through
:meth:`AxisCalibration.fit`; nothing here runs at generation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from caloforge.models import calibration as calib
from caloforge.models.axis_calibration import (
    _CHUNK,
    _CUT_FLOOR,
    _CUT_NEVER,
    _HIST_BINS,
    _HIST_TOP,
    _identity_maps,
)

if TYPE_CHECKING:
    from caloforge.models.axis_calibration import AxisCalibration


def _fit_groups(cal: AxisCalibration, angles: Tensor, e_bin: Tensor | None,
                layer_energy: Tensor | None = None, centre: Tensor | None = None) -> Tensor:
    """(B, voxels) table row of every cell during fitting: in the pooled tables of the
    showers' theta bins (``e_bin`` None) or in those of their (theta, energy and response)
    bins (``e_bin``: energy bin x n_r + response bin); ``layer_energy`` (B, layers; MeV):
    the showers' layer energies, for the layer-energy bins; ``centre``: their rings'
    centres (:func:`_centres`), for rings around the core."""
    le = None if layer_energy is None else layer_energy.to(cal.cell_xy)
    c = None if centre is None else centre.to(cal.cell_xy)
    local, tbin = cal._local(angles.to(cal.cell_xy), slice(None), le, c)
    table = tbin if e_bin is None else tbin * cal.n_sub + e_bin.to(tbin)
    return (table * cal.n_groups)[:, None].cpu() + local.cpu()


def _part(v: Tensor | None, i: int, n: int) -> Tensor | None:
    return None if v is None else v[i:i + n]


def _centres(cal: AxisCalibration, values: Tensor, angles: Tensor,
             threshold_mev: float | None = None) -> Tensor | None:
    """(N, layers, 2) ring centres (:meth:`AxisCalibration.core_centres`) of showers
    ``values`` (MeV, read out at ``threshold_mev``) or, without ``threshold_mev``, of
    drawn log features; on the CPU, a chunk at a time; None without core rings."""
    if cal.core_window < 0:
        return None
    out = []
    for i in range(0, len(values), _CHUNK):
        v = values[i:i + _CHUNK].to(cal.cell_xy)
        f = v if threshold_mev is None else torch.log(v.clamp_min(1e-30) / threshold_mev)
        out.append(cal.core_centres(cal.core_weights(f),
                                    angles[i:i + _CHUNK].to(cal.cell_xy)).cpu())
    return torch.cat(out)


def _layer_energies(cal: AxisCalibration, x: Tensor, threshold_mev: float) -> Tensor | None:
    """(N, layers) layer energies of showers ``x`` in their cells at or above
    ``threshold_mev`` with layer-energy bins, on the CPU, a chunk at a time; None
    without them."""
    if cal.n_le == 1:
        return None
    return torch.cat([cal.layer_energies(x[i:i + _CHUNK], threshold_mev).cpu()
                      for i in range(0, len(x), _CHUNK)])


def _fit_layer_energy_edges(cal: AxisCalibration, layer_energy: Tensor,
                            threshold_mev: float) -> None:
    """Per layer, inner edges of equal-count bins of log E_layer over the training
    layers read out with some energy (a layer that never has any: one bin)."""
    levels = torch.arange(1, cal.n_le, dtype=torch.float64) / cal.n_le
    edges = torch.full_like(cal.layer_energy_edges, math.inf)
    for k in range(cal.n_layers):
        v = layer_energy[:, k].double()
        v = v[v >= threshold_mev]
        if len(v):
            edges[k] = torch.quantile(torch.log(v), levels).to(edges)
    cal.layer_energy_edges.copy_(edges)


@torch.no_grad()
def fit(cal: AxisCalibration, x: Tensor, e_inc: Tensor, angles: Tensor, feats: Tensor,
        gen_ratio: Tensor, threshold_mev: float, zero_width: float, hit_maps: bool = True,
        min_hits: int = 50, occupancy_scale: Tensor | None = None,
        gen_layer_energy: Tensor | None = None) -> None:
    """Fit every table: training showers ``x`` (N, voxels) at ``e_inc``, ``angles``
    (N, 2); generated raw log features ``feats`` (n, voxels) and visible-energy ratios
    ``gen_ratio`` (n,) at the conditions of the first n training showers.  Without
    ``hit_maps`` the hit energies keep the identity map; ``occupancy_scale`` (theta bins x
    groups): factors on the training occupancy that the cuts aim at
    (:func:`readout_occupancy_scale`); ``gen_layer_energy`` (n, layers; MeV): the
    generated showers' layer energies before the response table (needed with
    layer-energy bins)."""
    n = len(feats)
    _fit_edges(cal, angles[:n, 0].double().cpu())
    # the response first: the response bins are bins of the calibrated response
    _fit_response(cal, x, e_inc, angles, gen_ratio, threshold_mev)
    ref_le = gen_le = None
    if cal.n_le > 1:
        if gen_layer_energy is None:
            raise ValueError("tables per layer-energy bin need the generated layer energies")
        ref_le = _layer_energies(cal, x, threshold_mev)
        _fit_layer_energy_edges(cal, ref_le, threshold_mev)
        # the layer energies as generation will bin them: after the response table
        e, theta = e_inc[:n].to(cal.resp_log_e), angles[:n, 0].to(cal.theta_edges)
        raw = gen_ratio.to(e)
        factor = cal.calibrated_ratio(e, raw, theta) / raw.clamp_min(1e-30)
        gen_le = gen_layer_energy.cpu().double() * factor.cpu().double()[:, None]
    t, g, ns = cal.n_bins, cal.n_groups, cal.n_sub
    centres = (_centres(cal, x, angles, threshold_mev), _centres(cal, feats, angles[:n]))
    pooled = _fit_tables(cal, x, angles, feats, None, None, t, threshold_mev, zero_width,
                         hit_maps, min_hits, occupancy_scale, ref_le, gen_le, centres)
    ref_bin = gen_bin = None
    if ns == 1:
        cut, step, table = pooled[:3]
    else:
        ref_bin, gen_bin = _fit_sub_bins(cal, x, e_inc.cpu(), angles.cpu(), gen_ratio.cpu(),
                                         threshold_mev)
        cut, step, table, n_ref = _fit_tables(cal, x, angles, feats, ref_bin, gen_bin, t * ns,
                                              threshold_mev, zero_width, hit_maps, min_hits,
                                              occupancy_scale, ref_le, gen_le, centres)
        # groups with few training hits in a sub-bin: their theta bin's pooled table
        rows = torch.arange(t * ns * g)
        src = (rows // (ns * g)) * g + rows % g
        few = n_ref < min_hits
        cut = torch.where(few, pooled[0][src], cut)
        step = torch.where(few, pooled[1][src], step)
        table = torch.where(few[:, None], pooled[2][src], table)
    cal.cut.copy_(cut.view(t * ns, g))
    cal.hit_step.copy_(step)
    cal.hit_map.copy_(table)
    cal.hit_log_weight.fill_(0.0)
    cal.weighted = False
    if cal.fit_layer_shares:
        _fit_layer_shares(cal, x, angles, feats, ref_bin, gen_bin, threshold_mev, min_hits,
                          ref_le=ref_le, gen_le=gen_le, centres=centres)
    _fill_empty_bins(cal, angles[:n, 0])
    cal.ready.fill_(1.0)
    cal.is_fitted = True


def _fit_layer_shares(cal: AxisCalibration, x: Tensor, angles: Tensor, feats: Tensor,
                      ref_bin: Tensor | None, gen_bin: Tensor | None, threshold_mev: float,
                      min_hits: int, iterations: int = 3, ref_le: Tensor | None = None,
                      gen_le: Tensor | None = None,
                      centres: tuple[Tensor | None, Tensor | None] = (None, None)) -> None:
    """:attr:`hit_log_weight`: per group, the log of the ratio of the mean share of the layer energy
    in the training showers to that of the calibrated generated ones, iterated
    (weighting one group changes every share of its layer).  Groups with fewer than
    ``min_hits`` training hits keep 1."""
    n_tab = cal.cut.shape[0]

    def rows(i: int, n: int, sub: Tensor | None, le: Tensor | None,
             centre: Tensor | None) -> Tensor:
        return _fit_groups(cal, angles[i:i + n], _part(sub, i, n), _part(le, i, n),
                           _part(centre, i, n))

    def reference(i: int) -> tuple[Tensor, Tensor]:
        xs = x[i:i + _CHUNK].cpu().float()
        return torch.where(xs >= threshold_mev, xs, torch.zeros_like(xs)), \
            rows(i, len(xs), ref_bin, ref_le, centres[0])

    def generated(i: int) -> tuple[Tensor, Tensor]:
        f = feats[i:i + _CHUNK]
        grp = rows(i, len(f), gen_bin, gen_le, centres[1])
        g, cut = cal.read_out(f, grp)
        return torch.where(f >= cut, threshold_mev * torch.exp(g.clamp(0, 20)),
                           torch.zeros_like(f)), grp

    share_ref, hits = _mean_shares(cal, reference, len(x), n_tab, threshold_mev)
    use = hits >= min_hits
    log_w = torch.zeros(n_tab * cal.n_groups, dtype=torch.float64)
    for _ in range(iterations):
        cal.hit_log_weight.copy_(log_w.view_as(cal.hit_log_weight))
        cal.weighted = True
        share_gen, _ = _mean_shares(cal, generated, len(feats), n_tab, threshold_mev)
        step = torch.log(share_ref / share_gen.clamp_min(1e-12)).clamp(-math.log(2), math.log(2))
        ok = use & (share_gen > 0) & (share_ref > 0)
        log_w = torch.where(ok, log_w + step, log_w).clamp(-math.log(4), math.log(4))
    cal.hit_log_weight.copy_(log_w.view_as(cal.hit_log_weight))
    cal.weighted = bool((cal.hit_log_weight != 0).any())


def _mean_shares(cal: AxisCalibration, energies, n: int, n_tab: int,  # noqa: ANN001
                 threshold_mev: float) -> tuple[Tensor, Tensor]:
    """Per group: the mean over showers of the share of its layer's energy in the
    group (layers with at least 20 thresholds of energy), and its number of hits.
    ``energies(i)``: read-out energies (B, voxels) of the showers from ``i`` and
    their table rows.  A share is averaged over the showers whose layer falls in the
    group's (layer, layer-energy bin)."""
    g, n_l, r = cal.n_groups, cal.n_layers, cal.ring_count
    n_slot = g // r  # (layer, layer-energy bin) per table
    layer = cal.cell_layer.cpu()
    # a cell of each layer (a layer without cells: any; its energy is 0, never counted)
    first = torch.zeros(n_l, dtype=torch.long).scatter_reduce(
        0, layer, torch.arange(len(layer)), "amin", include_self=False)
    shares = torch.zeros(n_tab * g, dtype=torch.float64)
    hits = torch.zeros(n_tab * g, dtype=torch.float64)
    valid = torch.zeros(n_tab * n_slot, dtype=torch.float64)
    for i in range(0, n, _CHUNK):
        e, grp = energies(i)
        e = e.double()
        sums = e.new_zeros(len(e), n_l).index_add_(1, layer, e)
        ok = sums > 20 * threshold_mev
        share = e / sums.clamp_min(1e-30)[:, layer] * ok[:, layer]
        shares += torch.bincount(grp.reshape(-1), share.reshape(-1), minlength=n_tab * g)
        hits += torch.bincount(grp[e > 0], minlength=n_tab * g).double()
        slot = grp[:, first] // r  # (B, layers): table x n_slot + slot of each layer
        valid += torch.bincount(slot.reshape(-1), ok.double().reshape(-1),
                                minlength=n_tab * n_slot)
    per_row = valid[torch.arange(n_tab * g) // r]
    return shares / per_row.clamp_min(1.0), hits


def _fit_sub_bins(cal: AxisCalibration, x: Tensor, e_inc: Tensor, angles: Tensor,
                  gen_ratio: Tensor, threshold_mev: float) -> tuple[Tensor, Tensor]:
    """Sub-bin (energy bin x n_r + response bin) of every training and generated
    shower; fits the energy knots and, with response bins, the response edges: per
    energy bin, quantiles of the training showers' visible energy relative to the
    median (after the response table, the generated showers' follow the same
    distribution)."""
    n = len(gen_ratio)
    e_bin = _fit_energy_bins(cal, e_inc.double(), n)
    if cal.n_r == 1:
        return e_bin, e_bin[:n]
    real = calib.read_out_ratio(x, e_inc, threshold_mev)
    theta = angles[:, 0].to(cal.theta_edges)
    e = e_inc.to(cal.resp_log_e)
    u = cal.relative_response(e, real.to(e), theta).double()
    levels = torch.arange(1, cal.n_r, dtype=torch.float64) / cal.n_r
    for k in range(cal.n_e):
        sel = e_bin == k
        if bool(sel.any()):
            cal.response_edges[k] = torch.quantile(u[sel], levels).to(cal.response_edges)
    gen_cal = cal.calibrated_ratio(e[:n], gen_ratio.to(e), theta[:n])
    ref_r = cal.response_bin(e, real.to(e), theta)
    gen_r = cal.response_bin(e[:n], gen_cal, theta[:n])
    return e_bin * cal.n_r + ref_r, e_bin[:n] * cal.n_r + gen_r


def _fit_energy_bins(cal: AxisCalibration, e_inc: Tensor, n: int) -> Tensor:
    """Equal-count log-energy bins of the first ``n`` (calibration) showers; sets the
    knots (each bin's median log E) and returns every shower's bin."""
    log_e = torch.log(e_inc)
    q = torch.quantile(log_e[:n], torch.linspace(0, 1, cal.n_e + 1, dtype=torch.float64))
    e_bin = (torch.searchsorted(q[1:-1].contiguous(), log_e.contiguous(), right=True))
    knots = torch.stack([log_e[:n][e_bin[:n] == k].median() if (e_bin[:n] == k).any()
                         else (q[k] + q[k + 1]) / 2 for k in range(cal.n_e)])
    # strictly increasing even for a sample of few energies
    knots = torch.maximum(knots, torch.cat([knots[:1], knots[:-1] + 1e-6]))
    cal.energy_knots.copy_(knots.to(cal.energy_knots))
    return e_bin


def _fit_tables(cal: AxisCalibration, x: Tensor, angles: Tensor, feats: Tensor,
                ref_bin: Tensor | None, gen_bin: Tensor | None, n_tables: int,
                threshold_mev: float, zero_width: float, hit_maps: bool, min_hits: int,
                occupancy_scale: Tensor | None = None, ref_le: Tensor | None = None,
                gen_le: Tensor | None = None,
                centres: tuple[Tensor | None, Tensor | None] = (None, None)
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Occupancy cuts, hit-map steps and tables (flat over ``n_tables`` tables of
    :attr:`n_groups` groups) and the number of training hits per group; ``ref_bin`` /
    ``gen_bin``: the sub-bin (energy x n_r + response) of every training / generated
    shower (None: pooled)."""
    n, n_grp = len(feats), n_tables * cal.n_groups

    def ref_rows(i: int) -> Tensor:
        return _fit_groups(cal, angles[i:i + _CHUNK], _part(ref_bin, i, _CHUNK),
                           _part(ref_le, i, _CHUNK), _part(centres[0], i, _CHUNK))

    def rows(i: int) -> Tensor:  # generated showers (the conditions of the first n)
        m = min(_CHUNK, n - i)
        return _fit_groups(cal, angles[i:i + m], _part(gen_bin, i, m),
                           _part(gen_le, i, m), _part(centres[1], i, m))

    total, ref_hits, ref_v, ref_g = torch.zeros(n_grp), torch.zeros(n_grp), [], []
    for i in range(0, len(x), _CHUNK):
        xs, grp = x[i:i + _CHUNK].cpu(), ref_rows(i)
        hit = xs >= threshold_mev
        total += torch.bincount(grp.reshape(-1), minlength=n_grp)
        ref_hits += torch.bincount(grp[hit], minlength=n_grp)
        ref_v.append(torch.log(xs[hit] / threshold_mev))
        ref_g.append(grp[hit])
    occ = ref_hits / total.clamp_min(1)
    if occupancy_scale is not None:  # per (theta bin, group), the same in every sub-bin
        idx = torch.arange(n_grp)
        per_theta = n_tables // cal.n_bins * cal.n_groups
        occ = (occ * occupancy_scale[(idx // per_theta) * cal.n_groups + idx % cal.n_groups]
               ).clamp(max=1.0)
    cut = _occupancy_cuts(cal, feats, rows, occ, zero_width)
    gen_v, gen_g = [], []
    for i in range(0, n if hit_maps else 0, _CHUNK):
        fs, grp = feats[i:i + _CHUNK], rows(i)
        c = cut[grp]
        hit = fs >= c
        gen_v.append((fs - c)[hit])
        gen_g.append(grp[hit])
    m = cal.hit_map.shape[1]
    if hit_maps:
        step, table = fit_hit_maps(torch.cat(ref_v), torch.cat(ref_g),
                                         torch.cat(gen_v), torch.cat(gen_g), n_grp, m,
                                         min_hits)
    else:
        step, table = _identity_maps(n_grp, m)
    return cut, step, table, ref_hits


def _fit_edges(cal: AxisCalibration, theta: Tensor) -> None:
    """Inner bin edges at the theta quantiles of the calibration showers (a theta that
    takes few values gives fewer, unique edges; the rest are +inf: empty bins)."""
    q = torch.quantile(theta, torch.linspace(0, 1, cal.n_bins + 1, dtype=torch.float64))
    inner = torch.unique(q[1:-1])
    inner = inner[(inner > q[0]) & (inner < q[-1])] if cal.n_bins > 1 else inner[:0]
    edges = torch.full_like(cal.theta_edges, math.inf)
    edges[:len(inner)] = inner.to(edges)
    cal.theta_edges.copy_(edges)


def _occupancy_cuts(cal: AxisCalibration, feats: Tensor, rows, occ: Tensor,  # noqa: ANN001
                    zero_width: float) -> Tensor:
    """Per-group cut keeping the training fraction ``occ`` of the group's generated
    features above it (from a fine histogram, linear within a bin); ``rows(i)``: the
    groups of the cells of the chunk of showers starting at ``i``."""
    lo, h = -_CUT_FLOOR * zero_width, _HIST_BINS
    width = (_HIST_TOP - lo) / h
    n_grp = len(occ)
    hist = torch.zeros(n_grp * h, dtype=torch.float64)
    for i in range(0, len(feats), _CHUNK):
        grp = rows(i)
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


def fit_hit_maps(ref_v: Tensor, ref_g: Tensor, gen_v: Tensor, gen_g: Tensor, n_grp: int,
                 m: int, min_hits: int) -> tuple[Tensor, Tensor]:
    """(step, table) of the monotone quantile maps of ``n_grp`` groups with ``m`` points,
    from training hit values ``ref_v`` in groups ``ref_g`` and generated excesses ``gen_v``
    in ``gen_g``; groups with fewer than ``min_hits`` hits on either side: identity."""
    q_ref, n_ref = calib.group_quantiles(ref_v, ref_g, n_grp, m)
    q_gen, n_gen = calib.group_quantiles(gen_v, gen_g, n_grp, m)
    ok = (n_ref >= min_hits) & (n_gen >= min_hits)
    identity = torch.linspace(0.0, 10.0, m).expand(n_grp, m)
    q_gen = torch.where(ok[:, None], q_gen, identity) + torch.arange(m) * 1e-6
    q_ref = torch.where(ok[:, None], q_ref, identity)
    # each group's table spans its own generated features (at least 0..1), uniform in
    # sqrt(h)
    step = q_gen[:, -1].clamp_min(1.0).sqrt() / (m - 1)
    grid = (torch.arange(m, dtype=torch.float32)[:, None] * step[None, :]) ** 2
    return step, calib.map_hits(grid, torch.arange(n_grp), q_gen, q_ref).t()


def _fit_response(cal: AxisCalibration, x: Tensor, e_inc: Tensor, angles: Tensor,
                  gen_ratio: Tensor, threshold_mev: float) -> None:
    n = len(gen_ratio)
    real = calib.read_out_ratio(x, e_inc, threshold_mev)
    theta = angles[:, 0].to(cal.theta_edges)
    b_real = cal.theta_bin(theta).cpu()
    b_gen = b_real[:n]
    e = e_inc.cpu()
    centres = torch.full((cal.n_bins,), math.nan, dtype=torch.float64)
    for b in range(cal.n_bins):
        sr, sg = b_real == b, b_gen == b
        table = calib.response_table(e[sr], real[sr], e[:n][sg], gen_ratio[sg],
                                     cal.resp_log_e.shape[1]) if sg.any() else None
        if table is None:
            continue  # too few showers: filled from a neighbour (_fill_empty_bins)
        for buf, val in zip((cal.resp_log_e, cal.resp_mu_ref, cal.resp_mu_gen,
                             cal.resp_k), table):
            buf[b].copy_(val.to(buf))
        centres[b] = theta[:n][sg].double().median().cpu()
    smooth_resolution(cal, centres)


@torch.no_grad()
def readout_occupancy_scale(cal: AxisCalibration, x: Tensor, angles: Tensor,
                            read_out: Iterable[Tensor], threshold_mev: float,
                            previous: Tensor | None = None, min_hits: int = 50,
                            limit: float = 1.5) -> Tensor:
    """Factors (theta bins x groups) on the occupancy targets of the cuts: training hits
    over the hits read out with every table (``read_out``: chunks of showers generated
    at the conditions of the first training showers, in order).  The cuts aim at the
    training occupancy of the *drawn* features, but the read-out then drops hits (layers
    whose sampled energy cannot carry them); the cuts of a refit with these factors
    draw that many more.  Groups with fewer than ``min_hits`` training hits keep 1;
    ``previous``: the factors of the fit that generated ``read_out`` (multiplied)."""
    n_grp = cal.n_bins * cal.n_groups
    ref, gen, start = torch.zeros(n_grp), torch.zeros(n_grp), 0
    for chunk in read_out:
        a = angles[start:start + len(chunk)]
        xs, chunk = x[start:start + len(chunk)].cpu(), chunk.cpu()
        # layer bins: training layers by their read-out energy, generated ones by their
        # sampled energy (all the cells, as generation bins them)
        for showers, counts, floor in ((xs, ref, threshold_mev), (chunk, gen, 0.0)):
            le = _layer_energies(cal, showers, floor)
            rows = _fit_groups(cal, a, None, le, _centres(cal, showers, a, threshold_mev))
            counts += torch.bincount(rows[showers >= threshold_mev], minlength=n_grp)
        start += len(chunk)
    scale = torch.where((ref >= min_hits) & (gen > 0), ref / gen.clamp_min(1), torch.ones(n_grp))
    if previous is not None:
        scale = scale * previous
    return scale.clamp(1.0 / limit, limit)


@torch.no_grad()
def refine_hit_maps(cal: AxisCalibration, x: Tensor, e_inc: Tensor, angles: Tensor,
                    read_out: Iterable[Tensor], threshold_mev: float,
                    min_hits: int = 50) -> None:
    """Second pass of the hit maps: they map drawn features onto the training hit
    spectrum of their group, but the read-out then rescales every hit of a layer to the
    sampled layer energy (and thins starved layers), which smears and shifts the
    spectrum that comes out (pions: 6-26 % too many hits of 3.5-10 MIP, 13-25 % too few
    of 1.2-2 MIP, which software compensation weights differently).  Per table row,
    the monotone map from the read-out hits' log(E / threshold) quantiles onto the
    training ones is composed with the table (weights included), so that a hit drawn at
    a table value comes out where a training hit of that rank lies.  ``read_out``:
    chunks of showers generated with every table at the conditions of the first
    training showers, in order.  Both sides are binned alike: the energy bin of the
    nearest knot in log E and the response bin of the shower's read-out response; rows
    with fewer than ``min_hits`` hits on either side keep their table."""
    n_tab, g, m = cal.cut.shape[0], cal.n_groups, cal.hit_map.shape[1]
    n_grp = n_tab * g

    def sub_bin(xs: Tensor, e: Tensor, theta: Tensor) -> Tensor | None:
        if cal.n_sub == 1:
            return None
        log_e = torch.log(e.double())
        e_bin = (log_e[:, None] - cal.energy_knots.double()[None]).abs().argmin(1)
        if cal.n_r == 1:
            return e_bin
        ratio = calib.read_out_ratio(xs, e, threshold_mev).to(cal.resp_log_e)
        r_bin = cal.response_bin(e.to(cal.resp_log_e), ratio, theta.to(cal.theta_edges))
        return e_bin * cal.n_r + r_bin.cpu()

    def hits(xs: Tensor, i: int, floor: float) -> tuple[Tensor, Tensor]:
        e, a = e_inc[i:i + len(xs)].cpu(), angles[i:i + len(xs)].cpu()
        rows = _fit_groups(cal, a, sub_bin(xs, e, a[:, 0]),
                           _layer_energies(cal, xs, floor), _centres(cal, xs, a, threshold_mev))
        hit = xs >= threshold_mev
        return torch.log(xs[hit] / threshold_mev), rows[hit]

    ref_v, ref_g, out_v, out_g, start = [], [], [], [], 0
    for chunk in read_out:
        v, r = hits(x[start:start + len(chunk)].cpu().float(), start, threshold_mev)
        ref_v.append(v)
        ref_g.append(r)
        v, r = hits(chunk.cpu().float(), start, 0.0)  # layer bins: sampled energies
        out_v.append(v)
        out_g.append(r)
        start += len(chunk)
    q_ref, n_ref = calib.group_quantiles(torch.cat(ref_v), torch.cat(ref_g), n_grp, m)
    q_out, n_out = calib.group_quantiles(torch.cat(out_v), torch.cat(out_g), n_grp, m)
    ok = (n_ref >= min_hits) & (n_out >= min_hits)
    weight = cal.hit_log_weight.reshape(-1, 1)
    values = cal.hit_map + weight  # the log(E / threshold) each table point reads out at
    q_out = q_out + torch.arange(m) * 1e-6  # strictly increasing knots
    # no hit above the group's hottest training hit (as beyond a table's last point)
    moved = calib.map_cell_hits(values.t(), q_out, q_ref).t().clamp(max=q_ref[:, -1:]) - weight
    # a table stays non-decreasing and non-negative (a hit at least at the threshold)
    moved = torch.cummax(moved.clamp_min(0), 1).values
    cal.hit_map.copy_(torch.where(ok[:, None], moved, cal.hit_map))
    _fill_empty_bins(cal, angles[:start, 0])  # theta bins without showers: copies again


@torch.no_grad()
def refine_response(cal: AxisCalibration, x: Tensor, e_inc: Tensor, angles: Tensor,
                    read_out_ratio: Tensor, threshold_mev: float) -> None:
    """Second pass of the response table: the table is fitted on the flow's raw response
    but acts on the sampled layer energies, and the read-out with every table (cuts,
    thinned or empty layers) moves E_vis by a few per cent, differently per energy.
    ``read_out_ratio`` (n,): E_vis / E_inc of showers generated with the fitted tables
    at the conditions of the first n training showers; each bin's target median is scaled
    by training / read-out mu90 and its width ratio by their sigma90 ratio (the read-out
    response is nearly proportional to the sampled one), then smoothed again."""
    n = len(read_out_ratio)
    real = calib.read_out_ratio(x, e_inc, threshold_mev)
    theta = angles[:, 0].to(cal.theta_edges)
    b_real = cal.theta_bin(theta).cpu()
    e = e_inc.cpu()
    centres = torch.full((cal.n_bins,), math.nan, dtype=torch.float64)
    for b in range(cal.n_bins):
        sr, sg = b_real == b, b_real[:n] == b
        table = calib.response_table(e[sr], real[sr], e[:n][sg], read_out_ratio[sg].cpu(),
                                     cal.resp_log_e.shape[1]) if sg.any() else None
        if table is None:
            continue
        knots, mu_ref, mu_out, k_out = (v.to(cal.resp_log_e) for v in table)
        at = cal.resp_log_e[b]
        cal.resp_mu_ref[b] *= calib.interpolate(at, knots, mu_ref / mu_out)
        cal.resp_k[b] *= calib.interpolate(at, knots, k_out)
        centres[b] = theta[:n][sg].double().median().cpu()
    smooth_resolution(cal, centres)


def smooth_resolution(cal: AxisCalibration, theta_centres: Tensor) -> None:
    """Replace the width ratios ``resp_k`` of the filled (theta, energy) bins by a
    least-squares surface quadratic in log E and linear in theta.  Each bin's ratio of
    two sigma90 from a few hundred showers scatters by about 5 %, and that scatter went
    straight into the generated resolution (a bin at k = 1.11 made the width at
    50 GeV, theta 30 deg, 17 % too large); the true ratio changes slowly with E and
    theta."""
    filled = torch.isfinite(theta_centres)
    if int(filled.sum()) == 0:
        return
    log_e = cal.resp_log_e[filled].double()
    th = theta_centres[filled][:, None].expand_as(log_e)
    u = (log_e - log_e.mean()) / log_e.std().clamp_min(1e-6)
    v = (th - th.mean()) / th.std().clamp_min(1e-6) if int(filled.sum()) > 1 \
        else torch.zeros_like(th)
    design = torch.stack([torch.ones_like(u), u, u * u, v, u * v], -1).reshape(-1, 5)
    # a single theta bin makes the theta columns zero; CPU lstsq's default driver (gelsy)
    # then returned a wrong solution in about half the calls (seen with torch 2.13), so
    # the constant columns go and the SVD driver solves what is left
    design = design[:, (design != 0).any(0)]
    k = cal.resp_k[filled].double().reshape(-1)
    coef = torch.linalg.lstsq(design, torch.log(k)[:, None], driver="gelsd").solution
    smooth = torch.exp(design @ coef)[:, 0].reshape(log_e.shape)
    cal.resp_k[filled] = smooth.clamp(0.5, 2.0).to(cal.resp_k)


def _fill_empty_bins(cal: AxisCalibration, theta: Tensor) -> None:
    """Theta bins without calibration showers take the tables of the nearest bin that
    has some (a request can still land there, e.g. below the lowest trained theta)."""
    counts = torch.bincount(cal.theta_bin(theta.to(cal.theta_edges)).cpu(),
                            minlength=cal.n_bins)
    filled = torch.nonzero(counts > 0)[:, 0]
    ne, g = cal.n_sub, cal.n_groups
    for b in range(cal.n_bins):
        if counts[b] > 0:
            continue
        src = int(filled[(filled - b).abs().argmin()])
        cal.cut[b * ne:(b + 1) * ne] = cal.cut[src * ne:(src + 1) * ne]
        rows, src_rows = slice(b * ne * g, (b + 1) * ne * g), slice(src * ne * g,
                                                                     (src + 1) * ne * g)
        cal.hit_map[rows] = cal.hit_map[src_rows]
        cal.hit_step[rows] = cal.hit_step[src_rows]
        cal.hit_log_weight[b * ne:(b + 1) * ne] = cal.hit_log_weight[src * ne:(src + 1) * ne]
        for buf in (cal.resp_log_e, cal.resp_mu_gen, cal.resp_mu_ref, cal.resp_k):
            buf[b] = buf[src]
