"""MAF sampling: the feature-by-feature inverse of plain MADE blocks (any depth) gives
zuko's inverse (and inverts the flow's density direction) for spline and affine blocks."""

import pytest
import torch
from zuko.flows import MAF

from caloforge.models import flows
from caloforge.models.flows import masked_autoregressive_flow, sample_maf


@pytest.mark.parametrize("bins", [0, 4])
@pytest.mark.parametrize("hidden", [(24,), (16, 16)])
def test_sampling_equals_zukos_inverse(bins, hidden):
    torch.manual_seed(3)
    flow = masked_autoregressive_flow(7, 3, 3, bins, hidden)
    with torch.no_grad():  # weights away from their near-identity start
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ctx, z = torch.randn(50, 3), torch.randn(50, 7)
    fast = sample_maf(flow, ctx, z)
    with torch.no_grad():
        exact = flow(ctx).transform.inv(z)
        back = flow(ctx).transform(fast)
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(back, z, rtol=1e-4, atol=1e-4)


def test_only_fully_autoregressive_blocks_take_the_incremental_path():
    for hidden in [(8,), (8, 8), (8, 8, 8)]:
        flow = masked_autoregressive_flow(5, 2, 2, 4, hidden)
        assert all(flows._incremental(b) for b in flow.transform.transforms)
    coarse = MAF(6, 2, transforms=2, passes=2, hidden_features=(8,))  # 2 groups of 3
    assert not any(flows._incremental(b) for b in coarse.transform.transforms)
    ctx, z = torch.randn(9, 2), torch.randn(9, 6)
    with torch.no_grad():  # the full-pass path still inverts such a block
        torch.testing.assert_close(sample_maf(coarse, ctx, z), coarse(ctx).transform.inv(z),
                                   rtol=1e-4, atol=1e-4)
