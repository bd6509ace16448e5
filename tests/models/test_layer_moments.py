"""Per-shower maps of each layer's centre and width (``calibration_layer_moments``):
the layer's hits share its energy differently so that its centre and width reach the
mapped values, within bounds on every hit's weight, energy and the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_axis_calibration_core_rings import GEO, LAYER, THR, XY  # the toy layout (6 x 6 x 6)
from test_models import (  # same folder: on sys.path under pytest
    SMALL_AXIS_TOY,
    assert_batch_independent_and_reloads,
    train_compact_toy,
)

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.layer_moments import LayerMoments, solve_spd4

K = 9


Z = np.array([np.asarray(GEO.cell_centres)[LAYER == k, 2][0] for k in range(GEO.n_layers)])


def _blobs(rng: np.random.Generator, n: int, width: tuple[float, float],
           offset: float, angles: torch.Tensor | None = None,
           common: float = 0.0) -> torch.Tensor:
    """Showers whose layers are Gaussian blobs (every cell a hit, far above the
    threshold) of random width (mean, sd; mm) around a random centre (sd ``offset``;
    a share ``common`` of its variance the same in every layer of the shower) off the
    axis of the direction ``angles`` (B, 2; rad; None: normal incidence)."""
    w = np.clip(rng.normal(*width, (n, GEO.n_layers)), 4.0, None)
    c = np.sqrt(1 - common) * rng.normal(0.0, offset, (n, GEO.n_layers, 2))
    c += np.sqrt(common) * rng.normal(0.0, offset, (n, 1, 2))
    if angles is not None:
        a = angles.double().numpy()
        along = np.tan(a[:, 0])[:, None] * Z[None]
        c += np.stack([along * np.cos(a[:, 1])[:, None], along * np.sin(a[:, 1])[:, None]], 2)
    cw, cc = w[:, LAYER], c[:, LAYER]
    r2 = (XY[None, :, 0] - cc[..., 0]) ** 2 + (XY[None, :, 1] - cc[..., 1]) ** 2
    return torch.as_tensor(200 * THR * (np.exp(-r2 / (2 * cw ** 2)) + 0.05), dtype=torch.float32)


def set_maps(module, shift_u: float, width_scale: float, width: int = 2) -> None:  # noqa: ANN001
    """Maps by hand: centre u moved by ``shift_u`` mm, width u (``width`` = 2) or v (3)
    scaled by ``width_scale``, the rest kept."""
    knots = torch.linspace(-200.0, 200.0, K)
    module.q_gen[:] = knots
    module.q_ref[:] = knots
    module.q_ref[..., 0, :] = knots + shift_u
    module.q_ref[..., width, :] = knots * width_scale
    module.ready.fill_(1.0)
    module.is_fitted = True


def _layer_energies(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(x), GEO.n_layers, dtype=torch.float64).index_add_(
        1, torch.as_tensor(LAYER), x.double())


def test_reachable_targets_are_met_exactly_with_energy_and_hits_kept():
    x = _blobs(np.random.default_rng(0), 40, (9.0, 1.0), 3.0)
    e, angles = torch.full((40,), 2e4), torch.zeros(40, 2)
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K)
    set_maps(module, 1.5, 0.93)
    before = module.layer_moments(x, angles)[0]
    out = module(x, e, angles)
    after = module.layer_moments(out, angles)[0]
    want = before.clone()
    want[..., 0] += 1.5
    want[..., 2] *= 0.93
    torch.testing.assert_close(after, want, atol=2e-3, rtol=0)
    torch.testing.assert_close(_layer_energies(out), _layer_energies(x), rtol=1e-5, atol=0)
    assert torch.equal(out > 0, x > 0) and (out[x > 0] >= THR).all()


def test_out_of_reach_targets_stop_at_the_weight_bounds():
    x = _blobs(np.random.default_rng(1), 30, (9.0, 1.0), 3.0)
    e, angles = torch.full((30,), 2e4), torch.zeros(30, 2)
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K)
    set_maps(module, 40.0, 1.0)  # far outside every layer
    before = module.layer_moments(x, angles)[0]
    out = module(x, e, angles)
    after = module.layer_moments(out, angles)[0]
    w = out[x > 0] / x[x > 0]
    assert w.min() >= module.w_min - 1e-5 and w.max() <= module.w_max + 1e-5
    assert (out[x > 0] >= THR).all()
    torch.testing.assert_close(_layer_energies(out), _layer_energies(x), rtol=1e-5, atol=0)
    moved = after[..., 0] - before[..., 0]
    assert (moved > 1.0).all() and (moved < 40.0).all()  # part of the way, never past


def test_layers_with_too_few_hits_are_left_alone():
    x = torch.zeros(1, GEO.n_voxels)
    cells = np.flatnonzero(LAYER == 2)[[3, 20]]  # two hits: below min_hits = 3
    x[0, cells] = torch.tensor([5.0, 1.0])
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K)
    set_maps(module, 3.0, 1.2)
    assert torch.equal(module(x, torch.full((1,), 2e4), torch.zeros(1, 2)), x)


def test_the_identity_until_fitted():
    x = _blobs(np.random.default_rng(2), 5, (9.0, 1.0), 3.0)
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K)
    out = module(x, torch.full((5,), 2e4), torch.zeros(5, 2))
    torch.testing.assert_close(out, x, rtol=1e-5, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_fitted_maps_bring_generated_moments_onto_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    e = torch.as_tensor(np.exp(rng.uniform(np.log(2e3), np.log(5e4), n)), dtype=torch.float32)
    theta = torch.as_tensor(np.radians(rng.uniform(0, 30, n)), dtype=torch.float32)
    angles = torch.stack([theta, torch.as_tensor(rng.uniform(0, 2 * np.pi, n),
                                                 dtype=torch.float32)], 1)
    ref = _blobs(rng, n, (9.0, 1.0), 1.5, angles)
    gen = _blobs(rng, n, (11.0, 2.5), 4.0, angles)  # too wide; widths, centres scatter more
    module = LayerMoments(GEO, n_theta_bins=2, n_energy_bins=2, n_knots=17)
    module.fit([(ref, e, angles)], [(gen, e, angles)])
    fresh_ref = _blobs(rng, n, (9.0, 1.0), 1.5, angles)
    fresh_gen = _blobs(rng, n, (11.0, 2.5), 4.0, angles)
    want = module.layer_moments(fresh_ref, angles)[0]
    got_before = module.layer_moments(fresh_gen, angles)[0]
    got = module.layer_moments(module(fresh_gen, e, angles), angles)[0]
    for q in range(4):  # centre u, v, width u, v
        err_before = abs(got_before[..., q].std() - want[..., q].std())
        err_after = abs(got[..., q].std() - want[..., q].std())
        # (not all the way: on this coarse grid the weight bounds stop some layers)
        assert err_after < 0.45 * err_before, (q, err_before, err_after)
    assert abs(got[..., 2].mean() - want[..., 2].mean()) < 0.35 * abs(
        got_before[..., 2].mean() - want[..., 2].mean())


def _distance_to_targets(x: torch.Tensor, out: torch.Tensor, module: LayerMoments,
                         shift_u: float, width_scale: float) -> torch.Tensor:
    """(B, L) how far each layer of ``out`` is from the mapped moments of ``x`` (mm)."""
    angles = torch.zeros(len(x), 2)
    want = module.layer_moments(x, angles)[0].clone()
    want[..., 0] += shift_u
    want[..., 2] *= width_scale
    return (module.layer_moments(out, angles)[0] - want)[..., [0, 2]].abs().sum(-1)


@pytest.mark.parametrize("seed", [5, 6])
def test_further_passes_go_further_within_the_same_bounds(seed):
    """Targets out of reach of one pass (whose step stops at the first hit meeting a
    bound): more passes hold that hit and move the others, never past a bound; with more
    than one pass a hit loses at most 1 - w_min of its energy above the threshold, so
    the halo's hits near the threshold stay off it."""
    rng = np.random.default_rng(seed)
    core = _blobs(rng, 30, (9.0, 1.0), 3.0)
    x = torch.where(core > 40 * THR, core, 0.15 * core)  # a halo at 1.5 x the threshold
    e, angles = torch.full((30,), 2e4), torch.zeros(30, 2)
    outs = {}
    for passes in (1, 4):
        module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K, passes=passes)
        set_maps(module, 6.0, 0.75)
        outs[passes] = out = module(x, e, angles)
        torch.testing.assert_close(_layer_energies(out), _layer_energies(x), rtol=1e-5, atol=0)
        assert torch.equal(out > 0, x > 0)
        w = out[x > 0] / x[x > 0]
        assert w.max() <= module.w_max + 1e-4
    e0, e4 = x[x > 0].double(), outs[4][x > 0].double()
    assert (e4 - THR >= module.w_min * (e0 - THR) - 1e-4).all()
    near = lambda v: int(((v >= THR) & (v < 1.05 * THR)).sum())  # noqa: E731
    assert near(outs[4]) == near(x) < near(outs[1])
    d1, d4 = (_distance_to_targets(x, outs[p], module, 6.0, 0.75) for p in (1, 4))
    assert d4.mean() < 0.6 * d1.mean(), (d1.mean(), d4.mean())
    assert (d4 <= d1 + 1e-3).float().mean() > 0.9


@pytest.mark.parametrize("passes", [1, 3])
def test_batch_independent_and_the_traced_path_agrees(passes):
    rng = np.random.default_rng(3)
    x = _blobs(rng, 9, (9.0, 1.0), 3.0) * torch.as_tensor(rng.random((9, GEO.n_voxels)) > 0.4)
    e = torch.full((9,), 2e4)
    angles = torch.as_tensor(np.c_[np.radians(rng.uniform(0, 30, 9)),
                                   rng.uniform(0, 6.28, 9)], dtype=torch.float32)
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K, passes=passes)
    set_maps(module, 1.0 + 3 * (passes > 1), 1.05)
    whole = module(x, e, angles)
    for i in range(9):
        assert torch.equal(module(x[i:i + 1], e[i:i + 1], angles[i:i + 1])[0], whole[i])
    traced = torch.jit.trace(module, (x, e, angles), check_trace=False)
    torch.testing.assert_close(traced(x, e, angles), whole, rtol=1e-4, atol=1e-5)


def test_the_unrolled_solver_solves():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, 4, generator=g, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64)
    r = torch.randn(50, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(solve_spd4(spd, r), torch.linalg.solve(spd, r))


@pytest.mark.parametrize("key,bad", [("calibration_layer_moments", 1),
                                     ("calibration_layer_moments", -3),
                                     ("calibration_moment_theta_bins", 0),
                                     ("calibration_moment_energy_bins", 0),
                                     ("calibration_moment_layer_bins", 0),
                                     ("calibration_moment_passes", 0),
                                     ("calibration_moment_min_weight", 0.0),
                                     ("calibration_moment_min_weight", 1.5)])
def test_bad_moment_options_are_refused(key, bad):
    with pytest.raises(ConfigError, match=key):
        build("l2lflows", GEO, config={"calibration_layer_moments": 9, key: bad},
              preset="compact")


CONFIG = {**SMALL_AXIS_TOY,
          "calibration_energy_bins": 4, "calibration_showers": 500,
          "calibration_layer_moments": 9, "calibration_moment_energy_bins": 2,
          "calibration_moment_layer_bins": 2, "calibration_moment_copula": True}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_compact_toy(tmp_path_factory.mktemp("moments") / "run", CONFIG, 29)


def test_generation_with_moment_maps_is_batch_independent_and_reloads(trained):
    model, _, out = trained
    assert model.moments.is_fitted
    assert not torch.equal(model.moments.q_gen, model.moments.q_ref)
    assert not torch.equal(model.moments.mixing.matrix, torch.eye(4 * GEO.n_layers))
    assert_batch_independent_and_reloads(model, out / "model", 8, "calibration_layer_moments")


def test_moment_maps_share_each_layer_s_energy_among_the_same_hits(trained):
    """Same draws without the maps: same hits and layer energies, other hit energies."""
    model, _, _ = trained
    e = np.full(200, 2e4)
    mapped = torch.as_tensor(model.sample(e, 5).energies)
    model.moments.is_fitted = False
    try:
        plain = torch.as_tensor(model.sample(e, 5).energies)
    finally:
        model.moments.is_fitted = True
    assert torch.equal(mapped > 0, plain > 0)
    torch.testing.assert_close(_layer_energies(mapped), _layer_energies(plain), rtol=1e-5,
                               atol=1e-6)
    assert not torch.equal(mapped, plain)


def test_at_normal_incidence_the_azimuth_changes_nothing():
    """theta = 0 names no azimuth: the maps' frame is then x, y whatever phi says."""
    x = _blobs(np.random.default_rng(4), 3, (9.0, 1.0), 3.0)
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=K)
    set_maps(module, 2.0, 0.9)
    e = torch.full((3,), 2e4)
    out = [module(x, e, torch.tensor([[0.0, phi]] * 3)) for phi in (0.0, 1.1, 4.0)]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    tilted = [module(x, e, torch.tensor([[0.2, phi]] * 3)) for phi in (0.0, 1.1)]
    assert not torch.equal(tilted[0], tilted[1])
