"""ShowerFlow: the shower-level conditional flow of the point-cloud models.

For given conditions (the network condition of
:meth:`~caloforge.models.base.GenerativeModel.condition_features`: energy, and the
direction where the data vary it) it draws what the point model then fills in: the
number of points, the visible energy, the number of points and the energy of every
layer, and the energy-weighted centre of gravity (x, y).  The flow (a zuko rational-
quadratic spline coupling flow) works on a continuous, invertible representation,
standardised with statistics fitted on the training showers:

- ``log(n + u)``: the number of points, dequantised with ``u ~ U(0, 1)``;
- ``log(E_vis / E_inc)``;
- ``logit`` of the per-layer point fractions ``(n_k + u_k) / sum(n_j + u_j)``
  (dequantised counts, so empty layers are not a point mass);
- ``logit`` of the per-layer energy fractions ``E_k / E_vis`` (clipped at ``eps``);
- the centre of gravity ``(x, y)`` in mm.

:meth:`ShowerFlow.decode` maps a draw back: ``n = floor(exp(.))`` (at least 1), layer
counts by largest-remainder rounding of ``n`` times the normalised fractions, so they
always sum to ``n``; layer energies are the normalised energy fractions of the layers
that got points times ``E_vis``, so they always sum to ``E_vis``.

>>> import torch
>>> flow = ShowerFlow(n_layers=3, context=1, transforms=2, hidden=(8,), bins=4)
>>> flow.round_counts(torch.tensor([[0.5, 0.2, 0.3]]), torch.tensor([3]))  # 1.5, .6, .9
tensor([[1, 1, 1]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from zuko.flows import Flow
from zuko.utils import unpack

from caloforge.models.flows import sample_flow, spline_coupling_flow
from caloforge.models.noise import Source, randn


@dataclass
class ShowerSummary:
    """Shower-level quantities (per shower of a batch)."""

    n_points: Tensor  # (B,) int64, >= 1
    e_vis: Tensor  # (B,) MeV
    layer_counts: Tensor  # (B, L) int64, summing to n_points
    layer_energy: Tensor  # (B, L) MeV, summing to e_vis, 0 where a layer has no points
    cog: Tensor  # (B, 2) mm


def summarise(energy: Tensor, xy: Tensor, layer: Tensor, mask: Tensor, n_layers: int
              ) -> ShowerSummary:
    """The :class:`ShowerSummary` of padded point clouds (``energy`` (B, P) MeV, ``xy``
    (B, P, 2) mm, ``layer`` (B, P) int64, ``mask`` (B, P))."""
    e = energy * mask
    rows = len(e)
    onehot_idx = layer.clamp(0, n_layers - 1)
    counts = torch.zeros(rows, n_layers, dtype=torch.long, device=e.device)
    counts.scatter_add_(1, onehot_idx, mask.long())
    layer_e = torch.zeros(rows, n_layers, dtype=e.dtype, device=e.device)
    layer_e.scatter_add_(1, onehot_idx, e)
    e_vis = e.sum(1)
    cog = (xy * e[..., None]).sum(1) / e_vis.clamp_min(1e-12)[:, None]
    return ShowerSummary(mask.sum(1), e_vis, counts, layer_e, cog)


def _coupling_inverse(flow: Flow, context: Tensor, z: Tensor) -> Tensor:
    """``flow(context).transform.inv(z)`` for a :func:`spline_coupling_flow`, layer by
    layer without zuko's distribution and transform wrappers around each step (the same
    hyper-networks and zuko's own spline inverse, so the same numbers, with less Python
    overhead: the flow is a third of a point shower's generation time at batch 1)."""
    y = z
    for t in reversed(flow.transform.transforms):
        idx_a, idx_b = t.mask.nonzero()[:, 0], (~t.mask).nonzero()[:, 0]
        y_a = y[..., idx_a]
        phi = t.hyper(torch.cat([y_a, context], -1)).unflatten(-1, (-1, t.total))
        x = torch.empty_like(y)
        x[..., idx_a] = y_a
        x[..., idx_b] = t.univariate(*unpack(phi, t.shapes))._inverse(y[..., idx_b])
        y = x
    return y


class ShowerFlow(nn.Module):
    """Conditional flow over the shower summary (see the module docstring)."""

    def __init__(self, n_layers: int, context: int, transforms: int = 6,
                 hidden: tuple[int, ...] = (128, 128), bins: int = 8, eps: float = 1e-4) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.eps = eps
        self.features = 2 + 2 * n_layers + 2
        self.flow = spline_coupling_flow(self.features, context, transforms, bins, hidden)
        self.register_buffer("mean", torch.zeros(self.features))
        self.register_buffer("std", torch.ones(self.features))

    # ---- representation -------------------------------------------------------------------
    def encode(self, s: ShowerSummary, e_inc: Tensor, u: Tensor) -> Tensor:
        """Raw features ``(B, features)``; ``u`` (B, 1 + L) dequantisation uniforms."""
        n = s.n_points.to(e_inc.dtype)
        counts = s.layer_counts.to(e_inc.dtype) + u[:, 1:]
        point_frac = counts / counts.sum(1, keepdim=True)
        energy_frac = s.layer_energy / s.e_vis.clamp_min(1e-12)[:, None]
        return torch.cat([
            torch.log(n + u[:, :1].squeeze(1))[:, None],
            torch.log(s.e_vis.clamp_min(1e-12) / e_inc)[:, None],
            torch.logit(point_frac.clamp(self.eps, 1 - self.eps)),
            torch.logit(energy_frac.clamp(self.eps, 1 - self.eps)),
            s.cog], 1)

    @staticmethod
    def round_counts(fractions: Tensor, n: Tensor) -> Tensor:
        """Integer counts ``(B, L)`` from fractions (normalised here) that sum to ``n``
        exactly: floors, then one more for the largest remainders."""
        frac = fractions / fractions.sum(1, keepdim=True)
        want = frac * n[:, None].to(frac.dtype)
        base = torch.floor(want).long()
        missing = (n - base.sum(1)).clamp_min(0)
        # rank of each remainder, largest first, ties by position (a stable descending
        # sort), by pairwise comparison: L x L per shower, traceable (no sort)
        r = want - base
        above = r[:, None, :] > r[:, :, None]  # [b, i, j]: r_j > r_i
        tied = (r[:, None, :] == r[:, :, None]) & torch.ones_like(above[0]).tril(-1)
        rank = (above | tied).sum(2)
        return base + (rank < missing[:, None]).long()

    def decode(self, y: Tensor, e_inc: Tensor, max_points: int | None = None) -> ShowerSummary:
        """A :class:`ShowerSummary` from raw features (see the module docstring)."""
        L = self.n_layers
        log_n = y[:, 0].clamp(max=30.0)
        n = torch.floor(torch.exp(log_n)).long().clamp_min(1)
        if max_points is not None:
            n = n.clamp_max(max_points)
        e_vis = e_inc * torch.exp(y[:, 1].clamp(max=5.0))
        counts = self.round_counts(torch.sigmoid(y[:, 2:2 + L]), n)
        energy = torch.sigmoid(y[:, 2 + L:2 + 2 * L]) * (counts > 0)
        energy = energy / energy.sum(1, keepdim=True).clamp_min(1e-30)
        return ShowerSummary(n, e_vis, counts, energy * e_vis[:, None], y[:, -2:])

    # ---- fitting, loss, sampling ------------------------------------------------------------
    def fit(self, features: Tensor) -> None:
        """Standardisation statistics from raw training features."""
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-3))

    def loss(self, features: Tensor, context: Tensor) -> Tensor:
        """Mean negative log-likelihood of raw features (standardised inside)."""
        z = (features - self.mean) / self.std
        return -self.flow(context).log_prob(z).mean()

    def sample(self, context: Tensor, noise: Source, e_inc: Tensor,
               max_points: int | None = None) -> ShowerSummary:
        """One draw per shower (row i from shower i's stream of ``noise``)."""
        z = randn(noise, len(context), self.features, device=context.device)
        inverse = sample_flow if torch.jit.is_tracing() else _coupling_inverse
        y = inverse(self.flow, context, z) * self.std + self.mean
        return self.decode(y, e_inc, max_points)
