"""The fast sampling paths (no autograd, batch 1) compute the same bits as the plain ones.

Generation of the shipped default was made cheaper at batch 1 (issue 9 item 8) by
running the same operations with less overhead: flows without module calls, the
read-out of all layers at once, the hit map on the hit cells only.  Each fast path is
compared here with the path it replaces, exactly (``torch.equal``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.models import build
from caloforge.models.calibration import map_hits
from caloforge.models.flows import (
    AffineCouplingFlow,
    CouplingInputs,
    sample_flow,
    spline_coupling_flow,
)
from caloforge.models.noise import ShowerNoise


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Weights away from the identity start, so that every coupling does something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("batch", [1, 7])
def test_affine_coupling_sampling_without_autograd_is_exact(batch):
    torch.manual_seed(1)
    flow = AffineCouplingFlow(11, 4, transforms=4, hidden=(16, 8))
    _randomise(flow, 2)
    z, ctx = torch.randn(batch, 11), torch.randn(batch, 4)
    with_grad = flow.sample_from(z, ctx)  # the autograd path, module calls
    with torch.no_grad():
        fast = flow.sample_from(z, ctx)
    with torch.inference_mode():
        fast_inference = flow.sample_from(z, ctx)
    assert not torch.allclose(with_grad, z)
    assert torch.equal(with_grad.detach(), fast) and torch.equal(fast, fast_inference)


def test_affine_coupling_follows_new_weights():
    """The weights are looked up once, as the same parameter objects: weights copied in
    afterwards (EMA, load_state_dict) are the ones used."""
    flow = AffineCouplingFlow(6, 2, transforms=2, hidden=(8,))
    z, ctx = torch.randn(3, 6), torch.randn(3, 2)
    with torch.no_grad():
        before = flow.sample_from(z, ctx)
        _randomise(flow, 3)
        after = flow.sample_from(z, ctx)
    assert not torch.equal(before, after)
    assert torch.equal(after, flow.sample_from(z, ctx).detach())
    other = AffineCouplingFlow(6, 2, transforms=2, hidden=(8,))
    with torch.no_grad():
        other.sample_from(z, ctx)
        other.load_state_dict(flow.state_dict())
        assert torch.equal(other.sample_from(z, ctx), after)


@pytest.mark.parametrize("bins", [0, 4])
def test_coupling_flow_inverse_matches_zuko(bins):
    torch.manual_seed(4)
    flow = spline_coupling_flow(9, 3, transforms=3, bins=bins, hidden=(16, 16))
    _randomise(flow, 5)
    z, ctx = torch.randn(6, 9) * 0.5, torch.randn(6, 3)
    with torch.no_grad():
        reference = flow(ctx).transform.inv(z)
        fast = sample_flow(flow, ctx, z)
    assert torch.equal(reference, fast)


@pytest.mark.parametrize("batch", [1, 5])
def test_affine_coupling_inputs_reused_across_samples_are_exact(batch):
    """One set of net inputs for several draws (as a generation reuses it for every
    layer): each draw equals the autograd path for its own context."""
    torch.manual_seed(6)
    flow = AffineCouplingFlow(9, 3, transforms=6, hidden=(12,))
    _randomise(flow, 7)
    inputs = CouplingInputs(flow, batch, torch.zeros(()))
    for _ in range(3):
        z, ctx = torch.randn(batch, 9), torch.randn(batch, 3)
        reference = flow.sample_from(z, ctx).detach()
        with torch.inference_mode():
            inputs.context.copy_(ctx)
            assert torch.equal(flow.sample_with(z, inputs), reference)


def test_spline_inverse_beyond_its_bound_matches_zuko():
    """Values outside the spline's [-5, 5] (the identity there) take zuko's path too."""
    torch.manual_seed(8)
    flow = spline_coupling_flow(7, 2, transforms=2, bins=6, hidden=(16,))
    _randomise(flow, 9)
    z, ctx = torch.randn(40, 7) * 4, torch.randn(40, 2)
    assert (z.abs() > 5).any()
    with torch.no_grad():
        reference = flow(ctx).transform.inv(z)
        fast = sample_flow(flow, ctx, z)
    assert torch.equal(reference, fast)


def _read_out_reference(model, feats, el):
    """The read-out of the shipped code, one layer at a time (``_read_out_layer``)."""
    thr = model.geometry.readout_threshold_mev
    out = []
    for f, k in zip(feats, model.modelled):
        s = model._slice(k)
        target = el[:, model.active.index(k)][:, None]
        cut = model.cell_cut[s]
        g = map_hits((f - cut).clamp_min(0), model.voxel_group[s], model.hit_q_gen,
                     model.hit_q_ref)
        cell = torch.where(f >= cut, thr * torch.exp(g.clamp(0, 20)), torch.zeros_like(f))
        hit = cell > 0
        n_hit = hit.sum(1, keepdim=True)
        tot = cell.sum(1, keepdim=True)
        above = tot - n_hit * thr
        ok = (target > n_hit * thr) & (above > 0)
        s_above = (target - n_hit * thr) / above.clamp_min(1e-30)
        shifted = torch.where(hit, thr + (cell - thr) * s_above, cell)
        scaled = cell * (target / tot.clamp_min(1e-30))
        out.append(torch.where(ok, shifted,
                               torch.where(tot > 0, scaled, torch.zeros_like(cell))))
    return out


def _calibrated_compact(**config) -> torch.nn.Module:
    """The compact preset with non-trivial cuts and hit maps (as after finalize)."""
    model = build("l2lflows", "ild-ecal", preset="compact", config=config).eval()
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        model.cell_cut.copy_(torch.rand(model.cell_cut.shape, generator=gen) * 2 - 0.5)
        k = model.hit_q_gen.shape[1]
        steps = torch.rand(model.hit_q_gen.shape, generator=gen) + 0.05
        model.hit_q_gen.copy_(torch.cumsum(steps, 1) / 3)
        model.hit_q_ref.copy_(torch.cumsum(steps.flip(1), 1) / 3 + torch.arange(k) * 1e-3)
    return model


@pytest.fixture(scope="module")
def calibrated_compact():
    return _calibrated_compact()


@pytest.mark.parametrize("batch, occupancy", [(1, 0.03), (3, 0.03), (3, 0.9)])
def test_read_out_of_all_layers_matches_one_layer_at_a_time(calibrated_compact, batch,
                                                            occupancy):
    """Few hits: only the hits are mapped; many (more than cells): every cell is."""
    model = calibrated_compact
    gen = torch.Generator().manual_seed(7)
    n = model.n_cells
    feats = []
    for _ in model.modelled:
        hit = torch.rand(batch, n, generator=gen) < occupancy
        f = torch.where(hit, torch.rand(batch, n, generator=gen) * 6,
                        -torch.rand(batch, n, generator=gen) * 2)
        feats.append(f)
    el = torch.rand(batch, len(model.active), generator=gen) * 400
    el[0, 2] = 0.0  # an empty layer
    with torch.inference_mode():
        fast = model._read_out(feats, el, calibrated=True)
    reference = _read_out_reference(model, feats, el)
    assert all(torch.equal(a, b) for a, b in zip(fast, reference))
    assert sum(int((x > 0).sum()) for x in fast) > 0


@pytest.mark.parametrize("context", [None, "context_age", "context_hits"])
def test_generation_is_the_same_with_and_without_the_fast_paths(calibrated_compact,
                                                                context):
    """The whole generation at batch 1: inference (the fast flow paths) vs gradients on
    (module calls and zuko's own transform objects); with ``context_age`` or
    ``context_hits`` the batched drawing and the per-layer loop (the exporters' path) give
    the flow the same per-layer context."""
    model = _calibrated_compact(**{context: True}) if context else calibrated_compact
    for part, seed in ((model.layer_flows, 10), (model.context_nets, 11),
                       (model.energy_flow, 12)):
        _randomise(part, seed)
    e = torch.tensor([12e3, 60e3])
    with torch.no_grad():
        fast = torch.cat([model.generate(e[i:i + 1], ShowerNoise.for_showers(9, [i]))
                          for i in range(2)])
    with torch.enable_grad():
        plain = torch.cat([model._generate(e[i:i + 1], ShowerNoise.for_showers(9, [i]))[0]
                           for i in range(2)]).detach()
    assert torch.equal(fast, plain)
    assert np.isfinite(fast.numpy()).all()
