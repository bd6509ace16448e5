"""MAF sampling: the feature-by-feature inverse of one-hidden-layer MADE blocks gives
zuko's inverse (and inverts the flow's density direction) for spline and affine blocks."""

import pytest
import torch

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


def test_only_one_hidden_layer_blocks_take_the_incremental_path():
    one = masked_autoregressive_flow(5, 2, 2, 4, (8,))
    two = masked_autoregressive_flow(5, 2, 2, 4, (8, 8))
    assert all(flows._one_hidden_layer(b) for b in one.transform.transforms)
    assert not any(flows._one_hidden_layer(b) for b in two.transform.transforms)
