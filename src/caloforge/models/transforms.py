"""Invertible preprocessing of voxel energies and conditions, fitted on training data.

Every transform is a :class:`torch.nn.Module` whose fitted constants are buffers, so they
travel in the model's ``state_dict`` (and therefore in its safetensors weights).  Shapes
are fixed at construction from the geometry, so a fresh model can load fitted values.

``forward(x, e_inc)`` maps voxel energies (MeV, shape ``(B, n_voxels)``) to the network
space, ``inverse(y, e_inc)`` maps back; ``e_inc`` is the incident energy in MeV, ``(B,)``.

>>> import torch
>>> t = Compose(ScaleByIncident(), LogTransform(1e-6), Standardize(4))
>>> x, e = torch.rand(16, 4), torch.full((16,), 2.0)
>>> t.fit(x, e)
>>> bool(torch.allclose(t.inverse(t(x, e), e), x, atol=1e-5))
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.errors import InputError


class Transform(nn.Module):
    """Base: an invertible map fitted on training data (identity until fitted)."""

    def fit(self, x: Tensor, e_inc: Tensor) -> None:
        """Fit constants on training showers ``x`` (MeV) with incident energies (MeV)."""

    def forward(self, x: Tensor, e_inc: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor, e_inc: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms in order; each is fitted on the output of the previous ones."""

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        self.steps = nn.ModuleList(transforms)

    def fit(self, x: Tensor, e_inc: Tensor) -> None:
        for t in self.steps:
            t.fit(x, e_inc)
            x = t(x, e_inc)

    def forward(self, x: Tensor, e_inc: Tensor) -> Tensor:
        for t in self.steps:
            x = t(x, e_inc)
        return x

    def inverse(self, y: Tensor, e_inc: Tensor) -> Tensor:
        for t in reversed(self.steps):
            y = t.inverse(y, e_inc)
        return y


class ScaleByIncident(Transform):
    """Divide voxel energies by the incident energy times a fitted constant.

    The constant is the mean visible-energy fraction, so that the transformed shower sums
    to about one whatever the sampling fraction of the calorimeter.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fraction", torch.ones(()))

    def fit(self, x: Tensor, e_inc: Tensor) -> None:
        frac = (x.sum(1, dtype=torch.float64) / e_inc.double()).mean()
        self.fraction.fill_(float(frac) if float(frac) > 0 else 1.0)

    def forward(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x / (e_inc[:, None] * self.fraction)

    def inverse(self, y: Tensor, e_inc: Tensor) -> Tensor:
        return y * (e_inc[:, None] * self.fraction)


class LogTransform(Transform):
    """``log(x + eps) - log(eps)``: zero stays zero, the dynamic range is compressed."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return torch.log(x.clamp_min(0) + self.eps) - math.log(self.eps)

    def inverse(self, y: Tensor, e_inc: Tensor) -> Tensor:
        return (torch.exp(y + math.log(self.eps)) - self.eps).clamp_min(0)


class Standardize(Transform):
    """Per-feature (or global, ``features=0``) zero mean / unit variance."""

    def __init__(self, features: int = 0, min_std: float = 1e-6) -> None:
        super().__init__()
        shape = (features,) if features else ()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))
        self.min_std = min_std

    def fit(self, x: Tensor, e_inc: Tensor) -> None:
        self.fit_chunks([x])

    def fit_chunks(self, chunks: Iterable[Tensor]) -> None:
        """Fit from an iterable of row chunks (bounded memory for large datasets)."""
        n, s1, s2 = 0, 0.0, 0.0
        for x in chunks:
            x64 = x.double()
            if self.mean.ndim:
                s1, s2 = s1 + x64.sum(0), s2 + (x64 ** 2).sum(0)
                n += x64.shape[0]
            else:
                s1, s2 = s1 + x64.sum(), s2 + (x64 ** 2).sum()
                n += x64.numel()
        if n == 0:
            raise InputError("cannot fit a standardisation on zero rows")
        mean = s1 / n
        var = (s2 / n - mean ** 2).clamp_min(0) * (n / max(n - 1, 1))
        self.mean.copy_(torch.as_tensor(mean).float())
        self.std.copy_(torch.as_tensor(var).sqrt().float().clamp_min(self.min_std))

    def forward(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, y: Tensor, e_inc: Tensor) -> Tensor:
        return y * self.std + self.mean


class PerLayerScale(Transform):
    """Divide each layer's voxels by that layer's mean voxel value (fitted).

    Deep layers carry orders of magnitude less energy than the shower maximum; scaling
    them up keeps every layer visible to the loss.
    """

    def __init__(self, layer_of_voxel: np.ndarray, n_layers: int) -> None:
        super().__init__()
        self.register_buffer("layer_index", torch.as_tensor(layer_of_voxel, dtype=torch.long),
                             persistent=False)
        self.register_buffer("scale", torch.ones(n_layers))

    def fit(self, x: Tensor, e_inc: Tensor) -> None:
        sums = torch.zeros(len(self.scale), dtype=torch.float64)
        sums.index_add_(0, self.layer_index.cpu(), x.mean(0, dtype=torch.float64).cpu())
        counts = torch.bincount(self.layer_index.cpu(), minlength=len(self.scale)).double()
        mean = sums / counts.clamp_min(1)
        positive = mean[mean > 0]
        floor = float(positive.min()) if len(positive) else 1.0
        self.scale.copy_(mean.clamp_min(floor).float())

    def forward(self, x: Tensor, e_inc: Tensor) -> Tensor:
        return x / self.scale[self.layer_index]

    def inverse(self, y: Tensor, e_inc: Tensor) -> Tensor:
        return y * self.scale[self.layer_index]


class EnergyCondition(nn.Module):
    """Incident energy (MeV) <-> network condition in [-1, 1] over the trained range.

    Log scale, because showers change roughly logarithmically with energy.  The fitted
    range (``e_min``, ``e_max`` in MeV) is also what generation checks requests against.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("e_min", torch.ones(()))
        self.register_buffer("e_max", torch.full((), math.e))

    def fit(self, e_inc: Tensor) -> None:
        lo, hi = float(e_inc.min()), float(e_inc.max())
        if not (lo > 0 and math.isfinite(hi)):
            raise InputError("incident energies must be positive and finite to fit the model")
        if hi <= lo * (1 + 1e-6):  # a single energy: give the log range a finite width
            lo, hi = lo / 1.01, hi * 1.01
        self.e_min.fill_(lo)
        self.e_max.fill_(hi)

    @property
    def range_mev(self) -> tuple[float, float]:
        return float(self.e_min), float(self.e_max)

    def forward(self, e_inc: Tensor) -> Tensor:
        lo, hi = torch.log(self.e_min), torch.log(self.e_max)
        return (2 * (torch.log(e_inc) - lo) / (hi - lo) - 1).unsqueeze(-1)

    def inverse(self, c: Tensor) -> Tensor:
        lo, hi = torch.log(self.e_min), torch.log(self.e_max)
        return torch.exp((c.squeeze(-1) + 1) * 0.5 * (hi - lo) + lo)
