"""A trained voxel model as one traceable function: inputs in, flat cell energies out.

:class:`VoxelSampler` wraps a :class:`~caloforge.models.GenerativeModel` so that
``torch.jit.trace`` and ``torch.onnx.export`` see a pure-tensor graph: unit conversions
at the inputs, the noise drawn inside the graph (``torch.randn_like``) or taken as an
input, the fitted preprocessing and calibration of the model, and what
:meth:`~caloforge.models.GenerativeModel.sample` does after the network (energies clamped
at zero, the readout threshold) at the output.

The model's own noise streams are replaced by :class:`TensorNoise`, which hands out the
columns of one ``(B, K)`` standard-normal tensor in the order the model asks for them.
The model draws its normals from shower i's stream in the same order, so feeding the
first ``K`` normals of that stream (:func:`shower_normals`) reproduces
``caloforge generate`` exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from caloforge.errors import CaloforgeError
from caloforge.models.base import GenerativeModel
from caloforge.models.noise import ShowerNoise


class ExportError(CaloforgeError):
    """A model (or a part of it) cannot be exported as asked."""


class TensorNoise(ShowerNoise):
    """The noise of a batch given as a ``(B, K)`` tensor of standard normals, handed out
    column by column (traceable: no generators, no Python loop over showers)."""

    traced = True  # point models draw all padded points from it at once (pointnets)

    def __init__(self, normals: Tensor) -> None:
        self.generators = []
        self.device = normals.device
        self._normals = normals
        self._used = 0

    def __len__(self) -> int:
        return self._normals.shape[0]

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, k: int) -> None:
        if self._used + k > self._normals.shape[1]:
            raise ExportError(f"the model asks for more than the {self._normals.shape[1]} "
                              f"noise values per shower it was exported with")

    def randn(self, *shape: int) -> Tensor:
        k = math.prod(shape)
        self.reserve(k)
        out = self._normals[:, self._used:self._used + k]
        self._used += k
        return out.reshape(-1, *shape)

    def rand(self, *shape: int) -> Tensor:
        raise ExportError("the sampler draws uniform numbers (rejection sampling), which "
                          "has data-dependent control flow and cannot be traced")

    def randint(self, high: int, *shape: int) -> Tensor:
        self.rand()
        raise AssertionError  # pragma: no cover - rand() raised

    def subset(self, rows: Tensor | Sequence[int]) -> ShowerNoise:
        self.rand()
        raise AssertionError  # pragma: no cover


class _CountingNoise(ShowerNoise):
    """Real per-shower streams that count the normals drawn per shower."""

    drawn = 0
    other = False

    def randn(self, *shape: int) -> Tensor:
        self.drawn += math.prod(shape)
        return super().randn(*shape)

    def rand(self, *shape: int) -> Tensor:
        self.other = True
        return super().rand(*shape)

    def randint(self, high: int, *shape: int) -> Tensor:
        self.other = True
        return super().randint(high, *shape)


def _kde_latent(model: GenerativeModel, c: Tensor, normals: Tensor) -> Tensor:
    """BIB-AE's latent KDE sampled without rejection: the accepted kernel of the
    rejection sampler is drawn with probability proportional to its acceptance
    probability, so inverse-CDF sampling of those weights (one normal turned into a
    uniform) draws from the same conditional density in a fixed number of operations."""
    d, n = model.config.latent_dim, int(model.kde_count)
    pts, h = model.kde_points[:n], model.kde_bandwidth
    logits = -0.5 * ((c[:, :1] - pts[None, :, -1]) / h[-1]) ** 2  # (B, n)
    w = torch.exp(logits - logits.max(1, keepdim=True).values)  # the nearest label gets 1
    cum = torch.cumsum(w, 1)
    u = 0.5 * (1 + torch.erf(normals[:, :1] / math.sqrt(2.0)))
    idx = (cum < u * cum[:, -1:]).sum(1).clamp(max=n - 1)
    return pts[idx, :d] + normals[:, 1:1 + d] * h[:d]


def _uses_kde_rejection(model: GenerativeModel) -> bool:
    return model.name == "bibae" and int(getattr(model, "kde_count", 0)) > 0 \
        and not model.takes_angles


def noise_width(model: GenerativeModel) -> int:
    """Standard normals one shower needs (the width of the ``noise`` input)."""
    if _uses_kde_rejection(model):
        return 1 + model.config.latent_dim
    lo = float(model.energy_range_mev[0])
    noise = _CountingNoise.for_showers(0, range(1), model.device)
    with torch.no_grad(), _angles_as(model, None):
        model.generate(torch.full((1,), lo, device=model.device), noise, None)
    if noise.other:
        raise ExportError(f"model {model.name!r}: its sampler draws non-normal noise in a "
                          f"data-dependent loop, which cannot be traced")
    return noise.drawn


@contextlib.contextmanager
def _angles_as(model: GenerativeModel, angles: Tensor | None) -> Iterator[None]:
    """Let the model take the direction from a tensor (B, 2) in rad instead of a
    :class:`Conditions` (numpy, not traceable); None keeps its fixed training values."""
    if angles is None or not model.takes_angles:
        yield
        return
    model.angle_tensor = lambda conditions, n: angles  # instance attribute, removed below
    try:
        yield
    finally:
        del model.angle_tensor


class VoxelSampler(nn.Module):
    """``forward(*inputs) -> (B, n_voxels)`` float32 cell energies.

    Inputs, each float32 with the batch first: ``energy`` (B, 1) in ``energy_unit``
    (``"GeV"`` or ``"MeV"``), then ``theta`` and ``phi`` (B, 1) in degrees when
    ``angles``, then ``noise`` (B, K) standard normals when not ``internal_noise``.
    ``cell_order`` permutes the output cells (a convention's order); ``per_incident``
    divides them by the incident energy.
    """

    def __init__(self, model: GenerativeModel, energy_unit: str = "GeV", angles: bool = True,
                 internal_noise: bool = True, cell_order: Tensor | None = None,
                 per_incident: bool = False) -> None:
        super().__init__()
        if model.representation != "voxels":
            raise ExportError(f"model {model.name!r} generates point clouds; this exporter "
                              f"handles voxel models")
        self.model = model.eval()
        self.energy_scale = {"GeV": 1e3, "MeV": 1.0}[energy_unit]
        self.angles = angles
        self.internal_noise = internal_noise
        self.noise_dim = noise_width(model)
        self.per_incident = per_incident
        self.register_buffer("cell_order", cell_order)
        thr = model.geometry.readout_threshold_mev
        self.threshold = thr if getattr(model.config, "threshold_output", False) else 0.0

    @property
    def input_names(self) -> list[str]:
        names = ["energy"] + (["theta", "phi"] if self.angles else [])
        return names + ([] if self.internal_noise else ["noise"])

    def example_inputs(self, batch: int) -> tuple[Tensor, ...]:
        lo, hi = self.model.energy_range_mev
        e = torch.linspace(lo, hi, batch)[:, None] / self.energy_scale
        out = [e]
        if self.angles:
            out += [torch.zeros(batch, 1), torch.zeros(batch, 1)]
        if not self.internal_noise:
            out.append(torch.randn(batch, self.noise_dim, generator=torch.Generator()
                                   .manual_seed(0)))
        return tuple(t.to(self.model.device) for t in out)

    def forward(self, *inputs: Tensor) -> Tensor:
        e_inc = inputs[0][:, 0] * self.energy_scale
        angles = None
        if self.angles:
            angles = torch.cat([inputs[1], inputs[2]], 1) * (math.pi / 180)
        if self.internal_noise:
            normals = torch.randn_like(inputs[0].expand(-1, self.noise_dim))
        else:
            normals = inputs[-1]
        x = self.cells(e_inc, angles, normals)
        if angles is not None and not self.model.takes_angles:
            # the convention has direction inputs that this model (trained at one
            # direction) does not use; keep them in the graph, the exporter drops unused
            # inputs and the C++ side would then find no input of that name
            x = x + 0 * angles.sum(1, keepdim=True)
        if self.cell_order is not None:
            x = x[:, self.cell_order]
        if self.per_incident:
            x = x / e_inc[:, None]
        return x

    def cells(self, e_inc: Tensor, angles: Tensor | None, normals: Tensor) -> Tensor:
        """Cell energies (MeV, caloforge cell order) as ``sample`` returns them."""
        m = self.model
        with _angles_as(m, angles):
            if _uses_kde_rejection(m):
                c = m.condition_features(e_inc)
                z = _kde_latent(m, c, normals)
                x = m.showers_from_latent(z, c, e_inc)
            else:
                x = m.generate(e_inc, TensorNoise(normals), None)
        x = x.float().clamp_min(0)
        if self.threshold > 0:
            x = torch.where(x >= self.threshold, x, torch.zeros_like(x))
        return x


def shower_normals(seed: int, indices: Sequence[int] | range, width: int) -> Tensor:
    """The first ``width`` normals of the noise streams of showers ``indices`` of a run
    with ``seed``: as the ``noise`` input they reproduce ``caloforge generate --seed``."""
    return ShowerNoise.for_showers(seed, indices).randn(width)
