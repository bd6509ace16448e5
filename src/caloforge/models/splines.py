"""Rational-quadratic splines (zuko's ``MonotonicRQSTransform``) as the flows' element-wise
maps: knot tables built straight from a MADE's raw output, the closed-form inverse as a
forward map of its own (:class:`InverseRQSTransform`, an IAF student's maps), and a
lean knot lookup for sampling (:class:`SamplingSpline`).

At batch 1 a flow's time is made of per-operation overheads, so these functions are
written for few operations, and the sampling path runs compiled (TorchScript) where it
can: the same operations without the interpreter's cost per call.

>>> import torch
>>> w, h, d = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 3)
>>> x = torch.tensor([-1.0, 0.5, 7.0])
>>> y = InverseRQSTransform(w, h, d)(x)
>>> torch.allclose(MonotonicRQSTransform(w, h, d)(y), x, atol=1e-5)
True
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Transform
from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

S = TypeVar("S", bound=MonotonicRQSTransform)

SPLINE_BOUND, SPLINE_SLOPE = 5.0, 1e-3  # zuko's MonotonicRQSTransform defaults


@functools.lru_cache(maxsize=32)
def _clip_scale(bins: int, slope: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """zuko's soft-clipping factors of a spline's raw parameters (widths, heights: 2 /
    log(slope); knot derivatives: 1 / log(slope)), as one row."""
    with torch.inference_mode(False):  # cached: usable later with autograd on
        scale = torch.full((3 * bins - 1,), 1 / math.log(slope), dtype=dtype, device=device)
        scale[:2 * bins] *= 2
    return scale


@functools.lru_cache(maxsize=32)
def _knot_offsets(knots: int, device: torch.device) -> Tensor:
    """Offsets of (x_k, x_k+1, y_k, y_k+1, d_k, d_k+1) from ``k`` in the concatenated
    tables of a spline with ``knots`` knots."""
    with torch.inference_mode(False):
        return torch.tensor([0, 1, knots, knots + 1, 2 * knots, 2 * knots + 1],
                            device=device)


def _tables_core(raw: Tensor, scale: Tensor, bins: int, bound: float) -> Tensor:
    """The knot tables ``[x_0..x_K, y_0..y_K, d_0..d_K]`` (..., 3 (K + 1)) of zuko's
    spline for a MADE's raw output ``raw`` (..., 3 K - 1): zuko's soft clipping of widths,
    heights and knot derivatives (``scale``: :func:`_clip_scale`), the bin shares
    normalised by their cumulative sum (the clipping bounds them, so exp cannot overflow)
    instead of torch's softmax, which over 4-8 bins cost a fifth of a student's training
    step; a third of zuko's operations."""
    raw = raw / (1 + (raw * scale).abs())
    shares = raw[..., :2 * bins].unflatten(-1, (2, bins)).exp().cumsum(-1)
    knots = F.pad((shares / shares[..., -1:]) * (2 * bound) - bound, (1, 0), value=-bound)
    derivatives = F.pad(raw[..., 2 * bins:], (1, 1)).exp()
    return torch.cat((knots.flatten(-2), derivatives), -1)


def _root_core(tables: Tensor, y: Tensor, offsets: Tensor, bins: int, bound: float
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x`` with ``S(x) = y`` for zuko's spline ``S`` of knot ``tables`` (as
    :func:`_tables_core`, of ``y``'s shape; ``y`` itself outside the bound), and what
    its log-derivative needs (z, s, t, d0, d1): zuko's formulas, the six knot values of
    each bin in one gather (``offsets``: :func:`_knot_offsets`).  Values beyond the bound
    are computed at the bound (the end knots' derivative is 1, so their log-slope is 0
    without a mask, and nothing divides by zero with gradients on) and then passed
    through.  Traceable for export: no shapes read from tensors."""
    inner = y.clamp(-bound, bound)
    vertical = tables[..., bins + 1:2 * bins + 2]
    k = (vertical < inner.unsqueeze(-1)).sum(-1).sub_(1).clamp_(0, bins - 1)
    ends = tables.gather(-1, k.unsqueeze(-1) + offsets)
    x0, x1, y0, y1, d0, d1 = ends.unbind(-1)
    dx, dy = x1 - x0, y1 - y0
    s = dy / dx
    y_ = inner - y0
    t = torch.sub(d0 + d1, s, alpha=2)
    a = torch.addcmul(dy * (s - d0), y_, t)
    b = torch.addcmul(dy * d0, y_, t, value=-1)
    sy = s * y_  # zuko's c = -s * y_
    z = 2 * sy / (b + torch.addcmul(b * b, a, sy, value=4).sqrt())
    return torch.where(inner == y, torch.addcmul(x0, z, dx), y), z, s, t, d0, d1


@functools.cache
def _compiled() -> tuple:
    """The two cores compiled by TorchScript (at first use; about a third less time per
    call at batch 1), or the Python functions where TorchScript is unavailable."""
    try:
        with warnings.catch_warnings():  # deprecated in favour of torch.compile, whose
            warnings.simplefilter("ignore", DeprecationWarning)  # start-up takes seconds
            return torch.jit.script(_tables_core), torch.jit.script(_root_core)
    except Exception:  # noqa: BLE001 - an optional speed-up: the Python path is the same
        return _tables_core, _root_core


def _cores(grad: bool) -> tuple:
    if grad or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _tables_core, _root_core  # autograd and graph capture see plain operations
    return _compiled()


def raw_tables(raw: Tensor, bins: int, bound: float = SPLINE_BOUND,
               slope: float = SPLINE_SLOPE) -> Tensor:
    """Knot tables of the spline of a MADE's raw output (:func:`_tables_core`)."""
    core = _cores(torch.is_grad_enabled())[0]
    return core(raw, _clip_scale(bins, slope, raw.dtype, raw.device), bins, bound)


def spline_root(tables: Tensor, y: Tensor, bins: int, bound: float, with_ladj: bool
                ) -> tuple[Tensor, Tensor | None]:
    """``x = S^-1(y)`` (:func:`_root_core`) and, when asked for, ``log|dx/dy|``."""
    if tables.shape[:-1] != y.shape:
        tables = tables.expand(*y.shape, tables.shape[-1])
    x, z, s, t, d0, d1 = _root(tables, y, bins, bound)
    if not with_ladj:
        return x, None
    q = z * (1 - z)
    slope = s * s * (2 * s * q + d0 * (1 - z) ** 2 + d1 * z * z) / (s + t * q) ** 2
    return x, -slope.log()


def _root(tables: Tensor, y: Tensor, bins: int, bound: float) -> tuple[Tensor, ...]:
    core = _cores(torch.is_grad_enabled())[1]
    return core(tables, y, _knot_offsets(bins + 1, y.device), bins, bound)


def inverse_spline_values(raw: Tensor, y: Tensor, bins: int) -> Tensor:
    """The inverse spline of a MADE's raw output ``raw`` (..., features, 3 bins - 1)
    applied to ``y`` (..., features): an IAF student's sampling step (the tables have
    ``y``'s shape: no shape test, which a trace could not record)."""
    return _root(raw_tables(raw, bins), y, bins, SPLINE_BOUND)[0]


def spline_from_raw(cls: type[S], raw: Tensor, bins: int, bound: float = SPLINE_BOUND,
                    slope: float = SPLINE_SLOPE) -> S:
    """A zuko spline (``cls``: :class:`MonotonicRQSTransform` or a subclass) from a MADE's
    raw output ``raw`` (..., 3 * bins - 1), its knots as :func:`_raw_tables` builds them."""
    tables = raw_tables(raw, bins, bound, slope)
    spline = cls.__new__(cls)
    Transform.__init__(spline)
    spline.bound, spline.n_bins, spline.tables = bound, bins, tables
    n = bins + 1
    spline.horizontal, spline.vertical = tables[..., :n], tables[..., n:2 * n]
    spline.derivatives = tables[..., 2 * n:]
    return spline


class InverseRQSTransform(MonotonicRQSTransform):
    """The inverse of zuko's rational-quadratic spline with the same parameters, as a
    forward map (a monotonic spline family of its own; one closed-form root per value,
    :func:`spline_root`).  An IAF block made of these can start as the exact
    element-wise inverse of a MAF block of splines
    (:func:`caloforge.models.made.init_inverse_block`)."""

    @classmethod
    def from_raw(cls, raw: Tensor, bins: int) -> InverseRQSTransform:
        """The spline of a MADE's raw output ``raw`` (..., 3 * bins - 1):
        :func:`spline_from_raw`."""
        return spline_from_raw(cls, raw, bins)

    def __init__(self, widths: Tensor, heights: Tensor, derivatives: Tensor,
                 bound: float = SPLINE_BOUND, slope: float = SPLINE_SLOPE,
                 **kwargs: Any) -> None:
        super().__init__(widths, heights, derivatives, bound, slope, **kwargs)
        self.bound, self.n_bins = bound, int(widths.shape[-1])
        self.tables = torch.cat((self.horizontal, self.vertical, self.derivatives), -1)

    def _call(self, x: Tensor) -> Tensor:
        return spline_root(self.tables, x, self.n_bins, self.bound, False)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return MonotonicRQSTransform._call(self, y)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return spline_root(self.tables, x, self.n_bins, self.bound, True)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.call_and_ladj(x)[1]


class SamplingSpline(MonotonicRQSTransform):
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


def univariate_spec(bins: int, inverse: bool = False) -> dict:
    """zuko element-wise transform: rational-quadratic spline with ``bins`` bins (its
    inverse with ``inverse``), or affine for ``bins=0``."""
    if bins:
        return {"univariate": InverseRQSTransform if inverse else MonotonicRQSTransform,
                "shapes": [(bins,), (bins,), (bins - 1,)]}
    return {"univariate": MonotonicAffineTransform, "shapes": [(), ()]}
