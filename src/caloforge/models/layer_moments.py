"""Per-shower calibration of each layer's centre and width (the high-level features).

Applied to read-out voxel showers after every other table.  In each layer of a shower,
the energy-weighted centre and width of its hits are measured in the frame of the
shower's direction (u along the azimuth, v across it, from the direction's axis at the
layer's depth) and mapped from the generated onto the training showers' distribution:
monotone quantile maps per (theta bin, incident-energy bin, layer, moment), interpolated
linearly in log E between the energy bins.  The layer then reaches its mapped moments by
sharing its energy differently among the same hits:

    w_i = 1 + t * beta . (phi_i - <phi>),    phi = (du, dv, du^2, dv^2)

(du, dv from the layer's centre) with beta solving the four moment equations, which are
linear in beta, so the mapped moments are met exactly at t = 1; t <= 1 is the largest
step that keeps every hit within [w_min, w_max] of its energy and at or above the
readout threshold.  The layer's energy and its hits are unchanged
(sum_i E_i (phi_i - <phi>) = 0); only layers with at least ``min_hits`` hits are mapped.
With ``passes`` > 1 the system is solved again with the hits at a bound held (and the
lower bound is ``w_min`` of a hit's energy above the threshold), so that one hit at a
bound no longer stops its whole layer.

Why: a generator whose layers have the right energies and hit counts can still scatter
their centres and widths from shower to shower more (or less) than the simulation does.
The L2LFlows layer flow draws too few hits, and the occupancy cuts make up the count
with cells the flow left empty, which lie anywhere in their ring; the CaloChallenge
high-level classifier (per-layer energies, centres and widths) sees exactly that.  The
maps keep each shower's rank among the generated ones, so the correlations between
layers stay the generator's unless ``copula`` is set: then the shower's normal scores
are first moved onto the training showers' correlations
(:mod:`caloforge.models.moment_copula`).

Everything is per shower (no batch statistics) and in elementwise, gather and reduction
operations, so generation stays independent of the batch and exports to ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from caloforge.geometry import Geometry
from caloforge.models.moment_maps import MomentMaps


def _layer_table(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(layers, C) voxel index of each layer's cells, padded with ``n_voxels`` (a zero
    column appended at use), and (voxels,) each voxel's position in that table."""
    layer = np.asarray(geometry.layer_of_voxel, dtype=np.int64)
    n_l, n_v = int(geometry.n_layers), int(geometry.n_voxels)
    counts = np.bincount(layer, minlength=n_l)
    width = max(int(counts.max()), 1)
    table = np.full((n_l, width), n_v, dtype=np.int64)
    where = np.empty(n_v, dtype=np.int64)
    for k in range(n_l):
        cells = np.flatnonzero(layer == k)
        table[k, :len(cells)] = cells
        where[cells] = k * width + np.arange(len(cells))
    return table, where

def solve_spd4(a: Tensor, r: Tensor) -> Tensor:
    """Solve ``a`` x = ``r`` for symmetric positive-definite (..., 4, 4) ``a`` by an
    unrolled Cholesky factorisation (elementwise: ONNX has no linear solver, and each
    system's result does not depend on the others in the batch)."""
    n = 4
    low = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = a[..., i, j]
            for k in range(j):
                s = s - low[i][k] * low[j][k]
            low[i][j] = torch.sqrt(s.clamp_min(1e-30)) if i == j else s / low[j][j]
    y = []
    for i in range(n):
        s = r[..., i]
        for k in range(i):
            s = s - low[i][k] * y[k]
        y.append(s / low[i][i])
    x = [None] * n
    for i in reversed(range(n)):
        s = y[i]
        for k in range(i + 1, n):
            s = s - low[k][i] * x[k]
        x[i] = s / low[i][i]
    return torch.stack(x, -1)

class LayerMoments(MomentMaps):
    """The maps applied to voxel showers by sharing each layer's energy differently
    among its hits (see the module docstring)."""

    def __init__(self, geometry: Geometry, n_theta_bins: int = 8, n_energy_bins: int = 3,
                 n_knots: int = 33, min_hits: int = 3, w_min: float = 0.3,
                 w_max: float = 3.0, n_layer_bins: int = 1, copula: bool = False,
                 passes: int = 1) -> None:
        centres = np.array(geometry.cell_centres, dtype=np.float64)  # a writable copy
        # the cells' depth unless the model knows better (its fitted axis frame)
        z = np.zeros(int(geometry.n_layers))
        z[np.asarray(geometry.layer_of_voxel)] = centres[:, 2]
        super().__init__(z, n_theta_bins, n_energy_bins, n_knots, min_hits,
                         n_layer_bins=n_layer_bins, copula=copula)
        table, where = _layer_table(geometry)
        padded = np.concatenate([centres, np.zeros((1, 3))])[table]  # (L, C, 3)
        self.w_min, self.w_max = float(w_min), float(w_max)
        self.passes = int(passes)
        self.threshold = float(geometry.readout_threshold_mev)
        self.register_buffer("table", torch.as_tensor(table.reshape(-1)), persistent=False)
        self.register_buffer("where", torch.as_tensor(where), persistent=False)
        self.register_buffer("cell_xy", torch.as_tensor(centres[:, :2], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_layer", torch.as_tensor(
            np.asarray(geometry.layer_of_voxel, dtype=np.int64)), persistent=False)
        self.register_buffer("cell_x", torch.as_tensor(padded[..., 0], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_y", torch.as_tensor(padded[..., 1], dtype=torch.float32),
                             persistent=False)

    # ---- the layers' moments --------------------------------------------------------------
    def _hits(self, x: Tensor, angles: Tensor) -> tuple[Tensor, ...]:
        """The read-out hits of ``x`` (B, voxels): shower, voxel, energy (float64), flat
        (shower, layer) key and u, v (mm, float64) in the frame of the direction."""
        rows, cols = torch.nonzero(x >= self.threshold, as_tuple=True)
        e = x[rows, cols].double()
        layer = self.cell_layer[cols]
        ax, ay, cos, sin = self._axis(angles)
        dx = (self.cell_xy[cols, 0] - ax[rows, layer]).double()
        dy = (self.cell_xy[cols, 1] - ay[rows, layer]).double()
        c, s = cos[rows].double(), sin[rows].double()
        return rows, cols, e, rows * self.n_layers + layer, dx * c + dy * s, dy * c - dx * s

    def _dense(self, x: Tensor, angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hit energies (B, L, C; 0 below the threshold) and every cell's u, v (mm), in
        float64 as the eager path's hits: the traced path (the exporters), the same
        arithmetic on every cell."""
        b = x.shape[0]
        xs = torch.cat([x.to(self.cell_x), x.new_zeros(b, 1).to(self.cell_x)], 1)
        xs = xs.index_select(1, self.table).view(b, self.n_layers, -1)
        e = torch.where(xs >= self.threshold, xs, torch.zeros_like(xs))
        ax, ay, cos, sin = self._axis(angles)
        dx = self.cell_x[None] - ax[:, :, None]
        dy = self.cell_y[None] - ay[:, :, None]
        c, s = cos[:, None, None].double(), sin[:, None, None].double()
        dx, dy = dx.double(), dy.double()
        return e.double(), dx * c + dy * s, dy * c - dx * s

    @staticmethod
    def _monomials(u: Tensor, v: Tensor) -> list[Tensor]:
        uu, vv = u * u, v * v
        return [u, v, uu, u * v, vv, uu * u, uu * v, u * vv, vv * v, uu * uu, uu * vv, vv * vv]

    def _sums(self, x: Tensor, angles: Tensor) -> tuple[Tensor, Tensor, tuple]:
        """(B, L, 13) energy-weighted sums of 1, u, v, ..., v^4 over each layer's hits
        (float64), (B, L) hit counts, and the hits (sparse in eager mode, dense traced)."""
        b = x.shape[0]
        if torch.jit.is_tracing():
            e, u, v = self._dense(x, angles)
            sums = torch.stack([e.sum(-1)] + [(e * m).sum(-1) for m in self._monomials(u, v)],
                               -1)
            return sums, (e > 0).sum(-1), (e, u, v)
        rows, cols, e, key, u, v = hits = self._hits(x, angles)
        terms = torch.stack([e] + [e * m for m in self._monomials(u, v)], 1)
        sums = terms.new_zeros(b * self.n_layers, terms.shape[1]).index_add_(0, key, terms)
        count = torch.zeros(b * self.n_layers, dtype=torch.long, device=x.device)
        count.index_add_(0, key, torch.ones_like(key))
        return sums.view(b, self.n_layers, -1), count.view(b, self.n_layers), hits

    @staticmethod
    def _central(sums: Tensor) -> dict[str, Tensor]:
        """Per layer (B, L; float64): energy, centre and central moments up to 4th order."""
        tot = sums[..., 0]
        m = sums[..., 1:] / tot.clamp_min(1e-30)[..., None]
        a, b = m[..., 0], m[..., 1]
        euu, euv, evv = m[..., 2], m[..., 3], m[..., 4]
        euuu, euuv, euvv, evvv, euuuu, euuvv, evvvv = (m[..., k] for k in range(5, 12))
        return {
            "total": tot, "cu": a, "cv": b, "uu": euu - a * a, "vv": evv - b * b,
            "uv": euv - a * b,
            "uuu": euuu - 3 * a * euu + 2 * a ** 3, "vvv": evvv - 3 * b * evv + 2 * b ** 3,
            "uuv": euuv - b * euu - 2 * a * euv + 2 * a * a * b,
            "uvv": euvv - a * evv - 2 * b * euv + 2 * a * b * b,
            "uuuu": euuuu - 4 * a * euuu + 6 * a * a * euu - 3 * a ** 4,
            "vvvv": evvvv - 4 * b * evvv + 6 * b * b * evv - 3 * b ** 4,
            "uuvv": (euuvv - 2 * b * euuv - 2 * a * euvv + b * b * euu + a * a * evv
                     + 4 * a * b * euv - 3 * a * a * b * b)}

    @staticmethod
    def _moments(st: dict[str, Tensor]) -> Tensor:
        return torch.stack([st["cu"], st["cv"], st["uu"].clamp_min(0).sqrt(),
                            st["vv"].clamp_min(0).sqrt()], -1)

    def layer_moments(self, x: Tensor, angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, 4) centre u, centre v, width u, width v (mm; float64) of every layer of
        read-out showers ``x`` (B, voxels), (B, L) whether it has ``min_hits`` hits and
        (B, L) its read-out energy (MeV)."""
        sums, count, _ = self._sums(x, angles)
        st = self._central(sums)
        return self._moments(st), count >= self.min_hits, st["total"]

    # ---- generation ------------------------------------------------------------------------
    def _weight_polynomial(self, st: dict[str, Tensor], tgt: Tensor,
                           cur: dict[str, Tensor] | None = None) -> Tensor:
        """(B, L, 5) coefficients (1, u, v, u^2, v^2) of d = beta . (phi - <phi>), whose
        weights 1 + d of the hits that ``st`` sums move each layer's moments onto ``tgt``
        (B, L, 4) exactly.  ``cur``: the moments of all the layer's hits where ``st``
        holds only those still free to move (later passes; the others keep d = 0)."""
        cur = st if cur is None else cur
        shift_u, shift_v = tgt[..., 0] - cur["cu"], tgt[..., 1] - cur["cv"]
        wu, wv = tgt[..., 2].clamp_min(0), tgt[..., 3].clamp_min(0)
        if cur is st:
            rhs = torch.stack([shift_u, shift_v, wu * wu + shift_u * shift_u - st["uu"],
                               wv * wv + shift_v * shift_v - st["vv"]], -1)
        else:  # second moments about the free hits' centre, in units of their energy
            du_t, dv_t = tgt[..., 0] - st["cu"], tgt[..., 1] - st["cv"]
            du_c, dv_c = cur["cu"] - st["cu"], cur["cv"] - st["cv"]
            share = cur["total"] / st["total"].clamp_min(1e-30)
            rhs = share[..., None] * torch.stack([
                shift_u, shift_v, wu * wu + du_t * du_t - cur["uu"] - du_c * du_c,
                wv * wv + dv_t * dv_t - cur["vv"] - dv_c * dv_c], -1)
        uu, vv = st["uu"], st["vv"]
        cov = torch.stack([
            torch.stack([uu, st["uv"], st["uuu"], st["uvv"]], -1),
            torch.stack([st["uv"], vv, st["uuv"], st["vvv"]], -1),
            torch.stack([st["uuu"], st["uuv"], st["uuuu"] - uu * uu, st["uuvv"] - uu * vv], -1),
            torch.stack([st["uvv"], st["vvv"], st["uuvv"] - uu * vv, st["vvvv"] - vv * vv], -1),
        ], -2)
        # a ridge of 1e-4 of each diagonal element keeps near-degenerate layers (three
        # hits, hits in one row) solvable; their step is then limited by the weight bounds
        diag = torch.stack([cov[..., i, i] for i in range(4)], -1)  # (ONNX: no Diagonal)
        eye = torch.eye(4, dtype=cov.dtype, device=cov.device)
        cov = cov + eye * (1e-4 * diag + 1e-12)[..., None, :]
        # one LAPACK call per system in eager mode (fewer operations at batch 1); the
        # unrolled Cholesky where traced (ONNX has no solver)
        beta = solve_spd4(cov, rhs) if torch.jit.is_tracing() else \
            torch.linalg.solve(cov, rhs[..., None])[..., 0]
        b1, b2, b3, b4 = beta.unbind(-1)
        a, b = st["cu"], st["cv"]
        const = -b1 * a - b2 * b + b3 * (a * a - uu) + b4 * (b * b - vv)
        poly = torch.stack([const, b1 - 2 * b3 * a, b2 - 2 * b4 * b, b3, b4], -1)
        return torch.where(torch.isfinite(poly), poly, torch.zeros_like(poly))

    def _limit(self, e: Tensor, d: Tensor) -> Tensor:
        """Largest step t of each hit (energy ``e``, direction ``d``) keeping its weight
        1 + t d within [w_min, w_max] and its energy at or above the threshold."""
        low = torch.clamp(self.threshold * (1 + 1e-4) / e.clamp_min(1e-30), min=self.w_min)
        big = torch.full_like(d, math.inf)
        return torch.where(d < 0, (1 - low) / (-d).clamp_min(1e-30),
                           torch.where(d > 0, (self.w_max - 1) / d.clamp_min(1e-30), big))

    def _passes(self, e: Tensor, u: Tensor, v: Tensor, st: dict[str, Tensor], tgt: Tensor,
                ok: Tensor, per_hit: Callable[[Tensor], Tensor],
                layer_sums: Callable[[Tensor], Tensor],
                layer_total: Callable[[Tensor], Tensor]) -> Tensor:
        """The hit energies ``e`` after ``passes`` solves, each with the hits inside their
        bounds (those at a bound held): the solution's full step with every hit clamped
        to its bounds, then what the clamps added to or took from the layer's energy
        taken back from (given back to) its hits in proportion to their room above
        (below) their bounds, so that the energy is kept and no bound is crossed."""
        e0, total0 = e, st["total"]
        hit = e0 > 0
        # the lowest energy of a hit: w_min of its read-out energy above the threshold
        thr = self.threshold * (1 + 1e-4)
        low, high = thr + self.w_min * (e0 - thr).clamp_min(0), self.w_max * e0
        cur = st  # the moments of the hits as they stand
        for k in range(self.passes):
            if k:
                cur = self._central(layer_sums(e))
            free = hit & (e > low * (1 + 1e-6)) & (e < high * (1 - 1e-6))
            zero = torch.zeros_like(e)
            free_sums = layer_sums(torch.where(free, e, zero))
            n_free = layer_total(free.to(e))
            poly = self._weight_polynomial(self._central(free_sums), tgt, cur)
            p = per_hit(poly.to(e)).unbind(-1)
            d = p[0] + p[1] * u + p[2] * v + p[3] * u * u + p[4] * v * v
            moved = torch.minimum(torch.maximum(e * (1 + d), low), high)
            moved = torch.where(free & per_hit(ok & (n_free >= self.min_hits)), moved, e)
            up = torch.where(hit, (high - moved).clamp_min(0), zero)
            down = torch.where(hit, (moved - low).clamp_min(0), zero)
            missing = total0 - layer_total(moved)
            share = torch.where(missing > 0, missing / layer_total(up).clamp_min(1e-30),
                                missing / layer_total(down).clamp_min(1e-30)).clamp(-1, 1)
            e = moved + per_hit(share.clamp_min(0)) * up + per_hit(share.clamp_max(0)) * down
        return e

    def forward(self, x: Tensor, e_inc: Tensor, angles: Tensor) -> Tensor:
        """Showers ``x`` (B, voxels; MeV) with each eligible layer's hits reweighted to
        its mapped centre and width; ``e_inc`` (B,) MeV, ``angles`` (B, 2) rad.

        One pass (``passes`` = 1) stops all of a layer's hits where the first of them
        meets a bound; more passes (:meth:`_passes`) move the others on."""
        sums, count, hits = self._sums(x, angles)
        st = self._central(sums)
        ok = count >= self.min_hits
        tgt = self._targets(self._moments(st), e_inc, angles[:, 0], st["total"], ok)
        b, n_l = x.shape[0], self.n_layers
        traced = torch.jit.is_tracing()
        if traced:  # dense (B, L, C): every cell, 0 below the threshold
            e, u, v = hits
            hit = e > 0

            def per_hit(t: Tensor) -> Tensor:
                return t[..., None, :] if t.dim() == 3 else t[..., None]

            def layer_sums(w: Tensor) -> Tensor:
                return torch.stack([w.sum(-1)] + [(w * m).sum(-1)
                                                  for m in self._monomials(u, v)], -1)

            def layer_min(t: Tensor) -> Tensor:
                return torch.where(hit, t, torch.full_like(t, math.inf)).amin(-1)

            def layer_total(t: Tensor) -> Tensor:
                return t.sum(-1)
        else:  # the hits only, each with its (shower, layer) key
            rows, cols, e, key, u, v = hits

            def per_hit(t: Tensor) -> Tensor:
                return t.reshape(b * n_l, *t.shape[2:])[key]

            def layer_sums(w: Tensor) -> Tensor:
                terms = torch.stack([w] + [w * m for m in self._monomials(u, v)], 1)
                return terms.new_zeros(b * n_l, terms.shape[1]).index_add_(
                    0, key, terms).view(b, n_l, -1)

            def layer_min(t: Tensor) -> Tensor:
                return torch.ones(b * n_l, dtype=t.dtype, device=t.device).scatter_reduce(
                    0, key, t, "amin").view(b, n_l)

            def layer_total(t: Tensor) -> Tensor:
                return t.new_zeros(b * n_l).index_add_(0, key, t).view(b, n_l)
        if self.passes == 1:  # one step along the solution, to the first bound met
            poly = per_hit(self._weight_polynomial(st, tgt).to(e)).unbind(-1)
            d = poly[0] + poly[1] * u + poly[2] * v + poly[3] * u * u + poly[4] * v * v
            step = torch.where(ok, layer_min(self._limit(e, d)).clamp(0, 1),
                               torch.zeros_like(st["total"]))
            moved = e * (1 + per_hit(step) * d)
            # sum_i E_i d_i = 0 up to rounding, which a near-degenerate layer's large beta
            # can make visible: restore its energy (a common factor keeps its moments)
            if traced:
                e = moved * (e.sum(-1) / moved.sum(-1).clamp_min(1e-30))[..., None]
            else:
                new_total = torch.zeros(b * n_l, dtype=moved.dtype,
                                        device=moved.device).index_add_(0, key, moved)
                e = moved * (sums.reshape(b * n_l, -1)[:, 0]
                             / new_total.clamp_min(1e-30))[key]
        else:
            e = self._passes(e, u, v, st, tgt, ok, per_hit, layer_sums, layer_total)
        if traced:
            out = e.reshape(b, -1).to(self.cell_x)
            out = torch.cat([out, out.new_zeros(b, 1)], 1).index_select(1, self.where)
            x32 = x.to(out)
            return torch.where(x32 >= self.threshold, out, x32).to(x.dtype)
        out = x.clone()
        out[rows, cols] = e.to(x.dtype)
        return out
