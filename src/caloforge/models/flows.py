"""Normalizing-flow building blocks shared by the flow-based architectures.

- :func:`spline_coupling_flow`: a zuko coupling flow (rational-quadratic splines, or
  affine couplings with ``bins=0``) that samples in one network pass;
- :class:`AffineCouplingFlow`: a lean conditional RealNVP for many features;
- :func:`sample_flow`: map given standard-normal noise through either kind, or through a
  masked autoregressive flow (:mod:`caloforge.models.made`).

>>> import torch
>>> flow = AffineCouplingFlow(8, 2, transforms=2, hidden=(16,))
>>> z, ctx = torch.randn(3, 8), torch.randn(3, 2)
>>> tuple(flow.sample_from(z, ctx).shape)
(3, 8)
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.distributions import DiagNormal
from zuko.flows import (
    Flow,
    GeneralCouplingTransform,
    MaskedAutoregressiveTransform,
    UnconditionalDistribution,
)
from zuko.nn import Linear as ZukoLinear
from zuko.transforms import MonotonicRQSTransform
from zuko.utils import broadcast, unpack

from caloforge.models.made import cached_from, sample_maf
from caloforge.models.splines import SamplingSpline, univariate_spec

T = TypeVar("T")


def spline_coupling_flow(features: int, context: int, transforms: int, bins: int,
                         hidden: tuple[int, ...]) -> Flow:
    """Rational-quadratic spline coupling flow on ``features`` dims (one-pass sampling);
    ``bins=0`` gives affine (RealNVP) couplings instead.

    Masks alternate between a random half of the features and its complement, so every
    feature is transformed and mixes with every other across pairs of transforms.
    """
    layers = []
    perm = torch.randperm(features)
    for i in range(transforms):
        if i % 2 == 0 and i > 0:
            perm = torch.randperm(features)
        mask = (perm % 2) == (i % 2)
        layers.append(GeneralCouplingTransform(
            features, context, mask=mask, hidden_features=tuple(hidden), activation=nn.ELU,
            **univariate_spec(bins)))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(features), torch.ones(features),
                                     buffer=True)
    return Flow(layers, base)


class AffineCouplingFlow(nn.Module):
    """A lean conditional RealNVP for many features, cheaper than zuko's masked couplings.

    Blocks of (fixed random permutation, coupling on the second half given the first,
    coupling on the first half given the second): one gather per two couplings instead
    of a gather and a scatter per coupling, which dominates sampling time at 900
    features.  The latent stays in the permuted order (an i.i.d. normal does not care).
    Log-scales are soft-clamped to +-``scale_clamp`` for stable training.
    """

    def __init__(self, features: int, context: int, transforms: int,
                 hidden: tuple[int, ...], scale_clamp: float = 3.0) -> None:
        super().__init__()
        self.features = features
        self.context_width = context
        self.half = features // 2
        self.scale_clamp = scale_clamp
        blocks = max(1, (transforms + 1) // 2)
        perms = torch.stack([torch.randperm(features) for _ in range(blocks)])
        self.register_buffer("perms", perms)
        self.register_buffer("inv_perms", torch.argsort(perms, 1))
        self.nets = nn.ModuleList()
        for j in range(2 * blocks):
            n_in = self.half if j % 2 == 0 else features - self.half
            n_out = features - n_in
            dims = [n_in + context, *hidden]
            layers: list[nn.Module] = []
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [nn.Linear(a, b), nn.ELU()]
            last = nn.Linear(dims[-1], 2 * n_out)
            nn.init.zeros_(last.weight)  # start as the identity map
            nn.init.zeros_(last.bias)
            self.nets.append(nn.Sequential(*layers, last))

    def _params(self, j: int, cond: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        out = run_mlp(self.nets[j], torch.cat([cond, context], 1))
        shift, raw = out.chunk(2, 1)
        c = self.scale_clamp
        return shift, c * torch.tanh(raw / c)

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        """log density of ``x`` (B, features) given ``context`` (B, context)."""
        h = self.half
        logdet = x.new_zeros(len(x))
        for blk in range(len(self.perms)):
            x = x[:, self.perms[blk]]
            a, b = x[:, :h], x[:, h:]
            t, s = self._params(2 * blk, a, context)
            b = (b - t) * torch.exp(-s)
            logdet = logdet - s.sum(1)
            t, s = self._params(2 * blk + 1, b, context)
            a = (a - t) * torch.exp(-s)
            logdet = logdet - s.sum(1)
            x = torch.cat([a, b], 1)
        base = -0.5 * (x ** 2).sum(1) - 0.5 * self.features * math.log(2 * math.pi)
        return base + logdet

    def sample_from(self, z: Tensor, context: Tensor) -> Tensor:
        """Map standard-normal ``z`` (B, features) to data space."""
        h = self.half
        x = z
        if not torch.is_grad_enabled():
            return self._sample_no_grad(z, context)
        for blk in reversed(range(len(self.perms))):
            a, b = x[:, :h], x[:, h:]
            t, s = self._params(2 * blk + 1, b, context)
            a = a * torch.exp(s) + t
            t, s = self._params(2 * blk, a, context)
            b = b * torch.exp(s) + t
            x = torch.cat([a, b], 1).index_select(1, self.inv_perms[blk])
        return x

    def _sample_no_grad(self, x: Tensor, context: Tensor) -> Tensor:
        """:meth:`sample_from` without autograd: the same operations, on weights looked
        up once and in place on temporaries (:meth:`sample_with`).  At batch 1 the
        module calls, parameter look-ups and allocations cost more than the products."""
        if torch.jit.is_tracing():  # the exporters: plain operations, no out= views
            return self._sample_traceable(x, context)
        inputs = CouplingInputs(self, x.shape[0], x)
        inputs.context.copy_(context)
        return self.sample_with(x, inputs)

    def sample_with(self, x: Tensor, inputs: CouplingInputs) -> Tensor:
        """:meth:`sample_from` without autograd for standard-normal ``x``, the context
        already written into ``inputs.context``.  Each coupling writes its output straight
        into the input of the next net (no concatenation per coupling); the values are
        those of :meth:`sample_from`, element by element."""
        h, c, linear, elu_ = self.half, self.scale_clamp, F.linear, F.elu_
        inputs.context_b.copy_(inputs.context)
        in_a, in_b, a_out, b = inputs.in_a, inputs.in_b, inputs.a, inputs.b
        a = x[:, :h]
        b.copy_(x[:, h:])
        blocks, last = self._sampling_plan()
        for hidden_a, (w_a, bias_a), hidden_b, (w_b, bias_b), next_a, next_b in blocks:
            # a <- a exp(s) + t given b, then b <- b exp(s) + t given the new a
            y = in_b
            for w, bias in hidden_a:
                y = elu_(linear(y, w, bias))
            t, raw = linear(y, w_a, bias_a).chunk(2, 1)
            torch.add(raw.div(c).tanh_().mul_(c).exp_().mul_(a), t, out=a_out)
            y = in_a
            for w, bias in hidden_b:
                y = elu_(linear(y, w, bias))
            t, raw = linear(y, w_b, bias_b).chunk(2, 1)
            torch.add(raw.div(c).tanh_().mul_(c).exp_().mul_(b), t, out=b)
            merged = torch.cat([a_out, b], 1)
            if next_a is not None:  # the next block's halves, permuted
                a = merged.index_select(1, next_a)
                torch.index_select(merged, 1, next_b, out=b)
        return merged.index_select(1, last)

    def _sampling_plan(self) -> tuple[list[tuple], Tensor]:
        """Per block in sampling order: the hidden layers' and the last layer's weights
        and biases of the net giving the first half, the same of the net giving the
        second half, then the next block's halves of the inverse permutation (None after
        the last block); and the last block's whole inverse permutation (built once)."""
        inv, h = self.inv_perms, self.half

        def build() -> tuple[list[tuple], Tensor]:
            nets, plan = self._linear_weights(), []
            for blk in reversed(range(len(inv))):
                net_a, net_b = nets[2 * blk + 1], nets[2 * blk]
                nxt = (inv[blk, :h], inv[blk, h:]) if blk else (None, None)
                plan.append((tuple(net_a[:-1]), net_a[-1], tuple(net_b[:-1]), net_b[-1], *nxt))
            return plan, inv[0]

        return cached_from(self, "_plan_cache", inv, build)

    def _sample_traceable(self, x: Tensor, context: Tensor) -> Tensor:
        """:meth:`_sample_no_grad` as plain operations on fresh tensors (the same values),
        for a trace."""
        h, nets, inv = self.half, self._linear_weights(), self.inv_perms
        for blk in reversed(range(len(inv))):
            a, b = x[:, :h], x[:, h:]
            a = self._couple_no_grad(nets[2 * blk + 1], b, a, context)
            b = self._couple_no_grad(nets[2 * blk], a, b, context)
            x = torch.cat([a, b], 1).index_select(1, inv[blk])
        return x

    def _couple_no_grad(self, layers: list[tuple[Tensor, Tensor]], cond: Tensor, x: Tensor,
                        context: Tensor) -> Tensor:
        """``x exp(s) + t``, (t, s) from the net of ``layers`` given ``cond``."""
        y = torch.cat([cond, context], 1)
        for w, b in layers[:-1]:
            y = F.elu(F.linear(y, w, b))
        t, raw = F.linear(y, *layers[-1]).chunk(2, 1)
        c = self.scale_clamp
        return torch.exp(raw.div(c).tanh_().mul_(c)).mul_(x).add_(t)

    def _linear_weights(self) -> list[list[tuple[Tensor, Tensor]]]:
        """(weight, bias) of every linear layer of every net (ELUs between them),
        gathered once: the parameters stay the same objects for the module's life
        (``to()``, ``load_state_dict`` and the EMA copy into them)."""
        nets = self.__dict__.get("_weights_cache")
        if nets is None:
            nets = [[(m.weight, m.bias) for m in net if isinstance(m, nn.Linear)]
                    for net in self.nets]
            self.__dict__["_weights_cache"] = nets
        return nets


class CouplingInputs:
    """Inputs ``[half | context]`` of the nets of an :class:`AffineCouplingFlow` for
    ``batch`` samples: one buffer per half, where each coupling writes its output for
    the next net to read.  Reusable from one :meth:`AffineCouplingFlow.sample_with` to
    the next: write the context into :attr:`context` (a ``(batch, context)`` view)
    before each.  ``like``: a tensor of the dtype and device to use."""

    def __init__(self, flow: AffineCouplingFlow, batch: int, like: Tensor) -> None:
        h, n_b, width = flow.half, flow.features - flow.half, flow.context_width
        self.in_a, self.in_b = like.new_empty(batch, h + width), like.new_empty(batch, n_b + width)
        self.a, self.b = self.in_a[:, :h], self.in_b[:, :n_b]
        self.context, self.context_b = self.in_a[:, h:], self.in_b[:, n_b:]


def run_mlp(net: nn.Sequential, h: Tensor) -> Tensor:
    """``net(h)``; without gradients, its linear layers (torch's or zuko's, one weight
    matrix) and ELUs run as the functions their modules call, the same operations
    without the module calls, whose overhead rules sampling at batch 1."""
    if torch.is_grad_enabled():
        return net(h)
    for layer in net:
        kind = type(layer)
        if kind in (nn.Linear, ZukoLinear) and layer.weight.dim() == 2:
            h = F.linear(h, layer.weight, layer.bias)
        elif kind is nn.ELU:
            h = F.elu(h, layer.alpha, layer.inplace)
        else:
            h = layer(h)
    return h


def _coupling_inverse(t: GeneralCouplingTransform, context: Tensor, y: Tensor) -> Tensor:
    """``t(context).inv(y)`` as zuko computes it (the same operations on the same values),
    without building its coupling objects, splitting by mask and broadcasting at every
    call: at batch 1 zuko's shape arithmetic costs more than the hyper network."""
    idx_a, idx_b, order = cached_from(t, "_split_cache", t.mask, lambda: _coupling_split(t.mask))
    y_a, y_b = y.index_select(-1, idx_a), y.index_select(-1, idx_b)
    if y_a.shape[:-1] == context.shape[:-1]:
        h = torch.cat([y_a, context], -1)
    else:
        h = torch.cat(broadcast(y_a, context, ignore=1), dim=-1)
    phi = unpack(run_mlp(t.hyper, h).unflatten(-1, (-1, t.total)), t.shapes)
    if t.univariate is MonotonicRQSTransform and not torch.jit.is_tracing():
        x_b = SamplingSpline(*phi)._inverse(y_b)
    else:  # (a trace: the exporters swap in their own spline inverse)
        x_b = t.univariate(*phi).inv(y_b)
    return torch.cat([y_a, x_b], -1).index_select(-1, order)


def _coupling_split(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the kept (``mask``) and transformed features, and the order that puts
    ``[kept, transformed]`` back in place."""
    idx_a, idx_b = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
    return idx_a, idx_b, torch.argsort(torch.cat([idx_a, idx_b]))


def sample_flow(flow: Flow | AffineCouplingFlow, context: Tensor, z: Tensor) -> Tensor:
    """Data-space samples of ``flow`` given ``context`` for standard-normal noise ``z``."""
    if isinstance(flow, AffineCouplingFlow):
        return flow.sample_from(z, context)
    blocks = flow.transform.transforms
    if not torch.is_grad_enabled() and all(type(t) is GeneralCouplingTransform for t in blocks):
        for t in reversed(blocks):
            z = _coupling_inverse(t, context, z)
        return z
    if not torch.is_grad_enabled() and all(
            isinstance(t, MaskedAutoregressiveTransform) for t in flow.transform.transforms):
        return sample_maf(flow, context, z)
    return flow(context).transform.inv(z)
