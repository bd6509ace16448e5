"""The model contract and the registry of architectures.

An architecture is one module with one :class:`GenerativeModel` subclass registered by
name.  The shared training loop (:mod:`caloforge.training`) owns the optimisers'
lifecycle, mixed precision, gradient synchronisation across processes, checkpoints and
RNG state; the model only says *what* to update:

- ``Config``: a :class:`~caloforge.models.config.Config` dataclass with ``presets``;
- ``fit_preprocessing(x, e_inc)``: fit its invertible transforms on training showers;
- ``configure_optimizers()`` / ``phases()``: named optimisers and training phases
  (e.g. WGAN: pre-train the energy constrainer, then the GAN);
- ``training_step(batch, phase, ctx) -> dict of losses``: the update logic, calling
  ``ctx.step("critic", loss)`` as often as it needs (several critic steps per
  generator step, resetting critics, ...);
- ``finalize(x, e_inc)``: work after the last step (BIB-AE: fit the latent KDE);
- ``generate(e_inc, generator) -> (B, n_voxels) MeV``; the public :meth:`sample` wraps it.

>>> from caloforge.models import build, list_models
>>> sorted(list_models())
['bibae', 'l2lflows', 'wgan']
>>> model = build("wgan", "ild-ecal", preset="tiny")
>>> model.geometry.name
'ild-ecal'
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from caloforge import __version__
from caloforge.data.batch import Conditions, ShowerBatch
from caloforge.errors import (
    CaloforgeError,
    ConfigError,
    GeometryError,
    InputError,
)
from caloforge.geometry import Geometry, get_geometry
from caloforge.models.config import Config
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
from caloforge.models.registry import get_model_class, list_models, register  # noqa: F401
from caloforge.models.transforms import EnergyCondition


class TrainingDiverged(CaloforgeError):
    """A loss became NaN/inf; the last checkpoint is left as it was."""


@dataclass
class TrainBatch:
    """A training minibatch on the training device: voxel energies and incident energies
    in MeV, shapes ``(B, n_voxels)`` and ``(B,)``."""

    x: Tensor
    e_inc: Tensor

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
    Config: ClassVar[type[Config]] = Config
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    requires_regular_grid: ClassVar[bool] = False

    def __init__(self, config: Config, geometry: Geometry) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.energy = EnergyCondition()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

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
    def fit_preprocessing(self, x: Tensor, e_inc: Tensor) -> None:
        """Fit transforms on training showers (MeV); the base fits the energy range."""
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

    def on_epoch_end(self, epoch: int, ctx: StepContext) -> None:
        """Hook after each epoch (BIB-AE resets its resetting critics here)."""

    def finalize(self, x: Tensor, e_inc: Tensor, generator: torch.Generator) -> None:
        """Hook after the last training step, with (a subset of) the training data."""

    # ---- generation ----------------------------------------------------------------------
    def generate(self, e_inc: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B, n_voxels) non-negative voxel energies in MeV for incident energies (MeV)."""
        raise NotImplementedError  # pragma: no cover

    @property
    def energy_range_mev(self) -> tuple[float, float]:
        return self.energy.range_mev

    def check_energies(self, e_inc_mev: np.ndarray, allow_extrapolation: bool = False) -> None:
        """Refuse incident energies outside the trained range (warn if allowed)."""
        lo, hi = self.energy_range_mev
        e = np.asarray(e_inc_mev, dtype=np.float64)
        if not np.isfinite(e).all() or (e <= 0).any():
            raise InputError("incident energies must be positive and finite")
        # 1% slack: a sample simulated on [10, 100] GeV rarely reaches either bound exactly.
        tol = 0.01
        out = (e < lo * (1 - tol)) | (e > hi * (1 + tol))
        if out.any():
            msg = (f"{int(out.sum())} requested energies lie outside the trained range "
                   f"{lo / 1e3:.4g}-{hi / 1e3:.4g} GeV (e.g. {e[out][0] / 1e3:.4g} GeV)")
            if not allow_extrapolation:
                raise InputError(msg + "; pass --allow-extrapolation to generate anyway")
            warnings.warn(msg + "; extrapolating", stacklevel=2)

    @torch.no_grad()
    def sample(self, conditions: Conditions | np.ndarray, generator: torch.Generator | int |
               None = None, batch_size: int | None = None) -> ShowerBatch:
        """Generate one shower per condition (incident energies in MeV).

        ``generator`` is a :class:`torch.Generator` on the model's device or an int seed;
        ``None`` draws a fresh seed.  Returns a :class:`ShowerBatch` on the model geometry.
        """
        if not isinstance(conditions, Conditions):
            conditions = Conditions(np.asarray(conditions, dtype=np.float64))
        conditions.validate()
        if not bool(self.fitted):
            raise InputError(f"model {self.name!r} is not trained (preprocessing not fitted)")
        gen = make_generator(generator, self.device)
        was_training = self.training
        self.eval()
        try:
            e = torch.as_tensor(conditions.incident_energy, dtype=torch.float32,
                                device=self.device)
            bs = batch_size or max(len(e), 1)
            parts = [self.generate(e[i:i + bs], gen).float().clamp_min(0)
                     for i in range(0, len(e), bs)]
            x = torch.cat(parts) if parts else torch.zeros(0, self.geometry.n_voxels)
            if getattr(self.config, "threshold_output", False):
                thr = self.geometry.readout_threshold_mev
                x = torch.where(x >= thr, x, torch.zeros_like(x))
        finally:
            self.train(was_training)
        return ShowerBatch(self.geometry.name, x.cpu().numpy(), conditions,
                           metadata={"model": self.name})

    # ---- persistence ---------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        lo, hi = self.energy_range_mev
        return {"model": self.name, "geometry": self.geometry.name,
                "caloforge_version": __version__, "energy_range_mev": [lo, hi],
                "config": self.config.to_dict()}

    def load_metadata(self, meta: dict[str, Any]) -> None:
        """Restore what ``model.yaml`` holds beyond the config (called before the weights
        are loaded by :func:`~caloforge.models.folder.load_model_dir`)."""

    def save(self, directory: str | Path) -> Path:
        """Write ``model.yaml`` + ``model.safetensors`` into ``directory`` (created)."""
        return save_model_dir(self, directory)


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here, else :class:`InputError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    return dev


def make_generator(generator: torch.Generator | int | None, device: torch.device | str
                   ) -> torch.Generator:
    """A torch.Generator on ``device`` from a generator, a seed, or fresh entropy."""
    if isinstance(generator, torch.Generator):
        return generator
    gen = torch.Generator(device=device)
    if generator is None:
        gen.seed()
    else:
        gen.manual_seed(int(generator))
    return gen


def build(name: str, geometry: str | Geometry, config: Config | dict[str, Any] | None = None,
          preset: str | None = None, seed: int = 0) -> GenerativeModel:
    """Untrained model ``name`` on ``geometry`` from a preset and config overrides."""
    return get_model_class(name).from_config(config, geometry, seed=seed, preset=preset)
