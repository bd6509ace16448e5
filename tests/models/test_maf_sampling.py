"""MAF sampling: the feature-by-feature inverse of plain MADE blocks (any depth) gives
zuko's inverse (and inverts the flow's density direction) for spline and affine blocks."""

import pytest
import torch
from zuko.flows import MAF
from zuko.transforms import MonotonicRQSTransform

from caloforge.models import made, splines
from caloforge.models.made import masked_autoregressive_flow, sample_maf


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
        assert all(made._incremental(b) for b in flow.transform.transforms)
    coarse = MAF(6, 2, transforms=2, passes=2, hidden_features=(8,))  # 2 groups of 3
    assert not any(made._incremental(b) for b in coarse.transform.transforms)
    ctx, z = torch.randn(9, 2), torch.randn(9, 6)
    with torch.no_grad():  # the full-pass path still inverts such a block
        torch.testing.assert_close(sample_maf(coarse, ctx, z), coarse(ctx).transform.inv(z),
                                   rtol=1e-4, atol=1e-4)


def _conditioner_ignores_inputs(block, features: int, scale: float) -> None:
    """Weights away from the near-identity start, and parameters that depend on the
    context only (then a block's exact inverse has the same conditioner)."""
    with torch.no_grad():
        for p in block.parameters():
            p.add_(scale * torch.randn_like(p))
        block.hyper[0].weight[:, :features] = 0


def test_inverse_splines_invert_zukos_splines_of_the_same_parameters():
    torch.manual_seed(4)
    w, h, d = 2 * torch.randn(10, 4), 2 * torch.randn(10, 4), 2 * torch.randn(10, 3)
    forward, inverse = MonotonicRQSTransform(w, h, d), splines.InverseRQSTransform(w, h, d)
    x = 12 * torch.rand(10) - 6  # inside and outside the spline's bound of 5
    y, ladj = inverse.call_and_ladj(x)
    torch.testing.assert_close(y, forward.inv(x))
    torch.testing.assert_close(forward(y), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ladj, -forward.call_and_ladj(y)[1])
    torch.testing.assert_close(ladj, inverse.log_abs_det_jacobian(x, y))
    # the sampling path's constructor from a MADE's raw output builds the same knots
    lean = splines.InverseRQSTransform.from_raw(torch.cat([w, h, d], -1), 4)
    for name in ("horizontal", "vertical", "derivatives"):
        torch.testing.assert_close(getattr(lean, name), getattr(inverse, name))
    torch.testing.assert_close(lean(x), y)


def test_inverse_init_inverts_a_spline_block_exactly_when_the_conditioner_ignores_inputs():
    torch.manual_seed(5)
    teacher = made.autoregressive_blocks(6, 2, 2, 4, (16,))[1]
    student = made.autoregressive_blocks(6, 2, 2, 4, (16,), inverse_splines=True)[1]
    _conditioner_ignores_inputs(teacher, 6, 0.3)
    assert made.init_inverse_block(student, teacher)
    ctx, x = torch.randn(20, 2), 4 * torch.randn(20, 6)
    with torch.no_grad():
        y = teacher(ctx)(x)
        assert (y - x).abs().max() > 0.1
        torch.testing.assert_close(student(ctx)(y), x, rtol=1e-4, atol=1e-4)
        _, ladj = student(ctx).call_and_ladj(y)
        torch.testing.assert_close(ladj, -teacher(ctx).call_and_ladj(x)[1], rtol=1e-4,
                                   atol=1e-4)
        # the sampling path (cached weights, lean knot lookup) gives the same
        torch.testing.assert_close(made.made_transform(student, ctx, y)(y), student(ctx)(y))


def test_inverse_init_inverts_an_affine_block_of_unit_scale():
    torch.manual_seed(6)
    teacher = made.autoregressive_blocks(5, 3, 1, 0, (12,))[0]
    student = made.autoregressive_blocks(5, 3, 1, 0, (12,))[0]
    _conditioner_ignores_inputs(teacher, 5, 0.5)
    with torch.no_grad():  # rows (shift, log-scale) per feature: unit scale
        teacher.hyper[-1].weight.unflatten(0, (5, 2))[:, 1] = 0
        teacher.hyper[-1].bias.unflatten(0, (5, 2))[:, 1] = 0
    assert made.init_inverse_block(student, teacher)
    ctx, x = torch.randn(30, 3), torch.randn(30, 5)
    with torch.no_grad():
        y = teacher(ctx)(x)
        assert (y - x).abs().max() > 0.1
        torch.testing.assert_close(student(ctx)(y), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("other", [dict(bins=3), dict(bins=0), dict(hidden=(12,)),
                                   dict(transforms=1), dict(inverse_splines=False)])
def test_inverse_init_refuses_blocks_of_another_shape(other):
    shape = dict(features=5, context=2, transforms=2, bins=4, hidden=(16,))
    teacher = made.autoregressive_blocks(*shape.values())[1]
    shape["inverse_splines"] = True
    shape.update(other)
    student = made.autoregressive_blocks(*shape.values())[-1]  # transforms=1: other order
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert not made.init_inverse_block(student, teacher)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("inverse", [False, True])
def test_made_forward_with_gradients_gives_zukos_values(inverse):
    """The training path builds the splines from the raw outputs itself (fewer
    operations, no softmax): the same values and log-determinants as zuko's."""
    torch.manual_seed(8)
    block = made.autoregressive_blocks(7, 3, 1, 5, (16,), inverse_splines=inverse)[0]
    _conditioner_ignores_inputs(block, 0, 0.3)  # (only perturbs the weights)
    ctx, x = torch.randn(40, 3), 3 * torch.randn(40, 7)
    y, ladj = made.made_forward(block, ctx, x)
    y_ref, ladj_ref = block(ctx).call_and_ladj(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ladj, ladj_ref, rtol=1e-4, atol=1e-4)
    (y.sum() + ladj.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_the_compiled_sampling_path_gives_the_training_paths_values():
    """Sampling runs the spline cores compiled (TorchScript, where available), training
    runs them as Python with autograd: the same operations, the same values."""
    torch.manual_seed(9)
    block = made.autoregressive_blocks(9, 2, 1, 6, (16,), inverse_splines=True)[0]
    _conditioner_ignores_inputs(block, 0, 0.3)
    ctx, x = torch.randn(25, 2), 3 * torch.randn(25, 9)
    with torch.no_grad():
        fast = made.made_apply(block, ctx, x)
    slow, _ = made.made_forward(block, ctx, x)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-6, atol=1e-6)
    assert len(splines._compiled()) == 2


def test_the_split_output_layer_follows_changed_weights():
    """Sampling caches the output layer split by its mask; a change of the weights or of
    the biases alone (training, load_state_dict) rebuilds it."""
    torch.manual_seed(10)
    block = made.autoregressive_blocks(300, 2, 1, 4, (256,), inverse_splines=True)[0]
    ctx, x = torch.randn(3, 2), torch.randn(3, 300)
    with torch.no_grad():
        assert made._output_plan(block, made._masked_weights(block)) is not None
        for change in (lambda: block.hyper[-1].bias.add_(0.3),
                       lambda: block.hyper[-1].weight.mul_(1.5)):
            change()
            torch.testing.assert_close(made.made_apply(block, ctx, x), block(ctx)(x),
                                       rtol=1e-4, atol=1e-4)
