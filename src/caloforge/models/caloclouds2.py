"""CaloClouds II: continuous-time point-cloud diffusion with the EDM design (seed 003).

The point denoiser (:class:`~caloforge.models.pointnets.PointDenoiser`) is wrapped in
the preconditioning of Karras, Aittala, Aila and Laine, "Elucidating the Design Space
of Diffusion-Based Generative Models", NeurIPS 2022 (arXiv:2206.00364), Table 1:

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
    c_skip = sd^2 / (sigma^2 + sd^2)      c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in = 1 / sqrt(sigma^2 + sd^2)       c_noise = ln(sigma) / 4

with ``sd = sigma_data`` (1: the point features are standardised).  Training draws
``ln sigma ~ N(P_mean, P_std^2)`` and minimises ``lambda(sigma) |D(x + sigma n) - x|^2``
with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``.  Sampling integrates the probability-
flow ODE with Heun's 2nd-order method (Algorithm 1 of the paper, no stochastic churn)
over the rho-schedule

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

``i = 0..N-1``, then ``sigma_N = 0``: ``N`` steps cost ``2 N - 1`` network evaluations
(the last step is an Euler step).  The default ``steps = 13`` gives the 25 evaluations
of CaloClouds II; set another number at sampling time with
``model.set_sampler(steps=N)`` (``caloforge generate --sampler steps=N``), also
``sigma_min`` / ``sigma_max``; the settings are recorded in generated files.

>>> model = CaloClouds2.from_config(None, "ild-ecal", preset="tiny")
>>> model.sampler_settings()["steps"], model.evaluations()
(13, 25)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from caloforge.errors import ConfigError, InputError
from caloforge.geometry import Geometry
from caloforge.models.base import StepContext, register
from caloforge.models.config import positive
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
class CaloClouds2Config(PointModelConfig):
    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    steps: int = 13  # default sampler steps: 2 * 13 - 1 = 25 network evaluations

    def validate(self) -> None:
        super().validate()
        positive(self, "sigma_data", "sigma_min", "rho", "p_std", "steps")
        if not self.sigma_max > self.sigma_min:
            raise ConfigError("config key 'sigma_max' must exceed 'sigma_min'")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float,
                  device: torch.device | str = "cpu") -> Tensor:
    """The ``steps`` noise levels of the rho-schedule, decreasing, then a final 0."""
    ramp = torch.linspace(0, 1, steps, device=device, dtype=torch.float64) if steps > 1 \
        else torch.zeros(1, device=device, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)]).float()


class EDMSampling:
    """Sampler settings shared by the EDM teacher and its distilled student."""

    sampler_keys: tuple[str, ...] = ("steps", "sigma_min", "sigma_max")

    def _init_sampler(self, config: CaloClouds2Config) -> None:
        self._sampler = {"steps": int(config.steps), "sigma_min": float(config.sigma_min),
                         "sigma_max": float(config.sigma_max)}

    def check_sampler(self, settings: dict[str, Any]) -> None:
        steps = settings["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"sampler option steps={steps!r}: need an integer >= 1")
        for key in ("sigma_min", "sigma_max"):
            v = settings[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise InputError(f"sampler option {key}={v!r}: noise levels must be positive "
                                 "and finite")
        if settings["sigma_max"] <= settings["sigma_min"]:
            raise InputError(f"sampler options: sigma_max={settings['sigma_max']} must exceed "
                             f"sigma_min={settings['sigma_min']}")

    def set_sampler(self, **options: Any) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.sampler_keys))
        if unknown:
            raise InputError(f"model {self.name!r} has no sampler option {unknown[0]!r} "  # type: ignore[attr-defined]
                             f"(known: {', '.join(self.sampler_keys)})")
        settings = {**self._sampler, **options}
        self.check_sampler(settings)
        self._sampler = settings
        return self.sampler_settings()

    def sampler_settings(self) -> dict[str, Any]:
        return dict(self._sampler)


@register("caloclouds2")
class CaloClouds2(EDMSampling, PointDiffusionModel):
    """Point-cloud EDM score model with a Heun sampler (see the module docstring)."""

    Config = CaloClouds2Config
    presets = {"tiny": dict(TINY), "small": dict(SMALL)}

    def __init__(self, config: CaloClouds2Config, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        self._init_sampler(config)
        self.calls = 0  # network evaluations since construction (tests count them)

    def evaluations(self) -> int:
        """Network evaluations per sample with the current settings."""
        return 2 * self._sampler["steps"] - 1

    # ---- the preconditioned denoiser -------------------------------------------------------
    def denoise(self, x: Tensor, sigma: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """``D(x; sigma)`` for per-shower ``sigma`` (B,)."""
        sd = self.config.sigma_data
        s = sigma[:, None, None]
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / torch.sqrt(s ** 2 + sd ** 2)
        c_in = 1 / torch.sqrt(s ** 2 + sd ** 2)
        c_noise = torch.log(sigma) / 4
        self.calls += 1
        ctx = torch.cat([context, noise_embedding(c_noise, self.config.embed_dim)], 1)
        return (c_skip * x + c_out * self.net(c_in * x, mask, ctx)) * mask[..., None]

    def diffusion_loss(self, x0: Tensor, mask: Tensor, context: Tensor, ctx: StepContext
                       ) -> dict[str, float]:
        c = self.config
        rnd = torch.randn(len(x0), generator=ctx.generator, device=x0.device)
        sigma = torch.exp(rnd * c.p_std + c.p_mean)
        n = torch.randn(x0.shape, generator=ctx.generator, device=x0.device) * mask[..., None]
        weight = (sigma ** 2 + c.sigma_data ** 2) / (sigma * c.sigma_data) ** 2
        with ctx.autocast():
            d = self.denoise(x0 + sigma[:, None, None] * n, sigma, mask, context).float()
        loss = self.masked_mse(d, x0, mask, weight)
        ctx.step("points", loss)
        return {"edm": loss.item()}

    # ---- Heun sampler ---------------------------------------------------------------------
    def sample_points(self, mask: Tensor, context: Tensor, noise: Source) -> Tensor:
        st = self._sampler
        sig = karras_sigmas(st["steps"], st["sigma_min"], st["sigma_max"], self.config.rho,
                            mask.device)
        counts = mask.sum(1)
        x = point_noise(noise, counts, mask.shape[1], FEATURES, mask.device) * sig[0]
        ones = torch.ones_like(mask[:, 0], dtype=torch.float32)  # traced: dynamic batch
        for i in range(len(sig) - 1):
            t, t_next = sig[i], sig[i + 1]
            d = (x - self.denoise(x, ones * t, mask, context)) / t
            x_next = x + (t_next - t) * d
            if t_next > 0:
                d2 = (x_next - self.denoise(x_next, ones * t_next, mask, context)) / t_next
                x_next = x + (t_next - t) * 0.5 * (d + d2)
            x = x_next
        return x
