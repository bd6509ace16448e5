"""Energy-conditioned Wasserstein GAN with gradient penalty (seed 001, Sec. 3.1).

- Generator: latent noise + normalised incident energy -> 3-D grid (upsampling convs).
- Critic: 3-D residual blocks, conditioned on the incident energy.
- Energy constrainer: a fully connected regressor of the incident energy from a shower,
  pre-trained on real showers (phase ``constrainer``) and frozen during GAN training;
  the generator pays ``constrainer_weight * |constrainer(G(z, E)) - E|``.
- One critic update per training step and a generator update every ``n_critic`` steps.

Networks work in a preprocessed space: energies divided by the incident energy (times the
mean visible fraction), then ``log(u + eps) - log(eps)``, which is >= 0 exactly when the
energy is; the generator ends in a ReLU, so generated energies are non-negative.

>>> model = WGAN.from_config(None, "ild-ecal", preset="tiny")
>>> [name for name, _ in model.phases()]
['constrainer', 'gan']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from caloforge.data.batch import Conditions
from caloforge.errors import ConfigError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register
from caloforge.models.config import ModelConfig, positive
from caloforge.models.nets import Critic3d, GridDecoder, gradient_penalty, mlp
from caloforge.models.noise import ShowerNoise, Source, randn
from caloforge.models.transforms import Compose, LogTransform, ScaleByIncident


@dataclass
class WGANConfig(ModelConfig):
    latent_dim: int = 100
    gen_channels: tuple[int, ...] = (64, 32, 16)
    critic_channels: tuple[int, ...] = (16, 32, 64)
    critic_hidden: int = 128
    constrainer_hidden: tuple[int, ...] = (256, 128)
    lr_generator: float = 1e-4  # seed 001: 1e-4 (generator), 1e-5 (critic)
    lr_critic: float = 1e-5
    lr_constrainer: float = 1e-3
    betas: tuple[float, ...] = (0.5, 0.9)
    n_critic: int = 5
    gp_weight: float = 10.0
    constrainer_weight: float = 1.0
    constrainer_fraction: float = 0.1  # share of the training steps used to pre-train it
    log_eps: float = 1e-5
    threshold_output: bool = True

    def validate(self) -> None:
        super().validate()
        positive(self, "latent_dim", "lr_generator", "lr_critic", "lr_constrainer", "n_critic",
                 "log_eps")
        if not 0 < self.constrainer_fraction < 1:
            raise ConfigError("config key 'constrainer_fraction' must lie in (0, 1)")
        if len(self.betas) != 2 or len(self.gen_channels) < 1 or len(self.critic_channels) < 1:
            raise ConfigError("'betas' needs 2 values; channel lists need at least one")


@register("wgan")
class WGAN(GenerativeModel):
    """Conditional WGAN-GP with a frozen pre-trained energy constrainer."""

    Config = WGANConfig
    presets = {
        "tiny": {"latent_dim": 16, "gen_channels": [16, 8], "critic_channels": [4, 8],
                 "critic_hidden": 32, "constrainer_hidden": [32], "lr_generator": 1e-3,
                 "lr_critic": 1e-3, "n_critic": 2, "constrainer_fraction": 0.2},
    }
    requires_regular_grid = True
    condition_inputs = ("theta", "phi")

    def __init__(self, config: WGANConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        grid = self.grid_shape
        self.transform = Compose(ScaleByIncident(), LogTransform(config.log_eps))
        n_c = self.n_conditions  # energy (+ direction for angle-conditioned models)
        self.generator = GridDecoder(config.latent_dim, grid, config.gen_channels, cond=n_c)
        self.critic = Critic3d(grid, 1, config.critic_channels, config.critic_hidden, cond=n_c)
        self.constrainer = mlp([geometry.n_voxels, *config.constrainer_hidden, 1])

    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        super().fit_preprocessing(x, e_inc)
        self.transform.fit(x, e_inc)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        betas = tuple(c.betas)
        return {
            "constrainer": torch.optim.Adam(self.constrainer.parameters(), c.lr_constrainer),
            "generator": torch.optim.Adam(self.generator.parameters(), c.lr_generator,
                                          betas=betas),
            "critic": torch.optim.Adam(self.critic.parameters(), c.lr_critic, betas=betas),
        }

    def phases(self) -> list[tuple[str, float]]:
        f = self.config.constrainer_fraction
        return [("constrainer", f), ("gan", 1 - f)]

    def _fake(self, c: Tensor, gen: Source) -> Tensor:
        z = randn(gen, len(c), self.config.latent_dim, device=c.device)
        return torch.relu(self.generator(z, c))[:, None]  # (B, 1, L, A, B)

    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        c = self.condition_features(batch.e_inc, batch.angles)
        e_c = c[:, :1]  # the constrainer regresses the energy condition only
        real = self.transform(batch.x, batch.e_inc).view(len(c), 1, *self.grid_shape)
        if phase == "constrainer":
            with ctx.autocast():
                loss = nn.functional.mse_loss(self.constrainer(real.flatten(1)).float(), e_c)
            ctx.step("constrainer", loss)
            return {"constrainer": loss.item()}
        self.constrainer.requires_grad_(False)  # frozen during GAN training (seed 001)
        out: dict[str, float] = {}
        with ctx.autocast():
            fake = self._fake(c, ctx.generator).detach()
            w = self.critic(real, c).float().mean() - self.critic(fake, c).float().mean()
        gp = gradient_penalty(self.critic, real, fake, c, ctx.generator)
        ctx.step("critic", -w + self.config.gp_weight * gp)
        out.update(wasserstein=w.item(), gp=gp.item())
        if ctx.step_index % self.config.n_critic == 0:
            with ctx.autocast():
                fake = self._fake(c, ctx.generator)
                adv = -self.critic(fake, c).float().mean()
                e_loss = (self.constrainer(fake.flatten(1)).float() - e_c).abs().mean()
            ctx.step("generator", adv + self.config.constrainer_weight * e_loss)
            out.update(generator=adv.item(), energy=e_loss.item())
        return out

    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor:
        c = self.condition_features(e_inc, self.angle_tensor(conditions, len(e_inc)))
        y = self._fake(c, noise).flatten(1).float()
        return self.transform.inverse(y, e_inc)
