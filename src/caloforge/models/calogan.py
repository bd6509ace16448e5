"""CaloGAN (seed 004; Paganini, de Oliveira, Nachman, arXiv:1705.02355 / 1712.10321).

One generator *stream* per calorimeter layer, each a 2-D convolutional unit followed by two
locally connected units with batch normalisation in between (LAGAN-style: the weights
differ per cell, because showers are not translation invariant around the impact point),
and layer-to-layer *attention*: the previous layer's image, resampled to this layer's grid,
is mixed into this layer's image by a per-cell gate.  The incident energy enters scaled
(``E / E_max``) as a multiplier of the latent vector, and the generator ends in ReLUs.

The discriminator has one convolutional + locally connected feature stream per layer,
minibatch discrimination on each layer's features and on the energy features (per-layer
energies, sparsities, overflow, total response), and sees the incident energy.  Training
is the standard (non-saturating) GAN with the auxiliary energy loss of the paper

    L_E = |E - E_hat| / E,  E_hat = (sum of cell energies + sum of overflow) / R

added to both losses with weight ``energy_weight`` (``R`` is the mean response
(cells + overflow) / E of the training showers: a sampling calorimeter sees a fraction of
the energy).  As in CaloGAN, ``E_hat`` is a sum, not a network, so the term steers the
generator only; in the discriminator loss it is the same number, reported.  We use the
relative difference so that 1 GeV and 100 GeV showers weigh alike.

Overflow: where the geometry records it (tag ``overflow``: the CaloGAN format stores
one energy per layer outside the cells) the generator also generates the per-layer
overflow, the discriminator sees it, and it counts in ``E_hat``; training data without
overflow on such a geometry are refused.

Any geometry whose layers are 2-D grids works, including layers of different shapes:
CaloGAN's 3x96 / 12x12 / 12x6 and CaloChallenge dataset 1, whose layers are grids of
(alpha, r) bins (empty layer ids are skipped; the alpha axis is treated as a plain grid
axis, its periodicity is not used).

Generation draws one latent vector per shower from its own stream, and batch
normalisation uses its running statistics in evaluation mode, so a shower does not depend
on the batch it is generated in.

>>> model = CaloGAN.from_config(None, "calogan", preset="tiny")
>>> [tuple(s) for s in model.layer_shapes], model.has_overflow
([(3, 96), (12, 12), (12, 6)], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from caloforge.data.batch import Conditions
from caloforge.errors import ConfigError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register
from caloforge.models.config import ModelConfig, positive
from caloforge.models.noise import ShowerNoise, Source, randn, reserve
from caloforge.models.transforms import Compose, PerLayerScale, ScaleByIncident

ACCUMULATE_FROM = 32  # batch from which generation sums locally connected units in place


class LocallyConnected2d(nn.Module):
    """A 2-D convolution whose weights are not shared: every output position has its own
    kernel (Keras' LocallyConnected2D).  Implemented as an unfold and, per output
    channel, one element-wise product summed over the kernel: with the few channels of a
    fast generator this beats per-position matrix products (tiny matmuls and transposed
    copies); the cost is that of the equivalent convolution.

    >>> lc = LocallyConnected2d(2, 3, (4, 5), kernel=2)
    >>> lc(torch.zeros(7, 2, 4, 5)).shape
    torch.Size([7, 3, 3, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, in_shape: tuple[int, int],
                 kernel: int = 2, stride: int = 1, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        h, w = in_shape
        self.out_shape = ((h + 2 * padding - kernel) // stride + 1,
                          (w + 2 * padding - kernel) // stride + 1)
        if min(self.out_shape) < 1:
            raise ConfigError(f"a {kernel}x{kernel} locally connected unit does not fit a "
                              f"{h}x{w} grid")
        self.kernel, self.stride, self.padding = kernel, stride, padding
        n_pos, fan_in = math.prod(self.out_shape), in_channels * kernel * kernel
        bound = 1.0 / math.sqrt(fan_in)
        # (out channel, input channel x kernel offset as unfold orders them, position)
        self.weight = nn.Parameter(torch.empty(out_channels, fan_in, n_pos)
                                   .uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels, n_pos)) if bias else None

    def _columns(self, x: Tensor) -> Tensor:
        """``F.unfold`` as strided views stacked once: (B, C * k * k, positions), in
        unfold's order (CPU unfold loops over the batch, which costs more than the
        products at the batch sizes of generation)."""
        k, s, (h, w) = self.kernel, self.stride, self.out_shape
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        views = [x[:, :, dy:dy + s * (h - 1) + 1:s, dx:dx + s * (w - 1) + 1:s]
                 for dy in range(k) for dx in range(k)]
        return torch.stack(views, 2).reshape(x.shape[0], -1, h * w)

    def forward(self, x: Tensor) -> Tensor:
        cols = self._columns(x)
        if len(x) >= ACCUMULATE_FROM and not torch.is_grad_enabled() \
                and not torch.jit.is_tracing():
            out = self._accumulate(cols)
        else:
            out = torch.stack([(cols * w).sum(1) for w in self.weight], 1)  # (B, C, P)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(x.shape[0], -1, *self.out_shape)


    def _accumulate(self, cols: Tensor) -> Tensor:
        """The same sums, one multiply-add per kernel entry into a (B, P) accumulator:
        no (B, C * k * k, P) product is stored (generation at batch 4096, 1 CPU thread:
        2.5-4x faster than the product and sum; at small batches the op count costs more)."""
        out = cols.new_empty(cols.shape[0], self.weight.shape[0], cols.shape[2])
        for o, w in enumerate(self.weight):
            acc = out[:, o]
            torch.mul(cols[:, 0], w[0], out=acc)
            for f in range(1, w.shape[0]):
                acc.addcmul_(cols[:, f], w[f])
        return out


class MinibatchFeatures(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016), as in the CaloGAN discriminator:
    ``kernels`` projections of each sample's features, and per sample and kernel the
    summed closeness ``exp(-L1 distance)`` to the other samples of the batch."""

    def __init__(self, in_features: int, kernels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, kernels * dim, bias=False)
        self.kernels, self.dim = kernels, dim

    def forward(self, h: Tensor) -> Tensor:
        m = self.proj(h).view(len(h), self.kernels, self.dim)
        dist = (m[:, None] - m[None]).abs().sum(-1)  # (B, B, kernels)
        return torch.exp(-dist).sum(1) - 1.0  # minus the sample's closeness to itself


class LayerStream(nn.Module):
    """Generator stream of one layer: linear map to a (C0, a+2, b+2) image, a 3x3
    convolution, then two 2x2 locally connected units (each trimming one row and column)
    with batch normalisation in between; returns the (B, 1, a, b) pre-activation."""

    def __init__(self, in_features: int, shape: tuple[int, int], channels: tuple[int, ...]
                 ) -> None:
        super().__init__()
        c0, c1, c2 = channels
        a, b = shape
        self.start = (c0, a + 2, b + 2)
        self.fc = nn.Linear(in_features, math.prod(self.start))
        self.conv = nn.Conv2d(c0, c1, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(c1)
        self.lc1 = LocallyConnected2d(c1, c2, (a + 2, b + 2))
        self.norm2 = nn.BatchNorm2d(c2)
        self.lc2 = LocallyConnected2d(c2, 1, (a + 1, b + 1), bias=False)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, h: Tensor) -> Tensor:
        y = self.act(self.fc(h)).view(-1, *self.start)  # -1: a traced batch stays dynamic
        y = self.norm1(self.act(self.conv(y)))
        y = self.norm2(self.act(self.lc1(y)))
        return self.lc2(y)


def pool_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in): row i averages the inputs of adaptive average pooling's bin i
    (``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out)``, as torch bins them).

    >>> pool_matrix(3, 2)
    tensor([[0.5000, 0.5000, 0.0000],
            [0.0000, 0.5000, 0.5000]])
    """
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, -(-(i + 1) * n_in // n_out)
        m[i, start:stop] = 1.0 / (stop - start)
    return m


class LayerAttention(nn.Module):
    """The previous layer's image, resampled (adaptive average pooling) onto this layer's
    grid, mixed in by a per-cell sigmoid gate computed from both images: ``(1 - g) own +
    g carried``.  Both are non-negative, so the result is too.  The gate starts mostly
    closed (bias -2), so a fresh model begins from its own streams."""

    def __init__(self, shape: tuple[int, int], previous: tuple[int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.gate = LocallyConnected2d(2, 1, self.shape, kernel=1)
        nn.init.constant_(self.gate.bias, -2.0)
        # Adaptive average pooling is separable: rows then columns, as two fixed matrices
        # (F.adaptive_avg_pool2d does not export to ONNX with a dynamic batch).
        self.register_buffer("pool_rows", pool_matrix(previous[0], self.shape[0]),
                             persistent=False)
        self.register_buffer("pool_cols", pool_matrix(previous[1], self.shape[1]).T.contiguous(),
                             persistent=False)

    def forward(self, own: Tensor, previous: Tensor) -> Tensor:
        carried = self.pool_rows @ previous @ self.pool_cols
        g = torch.sigmoid(self.gate(torch.cat([own, carried], 1)))
        return (1 - g) * own + g * carried


class LayerCritic(nn.Module):
    """Discriminator features of one layer: 3x3 convolution, a 3x3 and a strided 2x2
    locally connected unit with batch normalisation, flattened."""

    def __init__(self, shape: tuple[int, int], channels: tuple[int, ...]) -> None:
        super().__init__()
        d1, d2, d3 = channels
        self.conv = nn.Conv2d(1, d1, 3, padding=1)
        self.lc1 = LocallyConnected2d(d1, d2, shape, kernel=3, padding=1)
        self.norm1 = nn.BatchNorm2d(d2)
        self.lc2 = LocallyConnected2d(d2, d3, shape, kernel=2, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(d3)
        self.out_features = d3 * math.prod(self.lc2.out_shape)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, image: Tensor) -> Tensor:
        y = self.act(self.conv(image))
        y = self.norm1(self.act(self.lc1(y)))
        return self.norm2(self.act(self.lc2(y))).flatten(1)


@dataclass
class CaloGANConfig(ModelConfig):
    latent_dim: int = 32
    gen_channels: tuple[int, ...] = (2, 4, 2)  # linear image, convolution, 1st LC unit
    disc_channels: tuple[int, ...] = (8, 8, 4)
    mbd_kernels: int = 8  # minibatch discrimination: kernels x dimension
    mbd_dim: int = 4
    disc_hidden: int = 64
    attention: bool = True
    lr_generator: float = 1e-4
    lr_discriminator: float = 1e-4
    betas: tuple[float, ...] = (0.5, 0.999)
    generator_steps: int = 2  # generator updates per discriminator update (CaloGAN: 2)
    energy_weight: float = 0.1  # lambda_E
    log_eps: float = 1e-3  # the discriminator sees log(u + eps) of per-layer scaled energies
    sparsity_scale: float = 0.01  # soft count of lit cells: 1 - exp(-u / scale)

    def validate(self) -> None:
        super().validate()
        positive(self, "latent_dim", "mbd_kernels", "mbd_dim", "disc_hidden", "lr_generator",
                 "lr_discriminator", "generator_steps", "log_eps", "sparsity_scale")
        if self.energy_weight < 0:
            raise ConfigError("config key 'energy_weight' must be >= 0")
        if len(self.gen_channels) != 3 or len(self.disc_channels) != 3 or len(self.betas) != 2:
            raise ConfigError("'gen_channels' and 'disc_channels' need 3 values, 'betas' 2")
        if min(*self.gen_channels, *self.disc_channels) < 1:
            raise ConfigError("channel counts must be >= 1")


class Discriminator(nn.Module):
    """Per-layer feature streams + minibatch discrimination + energy features -> logit."""

    def __init__(self, shapes: list[tuple[int, int]], n_overflow: int, n_cond: int,
                 config: CaloGANConfig) -> None:
        super().__init__()
        c = config
        self.layers = nn.ModuleList(LayerCritic(s, c.disc_channels) for s in shapes)
        self.mbd_layers = nn.ModuleList(
            MinibatchFeatures(m.out_features, c.mbd_kernels, c.mbd_dim) for m in self.layers)
        n_energy = 2 * len(shapes) + n_overflow + 1  # layer energies, sparsities, overflow, R
        self.mbd_energy = MinibatchFeatures(n_energy, c.mbd_kernels, c.mbd_dim)
        width = sum(m.out_features for m in self.layers) + len(shapes) * c.mbd_kernels \
            + n_energy + c.mbd_kernels + n_cond
        self.head = nn.Sequential(nn.Linear(width, c.disc_hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(c.disc_hidden, 1))

    def forward(self, images: list[Tensor], energy_features: Tensor, c: Tensor) -> Tensor:
        parts = []
        for stream, mbd, image in zip(self.layers, self.mbd_layers, images):
            h = stream(image)
            parts += [h, mbd(h)]
        parts += [energy_features, self.mbd_energy(energy_features), c]
        return self.head(torch.cat(parts, 1))[:, 0]


@register("calogan")
class CaloGAN(GenerativeModel):
    """Per-layer LAGAN streams with attention, energy-conditioned, with the energy loss."""

    Config = CaloGANConfig
    presets = {
        "tiny": {"latent_dim": 8, "gen_channels": [1, 2, 2], "disc_channels": [2, 4, 2],
                 "mbd_kernels": 4, "mbd_dim": 2, "disc_hidden": 16, "lr_generator": 1e-3,
                 "lr_discriminator": 1e-3},
    }

    def __init__(self, config: CaloGANConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        self.layer_ids = [k for k in range(geometry.n_layers)
                          if geometry.cells_per_layer[k] > 0]
        self.layer_shapes = [torch.Size(geometry.layer_shape(k)) for k in self.layer_ids]
        self.has_overflow = "overflow" in geometry.tags
        # u = x / (E * cell fraction * per-layer mean): order one in every layer
        self.transform = Compose(ScaleByIncident(),
                                 PerLayerScale(geometry.layer_of_voxel, geometry.n_layers))
        # mean overflow per layer and mean total response (cells + overflow) / E, fitted
        self.register_buffer("overflow_scale", torch.ones(geometry.n_layers))
        self.register_buffer("response", torch.ones(()))
        n_in = config.latent_dim + self.n_conditions
        self.streams = nn.ModuleList(
            LayerStream(n_in, tuple(s), config.gen_channels) for s in self.layer_shapes)
        self.attention = nn.ModuleList(
            LayerAttention(tuple(s), tuple(p))
            for p, s in zip(self.layer_shapes[:-1], self.layer_shapes[1:])) if config.attention \
            else nn.ModuleList()
        n_over = geometry.n_layers if self.has_overflow else 0
        self.overflow_head = nn.Linear(n_in, n_over) if n_over else None
        self.discriminator = Discriminator([tuple(s) for s in self.layer_shapes], n_over,
                                           self.n_conditions, config)

    @property
    def requires_overflow(self) -> bool:
        """Training data must carry the per-layer overflow (geometries that record it)."""
        return self.has_overflow

    # ---- preprocessing -----------------------------------------------------------------
    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        super().fit_preprocessing(x, e_inc)
        self.transform.fit(x, e_inc)
        self.response.fill_(float(self.transform.steps[0].fraction))

    def fit_overflow(self, overflow: Tensor | None, e_inc: Tensor) -> None:
        if overflow is None or not self.has_overflow:
            return
        frac = float(self.transform.steps[0].fraction)
        per_layer = (overflow.double() / e_inc.double()[:, None]).mean(0) / frac
        self.overflow_scale.copy_(per_layer.clamp_min(1e-6).float())
        self.response.fill_(frac * (1 + float(per_layer.sum())))

    # ---- networks ------------------------------------------------------------------------
    def _layer_scale(self) -> Tensor:
        return self.transform.steps[1].scale

    def _generate_u(self, e_inc: Tensor, c: Tensor, source: Source
                    ) -> tuple[list[Tensor], Tensor | None]:
        """Per-layer images and overflow in the network space u (see transform)."""
        reserve(source, self.config.latent_dim)  # the only draw: no 4096-normal block
        z = randn(source, len(c), self.config.latent_dim, device=c.device)
        scaled = (e_inc / self.energy.e_max)[:, None]  # the incident energy, scaled, x z
        h = torch.cat([z * scaled, c], 1)
        images: list[Tensor] = []
        for k, stream in enumerate(self.streams):
            image = torch.relu(stream(h))
            if k and len(self.attention):
                image = self.attention[k - 1](image, images[-1])
            images.append(image)
        overflow = None
        if self.overflow_head is not None:
            overflow = torch.relu(self.overflow_head(h)) * self.overflow_scale
        return images, overflow

    def _flat(self, images: list[Tensor]) -> Tensor:
        return torch.cat([im.flatten(1) for im in images], 1)

    def _images(self, u: Tensor) -> list[Tensor]:
        offsets = self.geometry.layer_offsets
        return [u[:, offsets[k]:offsets[k + 1]].view(-1, 1, *s)
                for k, s in zip(self.layer_ids, self.layer_shapes)]

    def _relative_response(self, u: Tensor, overflow: Tensor | None) -> Tensor:
        """E_hat / E per shower: (cells + overflow) / (E * R)."""
        frac = self.transform.steps[0].fraction
        index = self.transform.steps[1].layer_index
        cells = (u * self._layer_scale()[index]).sum(1) * frac
        if overflow is not None:
            cells = cells + overflow.sum(1) * frac
        return cells / self.response

    def _energy_features(self, images: list[Tensor], u: Tensor, overflow: Tensor | None
                         ) -> Tensor:
        scale = self._layer_scale()[self.layer_ids]
        sums = torch.stack([im.flatten(1).mean(1) for im in images], 1) * scale
        sparsity = torch.stack([(1 - torch.exp(-im / self.config.sparsity_scale))
                                .flatten(1).mean(1) for im in images], 1)
        parts = [torch.log1p(sums), sparsity]
        if overflow is not None:
            parts.append(torch.log1p(overflow / self.overflow_scale))
        parts.append(self._relative_response(u, overflow)[:, None])
        return torch.cat(parts, 1)

    def _discriminate(self, images: list[Tensor], overflow: Tensor | None, c: Tensor
                      ) -> Tensor:
        eps = self.config.log_eps
        logs = [torch.log(im + eps) - math.log(eps) for im in images]
        feats = self._energy_features(images, self._flat(images), overflow)
        return self.discriminator(logs, feats, c)

    # ---- training ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        gen = [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]
        return {
            "generator": torch.optim.Adam(gen, c.lr_generator, betas=tuple(c.betas)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(),
                                              c.lr_discriminator, betas=tuple(c.betas)),
        }

    def energy_mismatch(self, u: Tensor, overflow: Tensor | None) -> Tensor:
        """L_E per shower: |E - E_hat| / E."""
        return (1 - self._relative_response(u, overflow)).abs()

    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        c = self.condition_features(batch.e_inc)
        u_real = self.transform(batch.x, batch.e_inc)
        real_images = self._images(u_real)
        o_real = None
        if self.has_overflow and batch.overflow is not None:
            o_real = batch.overflow / (batch.e_inc[:, None] * self.transform.steps[0].fraction)
        elif self.has_overflow:
            o_real = torch.zeros(len(c), self.geometry.n_layers, device=c.device)
        le_real = self.energy_mismatch(u_real, o_real).mean()
        ones, zeros = torch.ones(len(c), device=c.device), torch.zeros(len(c), device=c.device)
        bce = F.binary_cross_entropy_with_logits
        lam = self.config.energy_weight
        with ctx.autocast():
            with torch.no_grad():
                fake_images, o_fake = self._generate_u(batch.e_inc, c, ctx.generator)
            le_fake = self.energy_mismatch(self._flat(fake_images), o_fake).mean()
            adv_d = bce(self._discriminate(real_images, o_real, c).float(), ones) \
                + bce(self._discriminate(fake_images, o_fake, c).float(), zeros)
        ctx.step("discriminator", adv_d + lam * (le_real + le_fake))
        out = {"discriminator": adv_d.item(), "energy_real": le_real.item()}
        self.discriminator.requires_grad_(False)
        try:
            for _ in range(self.config.generator_steps):
                with ctx.autocast():
                    fake_images, o_fake = self._generate_u(batch.e_inc, c, ctx.generator)
                    le_fake = self.energy_mismatch(self._flat(fake_images), o_fake).mean()
                    adv_g = bce(self._discriminate(fake_images, o_fake, c).float(), ones)
                ctx.step("generator", adv_g + lam * (le_fake + le_real))
        finally:
            self.discriminator.requires_grad_(True)
        out.update(generator=adv_g.item(), energy=le_fake.item())
        return out

    # ---- generation ------------------------------------------------------------------------
    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor | tuple[Tensor, Tensor]:
        c = self.condition_features(e_inc)
        images, overflow = self._generate_u(e_inc, c, noise)
        x = self.transform.inverse(self._flat(images).float(), e_inc)
        if overflow is None:
            return x
        return x, overflow.float() * (e_inc[:, None] * self.transform.steps[0].fraction)
