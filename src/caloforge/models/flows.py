"""Normalizing-flow building blocks shared by the flow-based architectures.

- :func:`spline_coupling_flow`: a zuko coupling flow (rational-quadratic splines, or
  affine couplings with ``bins=0``) that samples in one network pass;
- :func:`masked_autoregressive_flow`: a zuko MAF (density in one pass, sampling in one
  pass per feature) and :func:`autoregressive_blocks`, its blocks alone (an IAF student
  runs them in the one-pass direction to sample, :func:`made_forward`);
- :class:`AffineCouplingFlow`: a lean conditional RealNVP for many features;
- :func:`sample_flow`: map given standard-normal noise through either kind.

>>> import torch
>>> flow = AffineCouplingFlow(8, 2, transforms=2, hidden=(16,))
>>> z, ctx = torch.randn(3, 8), torch.randn(3, 2)
>>> tuple(flow.sample_from(z, ctx).shape)
(3, 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.distributions import DiagNormal
from zuko.flows import (
    MAF,
    Flow,
    GeneralCouplingTransform,
    MaskedAutoregressiveTransform,
    UnconditionalDistribution,
)
from zuko.nn import Linear as ZukoLinear
from zuko.nn import MaskedLinear
from zuko.transforms import DependentTransform, MonotonicAffineTransform, MonotonicRQSTransform
from zuko.utils import broadcast, unpack

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
            **_univariate(bins)))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(features), torch.ones(features),
                                     buffer=True)
    return Flow(layers, base)


def _univariate(bins: int) -> dict:
    """zuko element-wise transform: rational-quadratic spline with ``bins`` bins, or
    affine for ``bins=0``."""
    if bins:
        return {"univariate": MonotonicRQSTransform,
                "shapes": [(bins,), (bins,), (bins - 1,)]}
    return {"univariate": MonotonicAffineTransform, "shapes": [(), ()]}


def masked_autoregressive_flow(features: int, context: int, transforms: int, bins: int,
                               hidden: tuple[int, ...]) -> Flow:
    """A conditional zuko MAF: ``transforms`` MADE blocks whose feature order alternates
    (ascending, descending), spline (``bins`` >= 2) or affine (``bins=0``) transforms.
    The density takes one network pass per block; sampling takes one per feature."""
    return MAF(features, context, transforms, hidden_features=tuple(hidden),
               activation=nn.ELU, **_univariate(bins))


def autoregressive_blocks(features: int, context: int, transforms: int, bins: int,
                          hidden: tuple[int, ...]) -> nn.ModuleList:
    """The MADE blocks of :func:`masked_autoregressive_flow` with the same feature orders,
    without a base distribution: an inverse autoregressive flow runs each block in its
    one-pass direction from the latent side to the data side."""
    orders = [torch.arange(features), torch.arange(features).flip(0)]
    return nn.ModuleList(
        MaskedAutoregressiveTransform(features, context, order=orders[i % 2],
                                      hidden_features=tuple(hidden), activation=nn.ELU,
                                      **_univariate(bins))
        for i in range(transforms))


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

        return _cached_from(self, "_plan_cache", inv, build)

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
    idx_a, idx_b, order = _cached_from(t, "_split_cache", t.mask, lambda: _coupling_split(t.mask))
    y_a, y_b = y.index_select(-1, idx_a), y.index_select(-1, idx_b)
    if y_a.shape[:-1] == context.shape[:-1]:
        h = torch.cat([y_a, context], -1)
    else:
        h = torch.cat(broadcast(y_a, context, ignore=1), dim=-1)
    phi = unpack(run_mlp(t.hyper, h).unflatten(-1, (-1, t.total)), t.shapes)
    if t.univariate is MonotonicRQSTransform and not torch.jit.is_tracing():
        x_b = _SamplingSpline(*phi)._inverse(y_b)
    else:  # (a trace: the exporters swap in their own spline inverse)
        x_b = t.univariate(*phi).inv(y_b)
    return torch.cat([y_a, x_b], -1).index_select(-1, order)


def _coupling_split(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the kept (``mask``) and transformed features, and the order that puts
    ``[kept, transformed]`` back in place."""
    idx_a, idx_b = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
    return idx_a, idx_b, torch.argsort(torch.cat([idx_a, idx_b]))


class _SamplingSpline(MonotonicRQSTransform):
    """zuko's rational-quadratic spline, the knots around each value looked up without
    zuko's general broadcast: here the knot tables and the bin indices share their batch
    shape, and ``torch.broadcast_shapes`` costs more than the spline at batch 1.  The
    same values as zuko's lookup; zuko's arithmetic otherwise."""

    def bin(self, k: Tensor) -> tuple[Tensor, ...]:
        if k.shape != self.horizontal.shape[:-1]:
            return super().bin(k)
        n = self.bins
        inside = (k >= 0) & (k < n)
        k = k % n
        pair = torch.stack((k, k + 1), -1)
        x0, x1 = self.horizontal.gather(-1, pair).unbind(-1)
        y0, y1 = self.vertical.gather(-1, pair).unbind(-1)
        d0, d1 = self.derivatives.gather(-1, pair).unbind(-1)
        return inside, x0, x1, y0, y1, d0, d1, (y1 - y0) / (x1 - x0)


def _cached_from(owner: nn.Module, name: str, source: Tensor, build: Callable[[], T]) -> T:
    """``build()``, cached on ``owner`` under ``name`` while ``source`` stays the same
    tensor at the same version (``to()`` makes a new tensor, ``load_state_dict`` a new
    version); built as plain tensors, usable with autograd on."""
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] is not source or cached[1] != source._version:
        with torch.inference_mode(False):
            cached = (source, source._version, build())
        owner.__dict__[name] = cached
    return cached[2]


def _sampling_univariate(block: MaskedAutoregressiveTransform) -> type:
    """The block's element-wise transform for sampling: zuko's spline with the knot lookup
    of :class:`_SamplingSpline` (no general broadcast: half the time at batch 1)."""
    return _SamplingSpline if block.univariate is MonotonicRQSTransform else block.univariate


def _masked_weights(block: MaskedAutoregressiveTransform) -> list[Tensor | None]:
    """The hyper network's weights times their masks (None for activations), cached on
    the block while the weights stay the same tensors at the same version: zuko's
    MaskedLinear multiplies weight and mask at every call, which at batch 1 costs several
    times the product itself."""
    layers = list(block.hyper)
    key = tuple((id(m.weight), m.weight._version, m.weight.device) for m in layers
                if isinstance(m, MaskedLinear))
    cached = block.__dict__.get("_masked_cache")
    if cached is None or cached[0] != key:
        weights = [m.mask * m.weight if isinstance(m, MaskedLinear) else None for m in layers]
        cached = (key, weights)
        block.__dict__["_masked_cache"] = cached
    return cached[1]


def made_transform(block: MaskedAutoregressiveTransform, context: Tensor,
                   x: Tensor) -> DependentTransform:
    """The element-wise transform that MADE ``block`` applies given inputs ``x``, as
    zuko's ``block(context).meta(x)`` but with cached masked weights (no gradients:
    for sampling only)."""
    h = torch.cat([x, context], -1)
    for layer, w in zip(block.hyper, _masked_weights(block)):
        h = layer(h) if w is None else F.linear(h, w, layer.bias)
    phi = unpack(h.unflatten(-1, (-1, block.total)), block.shapes)
    return DependentTransform(_sampling_univariate(block)(*phi), 1)


def made_forward(block: MaskedAutoregressiveTransform, context: Tensor,
                 x: Tensor) -> tuple[Tensor, Tensor]:
    """``(y, log|dy/dx|)`` of MADE ``block`` in its one-pass direction (cached masked
    weights when gradients are off)."""
    if torch.is_grad_enabled():
        return block(context).call_and_ladj(x)
    return made_transform(block, context, x).call_and_ladj(x)


def _incremental(block: MaskedAutoregressiveTransform) -> bool:
    """Whether ``block`` is fully autoregressive with a plain MADE (masked linear layers
    between activations), what :func:`_invert_made_incremental` handles."""
    layers = list(block.hyper)
    n = block.order.numel()
    linear = layers[0::2]
    return (len(layers) % 2 == 1 and all(isinstance(m, MaskedLinear) for m in linear)
            and not any(isinstance(m, MaskedLinear) for m in layers[1::2])
            and block.passes == n and n > 1 and int(block.order.unique().numel()) == n)


def _invert_made_incremental(block: MaskedAutoregressiveTransform, context: Tensor,
                             y: Tensor) -> Tensor:
    """Invert one fully autoregressive MADE block feature by feature, computing only what
    each step needs: the first layer's pre-activations grow by one input column per step
    (the inputs not yet known contribute 0), deeper hidden layers are recomputed, and only
    the next feature's parameters (its rows of the output layer) and its spline are
    evaluated.  The same values as ``passes`` full network passes (up to float summation
    order) at a fraction of the cost: a full pass computes every feature's parameters and
    transform each time."""
    n = y.shape[-1]
    layers = list(block.hyper)
    weights = _masked_weights(block)
    first, last = layers[0], layers[-1]
    w_in, w_out = weights[0], weights[-1]
    middle = [(layers[j], weights[j], layers[j + 1]) for j in range(2, len(layers) - 1, 2)]
    act = layers[1]
    pre = F.linear(context, w_in[:, n:], first.bias)
    w_rows = w_out.view(n, block.total, -1)
    b_rows = last.bias.view(n, block.total)
    columns: list[Tensor | None] = [None] * n
    for i in torch.argsort(block.order).tolist():
        h = act(pre)
        for linear, w, activation in middle:
            h = activation(F.linear(h, w, linear.bias))
        params = F.linear(h, w_rows[i], b_rows[i]).unsqueeze(-2)  # (B, 1, total)
        x_i = _sampling_univariate(block)(*unpack(params, block.shapes)).inv(y[..., i:i + 1])
        columns[i] = x_i
        pre = pre + x_i * w_in[:, i]
    return torch.cat(columns, -1)


@torch.no_grad()
def sample_maf(flow: Flow, context: Tensor, z: Tensor) -> Tensor:
    """Invert a MAF of :class:`MaskedAutoregressiveTransform` blocks with cached masked
    weights: block by block, feature by feature (plain MADE blocks only compute the next
    feature's parameters; others run one full pass per feature); the values of
    zuko's inverse up to float rounding."""
    x = z
    for block in reversed(flow.transform.transforms):
        if _incremental(block):
            x = _invert_made_incremental(block, context, x)
            continue
        y, x = x, torch.zeros_like(x)
        for _ in range(block.passes):
            x = made_transform(block, context, x).inv(y)
    return x


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
