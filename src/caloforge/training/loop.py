"""The shared training loop: one loop for every architecture.

The loop owns what is common — data shuffling and sharding, optimisers and schedulers,
mixed precision, gradient averaging across processes, validation, checkpoints and exact
resume — and calls the model's :meth:`~caloforge.models.GenerativeModel.training_step`
for the update logic.

Exact resume: the shuffling order of epoch ``k`` is a pure function of ``(seed, k)``,
and the checkpoint stores the optimisers, schedulers, grad scaler, the noise generator,
the global torch RNG and the step, so ``N`` steps + resume + ``N`` steps give the same
weights as ``2N`` steps in one go (bit for bit on CPU).

The training data are streamed from the file in chunks through a seeded shuffle window
(:mod:`caloforge.training.dataset`), so memory stays bounded whatever the file size;
fitted preprocessing and ``finalize`` see a bounded random subsample of the training
showers (``finalize_showers``, at most ``fit_memory_mb`` of dense showers).

Point-cloud models (``representation == "points"``) stream the clouds themselves
(``read_points`` of the reader; a voxel file gives one point per hit cell): their
:class:`~caloforge.models.base.TrainBatch` holds padded ``points`` and a ``mask``, and
``fit_preprocessing`` / ``finalize`` receive the padded clouds with ``mask=``.

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

import contextlib
import json
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from caloforge import __version__
from caloforge.data.batch import Conditions, PointCloudBatch, ShowerBatch
from caloforge.errors import (
    ConfigError,
    FormatError,
    GeometryMismatchError,
    InputError,
)
from caloforge.geometry import get_geometry
from caloforge.models.base import (
    GenerativeModel,
    StepContext,
    TrainBatch,
    check_device,
    get_model_class,
)
from caloforge.models.config import Config
from caloforge.models.ema import load_parameters
from caloforge.training import checkpoint as ckpt
from caloforge.training.attach import attach_all, copy_frozen
from caloforge.training.config import TrainConfig, load_run_config
from caloforge.training.dataset import ShowerStream, open_source, showers_fitting
from caloforge.training.distributed import (
    DistInfo,
    any_process,
    barrier,
    broadcast_state,
    device_for,
    init_distributed,
    make_grad_sync,
    shutdown,
)
from caloforge.training.ema import EMA, EMA_FILE, clip_gradients
from caloforge.training.interrupt import StopRequest, TrainingInterrupted
from caloforge.training.run_folder import (
    METRICS_FILE,
    prepare_output,
    resumed_settings,
    truncate_metrics,
    write_errors,
)
from caloforge.utils import progress


def load_training_data(path: str | Path, max_showers: int = 0) -> ShowerBatch:
    """Read a shower file (any supported format) into memory (the whole of it: training
    itself streams, see :class:`~caloforge.training.dataset.ShowerStream`)."""
    from caloforge.data.io import open_showers

    with open_showers(path) as f:
        n = f.n_showers if max_showers <= 0 else min(max_showers, f.n_showers)
        batch = f.read(0, n)
    batch.validate(str(path))
    return batch


def _read_ema(checkpoint: Path | None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(checkpoint or ".") / EMA_FILE
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"averaged (EMA) weights missing or corrupt ({exc})", path) from None


def padded_points(batch: PointCloudBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points, mask)``: ``(B, P, 4)`` float32 x, y, z (mm), E (MeV) zero padded to the
    largest cloud of the batch, and ``(B, P)`` True on the real points."""
    counts = batch.n_points
    p = max(int(counts.max()) if len(counts) else 0, 1)
    slot = np.arange(len(batch.energy)) - np.repeat(batch.offsets[:-1], counts)
    rows = batch.shower_index
    points = np.zeros((len(batch), p, 4), np.float32)
    for col, name in enumerate(("x", "y", "z", "energy")):
        points[rows, slot, col] = getattr(batch, name)
    mask = np.zeros((len(batch), p), bool)
    mask[rows, slot] = True
    return torch.from_numpy(points), torch.from_numpy(mask)


def _train_batch(batch: ShowerBatch | PointCloudBatch, model: GenerativeModel) -> TrainBatch:
    """What ``model`` trains on, as float32 tensors on the CPU (the angles on the model's
    device, only if it takes them): voxels, or padded points and their mask."""
    e_inc = torch.from_numpy(batch.conditions.incident_energy.astype(np.float32))
    angles = model.angle_tensor(batch.conditions, len(batch))
    if isinstance(batch, PointCloudBatch):
        points, mask = padded_points(batch)
        return TrainBatch(torch.zeros(len(batch), 0), e_inc, angles, points, mask)
    return TrainBatch(torch.from_numpy(np.ascontiguousarray(batch.energies, dtype=np.float32)),
                      e_inc, angles, overflow=_overflow(batch))


def _to(batch: TrainBatch, device: torch.device) -> TrainBatch:
    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device, non_blocking=True)
    return TrainBatch(move(batch.x), move(batch.e_inc), batch.angles, move(batch.points),
                      move(batch.mask), move(batch.overflow))


def _overflow(batch: ShowerBatch) -> torch.Tensor | None:
    """The per-layer overflow energies (MeV) as a float32 tensor, None if not recorded."""
    if batch.overflow is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(batch.overflow, dtype=np.float32))


def _with_conditions(cls: type[GenerativeModel], config: dict[str, Any] | Config | None,
                     conditions: Conditions) -> dict[str, Any] | Config | None:
    """``config`` with its ``conditions`` key declared from the training showers (those of
    the architecture's inputs that vary in them), unless the config sets it."""
    if isinstance(config, Config):
        # A Config always carries the key: empty means not set (the default).
        declared = () if getattr(config, "conditions", ()) else cls.conditions_from_data(conditions)
        return config.replace(conditions=declared) if declared else config
    given = dict(config or {})
    if "conditions" not in given:
        given["conditions"] = list(cls.conditions_from_data(conditions))
    return given


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


def validation_summary(batch: ShowerBatch | PointCloudBatch) -> dict[str, float]:
    """E_vis/E_inc mean and width and the mean number of hits above threshold (point
    clouds: after projection into their geometry, plus the mean number of points)."""
    if isinstance(batch, PointCloudBatch):
        summary = validation_summary(batch.to_voxels()[0])
        return {**summary, "n_points_mean": float(batch.n_points.mean())}
    thr = batch.geometry_object.readout_threshold_mev
    resp = batch.total_energy() / batch.incident_energy
    return {"response_mean": float(resp.mean()), "response_std": float(resp.std()),
            "n_hits_mean": float((batch.energies >= thr).sum(1).mean())}


class Trainer:
    """Runs one training (see :func:`train`); attributes are for inspection in tests."""

    def __init__(self, model_name: str, data: ShowerBatch | PointCloudBatch | str | Path,
                 out_dir: str | Path,
                 model_config: dict[str, Any] | Config | None = None,
                 preset: str | None = None, train_config: TrainConfig | None = None,
                 device: str = "cpu", seed: int = 0, resume: bool = False,
                 show_progress: bool | None = None, data_source: str = "") -> None:
        self.out = Path(out_dir)
        self.seed = int(seed)
        check_device(device)
        cls = get_model_class(model_name)
        latest = prepare_output(self.out, resume)
        self.dist: DistInfo = init_distributed(device)
        self.device = device_for(device, self.dist)
        self.show_progress = show_progress
        state: dict[str, Any] | None = None
        model = None
        recorded_frozen: dict[str, Any] | None = None
        self.resumed_from = latest
        if latest is not None:
            model, state, run = ckpt.load_checkpoint(latest, "cpu")
            if model.name != cls.name:
                raise InputError(f"the checkpoint holds a {model.name!r} model, not "
                                 f"{model_name!r}", latest)
            self.cfg, self.seed, preset = resumed_settings(run, train_config, seed, preset)
            recorded_frozen = run.get("frozen_models") or {}
            ckpt.remove_stale_parts(self.out)
        else:
            self.cfg = train_config or TrainConfig()
        if not isinstance(data, (ShowerBatch, PointCloudBatch)):
            data_source = data_source or str(data)
        self.data_source = data_source
        self.source = open_source(data)
        self.points = cls.representation == "points"
        try:
            self._build(cls, model, state, model_config, preset, device, recorded_frozen)
        except BaseException:
            self.source.close()
            raise

    def _build(self, cls: type[GenerativeModel], model: GenerativeModel | None,
               state: dict[str, Any] | None, model_config: dict[str, Any] | Config | None,
               preset: str | None, device: str,
               recorded_frozen: dict[str, Any] | None) -> None:
        """Model, data stream, optimisers and RNG, restored from ``state`` if resuming."""
        if model is None:
            self._open_stream(get_geometry(self.source.geometry).n_voxels)
            train_conditions = self.stream.train_conditions()
            model = cls.from_config(_with_conditions(cls, model_config, train_conditions),
                                    self.source.geometry, seed=self.seed, preset=preset)
            model.fit_conditions(train_conditions)  # ranges the model will refuse beyond
        else:
            if model.geometry.name != self.source.geometry:
                raise GeometryMismatchError(
                    f"the model is built for geometry {model.geometry.name!r} but the data "
                    f"are on {self.source.geometry!r}", self.data_source or None)
            self._open_stream(model.geometry.n_voxels)
        self.model = model
        # Frozen models before any fitting: the model checks and binds them first.
        self.frozen_refs, self.frozen = attach_all(
            self.cfg.frozen_models, recorded_frozen, self.device,
            self.resumed_from / "frozen" if self.resumed_from else None)
        model.attach_frozen(self.frozen, self.frozen_refs)
        # After building the model: its own refusals (geometry, config) come first.
        if self.n_train < self.cfg.batch_size * self.dist.world_size:
            raise InputError(f"{self.n_train} training showers are fewer than one batch of "
                             f"{self.cfg.batch_size} x {self.dist.world_size} processes",
                             self.data_source or None)
        self.validation_data = self.stream.validation_rows()
        if state is None:
            fit = self._fit_subset()
            if self.points:
                model.fit_preprocessing(fit.points, fit.e_inc, mask=fit.mask, angles=fit.angles)
            else:
                if model.requires_overflow and fit.overflow is None:
                    raise InputError(
                        f"the training showers hold no per-layer overflow energies, which "
                        f"model {model.name!r} needs on geometry {model.geometry.name!r} (a "
                        f"CaloGAN file must have the 'overflow' dataset)",
                        self.data_source or None)
                model.fit_preprocessing(fit.x, fit.e_inc, angles=fit.angles)
                model.fit_overflow(fit.overflow, fit.e_inc)
        self.model.to(self.device)
        broadcast_state(self.model, self.dist)
        self.optimizers = self.model.configure_optimizers()
        unknown = sorted(set(self.cfg.grad_clip_by_optimizer) - set(self.optimizers))
        if unknown:
            raise ConfigError(f"grad_clip_by_optimizer names unknown optimiser(s) "
                              f"{', '.join(unknown)}; {self.model.name} has "
                              f"{', '.join(self.optimizers)}")
        clip_gradients(self.optimizers, self.cfg.grad_clip, self.cfg.grad_clip_by_optimizer)
        self.ema = EMA(self.model, self.cfg.ema_decay, self.cfg.use_ema) \
            if self.cfg.ema_decay > 0 else None
        self.model.ema = self.ema
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
        self.stop = StopRequest()
        self.ctx.frozen = self.frozen  # training_step reads ctx.frozen[role]
        if state is not None:
            self._restore(state)
            if self.dist.is_main:
                truncate_metrics(self.out / METRICS_FILE, self.step, self.finished)
        self.run_config = {
            "model": self.model.name, "preset": preset, "geometry": self.model.geometry.name,
            "model_config": self.model.config.to_dict(), "training": self.cfg.to_dict(),
            "seed": self.seed, "data": self.data_source, "device": str(device),
            "world_size": self.dist.world_size, "caloforge_version": __version__,
            "frozen_models": self.frozen_refs,
        }

    # ---- data ------------------------------------------------------------------------------
    def _open_stream(self, n_vox: int) -> None:
        cfg = self.cfg
        n = self.source.n_showers if cfg.max_showers <= 0 else \
            min(cfg.max_showers, self.source.n_showers)
        if n < 2:
            raise InputError("need at least 2 showers to train", self.data_source or None)
        n_val = min(cfg.validation_showers, n // 5) if cfg.validate_every else 0
        buffer = showers_fitting(cfg.shuffle_buffer_mb, n_vox)
        self.stream = ShowerStream(self.source, self.seed, n_val, cfg.chunk_showers, buffer, n,
                                   points=self.points)
        self.n_train = self.stream.n_train

    def _fit_subset(self) -> TrainBatch:
        """A random subsample of the training showers, bounded in number and memory
        (what fitted preprocessing and ``finalize`` see; on the CPU)."""
        cfg = self.cfg
        n = min(self.n_train, cfg.finalize_showers,
                showers_fitting(cfg.fit_memory_mb, self.model.geometry.n_voxels))
        return _train_batch(self.stream.gather(self.stream.subsample_index(n)), self.model)

    def _batch(self, step: int) -> TrainBatch:
        epoch, pos = divmod(step, self.steps_per_epoch)
        bs, world = self.cfg.batch_size, self.dist.world_size
        start = pos * bs * world + self.dist.rank * bs
        return _to(_train_batch(self.stream.rows(epoch, start, start + bs), self.model),
                   self.device)

    def close(self) -> None:
        """Close the training file."""
        self.stream.close()

    # ---- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "noise_generator": self.ctx.generator.get_state(),
            "finished": self.finished,
            "data_order": self.stream.state(),
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
        stored = state.get("data_order")
        if stored is not None and stored != self.stream.state():
            raise InputError("the training data or their streaming settings differ from those "
                             "of the checkpoint (another file, --max-showers, chunk or buffer "
                             "size): the run cannot be resumed exactly", self.data_source or None)
        if self.ema is not None:
            self.ema.load_state_dict(_read_ema(self.resumed_from))
        ckpt.restore_global_rng(state)
        self.step = int(state["step"])
        self.finished = bool(state.get("finished", False)) and self.step >= self.total_steps

    def save(self) -> Path | None:
        """Checkpoint the state after the last completed step (main process writes)."""
        path = None
        if self.dist.is_main:
            with write_errors(self.out, "checkpoint"):
                copies = None
                if self.cfg.copy_frozen_models and self.frozen_refs:
                    def copies(folder: Path) -> None:
                        copy_frozen(self.frozen_refs, folder / "frozen")
                path = ckpt.save_checkpoint(self.out, self.step, self.model, self._state(),
                                            self.run_config, keep=self.cfg.keep_checkpoints,
                                            write_extra=copies)
        barrier(self.dist)
        return path

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        if self.validation_data is None:
            return {}
        real = self.validation_data
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
            with write_errors(self.out, METRICS_FILE), open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _stop_requested(self) -> bool:
        """Whether any process got SIGINT/SIGTERM (all must stop at the same step)."""
        return any_process(bool(self.stop), self.dist)

    def _interrupted(self) -> TrainingInterrupted:
        path = self.save()
        return TrainingInterrupted(self.stop.signum or signal.SIGINT, self.step, path)

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> GenerativeModel:
        """Train to the end (or ``stop_after`` steps), checkpointing on the way.

        SIGINT/SIGTERM stop the run after the step under way with a checkpoint and raise
        :class:`TrainingInterrupted`; ``--resume`` continues it bit for bit."""
        with self.stop:
            return self._run()

    def _run(self) -> GenerativeModel:
        if self.dist.is_main:
            with write_errors(self.out, "config.yaml"):
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
        t0 = time.perf_counter()
        try:
            while self.step < stop_at:
                if self._stop_requested():
                    raise self._interrupted()
                self._one_step(bar, t0)
        finally:
            bar.close()
        if self._stop_requested():
            raise self._interrupted()
        if self.step >= self.total_steps and not self.finished:
            fit = self._fit_subset()
            # calibrations fitted in finalize see the weights the model will sample with
            with self.ema.sampling_weights(self.model) if self.ema else contextlib.nullcontext():
                if self.points:
                    self.model.finalize(fit.points, fit.e_inc, self.ctx.generator,
                                        angles=fit.angles, mask=fit.mask)
                else:
                    self.model.finalize(fit.x, fit.e_inc, self.ctx.generator,
                                        angles=fit.angles)
            self.finished = True
            if cfg.validate_every and self.dist.is_main:
                self._log({"step": self.step, "phase": "final", **self.validate()})
        self.save()
        if self.finished and self.dist.is_main:
            with write_errors(self.out, "model"):
                self.model.save(self.out / "model")
        barrier(self.dist)
        if self.finished and self.ema is not None and self.ema.use_for_sampling:
            # Return what loading the model folder gives: the averaged weights.
            load_parameters(self.model, self.ema.shadow)
        return self.model

    def _one_step(self, bar: Any, t0: float) -> None:
        """One optimisation step with its bookkeeping (log, validation, checkpoint)."""
        cfg, step = self.cfg, self.step
        phase = _phase_at(self.phase_bounds, step)
        self.ctx.step_index, self.ctx.epoch = step, step // self.steps_per_epoch
        losses = self.model.training_step(self._batch(step), phase, self.ctx)
        if self.ema is not None:
            self.ema.update(self.model)
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
        if cfg.validate_every and self.step % cfg.validate_every == 0 and self.dist.is_main:
            record = self.validate()
            bar.write(f"step {self.step}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items()))
        if record or self.step % 50 == 0:
            self._log({"step": self.step, "phase": phase, **losses, **record,
                       "elapsed_s": round(time.perf_counter() - t0, 2)})
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                and self.step < self.total_steps:
            self.save()


def train(model_name: str, data: ShowerBatch | PointCloudBatch | str | Path, out_dir: str | Path,
          model_config: dict[str, Any] | Config | None = None, preset: str | None = None,
          train_config: TrainConfig | None = None, device: str = "cpu", seed: int = 0,
          resume: bool = False, progress: bool | None = None) -> GenerativeModel:
    """Train architecture ``model_name`` on ``data`` (a batch or a shower file), writing
    checkpoints, metrics and the final model folder under ``out_dir``.

    Raises :class:`~caloforge.training.interrupt.TrainingInterrupted` (a
    ``KeyboardInterrupt``) after checkpointing when SIGINT or SIGTERM arrives."""
    existed = Path(out_dir).exists()
    try:
        trainer = Trainer(model_name, data, out_dir, model_config, preset, train_config,
                          device, seed, resume, progress)
    except BaseException:
        if not existed:  # refused before any work: leave no empty folder behind
            with contextlib.suppress(OSError):
                Path(out_dir).rmdir()
        raise
    try:
        return trainer.run()
    finally:
        trainer.close()
        shutdown(trainer.dist)


__all__ = ["METRICS_FILE", "TrainConfig", "Trainer", "TrainingInterrupted", "load_run_config",
           "load_training_data", "prepare_output", "resumed_settings", "train",
           "truncate_metrics", "validation_summary"]
