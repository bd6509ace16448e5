"""Post-training calibration of generated showers against the training showers.

Used by :class:`~caloforge.models.l2lflows.L2LFlows` in its ``log_threshold`` mode; the
tables it fits are buffers of the model, saved with its weights.

- per-cell *occupancy cuts*: cut a cell's generated log feature so that the fraction of
  showers in which it is read out equals the training fraction;
- per-group *hit-energy maps*: piecewise-linear maps from generated onto training
  quantiles of log(E / threshold), per (layer, ring around the axis) group of cells;
- a *response* table: median and width (mu90 / sigma90, the estimators of the
  evaluation) of E_vis / E_inc in bins of log E_inc, so that generated showers are
  rescaled as ``r -> mu_ref + k (r - mu_gen)``.

>>> import torch
>>> knots = torch.tensor([0.0, 1.0]); table = torch.tensor([1.0, 3.0])
>>> interpolate(torch.tensor([0.5, 2.0]), knots, table)
tensor([2., 3.])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from caloforge.geometry import Geometry


def voxel_groups(geometry: Geometry, inner_rings: int = 0) -> Tensor:
    """Group of each voxel for the hit-energy calibration: its layer and its ring
    (distance from the axis in units of the smallest cell pitch)."""
    xy = np.asarray(geometry.cell_centres, dtype=np.float64)[:, :2]
    ux = np.unique(np.round(xy[:, 0], 3))
    pitch = float(np.min(np.diff(ux))) if len(ux) > 1 else 1.0
    ring = np.floor(np.hypot(xy[:, 0], xy[:, 1]) / pitch).astype(np.int64)
    n_ring = int(ring.max()) + 1
    layer = np.asarray(geometry.layer_of_voxel, dtype=np.int64)
    group = layer * n_ring + ring
    # The cells of the shower core (ring < inner_rings) are groups of their own: they
    # carry most of the energy and set the per-layer centres of gravity.
    inner = np.flatnonzero(ring < inner_rings)
    group[inner] = group.max() + 1 + np.arange(len(inner))
    _, group = np.unique(group, return_inverse=True)
    return torch.as_tensor(group.astype(np.int64))


def map_hits(h: Tensor, groups: Tensor, q_gen: Tensor, q_ref: Tensor) -> Tensor:
    """Piecewise-linear map of generated hit excesses ``h`` (B, cells) from the generated
    onto the training quantiles (``q_gen``, ``q_ref``: (groups, K)) of each cell's group."""
    return map_cell_hits(h, q_gen[groups], q_ref[groups])


def map_cell_hits(h: Tensor, qg: Tensor, qr: Tensor) -> Tensor:
    """:func:`map_hits` given the knots of every cell, ``qg``, ``qr`` (cells, K) (generation
    looks them up once, not at every call)."""
    k = qg.shape[1]
    ht = h.t().contiguous()
    j = torch.searchsorted(qg, ht).clamp(1, k - 1) - 1  # left knot
    x0, x1 = qg.gather(1, j), qg.gather(1, j + 1)
    y0, y1 = qr.gather(1, j), qr.gather(1, j + 1)
    t = ((ht - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1)
    out = y0 + t * (y1 - y0)
    # beyond the top knot: continue with unit slope (rare, very energetic hits)
    out = torch.where(ht > qg[:, -1:], qr[:, -1:] + (ht - qg[:, -1:]), out)
    return out.t()


def occupancy(x: Tensor, threshold_mev: float, chunk: int = 1000) -> Tensor:
    """Fraction of showers ``x`` (N, voxels) in which each voxel is read out."""
    occ = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), chunk):
        occ += (x[i:i + chunk] >= threshold_mev).sum(0).double().cpu()
    return occ / max(len(x), 1)


def occupancy_cuts(occ: Tensor, feats: Tensor, zero_width: float) -> Tensor:
    """Per-cell cut on generated features ``feats`` (n, voxels) that keeps the fraction
    ``occ`` of showers above it."""
    n = len(feats)
    ordered, _ = torch.sort(feats, 0)
    k = ((1.0 - occ) * n).round().long().clamp(0, n - 1)
    cut = ordered.gather(0, k[None]).squeeze(0)
    # Cells never hit in training stay empty; cuts are never below the empty mode.
    cut = torch.where(occ > 0, cut, torch.full_like(cut, 50.0))
    return cut.clamp(-zero_width, 50.0)


def group_quantiles(vals: Tensor, grp: Tensor, n_g: int, k: int) -> tuple[Tensor, Tensor]:
    levels = torch.linspace(0, 1, k, dtype=torch.float64)
    order = torch.argsort(grp.double() * 1000.0 + vals.double().clamp(0, 999))
    vals, grp = vals[order].double(), grp[order]
    counts = torch.bincount(grp, minlength=n_g)
    starts = torch.cumsum(counts, 0) - counts
    pos = starts[:, None] + (levels[None] * (counts[:, None] - 1).clamp_min(0)).round().long()
    q = vals[pos.clamp(max=max(len(vals) - 1, 0))] if len(vals) else torch.zeros(n_g, k)
    return q.float(), counts


def hit_quantile_maps(x: Tensor, feats: Tensor, cut: Tensor, groups: Tensor,
                      threshold_mev: float, identity: Tensor, min_hits: int = 50
                      ) -> tuple[Tensor, Tensor]:
    """(generated, training) quantile knots of log(E / threshold) per voxel group: training
    hits of ``x`` vs generated hit excesses ``feats - cut``.  Groups with fewer than
    ``min_hits`` hits on either side keep the ``identity`` knots."""
    n_g, k = identity.shape
    ref_v, ref_g = [], []
    for i in range(0, len(x), 1000):
        xs = x[i:i + 1000].cpu()
        hit = xs >= threshold_mev
        ref_v.append(torch.log(xs[hit] / threshold_mev))
        ref_g.append(groups.expand_as(xs)[hit])
    q_ref, n_ref = group_quantiles(torch.cat(ref_v), torch.cat(ref_g), n_g, k)
    hit = feats >= cut[None]
    h = (feats - cut[None])[hit]
    q_gen, n_gen = group_quantiles(h, groups.expand_as(feats)[hit], n_g, k)
    ok = (n_ref >= min_hits) & (n_gen >= min_hits)
    q_gen = torch.where(ok[:, None], q_gen, identity)
    q_ref = torch.where(ok[:, None], q_ref, identity)
    # strictly increasing input knots for the interpolation
    return q_gen + torch.arange(k) * 1e-6, q_ref


def response_table(e_real: Tensor, r_real: Tensor, e_gen: Tensor, r_gen: Tensor,
                   n_bins: int, min_showers: int = 50) -> tuple[Tensor, ...] | None:
    """Knots (log E) and per-bin mu90 of the training / generated responses and the ratio
    of their sigma90, in ``n_bins`` log-energy bins; None if no bin has enough showers.
    Fewer filled bins repeat the last knot, so the table always has ``n_bins`` entries."""
    from caloforge.evaluation.observables import mu90_sigma90  # only needed after training

    log_real, log_gen = torch.log(e_real.double()), torch.log(e_gen.double())
    edges = torch.linspace(float(log_real.min()), float(log_real.max()), n_bins + 1,
                           dtype=torch.float64)
    centres, mg, mr, kk = [], [], [], []
    for b in range(n_bins):
        sr = (log_real >= edges[b]) & (log_real <= edges[b + 1])
        sg = (log_gen >= edges[b]) & (log_gen <= edges[b + 1])
        if sr.sum() < min_showers or sg.sum() < min_showers:
            continue
        m_r, s_r = mu90_sigma90(r_real[sr].double().numpy())
        m_g, s_g = mu90_sigma90(r_gen[sg].double().numpy())
        centres.append(float(log_real[sr].median()))
        mr.append(m_r)
        mg.append(m_g)
        kk.append(s_r / max(s_g, 1e-12))
    if not centres:
        return None
    pad = n_bins - len(centres)
    centres += [centres[-1] + 1e-3 * (i + 1) for i in range(pad)]
    for v in (mr, mg, kk):
        v += [v[-1]] * pad
    return (torch.tensor(centres), torch.tensor(mr), torch.tensor(mg),
            torch.tensor(kk).clamp(0.5, 2.0))


def interpolate(x: Tensor, knots: Tensor, table: Tensor) -> Tensor:
    """Linear interpolation of ``table`` at ``x`` between increasing ``knots``, constant
    beyond the ends.  ``knots`` and ``table`` may also be (B, K): one row per ``x``."""
    if knots.dim() == 2 and knots.shape[1] == 1:
        return table[:, 0]
    if knots.dim() == 2:
        j = torch.searchsorted(knots, x[:, None].contiguous()).clamp(1, knots.shape[1] - 1) - 1
        x0, x1 = knots.gather(1, j)[:, 0], knots.gather(1, j + 1)[:, 0]
        y0, y1 = table.gather(1, j)[:, 0], table.gather(1, j + 1)[:, 0]
        t = ((x - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1)
        return y0 + t * (y1 - y0)
    if len(knots) == 1:
        return table[torch.zeros_like(x, dtype=torch.long)]
    j = torch.searchsorted(knots, x.contiguous()).clamp(1, len(knots) - 1) - 1
    x0, x1 = knots[j], knots[j + 1]
    t = ((x - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1)
    return table[j] + t * (table[j + 1] - table[j])


def calibrate_response(el: Tensor, e_inc: Tensor, knots: Tensor, mu_gen: Tensor,
                       mu_ref: Tensor, k: Tensor) -> Tensor:
    """Layer energies ``el`` rescaled so that E_vis / E_inc has the calibrated median and
    width at this incident energy (all layers by one factor per shower); the tables may
    also be (B, K), one row per shower."""
    r = el.sum(1) / e_inc
    r_new = response_ratio(r, e_inc, knots, mu_gen, mu_ref, k)
    return el * (r_new / r.clamp_min(1e-30))[:, None]


def read_out_ratio(x: Tensor, e_inc: Tensor, threshold_mev: float) -> Tensor:
    """(N,) float64 E_vis / E_inc of showers ``x`` (N, voxels) read out at the threshold,
    on the CPU, 1000 showers at a time (bounded memory)."""
    vis = torch.cat([(x[i:i + 1000].double() * (x[i:i + 1000] >= threshold_mev)).sum(1).cpu()
                     for i in range(0, len(x), 1000)])
    return vis / e_inc.double().cpu()


def response_ratio(r: Tensor, e_inc: Tensor, knots: Tensor, mu_gen: Tensor, mu_ref: Tensor,
                   k: Tensor) -> Tensor:
    """Calibrated E_vis / E_inc of showers whose generated ratio is ``r`` (tables as in
    :func:`calibrate_response`)."""
    log_e = torch.log(e_inc)
    mg, mr = interpolate(log_e, knots, mu_gen), interpolate(log_e, knots, mu_ref)
    kk = interpolate(log_e, knots, k)
    return (mr + kk * (r - mg)).clamp_min(0)
