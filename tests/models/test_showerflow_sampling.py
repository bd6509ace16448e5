"""The ShowerFlow's lean sampling path gives zuko's numbers exactly, and the traceable
layer-count rounding equals a stable sort's."""

from __future__ import annotations

import torch

from caloforge.models.flows import spline_coupling_flow
from caloforge.models.showerflow import ShowerFlow, _coupling_inverse


def test_lean_coupling_inverse_is_zukos_bit_for_bit():
    torch.manual_seed(0)
    flow = spline_coupling_flow(12, 3, 4, 6, (16, 16))
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.5)  # far from the identity, splines in and out of their bounds
        c, z = torch.randn(200, 3), 3 * torch.randn(200, 12)
        assert torch.equal(_coupling_inverse(flow, c, z), flow(c).transform.inv(z))


def test_round_counts_equal_a_stable_descending_sort():
    g = torch.Generator().manual_seed(1)
    frac = torch.rand(300, 9, generator=g)
    frac[:, 4] = frac[:, 2]  # ties keep their order
    n = torch.randint(1, 400, (300,), generator=g)
    want = frac / frac.sum(1, keepdim=True) * n[:, None]
    base = torch.floor(want).long()
    missing = n - base.sum(1)
    order = torch.argsort(want - base, dim=1, descending=True, stable=True)
    rank = torch.argsort(order, dim=1)
    expected = base + (rank < missing[:, None]).long()
    assert torch.equal(ShowerFlow.round_counts(frac, n), expected)
