"""Layer-to-layer normalizing flows (L2LFlows; seed 000, "Flow-based generation").

Two stages, as CaloFlow's layer flow + shower flow:

1. An *energy flow* learns the distribution of the layer energies given the incident
   energy (features: ``log(E_k / E_inc + eps)``, standardised).
2. One *layer flow* per layer learns the shape of that layer — its cell energies divided
   by the layer energy, logit-transformed and standardised — conditioned on the incident
   energy, the layer energy and the images of the previous five layers (seed 000 table:
   context ``[I_{i-1}..I_{i-5}, E_i, E_inc]``).  A small context network compresses the
   previous images to ``context_embedding`` numbers (0 keeps the raw context).

Generation samples the layer energies, then the layers in order, each conditioned on the
ones generated before; every layer is rescaled to its sampled energy.  The flows are
rational-quadratic spline *coupling* flows built from :mod:`zuko`, so each one samples in a
single network pass (the seed's MAF needed one pass per dimension, hence its 2 s/shower).
Layers may differ in shape, so any geometry works (layers with fewer than two cells are
fixed by their energy alone).

>>> model = L2LFlows.from_config(None, "calogan", preset="tiny")
>>> len(model.layer_flows)
3
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from zuko.distributions import DiagNormal
from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register
from caloforge.models.config import Config, positive
from caloforge.models.transforms import Standardize


@dataclass
class L2LFlowsConfig(Config):
    context_layers: int = 5  # previous layers in a layer flow's context (seed 000)
    context_embedding: int = 64  # 0 = feed the raw previous images
    transforms: int = 4
    bins: int = 4  # spline bins; 0 = affine coupling (RealNVP), cheaper to sample
    hidden: tuple[int, ...] = (96, 96)
    energy_transforms: int = 6
    energy_bins: int = 8
    energy_hidden: tuple[int, ...] = (128, 128)
    alpha: float = 1e-6  # logit(alpha + (1 - 2 alpha) u) keeps u = 0 finite
    dequantize: float = 1e-5  # uniform noise on cell fractions while training
    energy_eps: float = 1e-6
    lr: float = 1e-3
    lr_decay: float = 0.1  # learning rate falls by this factor over the run
    threshold_output: bool = True

    def validate(self) -> None:
        super().validate()
        positive(self, "transforms", "energy_transforms", "energy_bins", "alpha", "lr",
                 "energy_eps", "lr_decay")
        if self.bins < 0 or self.bins == 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'bins' must be 0 (affine) or >= 2")
        if self.context_layers < 0 or self.context_embedding < 0 or self.dequantize < 0:
            from caloforge.errors import ConfigError
            raise ConfigError("context_layers, context_embedding and dequantize must be >= 0")


def spline_coupling_flow(features: int, context: int, transforms: int, bins: int,
                         hidden: tuple[int, ...]) -> Flow:
    """Rational-quadratic spline coupling flow on ``features`` dims (one-pass sampling);
    ``bins=0`` gives affine (RealNVP) couplings instead.

    Masks alternate between a random half of the features and its complement, so every
    feature is transformed and mixes with every other across pairs of transforms.
    """
    layers = []
    perm = torch.randperm(features)
    for i in range(transforms):
        if i % 2 == 0 and i > 0:
            perm = torch.randperm(features)
        mask = (perm % 2) == (i % 2)
        if bins:
            kind = {"univariate": MonotonicRQSTransform,
                    "shapes": [(bins,), (bins,), (bins - 1,)]}
        else:
            kind = {"univariate": MonotonicAffineTransform, "shapes": [(), ()]}
        layers.append(GeneralCouplingTransform(
            features, context, mask=mask, hidden_features=tuple(hidden), activation=nn.ELU,
            **kind))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(features), torch.ones(features),
                                     buffer=True)
    return Flow(layers, base)


@register("l2lflows")
class L2LFlows(GenerativeModel):
    """Per-layer conditional spline flows plus a layer-energy flow."""

    Config = L2LFlowsConfig
    presets = {
        # Affine couplings: about 10x faster sampling than splines on ILD ECAL, but their
        # per-cell densities are too simple for the bimodal empty/hit cell spectrum.
        "fast": {"bins": 0, "hidden": [64], "context_embedding": 32},
        "tiny": {"context_embedding": 16, "transforms": 2, "bins": 4, "hidden": [32],
                 "energy_transforms": 2, "energy_bins": 4, "energy_hidden": [32],
                 "lr": 3e-3},
    }

    def __init__(self, config: L2LFlowsConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        c = config
        cells = list(geometry.cells_per_layer)
        self.cells = cells
        self.active = [k for k, n in enumerate(cells) if n > 0]
        self.modelled = [k for k in self.active if cells[k] >= 2]
        n_e = len(self.active)
        if n_e < 2:
            from caloforge.errors import GeometryError
            raise GeometryError(f"l2lflows needs at least two non-empty layers; "
                                f"{geometry.name!r} has {n_e}")
        self.energy_std = Standardize(n_e)
        self.energy_flow = spline_coupling_flow(n_e, 1, c.energy_transforms, c.energy_bins,
                                                c.energy_hidden)
        self.voxel_std = Standardize(geometry.n_voxels, min_std=1e-2)  # logit units
        self.layer_flows = nn.ModuleDict()
        self.context_nets = nn.ModuleDict()
        for k in self.modelled:
            prev = self._previous(k)
            raw = sum(cells[j] for j in prev)
            if c.context_embedding and raw:
                self.context_nets[str(k)] = nn.Sequential(
                    nn.Linear(raw, c.context_embedding), nn.ELU())
                ctx = c.context_embedding + 2
            else:
                ctx = raw + 2
            self.layer_flows[str(k)] = spline_coupling_flow(cells[k], ctx, c.transforms, c.bins,
                                                            c.hidden)

    def _previous(self, k: int) -> list[int]:
        """Up to ``context_layers`` previous non-empty layers, nearest first."""
        prev = [j for j in self.active if j < k]
        return prev[::-1][:self.config.context_layers]

    def _slice(self, k: int) -> slice:
        off = self.geometry.layer_offsets
        return slice(int(off[k]), int(off[k + 1]))

    # ---- preprocessing ----------------------------------------------------------------------
    def _layer_energies(self, x: Tensor) -> Tensor:
        return torch.stack([x[:, self._slice(k)].sum(1) for k in self.active], 1)

    def _energy_features(self, el: Tensor, e_inc: Tensor) -> Tensor:
        return torch.log(el / e_inc[:, None] + self.config.energy_eps)

    def _fractions(self, x: Tensor, el: Tensor, noise: Tensor | None = None) -> Tensor:
        """Cell energy / layer energy per layer, logit-transformed (B, n_voxels)."""
        a = self.config.alpha
        u = torch.zeros_like(x)
        for i, k in enumerate(self.active):
            s = self._slice(k)
            denom = el[:, i:i + 1]
            part = torch.where(denom > 0, x[:, s] / denom.clamp_min(1e-30),
                               torch.full_like(x[:, s], 1.0 / self.cells[k]))
            u[:, s] = part
        if noise is not None:
            u = u + noise
        u = u.clamp(0, 1)
        v = a + (1 - 2 * a) * u
        return torch.log(v) - torch.log1p(-v)

    def fit_preprocessing(self, x: Tensor, e_inc: Tensor) -> None:
        super().fit_preprocessing(x, e_inc)
        el = self._layer_energies(x.double()).float()
        self.energy_std.fit(self._energy_features(el, e_inc), e_inc)
        # Fit on the same dequantised fractions that training sees: a cell that is always
        # empty would otherwise get a zero width and blow its noise up to huge values.
        gen = torch.Generator().manual_seed(0)

        def chunks():  # bounded memory: 1000 showers at a time
            for i in range(0, len(x), 1000):
                xs = x[i:i + 1000].float()
                noise = torch.rand(xs.shape, generator=gen) * self.config.dequantize
                yield self._fractions(xs, el[i:i + 1000], noise)

        self.voxel_std.fit_chunks(chunks())

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flows": torch.optim.Adam(self.parameters(), self.config.lr)}

    def configure_schedulers(self, optimizers, total_steps):  # noqa: ANN001, ANN201
        gamma = self.config.lr_decay ** (1.0 / max(total_steps, 1))
        return {"flows": torch.optim.lr_scheduler.ExponentialLR(optimizers["flows"], gamma)}

    def _context(self, k: int, y: Tensor, e_feat: Tensor, c: Tensor) -> Tensor:
        i = self.active.index(k)
        prev = self._previous(k)
        parts = [y[:, self._slice(j)] for j in prev]
        ctx = [e_feat[:, i:i + 1], c]
        if parts:
            img = torch.cat(parts, 1)
            net = self.context_nets[str(k)] if str(k) in self.context_nets else None
            ctx.insert(0, net(img) if net is not None else img)
        return torch.cat(ctx, 1)

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        x, e_inc = batch.x, batch.e_inc
        c = self.energy(e_inc)
        el = self._layer_energies(x)
        e_feat = self.energy_std(self._energy_features(el, e_inc), e_inc)
        noise = None
        if self.config.dequantize:
            noise = torch.rand(x.shape, generator=ctx.generator, device=x.device) \
                * self.config.dequantize
        y = self.voxel_std(self._fractions(x, el, noise), e_inc)
        # No autocast: spline log-densities and their Jacobians overflow in bf16/fp16, so
        # the flows train in float32 even when the loop enables mixed precision.
        nll_e = -self.energy_flow(c).log_prob(e_feat).mean() / e_feat.shape[1]
        nll_layers = []
        for k in self.modelled:
            i = self.active.index(k)
            mask = (el[:, i] > 0).float()  # empty layers have no shape to learn
            lp = self.layer_flows[str(k)](self._context(k, y, e_feat, c)).log_prob(
                y[:, self._slice(k)])
            nll_layers.append(-(lp * mask).sum() / mask.sum().clamp_min(1) / self.cells[k])
        nll_l = torch.stack(nll_layers).mean() if nll_layers else torch.zeros((), device=x.device)
        loss = nll_e + nll_l
        ctx.step("flows", loss)
        return {"nll_energy": nll_e.item(), "nll_layers": nll_l.item()}

    # ---- generation ------------------------------------------------------------------------
    def _sample_flow(self, flow: Flow, context: Tensor, features: int,
                     generator: torch.Generator | None) -> Tensor:
        z = torch.randn(len(context), features, generator=generator, device=context.device)
        return flow(context).transform.inv(z)

    def generate(self, e_inc: Tensor, generator: torch.Generator | None) -> Tensor:
        c = self.energy(e_inc)
        n_e = len(self.active)
        e_feat = self._sample_flow(self.energy_flow, c, n_e, generator)
        e_feat = e_feat.clamp(-10, 10)  # guard against rare outliers of the flow's tails
        el = (torch.exp(self.energy_std.inverse(e_feat, e_inc)) - self.config.energy_eps) \
            .clamp_min(0) * e_inc[:, None]
        y = torch.zeros(len(c), self.geometry.n_voxels, device=c.device)
        x = torch.zeros_like(y)
        a = self.config.alpha
        for i, k in enumerate(self.active):
            s = self._slice(k)
            if k in self.modelled:
                ctx = self._context(k, y, e_feat, c)
                y[:, s] = self._sample_flow(self.layer_flows[str(k)], ctx, self.cells[k],
                                            generator).clamp(-20, 20)
                logit = y[:, s] * self.voxel_std.std[s] + self.voxel_std.mean[s]
                u = ((torch.sigmoid(logit) - a) / (1 - 2 * a)).clamp_min(0)
                # Drop the dequantisation floor, then rescale to the sampled layer energy.
                u = torch.where(u > self.config.dequantize, u, torch.zeros_like(u))
                u = u / u.sum(1, keepdim=True).clamp_min(1e-30)
            else:
                u = torch.ones(len(c), self.cells[k], device=c.device)
            x[:, s] = u * el[:, i:i + 1]
        return x

