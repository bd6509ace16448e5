"""The shared training loop: one loop for every architecture.

The loop owns what is common — data shuffling and sharding, optimisers and schedulers,
mixed precision, gradient averaging across processes, validation, checkpoints and exact
resume — and calls the model's :meth:`~caloforge.models.GenerativeModel.training_step`
for the update logic.

Exact resume: the shuffling order of epoch ``k`` is a pure function of ``(seed, k)``,
and the checkpoint stores the optimisers, schedulers, grad scaler, the noise generator,
the global torch RNG and the step, so ``N`` steps + resume + ``N`` steps give the same
weights as ``2N`` steps in one go (bit for bit on CPU).

The training data are held in memory (``max_showers`` caps how many are read).

>>> from caloforge.models.toy import toy_geometry, toy_showers
>>> import numpy as np, tempfile
>>> geo = toy_geometry()
>>> data = toy_showers(geo, np.full(64, 2e4), np.random.default_rng(0))
>>> out = tempfile.mkdtemp()
>>> model = train("wgan", data, out + "/run", preset="tiny",
...               train_config=TrainConfig(steps=2, batch_size=16, validate_every=0),
...               progress=False)
>>> model.name
'wgan'
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from caloforge import __version__
from caloforge.data.batch import ShowerBatch
from caloforge.errors import ConfigError, GeometryMismatchError, InputError, OutputExistsError
from caloforge.models.base import (
    GenerativeModel,
    StepContext,
    TrainBatch,
    check_device,
    get_model_class,
)
from caloforge.models.config import Config, positive, read_yaml
from caloforge.training import checkpoint as ckpt
from caloforge.training.distributed import (
    DistInfo,
    barrier,
    broadcast_state,
    device_for,
    init_distributed,
    make_grad_sync,
    shutdown,
)
from caloforge.utils import progress


@dataclass
class TrainConfig(Config):
    """How long and how to train (the model's own config is separate)."""

    steps: int = 0  # total optimisation steps; 0 = derive from epochs
    epochs: int = 10
    batch_size: int = 64  # per process
    checkpoint_every: int = 500  # steps; the end of training always checkpoints
    validate_every: int = 500  # steps; 0 = never
    validation_showers: int = 500  # held out from training for validation
    keep_checkpoints: int = 2
    amp: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; none on CPU) | bf16 | fp16 | none
    max_showers: int = 0  # 0 = all showers of the file
    stop_after: int = 0  # stop this run after so many steps (resume later); 0 = no limit
    finalize_showers: int = 50000  # training showers passed to the model's finalize()

    def validate(self) -> None:
        super().validate()
        positive(self, "batch_size", "keep_checkpoints")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise ConfigError("give a positive number of steps or epochs")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ConfigError(f"config key 'amp' must be auto|bf16|fp16|none, got {self.amp!r}")


def load_run_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Read a run YAML with optional sections ``model`` (model config, may hold
    ``preset``) and ``training`` (:class:`TrainConfig`); other keys are an error."""
    data = read_yaml(path)
    unknown = sorted(set(data) - {"model", "training", "preset"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)} (known: model, training, "
                          f"preset)", path)
    model = dict(data.get("model") or {})
    preset = model.pop("preset", None) or data.get("preset")
    return model, dict(data.get("training") or {}), preset


def load_training_data(path: str | Path, max_showers: int = 0) -> ShowerBatch:
    """Read a shower file (any supported format) into memory."""
    from caloforge.data.io import open_showers

    with open_showers(path) as f:
        n = f.n_showers if max_showers <= 0 else min(max_showers, f.n_showers)
        batch = f.read(0, n)
    batch.validate(str(path))
    return batch


def _amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use grad scaler)."""
    if device.type != "cuda" or amp == "none":
        return None, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


def _phase_bounds(model: GenerativeModel, total: int) -> list[tuple[str, int]]:
    """(phase name, first step) of every phase."""
    phases = model.phases()
    weights = np.array([max(f, 0.0) for _, f in phases], dtype=np.float64)
    starts = np.floor(np.concatenate([[0], np.cumsum(weights)[:-1]]) / weights.sum() * total)
    return [(name, int(s)) for (name, _), s in zip(phases, starts)]


def _phase_at(bounds: list[tuple[str, int]], step: int) -> str:
    current = bounds[0][0]
    for name, start in bounds:
        if step >= start:
            current = name
    return current


def validation_summary(batch: ShowerBatch) -> dict[str, float]:
    """E_vis/E_inc mean and width and the mean number of hits above threshold."""
    thr = batch.geometry_object.readout_threshold_mev
    resp = batch.total_energy() / batch.incident_energy
    return {"response_mean": float(resp.mean()), "response_std": float(resp.std()),
            "n_hits_mean": float((batch.energies >= thr).sum(1).mean())}


class Trainer:
    """Runs one training (see :func:`train`); attributes are for inspection in tests."""

    def __init__(self, model_name: str, data: ShowerBatch, out_dir: str | Path,
                 model_config: dict[str, Any] | Config | None = None,
                 preset: str | None = None, train_config: TrainConfig | None = None,
                 device: str = "cpu", seed: int = 0, resume: bool = False,
                 show_progress: bool | None = None, data_source: str = "") -> None:
        self.cfg = train_config or TrainConfig()
        self.out = Path(out_dir)
        self.seed = int(seed)
        check_device(device)
        self.dist: DistInfo = init_distributed(device)
        self.device = device_for(device, self.dist)
        self.show_progress = show_progress
        self.data_source = data_source
        cls = get_model_class(model_name)
        latest = ckpt.latest_checkpoint(self.out) if self.out.exists() else None
        if resume and latest is None:
            raise InputError("nothing to resume: no checkpoint in the output folder", self.out)
        if not resume and self.out.exists() and any(self.out.iterdir()):
            raise OutputExistsError("training output folder is not empty (use --resume to "
                                    "continue a run, or choose a new folder)", self.out)
        state: dict[str, Any] | None = None
        if latest is not None:
            model, state, run = ckpt.load_checkpoint(latest, "cpu")
            if model.name != cls.name:
                raise InputError(f"the checkpoint holds a {model.name!r} model, not "
                                 f"{model_name!r}", latest)
            self.seed = int(run.get("seed", self.seed))
            preset = run.get("preset", preset)
            self.cfg = TrainConfig.from_dict({**run.get("training", {}),
                                              **_resume_overrides(train_config)})
        else:
            model = cls.from_config(model_config, data.geometry, seed=self.seed, preset=preset)
        if model.geometry.name != data.geometry:
            raise GeometryMismatchError(
                f"the model is built for geometry {model.geometry.name!r} but the data are on "
                f"{data.geometry!r}", data_source or None)
        self.model = model
        self._split(data)
        if state is None:
            model.fit_preprocessing(*self._fit_subset())
        self.model.to(self.device)
        broadcast_state(self.model, self.dist)
        self.optimizers = self.model.configure_optimizers()
        self.steps_per_epoch = max(1, self.n_train // (self.cfg.batch_size * self.dist.world_size))
        self.total_steps = self.cfg.steps or self.cfg.epochs * self.steps_per_epoch
        self.schedulers = self.model.configure_schedulers(self.optimizers, self.total_steps)
        amp_dtype, use_scaler = _amp_settings(self.cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + 7919 * self.dist.rank)
        self.ctx = StepContext(self.optimizers, gen, self.device, amp_dtype, self.scaler,
                               make_grad_sync(self.dist))
        self.ctx.total_steps = self.total_steps
        self.phase_bounds = _phase_bounds(self.model, self.total_steps)
        self.step = 0
        self.finished = False
        if state is not None:
            self._restore(state)
        self.run_config = {
            "model": self.model.name, "preset": preset, "geometry": self.model.geometry.name,
            "model_config": self.model.config.to_dict(), "training": self.cfg.to_dict(),
            "seed": self.seed, "data": data_source, "device": str(device),
            "world_size": self.dist.world_size, "caloforge_version": __version__,
        }

    # ---- data ------------------------------------------------------------------------------
    def _split(self, data: ShowerBatch) -> None:
        if len(data) < 2:
            raise InputError("need at least 2 showers to train", self.data_source or None)
        x = torch.from_numpy(np.ascontiguousarray(data.energies, dtype=np.float32))
        e = torch.from_numpy(data.incident_energy.astype(np.float32))
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_val = min(self.cfg.validation_showers, len(x) // 5) if self.cfg.validate_every else 0
        val, train = order[:n_val], order[n_val:]
        self.x_train, self.e_train = x[train], e[train]
        self.x_val, self.e_val = x[val], e[val]
        self.n_train = len(train)
        if self.n_train < self.cfg.batch_size * self.dist.world_size:
            raise InputError(f"{self.n_train} training showers are fewer than one batch of "
                             f"{self.cfg.batch_size} x {self.dist.world_size} processes",
                             self.data_source or None)

    def _fit_subset(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(self.n_train, self.cfg.finalize_showers)
        return self.x_train[:n], self.e_train[:n]

    def _batch(self, step: int) -> TrainBatch:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.seed * 7_368_787 + epoch)
            self._perm = torch.randperm(self.n_train, generator=g)
            self._perm_epoch = epoch
        bs, world = self.cfg.batch_size, self.dist.world_size
        start = pos * bs * world + self.dist.rank * bs
        idx = self._perm[start:start + bs]
        return TrainBatch(self.x_train[idx].to(self.device, non_blocking=True),
                          self.e_train[idx].to(self.device, non_blocking=True))

    # ---- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "noise_generator": self.ctx.generator.get_state(),
            "finished": self.finished,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(state["schedulers"][k])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            # Generator states are CPU byte tensors, also for CUDA generators.
            self.ctx.generator.set_state(state["noise_generator"].cpu())
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InputError(f"checkpoint training state does not fit this run: {exc}",
                             self.out) from None
        ckpt.restore_global_rng(state)
        self.step = int(state["step"])
        self.finished = bool(state.get("finished", False)) and self.step >= self.total_steps

    def save(self) -> Path | None:
        path = None
        if self.dist.is_main:
            path = ckpt.save_checkpoint(self.out, self.step, self.model, self._state(),
                                        self.run_config, keep=self.cfg.keep_checkpoints)
        barrier(self.dist)
        return path

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        if len(self.e_val) == 0:
            return {}
        geo = self.model.geometry.name
        from caloforge.data.batch import Conditions
        real = ShowerBatch(geo, self.x_val.numpy(), Conditions(self.e_val.numpy()))
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 17)
        # Held-out showers may lie just outside the energies the model was fitted on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fake = self.model.sample(real.conditions, gen, batch_size=self.cfg.batch_size,
                                     allow_extrapolation=True)
        self.model.train()
        out = {f"real_{k}": v for k, v in validation_summary(real).items()}
        out.update({f"gen_{k}": v for k, v in validation_summary(fake).items()})
        return out

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> GenerativeModel:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.run_config,
                                                                 sort_keys=False))
        cfg = self.cfg
        stop_at = self.total_steps if cfg.stop_after <= 0 else \
            min(self.total_steps, self.step + cfg.stop_after)
        bar = progress(total=self.total_steps, desc=f"train {self.model.name}", unit="step",
                       enabled=self.show_progress if self.dist.is_main else False)
        bar.update(self.step)
        self.model.train()
        t0, losses = time.perf_counter(), {}
        try:
            while self.step < stop_at:
                step = self.step
                phase = _phase_at(self.phase_bounds, step)
                self.ctx.step_index, self.ctx.epoch = step, step // self.steps_per_epoch
                losses = self.model.training_step(self._batch(step), phase, self.ctx)
                with warnings.catch_warnings():
                    # Phased models leave some optimisers idle; their schedulers still tick.
                    warnings.simplefilter("ignore", UserWarning)
                    for s in self.schedulers.values():
                        s.step()
                self.step = step + 1
                if self.step % self.steps_per_epoch == 0:
                    self.model.on_epoch_end(self.step // self.steps_per_epoch - 1, self.ctx)
                bar.update(1)
                bar.set_postfix({"phase": phase, **{k: f"{v:.3g}" for k, v in losses.items()}},
                                refresh=False)
                record: dict[str, Any] = {}
                if cfg.validate_every and self.step % cfg.validate_every == 0 \
                        and self.dist.is_main:
                    record = self.validate()
                    bar.write(f"step {self.step}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in record.items()))
                if record or self.step % 50 == 0:
                    self._log({"step": self.step, "phase": phase, **losses, **record,
                               "elapsed_s": round(time.perf_counter() - t0, 2)})
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                        and self.step < self.total_steps:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            self.save()  # keep the work done so far; --resume continues from here
            raise
        bar.close()
        if self.step >= self.total_steps and not self.finished:
            self.model.finalize(*self._fit_subset(), self.ctx.generator)
            self.finished = True
            if cfg.validate_every and self.dist.is_main:
                self._log({"step": self.step, "phase": "final", **self.validate()})
        self.save()
        if self.finished and self.dist.is_main:
            self.model.save(self.out / "model")
        barrier(self.dist)
        return self.model


def _resume_overrides(cfg: TrainConfig | None) -> dict[str, Any]:
    """On resume, the stored training config wins except for run-length and bookkeeping
    settings, which may change between invocations."""
    if cfg is None:
        return {}
    keep = ("steps", "epochs", "stop_after", "checkpoint_every", "validate_every",
            "keep_checkpoints")
    default = TrainConfig()
    ignored = [k for k in cfg.to_dict() if k not in keep
               and getattr(cfg, k) != getattr(default, k)]
    if ignored:
        warnings.warn(f"resuming with the stored training settings; ignoring "
                      f"{', '.join(ignored)} (exact resume needs them unchanged)", stacklevel=3)
    return {k: getattr(cfg, k) for k in keep if getattr(cfg, k) != getattr(default, k)}


def train(model_name: str, data: ShowerBatch | str | Path, out_dir: str | Path,
          model_config: dict[str, Any] | Config | None = None, preset: str | None = None,
          train_config: TrainConfig | None = None, device: str = "cpu", seed: int = 0,
          resume: bool = False, progress: bool | None = None) -> GenerativeModel:
    """Train architecture ``model_name`` on ``data`` (a batch or a shower file), writing
    checkpoints, metrics and the final model folder under ``out_dir``."""
    source = ""
    cfg = train_config or TrainConfig()
    if not isinstance(data, ShowerBatch):
        source = str(data)
        data = load_training_data(data, cfg.max_showers)
    elif cfg.max_showers > 0:
        data = data[:cfg.max_showers]
    trainer = Trainer(model_name, data, out_dir, model_config, preset, cfg, device, seed,
                      resume, progress, source)
    try:
        return trainer.run()
    finally:
        shutdown(trainer.dist)


__all__ = ["TrainConfig", "Trainer", "load_run_config", "load_training_data", "train",
           "validation_summary"]
