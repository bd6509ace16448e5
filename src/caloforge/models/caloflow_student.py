"""CaloFlow student: an inverse autoregressive flow distilled from a frozen ``caloflow``.

After Krause & Shih, "CaloFlow II: Even Faster and Still Accurate Generation of
Calorimeter Showers with Normalizing Flows" (arXiv:2110.11377), which builds on the
*probability density distillation* of Parallel WaveNet (van den Oord et al.,
arXiv:1711.10433).  The teacher's shower flow is a MAF: block ``k`` maps ``h_(k-1)`` to
``h_k`` (data ``h_0 = y``, latent ``h_K = z``) in one network pass, but its inverse — the
sampling direction — takes one pass per feature.  The student has the same number of
MADE blocks with the same feature orders and runs each one the other way: block ``k``
maps ``h_k`` to ``h_(k-1)`` in one pass (an IAF), so a shower takes K passes.  Its spline
blocks are inverse splines (:class:`~caloforge.models.splines.InverseRQSTransform`), so
that a block of its teacher block's shape starts as that block's exact element-wise
inverse, with the teacher's conditioner (``init_from_teacher``): distillation then only
has to correct what conditioning on ``h_k`` instead of ``h_(k-1)`` changes.  Its
density at its own samples costs nothing extra; at a given data point it would need one
pass per feature, so no loss asks for it.

The loss (CaloFlow II's teacher- and student-based terms; the weights are config keys):

- *teacher-based* (start from training data): the teacher maps the data ``y`` to its
  latent ``z_T`` and intermediate states ``h_k``; the student maps ``z_T`` back to
  ``y_S``.  Terms: ``|y_S - y|^2`` (data space, ``data_weight``), each student block
  applied to the teacher's ``h_k`` against ``h_(k-1)`` (``block_weight``), and the
  student's log density at ``y_S`` against the teacher's at ``y``
  (``density_weight``, squared difference per feature);
- *student-based* (start from fresh noise ``z``): the student samples ``y'`` with
  states ``g_k``; the frozen teacher maps ``y'`` back to ``z'``.  Terms: ``|z' - z|^2``
  (latent space, ``latent_weight``), each teacher block applied to ``g_(k-1)`` against
  ``g_k`` (``block_weight``), and the reverse KL divergence ``log q_S(y') - log p_T(y')``
  of probability density distillation (``kl_weight``).

All squared errors are means over features.  With ``distil_layers`` (the default) the
teacher's layer flow, a MAF too, is distilled in the same way into an IAF of the same
shape (its terms logged as ``layer_*``, weighted alike), so that a shower takes one pass
per block of either flow; without it the student samples the teacher's layer flow.  It
reuses every fitted transform of the teacher and holds only its flows.  The teacher is
attached by reference: the student's ``model.yaml`` records the teacher's folder and the
SHA-256 of its files (:func:`caloforge.models.folder.folder_hash`), and loading the
student loads the teacher from there, refusing a missing or changed one.  Train it with
``caloforge train --model caloflow-student --teacher TEACHER_FOLDER ...`` on the data
(or a sample of the data) the teacher was trained on.

>>> model = CaloFlowStudent.from_config(None, "calogan", preset="tiny")
>>> len(model.blocks)
2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.data.batch import Conditions
from caloforge.errors import ConfigError, GeometryError, GeometryMismatchError, InputError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register
from caloforge.models.caloflow import CaloFlow, exponential_decay
from caloforge.models.conditioning import ENERGY_SLACK, RANGE_SLACK
from caloforge.models.config import ModelConfig, positive
from caloforge.models.folder import portable_reference
from caloforge.models.made import (
    autoregressive_blocks,
    init_inverse_block,
    made_forward,
    sample_blocks,
)
from caloforge.models.noise import ShowerNoise


@dataclass
class CaloFlowStudentConfig(ModelConfig):
    transforms: int = 6  # must equal the teacher's shower-flow blocks
    hidden: tuple[int, ...] = (384,)
    # 0 = affine blocks: the splines' element-wise work, not the networks, dominates a
    # student's sampling time (368 cells, batch 256, 1 loaded CPU thread: 2.9 ms per
    # shower for 4 bins, 0.14 ms affine); 4 = spline blocks like the teacher's.
    bins: int = 0
    # The layer flow distilled as well (an IAF of the teacher's layer-flow shape): its
    # MAF takes one pass per layer and block, which at batch 1 costs more than the whole
    # one-pass shower student (dataset 1: 30 spline passes, 86 % of the time per shower).
    # false: the teacher's layer flow is used as it is.
    distil_layers: bool = True
    layer_transforms: int = 6  # must equal the teacher's layer_transforms
    layer_hidden: tuple[int, ...] = (64, 64)
    layer_bins: int = 8
    # Start each student block as the approximate inverse of its teacher block (same
    # conditioner, inverted element-wise map; made.init_inverse_block) where their shapes
    # match, instead of from random weights.
    init_from_teacher: bool = True
    # Spline blocks (bins > 0) as inverse splines (splines.InverseRQSTransform): the
    # teacher's spline family run backwards, so that init_from_teacher starts each block
    # as the exact element-wise inverse of its teacher block.
    inverse_splines: bool = True
    lr: float = 1e-3
    lr_decay: float = 0.1
    data_weight: float = 1.0
    latent_weight: float = 1.0
    block_weight: float = 1.0
    density_weight: float = 0.01
    kl_weight: float = 0.01
    threshold_output: bool = False

    def validate(self) -> None:
        super().validate()
        positive(self, "transforms", "layer_transforms", "lr", "lr_decay")
        for key in ("bins", "layer_bins"):
            if getattr(self, key) < 0 or getattr(self, key) == 1:
                raise ConfigError(f"config key {key!r} must be 0 (affine) or >= 2")
        for key in ("data_weight", "latent_weight", "block_weight", "density_weight",
                    "kl_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")


def _normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def _distil(teacher_blocks: nn.ModuleList, student_blocks: nn.ModuleList, y: Tensor,
            context: Tensor, gen: torch.Generator | None) -> dict[str, Tensor]:
    """The distillation terms of one flow (module docstring) at its training features
    ``y`` (standardised) given ``context``."""
    mse = torch.nn.functional.mse_loss
    states = CaloFlowStudent.student_states
    with torch.no_grad():
        t_states, t_ladj = CaloFlowStudent.teacher_states(teacher_blocks, y, context)
        log_p_data = _normal_log_prob(t_states[-1]) + t_ladj
    k, d = len(student_blocks), y.shape[1]
    # teacher-based: from the teacher's latent of the data back to the data
    s_states, s_ladj = states(student_blocks, t_states[-1], context)
    log_q = _normal_log_prob(t_states[-1]) - s_ladj
    block = sum(mse(student_blocks[i](context)(t_states[i + 1]), t_states[i])
                for i in range(k)) / k
    losses = {"data": mse(s_states[-1], y),
              "density": ((log_q - log_p_data) / d).pow(2).mean()}
    # student-based: fresh noise through the student, back through the teacher
    z = torch.randn(y.shape, generator=gen, device=y.device)
    g_states, g_ladj = states(student_blocks, z, context)
    back, back_ladj = CaloFlowStudent.teacher_states(teacher_blocks, g_states[-1], context)
    losses["latent"] = mse(back[-1], z)
    block = block + sum(mse(teacher_blocks[i](context)(g_states[k - i]), g_states[k - i - 1])
                        for i in range(k)) / k
    losses["block"] = block / 2
    log_q_s = _normal_log_prob(z) - g_ladj
    log_p_s = _normal_log_prob(back[-1]) + back_ladj
    losses["kl"] = ((log_q_s - log_p_s) / d).mean()
    return losses


@register("caloflow-student")
class CaloFlowStudent(GenerativeModel):
    """IAF shower flow distilled from a frozen ``caloflow`` teacher (attached by reference)."""

    Config = CaloFlowStudentConfig
    condition_inputs = ("theta", "phi")
    presets = {"tiny": {"transforms": 2, "hidden": [32], "bins": 4, "lr": 3e-3,
                        "layer_transforms": 2, "layer_hidden": [16], "layer_bins": 4}}

    def __init__(self, config: CaloFlowStudentConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        # The teacher's shapes on this geometry (CaloFlow: cells of layers with two or
        # more; context = conditions + one log energy per non-empty layer).
        cells = [n for n in geometry.cells_per_layer if n > 0]
        self.n_features = sum(n for n in cells if n >= 2)
        self.n_context = self.n_conditions + len(cells)
        if not self.n_features:
            raise GeometryError(f"caloflow-student needs a layer of two cells or more; "
                                f"geometry {geometry.name!r} has none")
        self.blocks = autoregressive_blocks(self.n_features, self.n_context, config.transforms,
                                            config.bins, tuple(config.hidden),
                                            config.inverse_splines)
        self.n_layer_features = len(cells)
        self.layer_blocks = autoregressive_blocks(
            self.n_layer_features, self.n_conditions, config.layer_transforms,
            config.layer_bins, tuple(config.layer_hidden),
            config.inverse_splines) if config.distil_layers else None
        # Not a submodule: the teacher's weights stay out of the student's state_dict.
        self._teacher: list[CaloFlow] = []
        self.teacher_reference: dict[str, str] | None = None
        # blocks per flow that started as the teacher's inverses (a fresh training sets it)
        self.initialised_from_teacher: dict[str, int] | None = None

    # ---- the teacher ---------------------------------------------------------------------
    @property
    def teacher(self) -> CaloFlow:
        if not self._teacher:
            raise InputError("this caloflow-student has no teacher attached (train it with "
                             "--teacher, or load it from its model folder)")
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - .to() moves the teacher
        for t in self._teacher:
            t._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def bind_teacher(self, teacher: GenerativeModel, reference: dict[str, str]) -> None:
        """Keep ``teacher`` (frozen) after checking that it fits this student: a trained
        ``caloflow`` on the same geometry and conditions, with matching shower-flow blocks."""
        where = Path(reference["path"])
        if teacher.name != "caloflow":
            raise InputError(f"the teacher of a caloflow-student must be a trained 'caloflow' "
                             f"model, not {teacher.name!r}", where)
        if teacher.geometry.name != self.geometry.name:
            raise GeometryMismatchError(
                f"the teacher is a model of geometry {teacher.geometry.name!r} but the "
                f"student's data are on {self.geometry.name!r}", where)
        mine, theirs = tuple(self.config.conditions), tuple(teacher.config.conditions)
        if mine != theirs:
            names = lambda c: ", ".join(("incident_energy", *c))  # noqa: E731
            raise InputError(f"the teacher is conditioned on ({names(theirs)}) but the "
                             f"student's data vary ({names(mine)})", where)
        self._check_ranges(teacher, where)
        n_blocks = len(teacher.shower_flow.transform.transforms)
        if n_blocks != len(self.blocks):
            raise ConfigError(f"the student has {len(self.blocks)} flow blocks, its teacher "
                              f"{n_blocks}: train it with the teacher's preset or set "
                              f"'transforms: {n_blocks}'")
        n_layer = len(teacher.layer_flow.transform.transforms)
        if self.layer_blocks is not None and n_layer != len(self.layer_blocks):
            raise ConfigError(f"the student has {len(self.layer_blocks)} layer-flow blocks, "
                              f"its teacher {n_layer}: train it with the teacher's preset or "
                              f"set 'layer_transforms: {n_layer}'")
        teacher.requires_grad_(False)
        self._teacher = [teacher.to(self.device).eval()]
        self.teacher_reference = portable_reference(reference)

    def _check_ranges(self, teacher: GenerativeModel, where: Path) -> None:
        """The student's conditions must lie inside the teacher's fitted ranges."""
        for name, (lo, hi) in self.condition_space.ranges.items():
            t_lo, t_hi = teacher.condition_space.ranges.get(name, (lo, hi))
            slack = RANGE_SLACK * max(t_hi - t_lo, 1e-9)
            if lo < t_lo - slack or hi > t_hi + slack:
                raise InputError(f"the student's data span {name} {lo:.4g}-{hi:.4g} but the "
                                 f"teacher was trained on {t_lo:.4g}-{t_hi:.4g}", where)

    def attach_frozen(self, models: dict[str, GenerativeModel],
                      references: dict[str, dict[str, str]]) -> None:
        if "teacher" not in models:
            raise ConfigError("caloflow-student needs its teacher: give --teacher FOLDER (a "
                              "trained caloflow model; training.frozen_models.teacher)")
        self.bind_teacher(models["teacher"], references["teacher"])

    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        super().fit_preprocessing(x, e_inc)  # the energy range the student will accept
        lo, hi = self.energy_range_mev
        t_lo, t_hi = self.teacher.energy_range_mev
        if lo < t_lo * (1 - ENERGY_SLACK) or hi > t_hi * (1 + ENERGY_SLACK):
            raise InputError(f"the student's data span incident energies {lo / 1e3:.4g}-"
                             f"{hi / 1e3:.4g} GeV but the teacher was trained on "
                             f"{t_lo / 1e3:.4g}-{t_hi / 1e3:.4g} GeV",
                             Path(self.teacher_reference["path"]))
        if self.config.init_from_teacher:
            self.initialised_from_teacher = self.init_from_teacher()

    def init_from_teacher(self) -> dict[str, int]:
        """Set every student block whose shape matches its teacher block to that block's
        approximate inverse (:func:`caloforge.models.made.init_inverse_block`); the number
        of blocks so set per flow."""
        teacher = self.teacher
        pairs = {"shower": (self.blocks, teacher.shower_flow.transform.transforms)}
        if self.layer_blocks is not None:
            pairs["layer"] = (self.layer_blocks, teacher.layer_flow.transform.transforms)
        return {name: sum(init_inverse_block(s, t) for s, t in zip(students, teachers))
                for name, (students, teachers) in pairs.items()}

    # ---- the two directions ----------------------------------------------------------------
    @staticmethod
    def student_states(blocks: nn.ModuleList, z: Tensor, context: Tensor
                       ) -> tuple[list[Tensor], Tensor]:
        """States ``[h_K = z, ..., h_0 = y]`` of a student's one-pass sampling direction
        and the log-determinant of ``z -> y`` (B,)."""
        states, ladj = [z], z.new_zeros(len(z))
        for block in reversed(blocks):
            h, l_k = made_forward(block, context, states[-1])
            states.append(h)
            ladj = ladj + l_k
        return states, ladj

    @staticmethod
    def teacher_states(blocks: nn.ModuleList, y: Tensor, context: Tensor
                       ) -> tuple[list[Tensor], Tensor]:
        """States ``[h_0 = y, ..., h_K = z]`` of a teacher's one-pass density direction
        and the log-determinant of ``y -> z`` (B,)."""
        states, ladj = [y], y.new_zeros(len(y))
        for block in blocks:
            h, l_k = made_forward(block, context, states[-1])
            states.append(h)
            ladj = ladj + l_k
        return states, ladj

    @staticmethod
    def _sample(blocks: nn.ModuleList, z: Tensor, context: Tensor) -> Tensor:
        """A student flow's data side for latent ``z``: one pass per block (and no
        log-determinant when no gradient is asked for)."""
        if torch.is_grad_enabled():
            return CaloFlowStudent.student_states(blocks, z, context)[0][-1]
        return sample_blocks(blocks, context, z)

    def sample_features(self, context: Tensor, z: Tensor) -> Tensor:
        """Standardised shower features for latent ``z``: one pass per block."""
        return self._sample(self.blocks, z, context)

    def sample_layer_features(self, cond: Tensor, z: Tensor) -> Tensor:
        """Standardised layer-flow features for latent ``z``: one pass per block."""
        return self._sample(self.layer_blocks, z, cond)

    # ---- training ----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": torch.optim.Adam(self.parameters(), self.config.lr)}

    def configure_schedulers(self, optimizers, total_steps):  # noqa: ANN001, ANN201
        return exponential_decay(optimizers, self.config.lr_decay, total_steps)

    def distillation_losses(self, x: Tensor, e_inc: Tensor, angles: Tensor | None,
                            gen: torch.Generator | None) -> dict[str, Tensor]:
        """The loss terms of the module docstring on training showers ``x``: the shower
        flow's, and with ``distil_layers`` the layer flow's (``layer_`` + name)."""
        teacher = self.teacher
        with torch.no_grad():
            cond, u, context, y = teacher.training_features(x, e_inc, angles, gen)
        losses = _distil(teacher.shower_flow.transform.transforms, self.blocks, y, context,
                         gen)
        if self.layer_blocks is not None:
            layer = _distil(teacher.layer_flow.transform.transforms, self.layer_blocks, u,
                            cond, gen)
            losses.update({f"layer_{name}": value for name, value in layer.items()})
        return losses

    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        losses = self.distillation_losses(batch.x, batch.e_inc, batch.angles, ctx.generator)
        c = self.config
        weights = {"data": c.data_weight, "latent": c.latent_weight, "block": c.block_weight,
                   "density": c.density_weight, "kl": c.kl_weight}
        total = sum(weights[name.removeprefix("layer_")] * value
                    for name, value in losses.items())
        ctx.step("student", total)
        return {name: value.item() for name, value in losses.items()}

    # ---- generation and persistence ------------------------------------------------------------
    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor:
        angles = self.angle_tensor(conditions, len(e_inc))
        layers = self.sample_layer_features if self.layer_blocks is not None else None
        return self.teacher.generate_with(e_inc, noise, angles, self.sample_features,
                                          layers)[0]

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["teacher"] = self.teacher_reference
        if self.initialised_from_teacher is not None:
            meta["initialised_from_teacher"] = dict(self.initialised_from_teacher)
        return meta

    def load_metadata(self, meta: dict[str, Any]) -> None:
        super().load_metadata(meta)
        if isinstance(meta.get("initialised_from_teacher"), dict):
            self.initialised_from_teacher = meta["initialised_from_teacher"]
        if "distil_layers" not in meta.get("config", {}):
            # saved before the layer flow was distilled: it samples the teacher's
            self.config.distil_layers, self.layer_blocks = False, None
        if "inverse_splines" not in meta.get("config", {}) and self.config.inverse_splines:
            # saved before inverse splines: its spline blocks are zuko's forward splines
            self.config.inverse_splines = False
            self.blocks = autoregressive_blocks(
                self.n_features, self.n_context, self.config.transforms, self.config.bins,
                tuple(self.config.hidden))
            if self.layer_blocks is not None:
                self.layer_blocks = autoregressive_blocks(
                    self.n_layer_features, self.n_conditions, self.config.layer_transforms,
                    self.config.layer_bins, tuple(self.config.layer_hidden))
        ref = meta.get("teacher")
        if not isinstance(ref, dict) or not {"path", "sha256"} <= set(ref):
            raise InputError("the student's model.yaml does not record its teacher "
                             "(teacher: {path, sha256})")
        from caloforge.models.folder import load_referenced, zoo_dir  # zoo_dir: patchable
        teacher = load_referenced(
            ref, "teacher", since="the student was distilled from it", relative_to=zoo_dir(),
            consequence=": the student reproduces only the teacher it learnt from; "
                        "restore that teacher or distil a new student")
        self.bind_teacher(teacher, ref)


__all__ = ["CaloFlowStudent", "CaloFlowStudentConfig"]
