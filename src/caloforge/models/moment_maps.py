"""Per-shower maps of each layer's centre and width onto the training showers'
distribution: the part shared by voxel showers (:mod:`caloforge.models.layer_moments`)
and point clouds (:mod:`caloforge.models.point_moments`).

In each layer of a shower the energy-weighted centre and width are measured in the
frame of the shower's direction (u along the azimuth, v across it, from the direction's
axis at the layer's depth) and mapped from the generated onto the training showers'
distribution: monotone quantile maps per (theta bin, incident-energy bin, layer,
moment), interpolated linearly in log E between the energy bins, optionally also per bin
of the layer's own energy.  The maps keep each shower's rank among the generated ones,
so the correlations between layers stay the generator's unless ``copula`` is set: then
the shower's normal scores are first moved onto the training showers' correlations
(:mod:`caloforge.models.moment_copula`).  Subclasses measure the moments and move the
showers onto the mapped ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.models.moment_copula import ScoreMixing, knot_scores
from caloforge.models.moment_flow import MomentFlow

MOMENTS = ("centre_u", "centre_v", "width_u", "width_v")
MIN_FIT_LAYERS = 50  # fewer eligible layers in a (theta, energy) bin: identity map there


def _map(v: Tensor, q_gen: Tensor, q_ref: Tensor) -> Tensor:
    """Piecewise-linear map of ``v`` (...) from knots ``q_gen`` onto ``q_ref`` (..., K);
    unit slope beyond the outer knots.  Comparisons and gathers only (ONNX)."""
    k = q_gen.shape[-1]
    j = ((v[..., None] > q_gen).sum(-1).clamp(1, k - 1) - 1)[..., None]
    x0, x1 = q_gen.gather(-1, j)[..., 0], q_gen.gather(-1, j + 1)[..., 0]
    y0, y1 = q_ref.gather(-1, j)[..., 0], q_ref.gather(-1, j + 1)[..., 0]
    out = y0 + ((v - x0) / (x1 - x0).clamp_min(1e-9)).clamp(0, 1) * (y1 - y0)
    out = torch.where(v < q_gen[..., 0], q_ref[..., 0] + (v - q_gen[..., 0]), out)
    return torch.where(v > q_gen[..., -1], q_ref[..., -1] + (v - q_gen[..., -1]), out)


class MomentMaps(nn.Module):
    """Quantile maps of every layer's centre and width (u, v) per (theta bin, energy
    bin, layer), and the axis they are measured from; subclasses measure and move the
    showers (voxels: :class:`LayerMoments`; point clouds:
    :class:`~caloforge.models.point_moments.PointMoments`).  Identity until :meth:`fit`.

    ``fit_depth``: :meth:`fit` also sets the depth at which the direction's axis crosses
    each layer to where the training showers' centres lie (least squares in tan theta),
    so that the centres measured from it do not drift with theta inside a theta bin.
    ``copula``: the maps also give the moments the training showers' correlations
    between layers and moments and with the layers' energies, which stay as they are
    (:mod:`caloforge.models.moment_copula`; the tables then hold a fifth column, the
    quantiles of log E_layer)."""

    def __init__(self, layer_depth: np.ndarray, n_theta_bins: int = 8,
                 n_energy_bins: int = 3, n_knots: int = 33, min_hits: int = 3,
                 fit_depth: bool = False, n_layer_bins: int = 1,
                 copula: bool = False, flow_steps: int = 0, flow_transforms: int = 8,
                 flow_hidden: int = 256, flow_temperature: float = 1.0) -> None:
        super().__init__()
        self.n_layers = len(layer_depth)
        # maps also per bin of the layer's own energy (equal training counts per layer):
        # a layer's width goes with how much of the shower it holds
        self.n_lb = max(int(n_layer_bins), 1)
        self.n_theta, self.n_energy = max(int(n_theta_bins), 1), max(int(n_energy_bins), 1)
        self.n_knots, self.min_hits = max(int(n_knots), 2), int(min_hits)
        self.fit_depth = bool(fit_depth)
        self.impact = (0.0, 0.0)  # mm, the model's fixed impact point (set by the model)
        # depth (mm) at which the direction's axis crosses each layer
        self.register_buffer("depth", torch.as_tensor(layer_depth, dtype=torch.float32))
        t, e, k = self.n_theta, self.n_energy, self.n_knots
        self.register_buffer("ready", torch.zeros(()))
        self.register_buffer("theta_edges", torch.full((max(t - 1, 1),), math.inf))
        self.register_buffer("energy_knots", torch.linspace(0.0, 1.0, e))  # log(E / MeV)
        self.register_buffer("layer_edges",  # inner edges per layer, log(E_layer / MeV)
                             torch.full((self.n_layers, max(self.n_lb - 1, 1)), math.inf))
        self.n_cols = len(MOMENTS) + (1 if copula else 0)
        ident = torch.linspace(-1.0, 1.0, k).expand(t, e, self.n_layers * self.n_lb,
                                                    self.n_cols, k)
        self.register_buffer("q_gen", ident.clone())
        self.register_buffer("q_ref", ident.clone())
        self.register_buffer("knot_z", knot_scores(k), persistent=False)
        self.mixing = ScoreMixing(self.n_layers * len(MOMENTS), self.n_layers) \
            if copula else None
        # with flow_steps > 0 the moments are drawn by a flow (moment_flow) instead
        self.flow_steps, self.flow_seed = int(flow_steps), 0
        self.flow_temperature = float(flow_temperature)  # scales the flow's base normals
        self.flow = MomentFlow(self.n_layers, t, e, flow_transforms, flow_hidden) \
            if self.flow_steps > 0 and self.n_lb == 1 else None
        self.is_fitted = False  # python mirror of ``ready`` (no tensor test while tracing)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        for key in ("depth", "layer_edges"):  # folders saved before them: the defaults
            if prefix + key not in state_dict:
                state_dict = {**state_dict, prefix + key: getattr(self, key).clone()}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_fitted = bool(self.ready > 0)

    def reset(self) -> None:
        """Back to the identity (the maps are refitted)."""
        ident = torch.linspace(-1.0, 1.0, self.n_knots).to(self.q_gen)
        self.q_gen.copy_(ident.expand_as(self.q_gen))
        self.q_ref.copy_(ident.expand_as(self.q_ref))
        if self.mixing is not None:
            self.mixing.reset()
        self.ready.zero_()
        self.is_fitted = False

    def _axis(self, angles: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Where each shower's axis crosses each layer (B, L; mm) and cos, sin of phi (B,)."""
        # trigonometry in float64, then rounded: the same float32 values whichever
        # vectorised path a batch's row takes
        a = angles.double()  # (tan as sin / cos: ONNX Runtime has no float64 Tan)
        tan = (torch.sin(a[:, 0]) / torch.cos(a[:, 0])).float()
        # at normal incidence the azimuth names no direction: the frame is x, y then, so
        # that phi changes nothing (as everywhere else in the models)
        phi = torch.where(a[:, 0] == 0, torch.zeros_like(a[:, 1]), a[:, 1])
        cos, sin = torch.cos(phi).float(), torch.sin(phi).float()
        ax = self.impact[0] + self.depth[None] * (tan * cos)[:, None]
        ay = self.impact[1] + self.depth[None] * (tan * sin)[:, None]
        return ax, ay, cos, sin

    def _layer_rows(self, layer_energy: Tensor) -> Tensor:
        """(B, L) row of each layer's maps: layer x its layer-energy bin."""
        log_e = torch.log(layer_energy.to(self.layer_edges).clamp_min(1e-30))
        lb = (log_e[..., None] > self.layer_edges[None]).sum(-1)
        return torch.arange(self.n_layers, device=lb.device) * self.n_lb + lb

    def _bins_of(self, log_e: Tensor, theta: Tensor) -> tuple[Tensor, ...]:
        """Each shower's theta bin, lower and upper energy bin and its weight (linear in
        log E between the energy bins' knots, constant beyond the outer ones)."""
        tb = (theta.to(self.theta_edges)[:, None] >= self.theta_edges[None]).sum(1)
        tb = tb.clamp(max=self.n_theta - 1)
        knots = self.energy_knots
        if self.n_energy == 1:
            lo = hi = torch.zeros_like(tb)
            return tb, lo, hi, torch.zeros_like(log_e)
        lo = ((log_e[:, None] > knots[None]).sum(1).clamp(1, self.n_energy - 1) - 1)
        hi = lo + 1
        w = ((log_e - knots[lo]) / (knots[hi] - knots[lo]).clamp_min(1e-9)).clamp(0, 1)
        return tb, lo, hi, w

    def _maps(self, table: Tensor, tb: Tensor, j: Tensor, layer_energy: Tensor) -> Tensor:
        """(B, L, 4, K) knots of each shower's layers in energy bin ``j``."""
        if self.n_lb == 1:
            return table[tb, j]
        rows = self._layer_rows(layer_energy)[..., None, None].expand(
            -1, -1, self.n_cols, self.n_knots)
        return table[tb, j].gather(1, rows)

    def _with_energy(self, mom: Tensor, layer_energy: Tensor) -> Tensor:
        """The moments and, with the copula, log E_layer as a fifth column."""
        if self.mixing is None:
            return mom
        log_e = torch.log(layer_energy.to(mom).clamp_min(1e-30))
        return torch.cat([mom, log_e[..., None]], -1)

    @staticmethod
    def _mixing_input(z: Tensor, ok: Tensor) -> Tensor:
        """(B, L * 4 + L) scores of the moments, then of the layer energies, 0 where a
        layer is not eligible."""
        z = torch.where(ok[..., None], z, torch.zeros_like(z))
        return torch.cat([z[..., :len(MOMENTS)].flatten(1), z[..., len(MOMENTS)]], 1)

    def _score(self, mom: Tensor, q: Tensor) -> Tensor:
        """Normal scores of ``mom`` under the distributions with quantiles ``q``."""
        z = self.knot_z
        return _map(mom, q, z.expand_as(q)).clamp(z[0], z[-1])

    def _unscore(self, z: Tensor, q: Tensor) -> Tensor:
        """The moments whose normal scores under quantiles ``q`` are ``z``."""
        k = self.knot_z
        return _map(z.clamp(k[0], k[-1]), k.expand_as(q), q)

    def _bin_scores(self, full: Tensor, table: Tensor, bins: tuple[Tensor, ...],
                    layer_energy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normal scores of ``full`` (moments and log E_layer) under ``table`` in the
        lower and upper energy bin of ``bins`` (from :meth:`_bins_of`), and interpolated
        between them."""
        tb, lo, hi, w = bins
        za = self._score(full, self._maps(table, tb, lo, layer_energy))
        zb = self._score(full, self._maps(table, tb, hi, layer_energy))
        return za, zb, za + w[:, None, None] * (zb - za)

    def _targets(self, mom: Tensor, e_inc: Tensor, theta: Tensor,
                 layer_energy: Tensor, ok: Tensor | None = None,
                 normals: Tensor | None = None) -> Tensor:
        """(B, L, 4) mapped moments: the maps of the shower's theta bin and each layer's
        energy bin, linear in log E between the energy bins' (constant beyond the outer
        ones); with the copula, the scores of the eligible layers ``ok`` (B, L) mixed
        first; with the flow, its draw from standard normals ``normals`` (B, 4 L)."""
        bins = tb, lo, hi, w = self._bins_of(torch.log(e_inc.double()).float(), theta)
        mom = mom.to(self.q_gen)
        n_m = len(MOMENTS)
        if self.flow is not None and normals is not None:
            z = self.flow.sample(normals * self.flow_temperature,
                                 self.flow.context(e_inc, theta, layer_energy))
            r_lo = self._maps(self.q_ref, tb, lo, layer_energy)[..., :n_m, :]
            r_hi = self._maps(self.q_ref, tb, hi, layer_energy)[..., :n_m, :]
            a, b = self._unscore(z, r_lo), self._unscore(z, r_hi)
            drawn = a + w[:, None, None] * (b - a)
            mapped = (self.flow.mapped[tb, lo] & self.flow.mapped[tb, hi])[..., None]
            return torch.where(mapped, drawn, mom).double()
        g_lo, r_lo = (self._maps(q, tb, lo, layer_energy) for q in (self.q_gen, self.q_ref))
        g_hi, r_hi = (self._maps(q, tb, hi, layer_energy) for q in (self.q_gen, self.q_ref))
        a, b = _map(mom, g_lo[..., :n_m, :], r_lo[..., :n_m, :]), \
            _map(mom, g_hi[..., :n_m, :], r_hi[..., :n_m, :])
        if self.mixing is not None and ok is not None:
            za, zb, z = self._bin_scores(self._with_energy(mom, layer_energy), self.q_gen,
                                         bins, layer_energy)
            dz = self.mixing(self._mixing_input(z, ok)).view_as(mom) - z[..., :n_m]
            # the move of the score, read through the training quantiles: unmixed (A = 1)
            # this is exactly the plain map, tails included
            za, zb = za[..., :n_m], zb[..., :n_m]
            r_lo, r_hi = r_lo[..., :n_m, :], r_hi[..., :n_m, :]
            a = a + (self._unscore(za + dz, r_lo) - self._unscore(za, r_lo))
            b = b + (self._unscore(zb + dz, r_hi) - self._unscore(zb, r_hi))
        return (a + w[:, None, None] * (b - a)).double()

    # ---- fit ----------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, reference: Iterable[tuple[Tensor, Tensor, Tensor]],
            generated: Iterable[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Fit the maps from chunks (showers, e_inc (B,), angles (B, 2)) of training
        showers and of showers generated at training conditions with every other table
        (the maps must be the identity while those are generated); the showers as
        :meth:`layer_moments` takes them."""
        ref = self._collect(reference)
        gen = self._collect(generated)
        if self.fit_depth:
            self._fit_depth(ref, gen)
        theta = ref[2]
        if self.n_theta > 1:
            qs = torch.linspace(0, 1, self.n_theta + 1, dtype=torch.float64)[1:-1]
            self.theta_edges.copy_(torch.quantile(theta.double(), qs).float())
        log_e = ref[1]
        edges = torch.quantile(log_e.double(), torch.linspace(0, 1, self.n_energy + 1,
                                                              dtype=torch.float64)).float()
        knots = torch.stack([log_e[(log_e >= edges[i]) & (log_e <= edges[i + 1])].median()
                             for i in range(self.n_energy)])
        if self.n_energy > 1:
            self.energy_knots.copy_(knots)
        if self.n_lb > 1:
            self._fit_layer_edges(ref)
        qs = torch.linspace(0, 1, self.n_knots, dtype=torch.float64)
        q_gen, q_ref = self.q_gen.clone(), self.q_ref.clone()
        rb, gb = self._bins(ref, edges), self._bins(gen, edges)
        r_rows, g_rows = self._layer_rows(ref[4]).cpu(), self._layer_rows(gen[4]).cpu()
        for t in range(self.n_theta):
            for j in range(self.n_energy):
                rs, gs = rb == t * self.n_energy + j, gb == t * self.n_energy + j
                for row in range(self.n_layers * self.n_lb):
                    k = row // self.n_lb
                    rm = ref[0][rs, k][ref[3][rs, k] & (r_rows[rs, k] == row)]
                    gm = gen[0][gs, k][gen[3][gs, k] & (g_rows[gs, k] == row)]
                    if len(rm) < MIN_FIT_LAYERS or len(gm) < MIN_FIT_LAYERS:
                        continue  # identity
                    q_ref[t, j, row] = torch.quantile(rm.double(), qs, dim=0).t().float()
                    q_gen[t, j, row] = torch.quantile(gm.double(), qs, dim=0).t().float()
        self.q_gen.copy_(q_gen)
        self.q_ref.copy_(q_ref)
        if self.mixing is not None:
            self.mixing.fit(self._scores(gen, self.q_gen), self._scores(ref, self.q_ref))
        if self.flow is not None:
            self._fit_flow(ref)
        self.ready.fill_(1.0)
        self.is_fitted = True

    def _fit_flow(self, ref: tuple[Tensor, ...]) -> None:
        """Fit the moment flow on the training showers' scores under their own maps."""
        ident = torch.linspace(-1.0, 1.0, self.n_knots).to(self.q_ref)
        self.flow.mapped.copy_(~(self.q_ref[..., 0, :] == ident).all(-1))
        n_m = len(MOMENTS)
        scores, oks = [], []
        for i in range(0, len(ref[0]), 1000):
            mom, log_e, theta, ok, layer_e = (d[i:i + 1000].to(self.q_ref.device)
                                              for d in ref)
            bins = tb, lo, hi, _ = self._bins_of(log_e.to(self.q_gen), theta)
            scores.append(self._bin_scores(mom.to(self.q_gen), self.q_ref, bins,
                                           layer_e.to(self.q_gen))[2][..., :n_m].cpu())
            oks.append((ok & self.flow.mapped[tb, lo] & self.flow.mapped[tb, hi]).cpu())
        self.flow.fit(torch.cat(scores), torch.cat(oks), torch.exp(ref[1].double()),
                      ref[2], ref[4], self.flow_steps, self.flow_seed)

    def _scores(self, data: tuple[Tensor, ...], table: Tensor) -> Tensor:
        """(N, L * 4 + L) normal scores of collected showers under the quantiles
        ``table`` (their own sample's) as the mixing takes them."""
        parts = []
        for i in range(0, len(data[0]), 1000):
            mom, log_e, theta, ok, layer_e = (d[i:i + 1000] for d in data)
            bins = self._bins_of(log_e.to(self.q_gen), theta)
            z = self._bin_scores(mom.to(self.q_gen), table, bins, layer_e.to(self.q_gen))[2]
            parts.append(self._mixing_input(z, ok.to(z.device)).cpu())
        return torch.cat(parts)

    def _fit_layer_edges(self, ref: tuple[Tensor, ...]) -> None:
        """Inner edges of each layer's energy bins: equal counts of eligible training
        layers."""
        qs = torch.linspace(0, 1, self.n_lb + 1, dtype=torch.float64)[1:-1]
        for k in range(self.n_layers):
            e = ref[4][:, k][ref[3][:, k]]
            if len(e) >= self.n_lb * MIN_FIT_LAYERS:
                self.layer_edges[k] = torch.quantile(
                    torch.log(e.double().clamp_min(1e-30)), qs).to(self.layer_edges)

    def _collect(self, chunks: Iterable[tuple[Tensor, Tensor, Tensor]]
                 ) -> tuple[Tensor, ...]:
        """Moments, log E, theta, eligibility and layer energies of all showers."""
        mom, log_e, theta, ok, layer_e = [], [], [], [], []
        device = self.q_gen.device
        for x, e_inc, angles in chunks:
            x = tuple(v.to(device) for v in x) if isinstance(x, tuple) else x.to(device)
            m, o, le = self.layer_moments(x, angles.to(device))
            mom.append(self._with_energy(m, le).cpu())
            ok.append(o.cpu())
            layer_e.append(le.cpu())
            log_e.append(torch.log(e_inc.double().cpu()).float())
            theta.append(angles[:, 0].float().cpu())
        return (torch.cat(mom), torch.cat(log_e), torch.cat(theta), torch.cat(ok),
                torch.cat(layer_e))

    def _bins(self, data: tuple[Tensor, Tensor, Tensor, Tensor], edges: Tensor) -> Tensor:
        """(N,) flat (theta bin, energy bin) of each shower (energy bins by ``edges``)."""
        tb = (data[2][:, None] >= self.theta_edges.cpu()[None]).sum(1).clamp(
            max=self.n_theta - 1)
        eb = (data[1][:, None] > edges[1:-1][None]).sum(1)
        return tb * self.n_energy + eb

    def _fit_depth(self, ref: tuple[Tensor, ...], gen: tuple[Tensor, ...]) -> None:
        """Move each layer's axis depth to where the training centres lie along the
        azimuth, c_u = delta tan(theta) (least squares over eligible layers), and shift
        the collected centres of both samples to the new axis."""
        tan = torch.tan(ref[2].double())[:, None]
        ok = ref[3].double()
        num = (ref[0][..., 0] * tan * ok).sum(0)
        den = (tan * tan * ok).sum(0)
        delta = torch.where(den > 1e-9, num / den.clamp_min(1e-9), torch.zeros_like(num))
        self.depth += delta.to(self.depth)
        for data in (ref, gen):
            data[0][..., 0] -= (delta[None] * torch.tan(data[2].double())[:, None]).to(data[0])

    def layer_moments(self, x: Tensor | tuple[Tensor, ...], angles: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover - abstract
        """(B, L, 4) centre u, centre v, width u, width v (mm), (B, L) eligibility and
        (B, L) layer energies (MeV)."""
        raise NotImplementedError
