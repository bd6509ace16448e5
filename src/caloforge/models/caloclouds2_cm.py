"""CaloClouds II (CM): a consistency model distilled from a ``caloclouds2`` teacher.

Consistency distillation (Song, Dhariwal, Chen and Sutskever, "Consistency Models",
ICML 2023, arXiv:2303.01469, Algorithm 2): the student ``f(x, sigma)`` maps a noisy
cloud at any noise level straight to the clean cloud.  It is parameterised so that the
boundary condition ``f(x, sigma_min) = x`` holds exactly:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in x; c_noise)
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)
    c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2)

(``c_in``, ``c_noise`` as the EDM teacher).  Training: the teacher's rho-schedule is cut
into ``distill_levels`` noise levels; a cloud is noised to level ``n + 1``, the frozen
teacher takes one Heun step to level ``n``, and the student at ``n + 1`` is pulled
towards a target network (an EMA of the student, decay ``target_decay``, in the
checkpoints) at ``n``.  The student reuses the teacher's ShowerFlow and point
standardisation and, with ``init_from_teacher`` (the default), starts from the teacher's
weights, so its network sizes must match the teacher's; ``init_from_teacher: false``
lets a student of another size (e.g. a small one for fast generation from a large
teacher) start from random weights.

The teacher is attached by reference (training config ``frozen_models: {teacher:
FOLDER}``): the student's ``model.yaml`` records the teacher's folder and the SHA-256
of its files, never copies of its weights; loading the student loads the teacher's
ShowerFlow from there, and a missing or changed teacher is one clear error.  A shipped
teacher (in the model zoo) is recorded by its name, so a shipped student finds it.

Sampling: 1 network evaluation (``sigma_max`` -> clean), or 2 with
``set_sampler(steps=2)``: re-noise the first result to ``sigma_mid`` and map it again.

>>> CaloClouds2CM.from_config(None, "ild-ecal", preset="tiny").sampler_settings()["steps"]
1
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from caloforge.errors import ConfigError, InputError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, register
from caloforge.models.caloclouds2 import CaloClouds2, CaloClouds2Config, EDMSampling, karras_sigmas
from caloforge.models.config import positive
from caloforge.models.noise import Source
from caloforge.models.pointdiffusion import FEATURES, SMALL, TINY, PointDiffusionModel
from caloforge.models.pointnets import noise_embedding, point_noise
from caloforge.models.showerflow import ShowerFlow

NETWORK_KEYS = ("hidden", "summary", "blocks", "embed_dim", "sigma_data", "conditions")
DATA_KEYS = ("sigma_data", "conditions")  # what the student must share with any teacher


@dataclass
class CaloClouds2CMConfig(CaloClouds2Config):
    steps: int = 1  # 1 or 2 network evaluations
    sigma_mid: float = 0.8  # where the 2-step sampler re-noises
    distill_levels: int = 18
    target_decay: float = 0.95
    lr: float = 1e-4
    init_from_teacher: bool = True  # start from the teacher's weights (sizes must match)

    def validate(self) -> None:
        super().validate()
        positive(self, "sigma_mid")
        if self.distill_levels < 2:
            raise ConfigError("config key 'distill_levels' must be >= 2")
        if not 0 <= self.target_decay < 1:
            raise ConfigError("config key 'target_decay' must lie in [0, 1)")


@register("caloclouds2-cm")
class CaloClouds2CM(EDMSampling, PointDiffusionModel):
    """Consistency-distilled point-cloud model (see the module docstring)."""

    Config = CaloClouds2CMConfig
    presets = {"tiny": {**TINY, "lr": 1e-3, "distill_levels": 8}, "small": dict(SMALL)}
    owns_showerflow = False
    sampler_keys = ("steps", "sigma_min", "sigma_max", "sigma_mid")

    def __init__(self, config: CaloClouds2CMConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        self._init_sampler(config)
        self._sampler["sigma_mid"] = float(config.sigma_mid)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("from_teacher", torch.zeros((), dtype=torch.bool))
        self.teacher_ref: dict[str, Any] | None = None
        self._teacher: list[CaloClouds2] = []  # a list: not a submodule, never saved
        self.calls = 0

    # ---- the teacher --------------------------------------------------------------------------
    @property
    def teacher(self) -> CaloClouds2:
        if not self._teacher:
            raise InputError("caloclouds2-cm needs its frozen caloclouds2 teacher: train it "
                             "with 'frozen_models: {teacher: FOLDER}' in the training config")
        return self._teacher[0]

    def shower_flow(self) -> ShowerFlow:
        return self.teacher.showerflow

    def _check_teacher(self, teacher: GenerativeModel) -> None:
        if teacher.name != "caloclouds2":
            raise InputError(f"the frozen teacher of caloclouds2-cm must be a caloclouds2 "
                             f"model, not {teacher.name!r}")
        if teacher.geometry.name != self.geometry.name:
            raise InputError(f"the teacher is built for geometry {teacher.geometry.name!r}, "
                             f"the student for {self.geometry.name!r}")
        mine, theirs = self.config.to_dict(), teacher.config.to_dict()
        keys = NETWORK_KEYS if self.config.init_from_teacher else DATA_KEYS
        differ = [k for k in keys if mine[k] != theirs[k]]
        if differ:
            why = "starts from its teacher's network" if self.config.init_from_teacher \
                else "works in its teacher's data space"
            hint = [k for k in differ if k not in DATA_KEYS]
            raise InputError(f"caloclouds2-cm {why}: its {', '.join(differ)} must equal the "
                             f"teacher's ({', '.join(f'{k}={theirs[k]!r}' for k in differ)})"
                             + ("; or set init_from_teacher: false to start a student of "
                                "its own size from random weights" if hint else ""))

    def attach_frozen(self, models: dict[str, GenerativeModel],
                      references: dict[str, dict[str, str]]) -> None:
        """Check and bind the frozen teacher (before any fitting, also on resume)."""
        if "teacher" not in models:
            raise ConfigError("caloclouds2-cm distils a frozen caloclouds2 teacher: set "
                              "'frozen_models: {teacher: FOLDER}' in the training config")
        teacher = models["teacher"]
        self._check_teacher(teacher)
        self._teacher = [teacher]
        from caloforge.models.folder import portable_reference
        ref = portable_reference(references["teacher"])
        self.teacher_ref = {**ref, "model": teacher.name, "config": teacher.config.to_dict()}

    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, mask: Tensor | None = None,
                          angles: Tensor | None = None) -> None:
        """A fresh student starts from its teacher: after the usual checks of the data, the
        teacher's standardisation and conditions (and, with ``init_from_teacher``, its
        weights) replace the fitted ones."""
        super().fit_preprocessing(x, e_inc, mask=mask)
        if not self._teacher:
            raise ConfigError("caloclouds2-cm distils a frozen caloclouds2 teacher: set "
                              "'frozen_models: {teacher: FOLDER}' in the training config")
        teacher = self._teacher[0]
        with torch.no_grad():
            own = self.state_dict()
            weights = self.config.init_from_teacher
            for k, v in teacher.state_dict().items():
                if k in own and not k.startswith("showerflow.") \
                        and (weights or not k.startswith("net.")):
                    own[k].copy_(v)
            self.target.load_state_dict(self.net.state_dict())
            self.from_teacher.fill_(weights)
        self.condition_space = teacher.condition_space

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "teacher": self.teacher_ref}

    def load_metadata(self, meta: dict[str, Any]) -> None:
        super().load_metadata(meta)
        from caloforge.models.folder import load_referenced, zoo_dir

        ref = meta.get("teacher")
        if not isinstance(ref, dict) or "path" not in ref or "sha256" not in ref:
            raise InputError("the model records no teacher (caloclouds2-cm needs its "
                             "caloclouds2 teacher folder)")
        # A shipped teacher is recorded by its name in the zoo.
        teacher = load_referenced(
            ref, "teacher", since="the student was distilled from it", relative_to=zoo_dir(),
            consequence=": caloclouds2-cm samples with the teacher's ShowerFlow; restore "
                        "that teacher or distil a new student")
        self._check_teacher(teacher)
        self._teacher = [teacher.requires_grad_(False)]
        self.teacher_ref = ref

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> CaloClouds2CM:
        super()._apply(fn, *args, **kwargs)  # .to(device) moves the borrowed teacher too
        for t in self._teacher:
            t._apply(fn, *args, **kwargs)
        return self

    # ---- the consistency function -------------------------------------------------------------
    def consistency(self, x: Tensor, sigma: Tensor, mask: Tensor, context: Tensor,
                    target: bool = False) -> Tensor:
        """``f(x, sigma)`` of the student (or of the target network)."""
        c = self.config
        sd, s_min = c.sigma_data, c.sigma_min
        s = sigma[:, None, None]
        c_skip = sd ** 2 / ((s - s_min) ** 2 + sd ** 2)
        c_out = sd * (s - s_min) / torch.sqrt(s ** 2 + sd ** 2)
        c_in = 1 / torch.sqrt(s ** 2 + sd ** 2)
        ctx = torch.cat([context, noise_embedding(torch.log(sigma) / 4, c.embed_dim)], 1)
        net = self.target if target else self.net
        self.calls += 0 if target else 1
        return (c_skip * x + c_out * net(c_in * x, mask, ctx)) * mask[..., None]

    def phases(self) -> list[tuple[str, float]]:
        return [("distill", 1.0)]

    def diffusion_loss(self, x0: Tensor, mask: Tensor, context: Tensor, ctx: StepContext
                       ) -> dict[str, float]:
        c = self.config
        teacher = self.teacher
        sig = karras_sigmas(c.distill_levels, c.sigma_min, c.sigma_max, c.rho, x0.device)[:-1]
        n = torch.randint(0, c.distill_levels - 1, (len(x0),), generator=ctx.generator,
                          device=x0.device)
        t_hi, t_lo = sig[n], sig[n + 1]
        z = torch.randn(x0.shape, generator=ctx.generator, device=x0.device) * mask[..., None]
        x_hi = x0 + t_hi[:, None, None] * z
        with torch.no_grad():  # one Heun step of the frozen teacher, t_hi -> t_lo
            step = (t_lo - t_hi)[:, None, None]
            d = (x_hi - teacher.denoise(x_hi, t_hi, mask, context)) / t_hi[:, None, None]
            x_e = x_hi + step * d
            d2 = (x_e - teacher.denoise(x_e, t_lo, mask, context)) / t_lo[:, None, None]
            x_lo = x_hi + step * 0.5 * (d + d2)
            goal = self.consistency(x_lo, t_lo, mask, context, target=True)
        with ctx.autocast():
            pred = self.consistency(x_hi, t_hi, mask, context).float()
        loss = self.masked_mse(pred, goal, mask)
        ctx.step("points", loss)
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), self.net.parameters()):
                p_t.lerp_(p, 1.0 - c.target_decay)
        return {"consistency": loss.item()}

    def training_step(self, batch: Any, phase: str, ctx: StepContext) -> dict[str, float]:
        self.teacher  # noqa: B018 - refuse early and clearly without a teacher
        return super().training_step(batch, "diffusion", ctx)

    # ---- sampling ------------------------------------------------------------------------------
    def check_sampler(self, settings: dict[str, Any]) -> None:
        super().check_sampler(settings)
        if settings["steps"] not in (1, 2):
            raise InputError(f"sampler option steps={settings['steps']!r}: a consistency "
                             "model samples in 1 or 2 steps")
        mid = settings["sigma_mid"]
        if isinstance(mid, bool) or not isinstance(mid, (int, float)) or not math.isfinite(mid) \
                or not settings["sigma_min"] < mid < settings["sigma_max"]:
            raise InputError(f"sampler option sigma_mid={mid!r}: must lie between sigma_min "
                             "and sigma_max")

    def evaluations(self) -> int:
        return int(self._sampler["steps"])

    def sample_points(self, mask: Tensor, context: Tensor, noise: Source) -> Tensor:
        st = self._sampler
        counts, p = mask.sum(1), mask.shape[1]
        ones = torch.ones_like(mask[:, 0], dtype=torch.float32)  # traced: dynamic batch
        x = point_noise(noise, counts, p, FEATURES, mask.device) * st["sigma_max"]
        x = self.consistency(x, ones * st["sigma_max"], mask, context)
        if st["steps"] == 2:
            scale = math.sqrt(st["sigma_mid"] ** 2 - self.config.sigma_min ** 2)
            x = x + scale * point_noise(noise, counts, p, FEATURES, mask.device)
            x = self.consistency(x, ones * st["sigma_mid"], mask, context)
        return x
