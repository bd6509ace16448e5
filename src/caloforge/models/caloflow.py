"""CaloFlow: a layer flow and a shower flow, both masked autoregressive flows (the teacher).

After Krause & Shih, "CaloFlow: Fast and Accurate Generation of Calorimeter Showers with
Normalizing Flows" (arXiv:2106.05285), in two steps:

1. The **layer flow** (a zuko MAF over a handful of features) learns the energy of every
   layer given the incident energy (and the direction, when the training data vary it).
   Its features are CaloFlow's *u-variables*: ``u_0 = E_tot / (s E_inc)`` (``s``: the
   largest visible fraction of the training showers times 1.1) and the successive ratios
   ``u_k = E_k / (E_k + ... + E_last)``, each in [0, 1], logit-transformed with an
   ``alpha`` margin and standardised.  Why these rather than log layer energies: any
   point the flow draws maps back to non-negative layer energies whose sum never exceeds
   ``s E_inc`` — nothing to clip, no negative or runaway layer — and the ratios are
   nearly independent of the incident energy's scale, so the flow learns shapes, not
   magnitudes spanning decades.
2. The **shower flow** (a zuko MAF over all cells of the layers with two cells or more)
   learns the cell energies divided by their layer's energy, logit-transformed with the
   ``alpha`` margin and standardised, conditioned on the incident energy (and direction)
   and the standardised log layer energies.  While training, uniform noise of up to
   ``dequantize_mev`` is added to every cell energy first (CaloFlow's dequantisation: an
   empty cell is not a point mass and an empty layer still has a shape).

Both flows train together by maximum likelihood (one optimiser, the sum of the per-
feature negative log-likelihoods).  Generation draws the layer energies, then the
normalised cells; each layer's cells are renormalised (cells below ``dequantize_mev``,
the noise floor, are dropped first) so that the layer carries *exactly* the energy the
layer flow drew.  A MAF evaluates a density in one network pass per block but samples in
one pass per feature: the student (:mod:`caloforge.models.caloflow_student`) is the fast
sampler.  Any geometry works: layers are sliced by the geometry's offsets, whatever
their shapes.

>>> model = CaloFlow.from_config(None, "calogan", preset="tiny")
>>> model.n_features, model.n_layer_features
(504, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from caloforge.data.batch import Conditions
from caloforge.errors import GeometryError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register
from caloforge.models.config import ModelConfig, positive
from caloforge.models.flows import sample_flow
from caloforge.models.made import masked_autoregressive_flow
from caloforge.models.noise import ShowerNoise, Source, randn, reserve
from caloforge.models.transforms import Standardize

# (context, standard normals) -> standardised shower features: the shower flow's sampler
FeatureSampler = Callable[[Tensor, Tensor], Tensor]


@dataclass
class CaloFlowConfig(ModelConfig):
    transforms: int = 6  # MADE blocks of the shower flow
    hidden: tuple[int, ...] = (384,)
    bins: int = 4  # spline bins; 0 = affine MADE blocks
    layer_transforms: int = 6
    layer_hidden: tuple[int, ...] = (64, 64)
    layer_bins: int = 8
    alpha: float = 1e-6  # logit(alpha + (1 - 2 alpha) u) keeps u = 0 and 1 finite
    dequantize_mev: float = 1e-3  # uniform noise on cell energies while training (MeV)
    lr: float = 1e-3
    lr_decay: float = 0.1  # the learning rate falls by this factor over the run
    threshold_output: bool = False  # a threshold would break the exact layer energies
    # Generated cells below the energy under which this fraction of the training showers'
    # non-zero cells lie are dropped (their layer renormalised); 0: only those below the
    # dequantisation floor.  Why: the flow smears the dequantisation noise of empty cells
    # into faint hits the training showers do not have (+5 % cells on dataset 1).
    cell_floor_quantile: float = 0.005

    def validate(self) -> None:
        super().validate()
        positive(self, "transforms", "layer_transforms", "alpha", "dequantize_mev", "lr",
                 "lr_decay")
        if not 0 <= self.cell_floor_quantile < 0.5:
            from caloforge.errors import ConfigError
            raise ConfigError(f"config key 'cell_floor_quantile' must be in [0, 0.5), got "
                              f"{self.cell_floor_quantile}")
        for key in ("bins", "layer_bins"):
            if getattr(self, key) < 0 or getattr(self, key) == 1:
                from caloforge.errors import ConfigError
                raise ConfigError(f"config key {key!r} must be 0 (affine) or >= 2")


def logit(u: Tensor, alpha: float) -> Tensor:
    v = alpha + (1 - 2 * alpha) * u
    return torch.log(v) - torch.log1p(-v)


def expit(y: Tensor, alpha: float) -> Tensor:
    return ((torch.sigmoid(y) - alpha) / (1 - 2 * alpha)).clamp(0, 1)


def exponential_decay(optimizers: dict[str, torch.optim.Optimizer], factor: float,
                      total_steps: int) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """Schedulers that lower every learning rate by ``factor`` over ``total_steps``."""
    gamma = factor ** (1.0 / max(total_steps, 1))
    return {name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
            for name, opt in optimizers.items()}


@register("caloflow")
class CaloFlow(GenerativeModel):
    """Layer flow + shower flow (masked autoregressive), trained by maximum likelihood."""

    export_refusal = (
        "its masked autoregressive shower flow draws one cell per network pass (a graph of "
        "one network copy per cell, minutes to trace, and the slow sampler the student "
        "exists to replace); export its one-pass student 'caloflow-student' instead")
    Config = CaloFlowConfig
    condition_inputs = ("theta", "phi")
    presets = {
        "tiny": {"transforms": 2, "hidden": [32], "bins": 4, "layer_transforms": 2,
                 "layer_hidden": [16], "layer_bins": 4, "lr": 3e-3},
        # "default" (the config defaults): sized for 2 CPU cores on CaloChallenge dataset
        # 1 (368 cells) or CaloGAN (504): ~2.3 M weights per shower-flow block.
    }

    def __init__(self, config: CaloFlowConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        c = config
        cells = list(geometry.cells_per_layer)
        off = geometry.layer_offsets
        self.active = [k for k, n in enumerate(cells) if n > 0]
        self.active_cells = [int(cells[k]) for k in self.active]  # not recomputed per call
        modelled = [k for k in self.active if cells[k] >= 2]
        if not modelled:
            raise GeometryError(f"caloflow needs a layer of two cells or more; geometry "
                                f"{geometry.name!r} has none")
        # Columns of the modelled cells, and which active layer each belongs to.
        cols = torch.cat([torch.arange(int(off[k]), int(off[k + 1])) for k in modelled])
        layer = torch.cat([torch.full((cells[k],), self.active.index(k)) for k in modelled])
        self.register_buffer("cell_columns", cols, persistent=False)
        # (active layer, feature slice) of each modelled layer: features are its cells, in order
        ends = torch.tensor([cells[k] for k in modelled]).cumsum(0).tolist()
        self.share_segments = [(self.active.index(k), (e - cells[k], e))
                               for k, e in zip(modelled, ends)]
        self.register_buffer("cell_layer", layer, persistent=False)
        self.register_buffer("cells_of_layer", torch.tensor(
            [float(cells[k]) for k in self.active]), persistent=False)
        self.n_features = len(cols)
        self.n_layer_features = len(self.active)
        # Fitted (model.yaml): generated cells below it are dropped; folders saved before
        # it existed keep the dequantisation floor.
        self.cell_floor_mev = float(c.dequantize_mev)
        self.register_buffer("total_scale", torch.ones(()))  # s of u_0
        self.layer_std = Standardize(self.n_layer_features)
        self.log_energy_std = Standardize(self.n_layer_features)
        self.cell_std = Standardize(self.n_features, min_std=1e-2)
        self.layer_flow = masked_autoregressive_flow(
            self.n_layer_features, self.n_conditions, c.layer_transforms, c.layer_bins,
            c.layer_hidden)
        self.shower_flow = masked_autoregressive_flow(
            self.n_features, self.n_context, c.transforms, c.bins, c.hidden)

    @property
    def n_context(self) -> int:
        """Width of the shower flow's context: conditions + log layer energies."""
        return self.n_conditions + self.n_layer_features

    # ---- representations ---------------------------------------------------------------
    def layer_energies(self, x: Tensor) -> Tensor:
        """(B, active layers) energy sums of voxel energies ``x`` (B, n_voxels)."""
        # Per-layer slice sums (cells of a layer are contiguous): exported as ReduceSum +
        # Concat, where index_add_ with repeated indices cannot be exported to ONNX.
        off = self.geometry.layer_offsets
        return torch.stack([x[:, int(off[k]):int(off[k + 1])].sum(1) for k in self.active], 1)

    def _u_features(self, el: Tensor, e_inc: Tensor) -> Tensor:
        """Logit u-variables of layer energies (see the module docstring)."""
        tail = el.flip(1).cumsum(1).flip(1)  # E_k + ... + E_last
        u0 = tail[:, :1] / (e_inc[:, None] * self.total_scale)
        ratios = el[:, :-1] / tail[:, :-1].clamp_min(1e-30)
        return logit(torch.cat([u0, ratios], 1).clamp(0, 1), self.config.alpha)

    def _energies_from_u(self, y: Tensor, e_inc: Tensor) -> Tensor:
        """Inverse of :meth:`_u_features`: non-negative layer energies (MeV)."""
        u = expit(y, self.config.alpha)
        remaining = u[:, 0] * e_inc * self.total_scale
        out = []
        for k in range(1, self.n_layer_features):
            e_k = u[:, k] * remaining
            out.append(e_k)
            remaining = (remaining - e_k).clamp_min(0)
        out.append(remaining)
        return torch.stack(out, 1)

    def _log_energies(self, el: Tensor) -> Tensor:
        return torch.log(el + self.config.dequantize_mev)

    def _cell_features(self, x: Tensor, el: Tensor) -> Tensor:
        """Logit of each modelled cell's share of its layer's energy (B, n_features)."""
        share = x[:, self.cell_columns] / el[:, self.cell_layer].clamp_min(1e-30)
        return logit(share.clamp(0, 1), self.config.alpha)

    def _dequantised(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        noise = torch.rand(x.shape, generator=gen, device=x.device)
        return x.clamp_min(0) + noise * self.config.dequantize_mev

    def shower_context(self, cond: Tensor, el: Tensor) -> Tensor:
        """The shower flow's context from condition features and layer energies (MeV)."""
        return torch.cat([cond, self.log_energy_std(self._log_energies(el), el[:, 0])], 1)

    def training_features(self, x: Tensor, e_inc: Tensor, angles: Tensor | None,
                          gen: torch.Generator | None
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(condition features, layer-flow features, shower context, shower features) of
        training showers, dequantised with noise from ``gen``."""
        x = self._dequantised(x, gen)
        el = self.layer_energies(x)
        cond = self.condition_features(e_inc, angles)
        u = self.layer_std(self._u_features(el, e_inc), e_inc)
        y = self.cell_std(self._cell_features(x, el), e_inc)
        return cond, u, self.shower_context(cond, el), y

    # ---- training ------------------------------------------------------------------------
    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        super().fit_preprocessing(x, e_inc)
        gen = torch.Generator().manual_seed(0)
        el = torch.cat([self.layer_energies(self._dequantised(x[i:i + 1000].float(), gen))
                        for i in range(0, len(x), 1000)])
        frac = el.sum(1) / e_inc
        self.total_scale.fill_(max(float(frac.max()) * 1.1, 1e-12))
        self.layer_std.fit(self._u_features(el, e_inc), e_inc)
        self.log_energy_std.fit(self._log_energies(el), e_inc)
        gen.manual_seed(0)  # the same noise: the shares match the layer energies above

        def chunks():  # bounded memory: 1000 showers at a time
            for i in range(0, len(x), 1000):
                xi = self._dequantised(x[i:i + 1000].float(), gen)
                yield self._cell_features(xi, self.layer_energies(xi))

        self.cell_std.fit_chunks(chunks())
        self.cell_floor_mev = self.fitted_cell_floor(x)

    def fitted_cell_floor(self, x: Tensor) -> float:
        """The ``cell_floor_quantile`` quantile of the non-zero cell energies of ``x``
        (MeV; at most 4M of them, evenly strided), never below the dequantisation floor."""
        floor = float(self.config.dequantize_mev)
        q = self.config.cell_floor_quantile
        if q <= 0:
            return floor
        cells = x[:, self.cell_columns].reshape(-1)
        cells = cells[cells > 0]
        if cells.numel() == 0:
            return floor
        cells = cells[::max(1, cells.numel() // 4_000_000)].double()
        return max(floor, float(torch.quantile(cells, q)))

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "cell_floor_mev": self.cell_floor_mev}

    def load_metadata(self, meta: dict[str, Any]) -> None:
        super().load_metadata(meta)
        self.cell_floor_mev = float(meta.get("cell_floor_mev", self.config.dequantize_mev))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flows": torch.optim.Adam(self.parameters(), self.config.lr)}

    def configure_schedulers(self, optimizers, total_steps):  # noqa: ANN001, ANN201
        return exponential_decay(optimizers, self.config.lr_decay, total_steps)

    def log_likelihood(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None,
                       gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Per-feature log densities (B,) of the layer flow and the shower flow at
        training showers ``x`` (in the flows' standardised feature spaces)."""
        cond, u, ctx, y = self.training_features(x, e_inc, angles, gen)
        lp_layers = self.layer_flow(cond).log_prob(u) / self.n_layer_features
        return lp_layers, self.shower_flow(ctx).log_prob(y) / self.n_features

    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        # float32 throughout (no autocast): spline Jacobians overflow in bf16/fp16.
        lp_layers, lp_shower = self.log_likelihood(batch.x, batch.e_inc, batch.angles,
                                                   ctx.generator)
        nll_layers, nll_shower = -lp_layers.mean(), -lp_shower.mean()
        ctx.step("flows", nll_layers + nll_shower)
        return {"nll_layers": nll_layers.item(), "nll_shower": nll_shower.item()}

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def sample_layer_energies(self, e_inc: Tensor, noise: Source,
                              angles: Tensor | None = None,
                              sampler: FeatureSampler | None = None) -> Tensor:
        """(B, active layers) layer energies (MeV) drawn by the layer flow (or a
        student's ``sampler`` of its features): the first normals of each shower's
        stream."""
        cond = self.condition_features(e_inc, angles)
        z = randn(noise, len(e_inc), self.n_layer_features, device=e_inc.device)
        y = (sampler or self._sample_layer_features)(cond, z).clamp(-30, 30)
        return self._energies_from_u(self.layer_std.inverse(y, e_inc), e_inc)

    def _sample_layer_features(self, cond: Tensor, z: Tensor) -> Tensor:
        return sample_flow(self.layer_flow, cond, z)

    def _spread(self, share: Tensor, el: Tensor) -> tuple[Tensor, Tensor]:
        """Cell energies: each layer's energy split in proportion to ``share``; and
        whether the layer had any share (else its energy is split evenly)."""
        zero = share[:, 0] * 0  # not new_zeros(len(...)): a traced batch stays dynamic
        per_layer = [zero] * self.n_layer_features
        for i, (a, b) in self.share_segments:
            per_layer[i] = share[:, a:b].sum(1)
        sums = torch.stack(per_layer, 1)[:, self.cell_layer]
        target = el[:, self.cell_layer]
        even = target / self.cells_of_layer[self.cell_layer]
        some = sums > 0
        return torch.where(some, target * share / sums.clamp_min(1e-30), even), some

    def showers_from_features(self, y: Tensor, el: Tensor) -> Tensor:
        """Voxel energies (MeV) from standardised shower features ``y``; every layer sums
        exactly to its energy in ``el``, except a layer whose energy is below the fitted
        floor (``cell_floor_mev``), which is empty: the training showers' empty layers
        (a deposit never lies below the floor).  Cells under the floor are dropped and the
        rest renormalised; a layer with no cell above it keeps its largest cell."""
        floor = self.cell_floor_mev
        share = expit(self.cell_std.inverse(y.clamp(-30, 30), el[:, 0]), self.config.alpha)
        e, _ = self._spread(share, el)
        largest = torch.cat([share[:, a:b] >= share[:, a:b].amax(1, keepdim=True)
                             for _, (a, b) in self.share_segments], 1)
        kept = torch.where((e >= floor) | largest, share, torch.zeros_like(share))
        e_kept, some = self._spread(kept, el)
        cells = torch.where(some, e_kept, e)
        cells = torch.where(el[:, self.cell_layer] >= floor, cells, torch.zeros_like(cells))
        # Layers in voxel order, joined with one cat (slice writes export as ScatterND and
        # fix the batch size of a traced graph): modelled cells, or a single cell carrying
        # its layer energy.
        parts, start = [], 0
        for i, n in enumerate(self.active_cells):
            if n == 1:
                single = el[:, i:i + 1]
                parts.append(torch.where(single >= floor, single, torch.zeros_like(single)))
            else:
                parts.append(cells[:, start:start + n])
                start += n
        return torch.cat(parts, 1)

    def _sample_shower_features(self, context: Tensor, z: Tensor) -> Tensor:
        return sample_flow(self.shower_flow, context, z)

    def generate_with(self, e_inc: Tensor, noise: Source, angles: Tensor | None,
                      sampler: FeatureSampler, layer_sampler: FeatureSampler | None = None
                      ) -> tuple[Tensor, Tensor]:
        """(voxel energies, layer energies) in MeV: the layer flow (or ``layer_sampler``),
        then ``sampler`` for the shower features (the teacher's MAF, or a student's IAF),
        then the rescaling."""
        reserve(noise, self.n_layer_features + self.n_features)  # all of a shower's normals
        el = self.sample_layer_energies(e_inc, noise, angles, layer_sampler)
        ctx = self.shower_context(self.condition_features(e_inc, angles), el)
        z = randn(noise, len(e_inc), self.n_features, device=e_inc.device)
        return self.showers_from_features(sampler(ctx, z), el), el

    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor:
        angles = self.angle_tensor(conditions, len(e_inc))
        return self.generate_with(e_inc, noise, angles, self._sample_shower_features)[0]


__all__ = ["CaloFlow", "CaloFlowConfig", "exponential_decay", "expit", "logit"]

