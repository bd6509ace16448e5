"""ONNX translations of the torch operators our samplers use and the TorchScript-based
ONNX exporter lacks (``aten::searchsorted``: the calibration's piecewise-linear maps).

``searchsorted(sorted, x)`` (left side) is the number of entries of ``sorted`` that are
smaller than ``x``; ONNX has no sorted search, so it is written as a comparison against
every knot and a sum.  The knot tables are short (tens of entries), so this costs little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_REGISTERED = False


def _searchsorted(g, sorted_seq, x, out_int32, right, side, sorter):  # noqa: ANN001, ANN202
    from torch.onnx import symbolic_helper as sh

    if not sh._is_none(sorter):
        raise torch.onnx.errors.SymbolicValueError("searchsorted with a sorter", x)
    right = bool(sh._maybe_get_const(right, "b")) or sh._maybe_get_const(side, "s") == "right"
    last = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
    xs = g.op("Unsqueeze", x, last)  # (..., M, 1)
    ss = sorted_seq
    if sh._get_tensor_rank(sorted_seq) != 1:
        ss = g.op("Unsqueeze", sorted_seq, g.op("Constant", value_t=torch.tensor([-2])))
    below = g.op("LessOrEqual" if right else "Less", ss, xs)  # (..., M, K)
    # summed as float32 (exact for counts below 2^24): ONNX Runtime's int64 ReduceSum
    # took half of the calibrated default's run time (an unrolled bisection was no faster)
    count = g.op("ReduceSum", g.op("Cast", below, to_i=1), last, keepdims_i=0)
    return g.op("Cast", count, to_i=6 if sh._maybe_get_const(out_int32, "b") else 7)


def register(opset: int) -> None:
    """Register the translations (once per process) for ``opset``."""
    global _REGISTERED
    if not _REGISTERED:
        torch.onnx.register_custom_op_symbolic("aten::searchsorted", _searchsorted, opset)
        _REGISTERED = True


def _rqs_inverse(self, y):  # noqa: ANN001, ANN202
    """zuko's ``MonotonicRQSTransform._inverse`` with the bin found from the values
    alone: the original takes ``bins`` from a tensor shape (a traced value that the
    TorchScript-based ONNX exporter loses) and unpacks a stacked tensor (whose ``unbind``
    it also drops).  Same arithmetic otherwise, so the same numbers."""
    below = self.vertical < y[..., None]  # (..., bins + 1)
    k = below.long().sum(-1) - 1
    mask = below[..., 0] & ~below[..., -1]  # 0 <= k < bins: y inside the spline
    k = torch.where(mask, k, torch.zeros_like(k))

    def pick(table, j):  # noqa: ANN001, ANN202
        table = table.expand(*j.shape, table.shape[-1])
        return table.gather(-1, j[..., None])[..., 0]

    x0, x1 = pick(self.horizontal, k), pick(self.horizontal, k + 1)
    y0, y1 = pick(self.vertical, k), pick(self.vertical, k + 1)
    d0, d1 = pick(self.derivatives, k), pick(self.derivatives, k + 1)
    s = (y1 - y0) / (x1 - x0)
    y_ = mask * (y - y0)
    a = (y1 - y0) * (s - d0) + y_ * (d0 + d1 - 2 * s)
    b = (y1 - y0) * d0 - y_ * (d0 + d1 - 2 * s)
    c = -s * y_
    z = 2 * c / (-b - (b ** 2 - 4 * a * c).sqrt())
    return torch.where(mask, x0 + z * (x1 - x0), y)


def _broadcast(*tensors, ignore=0):  # noqa: ANN001, ANN002, ANN202
    """zuko's ``broadcast`` when the leading shapes already agree (a coupling's input
    and its context, both ``(B, .)``): nothing to do, and no shape arithmetic traced
    (which the exporter mistranslates); other cases go to zuko's own."""
    from zuko.utils import broadcast

    ignore = [ignore] * len(tensors) if isinstance(ignore, int) else ignore
    lead = {tuple(t.shape[:t.dim() - i]) for t, i in zip(tensors, ignore)}
    return list(tensors) if len(lead) == 1 else broadcast(*tensors, ignore=ignore)


def _coupling_split(self, x):  # noqa: ANN001, ANN202
    return x.index_select(-1, self.idx_a), x.index_select(-1, self.idx_b)


def _coupling_merge(self, x_a, x_b, shape):  # noqa: ANN001, ANN202
    """zuko's ``CouplingTransform.merge`` as a concatenation and a gather (its in-place
    assignment through ``[..., idx]`` loses an input in the exported graph)."""
    order = torch.argsort(torch.cat([self.idx_a, self.idx_b]))
    return torch.cat([x_a, x_b], -1).index_select(-1, order)


@contextlib.contextmanager
def traceable_flows() -> Iterator[None]:
    """Swap in :func:`_rqs_inverse` while exporting (same values, see the tests)."""
    import zuko.flows.coupling as coupling
    from zuko.transforms import CouplingTransform, MonotonicRQSTransform

    original = (MonotonicRQSTransform._inverse, coupling.broadcast, CouplingTransform.split,
                CouplingTransform.merge)
    MonotonicRQSTransform._inverse = _rqs_inverse
    coupling.broadcast = _broadcast
    CouplingTransform.split, CouplingTransform.merge = _coupling_split, _coupling_merge
    try:
        yield
    finally:
        (MonotonicRQSTransform._inverse, coupling.broadcast, CouplingTransform.split,
         CouplingTransform.merge) = original
