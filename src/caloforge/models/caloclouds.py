"""CaloClouds: point-cloud DDPM (seed 003, Algorithms 1 and 2; Ho, Jain and Abbeel 2020).

The point denoiser predicts the noise ``eps`` added to a standardised cloud at step
``t`` of ``T = 100``: training draws ``t ~ U{1..T}`` and ``eps ~ N(0, I)`` per shower and
minimises ``|eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)|^2`` over the
real points (Algorithm 1); sampling starts from ``x_T ~ N(0, I)`` and applies

    x_{t-1} = (x_t - (1 - alpha_t) / sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(alpha_t)
              + sigma_t z,    sigma_t^2 = beta_t,   z = 0 at t = 1

for ``t = T..1`` (Algorithm 2): 100 network evaluations.  The variances ``beta_t`` follow
the cosine schedule of Nichol and Dhariwal (2021), capped at ``max_beta = 0.2``: it
reaches ``abar_T = 0.0026`` in 100 steps (a linear 1e-4..0.02 schedule keeps a third
of the signal), and the cap keeps ``1 / sqrt(alpha_t)`` from amplifying the network's
errors 30-fold in the last steps as the uncapped schedule (0.999) does.  The
ShowerFlow and the placement of the points are shared with the other point models
(:mod:`caloforge.models.pointdiffusion`).

>>> model = CaloClouds.from_config(None, "ild-ecal", preset="tiny")
>>> int(model.betas.shape[0]), [p for p, _ in model.phases()]
(100, ['showerflow', 'diffusion'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from caloforge.errors import ConfigError
from caloforge.geometry import Geometry
from caloforge.models.base import StepContext, register
from caloforge.models.noise import Source
from caloforge.models.pointdiffusion import (
    FEATURES,
    SMALL,
    TINY,
    PointDiffusionModel,
    PointModelConfig,
)
from caloforge.models.pointnets import noise_embedding, point_noise


@dataclass
class CaloCloudsConfig(PointModelConfig):
    diffusion_steps: int = 100
    max_beta: float = 0.2  # cap of beta_t: 1/sqrt(alpha_t) amplifies errors late in sampling

    def validate(self) -> None:
        super().validate()
        if self.diffusion_steps < 2:
            raise ConfigError("config key 'diffusion_steps' must be >= 2")
        if not 0 < self.max_beta < 1:
            raise ConfigError("config key 'max_beta' must lie in (0, 1)")


def cosine_betas(steps: int, max_beta: float = 0.2, offset: float = 0.008) -> Tensor:
    """``beta_t``, t = 1..steps, of the cosine schedule, capped at ``max_beta``."""
    s = torch.arange(steps + 1, dtype=torch.float64) / steps
    abar = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta).float()


@register("caloclouds")
class CaloClouds(PointDiffusionModel):
    """Point-cloud DDPM with 100 denoising steps (see the module docstring)."""

    Config = CaloCloudsConfig
    presets = {"tiny": dict(TINY), "small": dict(SMALL)}

    def __init__(self, config: CaloCloudsConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        betas = cosine_betas(config.diffusion_steps, config.max_beta)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("abar", torch.cumprod(1 - betas, 0), persistent=False)
        self.calls = 0

    def sampler_settings(self) -> dict[str, int]:
        return {"steps": int(self.config.diffusion_steps)}

    def eps(self, x: Tensor, t: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """Predicted noise for steps ``t`` (B,) in 1..T."""
        self.calls += 1
        level = t.float() / self.config.diffusion_steps
        ctx = torch.cat([context, noise_embedding(level, self.config.embed_dim)], 1)
        return self.net(x, mask, ctx)

    def diffusion_loss(self, x0: Tensor, mask: Tensor, context: Tensor, ctx: StepContext
                       ) -> dict[str, float]:
        t = torch.randint(1, self.config.diffusion_steps + 1, (len(x0),),
                          generator=ctx.generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=ctx.generator, device=x0.device) * mask[..., None]
        abar = self.abar[t - 1][:, None, None]
        with ctx.autocast():
            pred = self.eps(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t, mask, context).float()
        loss = self.masked_mse(pred, eps, mask)
        ctx.step("points", loss)
        return {"ddpm": loss.item()}

    def sample_points(self, mask: Tensor, context: Tensor, noise: Source) -> Tensor:
        counts, p = mask.sum(1), mask.shape[1]
        x = point_noise(noise, counts, p, FEATURES, mask.device)
        ones = torch.ones_like(mask[:, 0], dtype=torch.long)  # traced: dynamic batch
        for t in range(self.config.diffusion_steps, 0, -1):
            beta, abar = self.betas[t - 1], self.abar[t - 1]
            eps = self.eps(x, ones * t, mask, context)
            x = (x - beta / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - beta)
            if t > 1:
                x = x + torch.sqrt(beta) * point_noise(noise, counts, p, FEATURES, mask.device)
        return x * mask[..., None]
