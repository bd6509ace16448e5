"""What the point-cloud diffusion models (``caloclouds``, ``caloclouds2``,
``caloclouds2-cm``) share: data preparation, the ShowerFlow, and generation.

Per point the networks see four features, standardised with statistics fitted on the
training clouds of the geometry (the models know nothing about a detector beyond it):

- ``x - x_cog``, ``y - y_cog``: transverse position (mm) relative to the shower's
  energy-weighted centre of gravity;
- ``layer + u``: the layer index (from z and the layer fronts), dequantised with
  ``u ~ U(0, 1)`` during training;
- ``log E`` (MeV); points without energy are dropped (they are padding in the files).

Per shower the condition is :meth:`condition_features` (energy, direction) and the
standardised ``log`` of the number of points.  Generation: the :class:`ShowerFlow`
draws the number of points, the visible energy, points and energy per layer and the
centre of gravity; the points per layer are scaled by the occupancy calibration fitted
after training (:mod:`caloforge.models.occupancy`: as many read-out cells as the training
showers); the point model fills that many points; the points are sorted by
their continuous layer coordinate and given to the layers in order of the drawn layer
counts; their energies are scaled layer by layer to the drawn layer energies (so the
totals agree exactly), and the cloud is shifted to the drawn centre of gravity.  The
output is ``(points, mask)``: x, y in mm in the geometry frame, z the depth of the
layer's active medium (``Geometry.layer_z_mm``, what point files and the projection
use), E in MeV.  All noise of shower i comes from its own stream: its points do not
depend on the other showers of a chunk nor on how far the chunk is padded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.data.batch import Conditions, PointCloudBatch
from caloforge.errors import ConfigError, InputError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch
from caloforge.models.config import ModelConfig, positive
from caloforge.models.noise import ShowerNoise, Source, randn, subset
from caloforge.models.occupancy import fit_count_scale
from caloforge.models.point_moments import PointMoments
from caloforge.models.pointnets import PointDenoiser
from caloforge.models.showerflow import ShowerFlow, ShowerSummary, summarise
from caloforge.models.showerflow_fit import fit_showerflow

FEATURES = 4  # per point: dx, dy, layer, log E
# showers per network call in a large batch: groups of similar size, padded only to their
# own largest cloud; small groups also keep the per-point activations in cache (ILD
# photons, 2 threads: 2.2 ms per shower with groups of 8, 5.5 with 64, 3.6 with 16 unsplit)
SIZE_GROUP = 8


@dataclass
class PointModelConfig(ModelConfig):
    hidden: int = 128  # per-point width of the set network
    summary: int = 64  # width of the learned set summary
    blocks: int = 3
    embed_dim: int = 32  # noise-level embedding
    flow_transforms: int = 6
    flow_hidden: tuple[int, ...] = (128, 128)
    flow_bins: int = 8
    lr: float = 1e-3
    lr_flow: float = 1e-3
    showerflow_fraction: float = 0.3  # share of the steps that train the ShowerFlow
    # > 0: the ShowerFlow is instead fitted before the loop, on the summaries of the
    # preprocessing showers, for this many steps of showerflow_fit_batch showers
    # (caloforge.models.showerflow_fit), and every step of the loop trains the points
    showerflow_fit_steps: int = 0
    showerflow_fit_batch: int = 512
    max_points_factor: float = 2.0  # generation draws at most this x the largest cloud seen
    # after training: training showers for the occupancy calibration (0: none) and its steps
    occupancy_showers: int = 2000
    occupancy_iterations: int = 3
    # ... then per-shower maps of each layer's centre and width (point_moments; the
    # high-level classifier's features) on this many training clouds: quantile knots
    # (0 = off), theta bins (models conditioned on the direction) and energy bins
    moment_knots: int = 0
    moment_theta_bins: int = 8
    moment_energy_bins: int = 3
    moment_layer_bins: int = 1  # ... and bins of each layer's energy (equal counts)
    moment_copula: bool = False  # ... with the training clouds' correlations (copula)
    moment_showers: int = 10000
    # ... with > 0: the moments drawn by a flow fitted in this many steps (moment_flow)
    moment_flow_steps: int = 0
    moment_flow_transforms: int = 8
    moment_flow_hidden: int = 256
    # the flow's base normals scaled by this (< 1: draws nearer the mode, a common
    # trade of a flow's spread for its typical samples)
    moment_flow_temperature: float = 1.0

    def validate(self) -> None:
        super().validate()
        positive(self, "hidden", "summary", "blocks", "embed_dim", "flow_transforms", "lr",
                 "lr_flow", "max_points_factor", "showerflow_fit_batch",
                 "moment_flow_transforms", "moment_flow_hidden")
        if not 0 < self.showerflow_fraction < 1:
            raise ConfigError("config key 'showerflow_fraction' must lie in (0, 1)")
        if self.moment_knots == 1 or min(self.moment_theta_bins, self.moment_energy_bins,
                                         self.moment_layer_bins) < 1:
            raise ConfigError("config key 'moment_knots' must be 0 (off) or >= 2, and "
                              "'moment_theta_bins', 'moment_energy_bins' and "
                              "'moment_layer_bins' >= 1")
        if self.moment_flow_steps and (not self.moment_knots or self.moment_layer_bins > 1):
            raise ConfigError("config key 'moment_flow_steps' needs the maps it draws in: "
                              "set 'moment_knots' (e.g. 33) and 'moment_layer_bins: 1'")
        if not 0 < self.moment_flow_temperature <= 2:
            raise ConfigError("config key 'moment_flow_temperature' must lie in (0, 2], got "
                              f"{self.moment_flow_temperature!r}")
        if self.moment_copula and not self.moment_knots:
            raise ConfigError("config key 'moment_copula' needs the maps it acts in: set "
                              "'moment_knots' (e.g. 33)")
        for key in ("occupancy_showers", "occupancy_iterations", "moment_knots",
                    "moment_showers", "showerflow_fit_steps", "moment_flow_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"config key {key!r} must be an integer >= 0, got {value!r}")


# sized for CPU generation (ILD ECAL: ~10 ms per shower per network evaluation intended)
SMALL = {"hidden": 64, "summary": 32, "blocks": 2, "embed_dim": 16, "flow_transforms": 4,
         "flow_hidden": [64, 64]}
TINY = {"hidden": 16, "summary": 8, "blocks": 1, "embed_dim": 8, "flow_transforms": 2,
        "flow_hidden": [16], "flow_bins": 4, "lr": 3e-3, "lr_flow": 3e-3}


class PointDiffusionModel(GenerativeModel):
    """Base of the point-cloud diffusion models (see the module docstring).

    Subclasses implement :meth:`diffusion_loss` (training on standardised points) and
    :meth:`sample_points` (standardised points for a mask and per-shower context)."""

    representation = "points"
    condition_inputs = ("theta", "phi")
    owns_showerflow = True  # the distilled student borrows its teacher's

    def __init__(self, config: PointModelConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        n_l = geometry.n_layers
        self.register_buffer("layer_z", torch.as_tensor(geometry.layer_z_mm, dtype=torch.float32))
        self.register_buffer("layer_front",
                             torch.as_tensor(geometry.layer_front_z_mm, dtype=torch.float32))
        self.register_buffer("feat_mean", torch.zeros(FEATURES))
        self.register_buffer("feat_std", torch.ones(FEATURES))
        self.register_buffer("count_stats", torch.tensor([0.0, 1.0]))  # log n mean, std
        self.register_buffer("max_points", torch.ones((), dtype=torch.long))
        self.context_dim = self.n_conditions + 1
        if self.owns_showerflow:
            self.showerflow = ShowerFlow(n_l, self.n_conditions, config.flow_transforms,
                                         tuple(config.flow_hidden), config.flow_bins)
        self.net = PointDenoiser(FEATURES, self.context_dim + config.embed_dim, config.hidden,
                                 config.summary, config.blocks)
        # per-layer point-count scale of the occupancy calibration (None: not calibrated);
        # kept in model.yaml, so folders written before it existed still load
        self.count_scale: tuple[float, ...] | None = None
        self.moments: PointMoments | None = None  # the layers' centres and widths
        if config.moment_knots:
            self.moments = PointMoments(geometry, config.moment_theta_bins
                                        if self.takes_angles else 1,
                                        config.moment_energy_bins, config.moment_knots,
                                        n_layer_bins=config.moment_layer_bins,
                                        copula=config.moment_copula,
                                        flow_steps=config.moment_flow_steps,
                                        flow_transforms=config.moment_flow_transforms,
                                        flow_hidden=config.moment_flow_hidden,
                                        flow_temperature=config.moment_flow_temperature)

    # ---- data -----------------------------------------------------------------------------
    def layers_of(self, z: Tensor) -> Tensor:
        """Layer index of depths ``z`` (mm) from the layer fronts."""
        idx = torch.searchsorted(self.layer_front, z.contiguous(), right=True) - 1
        return idx.clamp(0, self.geometry.n_layers - 1)

    def _prepare(self, points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, ShowerSummary]:
        """(clouds, mask without zero-energy points, their shower summary)."""
        mask = mask & (points[..., 3] > 0)
        layer = self.layers_of(points[..., 2])
        s = summarise(points[..., 3], points[..., :2], layer, mask, self.geometry.n_layers)
        if (s.n_points == 0).any():
            raise InputError(f"{int((s.n_points == 0).sum())} training showers have no "
                             "point with energy: a point model cannot learn from empty clouds")
        return layer, mask, s

    def _raw_features(self, points: Tensor, layer: Tensor, s: ShowerSummary, u: Tensor
                      ) -> Tensor:
        dxy = points[..., :2] - s.cog[:, None]
        return torch.cat([dxy, (layer.to(points.dtype) + u)[..., None],
                          torch.log(points[..., 3:4].clamp_min(1e-12))], 2)

    def count_feature(self, n_points: Tensor) -> Tensor:
        mean, std = self.count_stats
        return ((torch.log(n_points.float()) - mean) / std)[:, None]

    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, mask: Tensor | None = None,
                          angles: Tensor | None = None) -> None:
        """Standardisation of point and shower features from training clouds ``x``
        (padded, as in :class:`TrainBatch`) and their ``mask``."""
        super().fit_preprocessing(x, e_inc)
        if mask is None:
            raise InputError(f"model {self.name!r} trains on point clouds, not voxels")
        layer, mask, s = self._prepare(x, mask)
        gen = torch.Generator().manual_seed(0)
        raw = self._raw_features(x, layer, s, torch.rand(layer.shape, generator=gen))
        sel = raw[mask]
        self.feat_mean.copy_(sel.mean(0))
        self.feat_std.copy_(sel.std(0).clamp_min(1e-3) if len(sel) > 1 else torch.ones(4))
        log_n = torch.log(s.n_points.float())
        self.count_stats.copy_(torch.stack([log_n.mean(), log_n.std().nan_to_num(1.0)
                                            .clamp_min(0.05)]))
        self.max_points.fill_(max(1, math.ceil(float(s.n_points.max())
                                                * self.config.max_points_factor)))
        if self.owns_showerflow and self.config.showerflow_fit_steps:
            self._fit_flow(s, e_inc, angles)
        elif self.owns_showerflow:
            u = torch.rand(len(e_inc), 1 + self.geometry.n_layers, generator=gen)
            self.showerflow.fit(self.showerflow.encode(s, e_inc, u))

    def fit_showerflow(self, x: Tensor, e_inc: Tensor, mask: Tensor,
                       angles: Tensor | None = None, seed: int = 0,
                       show_progress: bool | None = None) -> dict[str, float]:
        """A new ShowerFlow (the config's sizes, weights from ``seed``) fitted for
        ``showerflow_fit_steps`` steps on the summaries of training clouds ``x`` (padded,
        with ``mask``); nothing else of the model changes, so a trained model's flow can
        be refitted.  Returns :func:`~caloforge.models.showerflow_fit.fit_showerflow`'s
        record."""
        c = self.config
        if not self.owns_showerflow:
            raise InputError(f"model {self.name!r} borrows its teacher's ShowerFlow: refit "
                             "the teacher's")
        if c.showerflow_fit_steps < 1:
            raise ConfigError("set config key 'showerflow_fit_steps' (> 0) to fit the "
                              "ShowerFlow on its own")
        return self._fit_flow(self._prepare(x, mask)[2], e_inc, angles, seed, show_progress)

    def _fit_flow(self, s: ShowerSummary, e_inc: Tensor, angles: Tensor | None,
                  seed: int = 0, show_progress: bool | None = None) -> dict[str, float]:
        """:meth:`fit_showerflow` on the clouds' summaries ``s``."""
        c = self.config
        cond = self.condition_features(e_inc, angles)
        with torch.random.fork_rng(devices=[]):  # its coupling masks, too, from the seed
            torch.manual_seed(seed)
            flow = ShowerFlow(self.geometry.n_layers, self.n_conditions, c.flow_transforms,
                              tuple(c.flow_hidden), c.flow_bins)
        record = fit_showerflow(flow, s, e_inc, cond, c.showerflow_fit_steps,
                                c.showerflow_fit_batch, c.lr_flow, seed,
                                show_progress=show_progress)
        self.showerflow = flow.to(self.layer_z.device)
        return record

    # ---- training -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        out = {"points": torch.optim.Adam(self.net.parameters(), c.lr)}
        if self.owns_showerflow:
            out["showerflow"] = torch.optim.Adam(self.showerflow.parameters(), c.lr_flow)
        return out

    def phases(self) -> list[tuple[str, float]]:
        if self.config.showerflow_fit_steps:
            return [("diffusion", 1.0)]  # the flow is fitted before the loop
        f = self.config.showerflow_fraction
        return [("showerflow", f), ("diffusion", 1 - f)]

    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        if batch.points is None or batch.mask is None:
            raise InputError(f"model {self.name!r} trains on point clouds (a point file)")
        cond = self.condition_features(batch.e_inc, batch.angles)
        layer, mask, s = self._prepare(batch.points, batch.mask)
        if phase == "showerflow":
            u = torch.rand(len(cond), 1 + self.geometry.n_layers, generator=ctx.generator,
                           device=cond.device)
            with ctx.autocast():
                loss = self.showerflow.loss(self.showerflow.encode(s, batch.e_inc, u), cond)
            ctx.step("showerflow", loss)
            return {"showerflow": loss.item()}
        u = torch.rand(layer.shape, generator=ctx.generator, device=cond.device)
        x0 = (self._raw_features(batch.points, layer, s, u) - self.feat_mean) / self.feat_std
        x0 = x0 * mask[..., None]
        context = torch.cat([cond, self.count_feature(s.n_points)], 1)
        return self.diffusion_loss(x0, mask, context, ctx)

    def diffusion_loss(self, x0: Tensor, mask: Tensor, context: Tensor, ctx: StepContext
                       ) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def masked_mse(a: Tensor, b: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        """Mean squared difference over the real points (optionally weighted per shower)."""
        err = ((a - b) ** 2).sum(2) * mask
        if weight is not None:
            err = err * weight[:, None]
        return err.sum() / (mask.sum() * a.shape[2]).clamp_min(1)

    # ---- generation -------------------------------------------------------------------------
    def shower_flow(self) -> ShowerFlow:
        return self.showerflow

    def sample_points(self, mask: Tensor, context: Tensor, noise: Source
                      ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> tuple[Tensor, Tensor]:
        return self._generate(e_inc, noise, self.angle_tensor(conditions, len(e_inc)))

    def _generate(self, e_inc: Tensor, noise: Source, angles: Tensor | None
                  ) -> tuple[Tensor, Tensor]:
        cond = self.condition_features(e_inc, angles)
        s = self.draw_summary(cond, noise, e_inc, int(self.max_points))
        normals = self.draw_moment_noise(noise, len(e_inc), cond.device)
        p = int(s.n_points.max()) if len(e_inc) else 1
        mask = torch.arange(p, device=cond.device)[None] < s.n_points[:, None]
        context = torch.cat([cond, self.count_feature(s.n_points)], 1)
        if torch.jit.is_tracing() or len(e_inc) <= SIZE_GROUP:
            feats = self.sample_points(mask, context, noise)
        else:
            feats = self._sample_by_size(s.n_points, context, noise)
        return self.place(feats, mask, s, e_inc, angles, normals), mask

    def draw_moment_noise(self, noise: Source, n: int, device: torch.device | str
                          ) -> Tensor | None:
        """The moment flow's standard normals (B, 4 L) from each shower's stream, right
        after the ShowerFlow's; None without a moment flow."""
        if self.moments is None or self.moments.flow is None:
            return None
        return randn(noise, n, self.moments.flow.features, device=device)

    def draw_summary(self, cond: Tensor, noise: Source, e_inc: Tensor, max_points: int
                     ) -> ShowerSummary:
        """The ShowerFlow's draw, its layer counts scaled by the occupancy calibration
        (a layer keeps at least one point, so no layer energy is lost)."""
        s = self.shower_flow().sample(cond, noise, e_inc, max_points)
        if self.count_scale is None:
            return s
        scale = torch.tensor(self.count_scale, dtype=torch.float32, device=cond.device)
        scaled = torch.round(s.layer_counts.float() * scale).long().clamp_min(1)
        counts = torch.where(s.layer_counts > 0, scaled, torch.zeros_like(scaled))
        return ShowerSummary(counts.sum(1), s.e_vis, counts, s.layer_energy, s.cog)

    @torch.no_grad()
    def finalize(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                 angles: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Occupancy calibration (:mod:`caloforge.models.occupancy`) on up to
        ``occupancy_showers`` of the training clouds ``x``."""
        if self.moments is not None:  # identity while the occupancy is fitted
            self.moments.reset()
        self._fit_occupancy(x, e_inc, generator, angles, mask)
        n = min(self.config.moment_showers, len(x))
        if self.moments is not None and n > 0 and mask is not None:
            self.fit_moments(x[:n], e_inc[:n], generator, angles, mask[:n])

    @torch.no_grad()
    def fit_moments(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                    angles: Tensor | None, mask: Tensor) -> None:
        """Fit the layer-moment maps (:mod:`caloforge.models.point_moments`) on training
        clouds ``x`` (B, P, 4) against clouds generated at their conditions."""
        self.moments.reset()
        self.moments.impact = self._impact()
        if self.moments.flow is not None:  # (models without one: the same draws as before)
            self.moments.flow_seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        n = len(x)
        ang = torch.zeros(n, 2) if angles is None else angles
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))

        def split(points: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            m = m & (points[..., 3] > 0)
            return (points[..., :2].float(), self.layers_of(points[..., 2].float()),
                    points[..., 3].float() * m)

        def reference() -> Iterator[tuple[tuple[Tensor, ...], Tensor, Tensor]]:
            for i in range(0, n, 256):
                yield split(x[i:i + 256], mask[i:i + 256]), e_inc[i:i + 256], ang[i:i + 256]

        def generated() -> Iterator[tuple[tuple[Tensor, ...], Tensor, Tensor]]:
            for i in range(0, n, 256):
                j = min(i + 256, n)
                noise = ShowerNoise.for_showers(seed, range(i, j), self.device)
                points, m = self._generate(e_inc[i:j].to(self.device), noise,
                                           None if angles is None else ang[i:j].to(self.device))
                yield split(points.cpu(), m.cpu()), e_inc[i:j], ang[i:j]

        was_training = self.training
        self.eval()
        try:
            self.moments.fit(reference(), generated())
        finally:
            self.train(was_training)

    def _fit_occupancy(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                       angles: Tensor | None, mask: Tensor | None) -> None:
        n = min(self.config.occupancy_showers, len(x))
        if n == 0 or mask is None:
            return
        reference = self._point_batch([(x[:n], mask[:n])], Conditions(e_inc[:n].cpu().numpy()), {})
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        was_training = self.training
        self.eval()

        def draw(scale: np.ndarray) -> PointCloudBatch:
            self.count_scale = tuple(float(v) for v in scale)
            parts = []
            for i in range(0, n, 256):  # the same noise each time: shower i's own stream
                j = min(i + 256, n)
                noise = ShowerNoise.for_showers(seed, range(i, j), self.device)
                parts.append(self._generate(
                    e_inc[i:j].to(self.device), noise,
                    None if angles is None else angles[i:j].to(self.device)))
            return self._point_batch(parts, reference.conditions, {})

        previous = self.count_scale
        try:
            scale = fit_count_scale(reference, draw, self.geometry,
                                    self.config.occupancy_iterations)
        except BaseException:  # interrupted or failed: not left at a trial scale
            self.count_scale = previous
            raise
        finally:
            self.train(was_training)
        self.count_scale = tuple(float(v) for v in scale)

    def _sample_by_size(self, counts: Tensor, context: Tensor, noise: Source) -> Tensor:
        """:meth:`sample_points` on groups of showers of similar size, each padded only
        to its own largest cloud: the point counts of 10-100 GeV showers span a factor
        of ten, so one batch padded to its largest cloud is mostly padding, and large
        groups run from memory instead of cache (see ``SIZE_GROUP``).  The same
        points as in one call (each shower's noise comes from its own stream, the set
        network only sees real points), up to float rounding."""
        order = torch.argsort(counts, stable=True)
        feats = torch.zeros((len(counts), int(counts.max()), FEATURES), device=counts.device)
        for rows in order.split(SIZE_GROUP):
            p = int(counts[rows].max())
            mask = torch.arange(p, device=counts.device)[None] < counts[rows, None]
            feats[rows, :p] = self.sample_points(mask, context[rows], subset(noise, rows))
        return feats

    def place(self, feats: Tensor, mask: Tensor, s: ShowerSummary, e_inc: Tensor,
              angles: Tensor | None, normals: Tensor | None = None) -> Tensor:
        """Standardised points -> ``(B, P, 4)`` x, y, z (mm), E (MeV) matching the shower
        summary: layers by rank of the layer coordinate, energies scaled per layer, cloud
        shifted to the centre of gravity (see the module docstring)."""
        xy, layer, e = self.place_in_layers(feats, mask, s, e_inc, angles, normals)
        out = torch.cat([xy, self.layer_z[layer][..., None], e[..., None]], 2)
        return out * mask[..., None]

    def place_in_layers(self, feats: Tensor, mask: Tensor, s: ShowerSummary,
                        e_inc: Tensor, angles: Tensor | None,
                        normals: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`place` as ``(xy (B, P, 2) mm, layer index (B, P), E (B, P) MeV)``,
        not yet masked (the export writes layer indices); the layer-moment maps applied
        where fitted."""
        raw = feats * self.feat_std + self.feat_mean
        n_l = self.geometry.n_layers
        depth = raw[..., 2].masked_fill(~mask, float("inf"))
        # stable, so ties keep their order; the ONNX exporter knows no stable sort (its
        # TopK keeps ties in index order too) and ties among real points need equal floats
        order = torch.argsort(depth, dim=1) if torch.jit.is_tracing() \
            else torch.argsort(depth, dim=1, stable=True)
        rank = torch.arange(mask.shape[1], device=mask.device).expand_as(order).contiguous()
        bounds = s.layer_counts.cumsum(1).contiguous()
        by_rank = torch.searchsorted(bounds, rank, right=True).clamp_max(n_l - 1)
        layer = torch.empty_like(by_rank).scatter_(1, order, by_rank)
        e = torch.exp(raw[..., 3].clamp(-30.0, 30.0)) * mask
        sums = torch.zeros_like(s.layer_energy).scatter_add_(1, layer, e)
        e = e * torch.gather(s.layer_energy / sums.clamp_min(1e-30), 1, layer)
        dxy = raw[..., :2]
        centre = (dxy * e[..., None]).sum(1) / e.sum(1).clamp_min(1e-30)[:, None]
        xy = dxy - centre[:, None] + s.cog[:, None]
        if self.moments is not None and self.moments.is_fitted:
            if angles is None:
                angles = xy.new_zeros(xy.shape[0], 2)
            self.moments.impact = self._impact()  # as the axis tables: from the model
            xy = self.moments(xy, layer, e, e_inc, angles, normals)
        return xy, layer, e

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "sampler": self.sampler_settings(),
                "occupancy_scale": None if self.count_scale is None else list(self.count_scale)}

    def load_metadata(self, meta: dict[str, Any]) -> None:
        super().load_metadata(meta)
        scale = meta.get("occupancy_scale")
        if scale is None:
            return
        if not isinstance(scale, list) or len(scale) != self.geometry.n_layers or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                for v in scale):
            raise InputError(f"occupancy_scale must list {self.geometry.n_layers} numbers in "
                             f"(0, 1], one per layer")
        self.count_scale = tuple(float(v) for v in scale)
