"""The model contract and the registry of architectures.

An architecture is one module with one :class:`GenerativeModel` subclass registered by
name.  The shared training loop (:mod:`caloforge.training`) owns the optimisers'
lifecycle, mixed precision, gradient synchronisation across processes, checkpoints and
RNG state; the model only says *what* to update:

- ``Config``: a :class:`~caloforge.models.config.Config` dataclass with ``presets``;
- ``fit_preprocessing(x, e_inc, angles)``: fit its invertible transforms on training showers;
- ``configure_optimizers()`` / ``phases()``: named optimisers and training phases
  (e.g. WGAN: pre-train the energy constrainer, then the GAN);
- ``training_step(batch, phase, ctx) -> dict of losses``: the update logic, calling
  ``ctx.step("critic", loss)`` as often as it needs (several critic steps per
  generator step, resetting critics, ...);
- ``finalize(x, e_inc)``: work after the last step (BIB-AE: fit the latent KDE);
- ``generate(e_inc, generator) -> (B, n_voxels) MeV``; the public :meth:`sample` wraps it.

>>> from caloforge.models import build, list_models
>>> {"bibae", "l2lflows", "wgan"} <= set(list_models())
True
>>> model = build("wgan", "ild-ecal", preset="tiny")
>>> model.geometry.name
'ild-ecal'
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from caloforge import __version__
from caloforge.data.batch import Conditions, PointCloudBatch, ShowerBatch
from caloforge.errors import (
    CaloforgeError,
    ConfigError,
    GeometryError,
    InputError,
)
from caloforge.geometry import Geometry, get_geometry
from caloforge.models.conditioning import ConditionSpace
from caloforge.models.config import Config, ModelConfig
from caloforge.models.folder import (  # noqa: F401 - the public names of caloforge.models
    META_FILE,
    WEIGHTS_FILE,
    list_zoo,
    load,
    read_model_meta,
    resolve_model_dir,
    save_model_dir,
    zoo_dir,
)
from caloforge.models.noise import ShowerNoise, draw_seed
from caloforge.models.registry import get_model_class, list_models, register  # noqa: F401
from caloforge.models.transforms import EnergyCondition
from caloforge.utils import resolve_device


class TrainingDiverged(CaloforgeError):
    """A loss became NaN/inf; the last checkpoint is left as it was."""


@dataclass
class TrainBatch:
    """A training minibatch on the training device: voxel energies and incident energies
    in MeV, shapes ``(B, n_voxels)`` and ``(B,)``, and the direction where the model
    takes it (:meth:`GenerativeModel.angle_tensor`).

    For point-cloud models (``representation == "points"``) ``x`` is empty ``(B, 0)``
    and ``points``/``mask`` hold the clouds instead: ``points`` ``(B, P, 4)`` as x, y, z
    (mm, the geometry frame) and E (MeV), zero padded to the largest cloud of the batch
    (P), and ``mask`` ``(B, P)`` bool, True on the real points (in file order)."""

    x: Tensor
    e_inc: Tensor
    # (B, 2) theta, phi in rad, for models conditioned on the direction (else None)
    angles: Tensor | None = None
    points: Tensor | None = None
    mask: Tensor | None = None
    # (B, n_layers) MeV outside the cells, where the training data record it (CaloGAN)
    overflow: Tensor | None = None

    def __len__(self) -> int:
        return len(self.e_inc)


class StepContext:
    """What the training loop hands to :meth:`GenerativeModel.training_step`.

    ``step(name, loss)`` does one update of optimiser ``name``: zero the gradients,
    backward (through the fp16 grad scaler where used), all-reduce gradients across
    processes, optimiser step.  ``generator`` is the loop's noise generator on the
    training device; it is part of the checkpoint, so resumed runs draw the same noise.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator,
                 device: torch.device, amp_dtype: torch.dtype | None = None,
                 scaler: torch.amp.GradScaler | None = None,
                 grad_sync: Callable[[list[Tensor]], None] | None = None) -> None:
        self.optimizers = optimizers
        self.generator = generator
        self.device = device
        self.amp_dtype = amp_dtype
        self.scaler = scaler
        self.grad_sync = grad_sync
        self.step_index = 0
        self.epoch = 0
        self.total_steps = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision region for forward passes (no-op on CPU / when disabled)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self, name: str, loss: Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(
                f"non-finite {name} loss at step {self.step_index}: training diverged (lower "
                f"the learning rate, or --resume from the last checkpoint with other settings)")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.grad_sync is not None:
            self.grad_sync([p for g in opt.param_groups for p in g["params"]])
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()

    def reset_optimizer(self, name: str) -> None:
        """Forget the state (moments) of optimiser ``name``, e.g. for a resetting critic."""
        self.optimizers[name].state.clear()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. weight initialisation) with a fixed seed, then restore the global
    RNG: nn.Module constructors draw from it and we must not depend on or disturb it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class GenerativeModel(nn.Module):
    """Base class of all architectures (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = ModelConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    requires_regular_grid: ClassVar[bool] = False
    # What sample() returns: "voxels" (ShowerBatch) or "points" (PointCloudBatch).
    representation: ClassVar[str] = "voxels"
    # Why `caloforge export` refuses this architecture (empty: it can be exported).
    export_refusal: ClassVar[str] = ""
    # Conditions beyond the incident energy the networks can take (e.g. theta, phi);
    # which of them a trained model uses is set from its training data (fit_conditions).
    condition_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config, geometry: Geometry) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.energy = EnergyCondition()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.condition_space = ConditionSpace()
        extra = tuple(getattr(config, "conditions", ()))
        unknown = [c for c in extra if c not in self.condition_inputs]
        if unknown:
            raise ConfigError(
                f"model {self.name!r} cannot be conditioned on {', '.join(unknown)} (it takes "
                f"incident_energy{''.join(', ' + c for c in self.condition_inputs)})")
        self.takes_angles = bool(extra)
        if self.takes_angles:
            # sin(theta_max) of the training data: direction inputs of order one
            self.register_buffer("angle_scale", torch.ones(()))

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def make_config(cls, config: Config | dict[str, Any] | None = None,
                    preset: str | None = None) -> Config:
        """Config from a preset (``"tiny"``, ``"default"``) updated by ``config``."""
        preset = preset or "default"
        if preset not in cls.presets and preset != "default":
            raise ConfigError(
                f"model {cls.name!r} has no preset {preset!r}; known: "
                f"{', '.join(['default', *cls.presets])}")
        base = dict(cls.presets.get(preset, {}))
        if isinstance(config, Config):
            if not isinstance(config, cls.Config):
                raise ConfigError(f"{type(config).__name__} is not a config of model {cls.name!r}")
            base.update(config.to_dict())
        elif config:
            base.update(config)
        return cls.Config.from_dict(base)

    @classmethod
    def from_config(cls, config: Config | dict[str, Any] | None, geometry: str | Geometry,
                    seed: int = 0, preset: str | None = None) -> GenerativeModel:
        """Build with weights initialised from ``seed`` (not from the global RNG)."""
        geo = get_geometry(geometry) if isinstance(geometry, str) else geometry
        if cls.requires_regular_grid and not geo.is_regular:
            raise GeometryError(
                f"model {cls.name!r} uses 3-D convolutions and needs a regular grid "
                f"(all layers of one 2-D shape); geometry {geo.name!r} has layers of "
                f"different shapes - use 'l2lflows' for it")
        cfg = cls.make_config(config, preset)
        with seeded(seed):
            return cls(cfg, geo)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(layers, a, b) of a regular geometry."""
        a, b = self.geometry.layer_shape(0)
        return self.geometry.n_layers, a, b

    @property
    def device(self) -> torch.device:
        return self.fitted.device

    # ---- training-side API (overridden by architectures) -------------------------------
    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        """Fit transforms on training showers (MeV); the base fits the energy range.
        ``angles``: the showers' (theta, phi) in rad for models that take them (as in
        :class:`TrainBatch`).  Point-cloud models are called as
        ``fit_preprocessing(points, e_inc, mask=mask, angles=angles)``
        with padded clouds as in :class:`TrainBatch` (also ``finalize``, with ``mask=``)."""
        self.energy.fit(e_inc)
        self.fitted.fill_(True)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:  # pragma: no cover
        raise NotImplementedError

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer],
                             total_steps: int) -> dict[str, Any]:
        """Learning-rate schedulers, stepped once per training step (default: none)."""
        return {}

    def phases(self) -> list[tuple[str, float]]:
        """Training phases as ``(name, fraction of the steps)``."""
        return [("main", 1.0)]

    def training_step(self, batch: TrainBatch, phase: str,
                      ctx: StepContext) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def attach_frozen(self, models: dict[str, GenerativeModel],
                      references: dict[str, dict[str, str]]) -> None:
        """Hook before fitting (also on resume): the frozen models of the run
        (``training.frozen_models``, loaded and hash-checked) and their ``{"path",
        "sha256"}`` references.  A student checks and keeps its teacher here; the default
        takes them as they come (``training_step`` also sees them as ``ctx.frozen``)."""

    @property
    def requires_overflow(self) -> bool:
        """True if training needs the per-layer overflow energies of the showers (the
        trainer then refuses data without them, naming the file)."""
        return False

    def fit_overflow(self, overflow: Tensor | None, e_inc: Tensor) -> None:
        """Hook after :meth:`fit_preprocessing`, with the same showers' per-layer overflow
        energies in MeV (``(B, n_layers)``, None where the data hold none)."""

    def on_epoch_end(self, epoch: int, ctx: StepContext) -> None:
        """Hook after each epoch (BIB-AE resets its resetting critics here)."""

    def finalize(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                 angles: Tensor | None = None, mask: Tensor | None = None) -> None:
        """Hook after the last training step, with (a subset of) the training data
        (``angles``: its theta, phi for models that take them; point-cloud models get
        padded clouds as ``x`` and their ``mask``, as in :class:`TrainBatch`)."""

    # ---- generation ----------------------------------------------------------------------
    def set_sampler(self, **options: Any) -> dict[str, Any]:
        """Sampler options for the following calls to :meth:`sample` (e.g. ``steps`` of a
        diffusion model), checked; returns all the settings now in force (what generated
        files record).  The base has none: any option is an :class:`InputError`."""
        if options:
            raise InputError(f"model {self.name!r} takes no sampler options (got "
                             f"{', '.join(sorted(options))})")
        return self.sampler_settings()

    def sampler_settings(self) -> dict[str, Any]:
        """The sampler settings in force (empty for one-pass generators)."""
        return {}

    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """One chunk of showers for incident energies ``e_inc`` (MeV), drawing all
        randomness from ``noise`` (:mod:`caloforge.models.noise`: row i from shower i's own
        stream).  ``conditions`` holds the chunk's other conditions (already checked).

        ``representation == "voxels"``: ``(B, n_voxels)`` voxel energies in MeV, or
        ``(voxels, overflow)`` with the ``(B, n_layers)`` energy outside the cells for a
        model that generates it (geometries that record overflow).
        ``representation == "points"``: ``(points, mask)``, points ``(B, P, 4)`` as
        (x, y, z in mm, energy in MeV) and mask ``(B, P)`` marking the real points.
        """
        raise NotImplementedError  # pragma: no cover

    @property
    def energy_range_mev(self) -> tuple[float, float]:
        return self.energy.range_mev

    @classmethod
    def conditions_from_data(cls, conditions: Conditions) -> tuple[str, ...]:
        """The conditions beyond the energy that vary in ``conditions`` and that this
        architecture can take: the value of its config key ``conditions``."""
        out = []
        for name in cls.condition_inputs:
            v = getattr(conditions, name, None)
            if v is not None and len(v) and np.ptp(v) > 0:
                out.append(name)
        if "phi" in out and "theta" in cls.condition_inputs and "theta" not in out:
            out.insert(0, "theta")  # phi alone means nothing without an oblique angle
        return tuple(out)

    def fit_conditions(self, conditions: Conditions) -> None:
        """Record the conditions of the training showers (:meth:`ConditionSpace.fit`):
        ranges of those the model takes as inputs, fixed values of the others."""
        inputs = tuple(getattr(self.config, "conditions", ()))
        self.condition_space = ConditionSpace.fit(conditions, inputs, self.name)
        if self.takes_angles:
            space = self.condition_space
            theta_max = space.ranges.get("theta", (0.0, space.fixed.get("theta", 0.0)))[1]
            self.angle_scale.fill_(max(math.sin(theta_max), 0.05))

    @property
    def n_conditions(self) -> int:
        """Width of :meth:`condition_features`."""
        return 3 if self.takes_angles else 1

    def _impact(self) -> tuple[float, float]:
        """The fixed impact point (mm) of the training showers: where shower axes start."""
        x, y = self.condition_space.fixed.get("impact", (0.0, 0.0))
        return float(x), float(y)

    def angle_tensor(self, conditions: Conditions | None, n: int) -> Tensor | None:
        """(n, 2) theta, phi of ``conditions`` on the model device, the fixed values of
        the training data where a request leaves them out; None if the model takes no
        angles."""
        if not self.takes_angles:
            return None
        fixed = self.condition_space.fixed
        cols = []
        for name in ("theta", "phi"):
            v = None if conditions is None else getattr(conditions, name)
            cols.append(np.full(n, float(fixed.get(name, 0.0))) if v is None else v)
        return torch.as_tensor(np.stack(cols, 1), dtype=torch.float32, device=self.device)

    def condition_features(self, e_inc: Tensor, angles: Tensor | None = None) -> Tensor:
        """Network condition ``(B, n_conditions)``: the normalised energy, then for models
        taking angles the transverse direction ``sin(theta) (cos phi, sin phi)`` (smooth at
        theta = 0, where phi does not matter) over sin(theta_max)."""
        c = self.energy(e_inc)
        if not self.takes_angles:
            return c
        if angles is None:
            angles = torch.zeros(len(e_inc), 2, device=e_inc.device)
        s = torch.sin(angles[:, 0]) / self.angle_scale
        return torch.cat([c, torch.stack([s * torch.cos(angles[:, 1]),
                                          s * torch.sin(angles[:, 1])], 1)], 1)

    def check_conditions(self, conditions: Conditions,
                         allow_extrapolation: bool = False) -> None:
        """Refuse conditions the model is not trained on, or values outside its fitted
        ranges (warn instead for the latter with ``allow_extrapolation``)."""
        self.condition_space.check(conditions, self.name, self.energy_range_mev,
                                   allow_extrapolation)

    def check_energies(self, e_inc_mev: np.ndarray, allow_extrapolation: bool = False) -> None:
        """Refuse incident energies outside the trained range (warn if allowed)."""
        e = np.asarray(e_inc_mev, dtype=np.float64).reshape(-1)
        if not np.isfinite(e).all() or (e <= 0).any():
            raise InputError("incident energies must be positive and finite")
        self.check_conditions(Conditions(e), allow_extrapolation)

    @torch.no_grad()
    def sample(self, conditions: Conditions | np.ndarray,
               seed: int | torch.Generator | None = None, batch_size: int | None = None, *,
               first_index: int = 0, allow_extrapolation: bool = False,
               generator: int | torch.Generator | None = None
               ) -> ShowerBatch | PointCloudBatch:
        """Generate one shower per condition (incident energies in MeV).

        Shower i is drawn from its own random stream, a function of ``(seed, first_index
        + i)`` only, so ``batch_size``, threads and sharding (``first_index``: the number
        of the first shower in the whole run) never change it.  ``seed`` is an int, a
        :class:`torch.Generator` (one seed is drawn from it) or None (fresh entropy);
        ``generator`` is its old name.  Conditions outside what the model is trained on
        raise :class:`InputError` (see :meth:`check_conditions`).  Returns a
        :class:`ShowerBatch` (``representation == "voxels"``) or a
        :class:`PointCloudBatch` (``"points"``) on the model geometry; only energies are
        clamped at zero, never coordinates.
        """
        if not isinstance(conditions, Conditions):
            conditions = Conditions(np.asarray(conditions, dtype=np.float64))
        if not bool(self.fitted):
            raise InputError(f"model {self.name!r} is not trained (preprocessing not fitted)")
        self.check_conditions(conditions, allow_extrapolation)
        run_seed = draw_seed(generator if seed is None and generator is not None else seed)
        n = len(conditions)
        bs = batch_size or max(n, 1)
        if bs <= 0:
            raise InputError(f"batch size must be positive, got {bs}")
        was_training = self.training
        if was_training:  # eval() walks every submodule: ~1 ms a call for a point model
            self.eval()
        try:
            parts = []
            for lo in range(0, n, bs):
                chunk = conditions[lo:lo + bs]
                e = torch.as_tensor(chunk.incident_energy, dtype=torch.float32,
                                    device=self.device)
                noise = ShowerNoise.for_showers(
                    run_seed, range(first_index + lo, first_index + lo + len(chunk)),
                    self.device)
                parts.append(self.generate(e, noise, chunk))
        finally:
            if was_training:
                self.train()
        meta = {"model": self.name}
        conditions = self.condition_space.complete(conditions)
        if self.representation == "points":
            return self._point_batch(parts, conditions, meta)
        overflow = None
        if parts and isinstance(parts[0], tuple):  # (voxels, overflow) per chunk
            overflow = torch.cat([o.float().clamp_min(0) for _, o in parts]).cpu().numpy()
            parts = [v for v, _ in parts]
        x = torch.cat([p.float().clamp_min(0) for p in parts]) if parts \
            else torch.zeros(0, self.geometry.n_voxels)
        if getattr(self.config, "threshold_output", False):
            thr = self.geometry.readout_threshold_mev
            x = torch.where(x >= thr, x, torch.zeros_like(x))
        return ShowerBatch(self.geometry.name, x.cpu().numpy(), conditions, overflow,
                           metadata=meta)

    def _point_batch(self, parts: list[tuple[Tensor, Tensor]], conditions: Conditions,
                     meta: dict[str, Any]) -> PointCloudBatch:
        """Flatten padded ``(points, mask)`` chunks; energies clamped at zero only."""
        pts, counts = [], []
        for points, mask in parts:
            p = points.float().cpu()
            m = mask.bool().cpu()
            counts.append(m.sum(1))
            pts.append(p[m])
        flat = torch.cat(pts) if pts else torch.zeros(0, 4)
        n_pts = torch.cat(counts).numpy() if counts else np.zeros(0, np.int64)
        flat = flat.double().numpy()
        return PointCloudBatch(
            offsets=np.concatenate([[0], np.cumsum(n_pts)]), x=flat[:, 0], y=flat[:, 1],
            z=flat[:, 2], energy=np.clip(flat[:, 3], 0, None), conditions=conditions,
            geometry=self.geometry.name, metadata=meta)

    # ---- persistence ---------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        lo, hi = self.energy_range_mev
        return {"model": self.name, "geometry": self.geometry.name,
                "caloforge_version": __version__, "energy_range_mev": [lo, hi],
                "representation": self.representation,
                "conditions": self.condition_space.to_dict(),
                "config": self.config.to_dict()}

    def load_metadata(self, meta: dict[str, Any]) -> None:
        """Restore what ``model.yaml`` holds beyond the config (called before the weights
        are loaded by :func:`~caloforge.models.folder.load_model_dir`): the conditions."""
        self.condition_space = ConditionSpace.from_dict(meta.get("conditions"))

    def save(self, directory: str | Path) -> Path:
        """Write ``model.yaml`` + ``model.safetensors`` into ``directory`` (created)."""
        return save_model_dir(self, directory)


def check_device(device: str | torch.device, option: str = "--device") -> torch.device:
    """A torch device that exists here, else :class:`~caloforge.errors.ConfigError` naming
    ``option`` (:func:`caloforge.utils.resolve_device`)."""
    return resolve_device(device, option)


def build(name: str, geometry: str | Geometry, config: Config | dict[str, Any] | None = None,
          preset: str | None = None, seed: int = 0) -> GenerativeModel:
    """Untrained model ``name`` on ``geometry`` from a preset and config overrides."""
    return get_model_class(name).from_config(config, geometry, seed=seed, preset=preset)
