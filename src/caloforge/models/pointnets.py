"""Permutation-invariant point networks shared by the point-cloud diffusion models.

:class:`PointDenoiser` maps a padded set of noisy points ``(B, P, F)`` to one output per
point.  Every point sees its own features, a per-shower context (conditions, number of
points, noise level embedding) and a learned summary of its own shower's set, the
masked mean and max of per-point features, updated block by block (a DeepSets / EPiC
style block: local MLP on [point, summary, context], then a global MLP on the pooled
features).  Padding never enters a summary, so a shower's output depends only on its
own points: the result is independent of the batch and of how far it is padded.

>>> import torch
>>> net = PointDenoiser(features=4, context=3, hidden=16, summary=8, blocks=2)
>>> x, ctx = torch.randn(2, 5, 4), torch.randn(2, 3)
>>> mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
>>> tuple(net(x, mask, ctx).shape)
(2, 5, 4)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from caloforge.models.noise import ShowerNoise, Source


def noise_embedding(level: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of a per-shower scalar (a time or log noise
    level, of order one): the networks see smooth features at several frequencies."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(100.0), half, device=level.device))
    angles = level.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], 1)


def masked_pool(h: Tensor, mask: Tensor) -> Tensor:
    """Mean and max over the real points of each set: ``(B, P, H) -> (B, 2H)``."""
    if not torch.jit.is_tracing() and bool(mask.all()):  # every set full (batch 1)
        return torch.cat([h.mean(1), h.amax(1)], 1)
    m = mask[..., None].to(h.dtype)
    count = m.sum(1).clamp_min(1.0)
    mean = (h * m).sum(1) / count
    peak = h.masked_fill(~mask[..., None], float("-inf")).amax(1)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # empty sets
    return torch.cat([mean, peak], 1)


def per_point_linear(layer: nn.Linear, h: Tensor, shared: Tensor) -> Tensor:
    """``layer(h) + shared[:, None]`` for points ``h`` (B, P, in) and a per-shower term
    ``shared`` (B, out): one batched GEMM that adds the per-shower bias as it goes,
    instead of a GEMM and a pass over a (B, P, out) temporary."""
    bias = shared if layer.bias is None else shared + layer.bias
    return torch.baddbmm(bias[:, None], h, layer.weight.t().expand(h.shape[0], -1, -1))


def _silu(x: Tensor) -> Tensor:
    """SiLU, in place on the temporaries of inference (autograd keeps its inputs)."""
    return nn.functional.silu(x, inplace=not torch.is_grad_enabled())


class _Block(nn.Module):
    """One set block: points updated from [point, summary, context], then the summary
    from the pooled points.  The per-shower part of the first point layer is computed
    once per shower, not once per point (same map as one linear layer on the
    concatenation, a third fewer operations)."""

    def __init__(self, hidden: int, summary: int, context: int) -> None:
        super().__init__()
        self.point_in = nn.Linear(hidden, hidden)
        self.shared_in = nn.Linear(summary + context, hidden, bias=False)
        self.point_out = nn.Linear(hidden, hidden)
        self.glob = nn.Sequential(nn.Linear(2 * hidden + summary + context, summary),
                                  nn.SiLU(), nn.Linear(summary, summary))
        self.act = nn.SiLU()

    def forward(self, h: Tensor, g: Tensor, ctx: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        a = _silu(per_point_linear(self.point_in, h, self.shared_in(torch.cat([g, ctx], 1))))
        h = _silu(torch.baddbmm(h, a, self.point_out.weight.t().expand(h.shape[0], -1, -1))
                  + self.point_out.bias)
        g = self.act(g + self.glob(torch.cat([masked_pool(h, mask), g, ctx], 1)))
        return h, g


class PointDenoiser(nn.Module):
    """Set network ``(B, P, features) x (B, P) mask x (B, context) -> (B, P, features)``."""

    def __init__(self, features: int, context: int, hidden: int = 64, summary: int = 32,
                 blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(features, hidden)
        self.embed_context = nn.Linear(context, hidden, bias=False)
        self.summary0 = nn.Linear(context, summary)
        self.blocks = nn.ModuleList(_Block(hidden, summary, context) for _ in range(blocks))
        self.out = nn.Linear(hidden, features)
        self.out_shared = nn.Linear(summary + context, features, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, mask: Tensor, ctx: Tensor) -> Tensor:
        h = _silu(per_point_linear(self.embed, x, self.embed_context(ctx)))
        g = self.act(self.summary0(ctx))
        for block in self.blocks:
            h, g = block(h, g, ctx, mask)
        out = per_point_linear(self.out, h, self.out_shared(torch.cat([g, ctx], 1)))
        return out * mask[..., None].to(x.dtype)


def point_noise(source: Source, counts: Tensor, p: int, features: int,
                device: torch.device | str = "cpu") -> Tensor:
    """Standard normals ``(B, p, features)`` for the real points, zeros on the padding.

    With a :class:`ShowerNoise` shower i draws exactly ``counts[i] * features`` normals
    from its own stream, whatever ``p`` (the chunk's largest cloud): its points do not
    depend on the other showers of the chunk.  A plain generator (training) fills all.
    """
    if not isinstance(source, ShowerNoise):
        return torch.randn((len(counts), p, features), generator=source, device=device)
    if getattr(source, "traced", False):  # export: one normal tensor, no loop over showers
        real = torch.arange(p, device=counts.device)[None] < counts[:, None]
        return source.randn(p, features) * real[..., None].to(torch.float32)
    out = torch.zeros((len(counts), p, features), device=device)
    for row, (gen, n) in enumerate(zip(source.generators, counts.tolist())):
        out[row, :n] = torch.randn((n, features), generator=gen, device=device)
    return out
