"""The layer-moment maps' Gaussian copula (``calibration_moment_copula`` /
``moment_copula``): the mapped centres and widths get the training showers'
correlations between layers, not only their per-layer distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_axis_calibration_core_rings import GEO  # the toy layout (6 x 6 x 6)
from test_layer_moments import _blobs  # same folder: on sys.path under pytest

from caloforge.models.layer_moments import LayerMoments
from caloforge.models.moment_copula import ScoreMixing, knot_scores, transport_matrix


def _spd(rng: np.random.Generator, n: int) -> torch.Tensor:
    a = torch.as_tensor(rng.normal(size=(n, n + 3)))
    return a @ a.T / (n + 3) + 0.1 * torch.eye(n, dtype=torch.float64)


def test_the_transport_matrix_takes_one_second_moment_onto_the_other():
    rng = np.random.default_rng(0)
    s, r = _spd(rng, 7), _spd(rng, 7)
    a = transport_matrix(s, r)
    torch.testing.assert_close(a, a.T)
    torch.testing.assert_close(a @ s @ a, r, rtol=1e-8, atol=1e-10)
    assert torch.linalg.eigvalsh(a).min() > 0  # a monotone map: ranks are kept on average
    torch.testing.assert_close(transport_matrix(s, s), torch.eye(7, dtype=torch.float64))


def test_the_knot_scores_are_increasing_and_finite():
    z = knot_scores(9)
    assert torch.isfinite(z).all() and (z.diff() > 0).all()
    torch.testing.assert_close(z, -z.flip(0))


def _centre_correlation(module: LayerMoments, x: torch.Tensor) -> float:
    """Mean correlation of the centres (u) of neighbouring layers."""
    mom = module.layer_moments(x, torch.zeros(len(x), 2))[0][..., 0].numpy()
    return float(np.mean([np.corrcoef(mom[:, k], mom[:, k + 1])[0, 1]
                          for k in range(GEO.n_layers - 1)]))


def _fitted(rng: np.random.Generator, copula: bool, n: int = 3000) -> tuple:
    e = torch.full((n,), 2e4)
    angles = torch.zeros(n, 2)
    ref = _blobs(rng, n, (9.0, 1.0), 3.0, common=0.8)  # centres wander together
    gen = _blobs(rng, n, (9.0, 1.0), 3.0)  # same spread per layer, independent
    module = LayerMoments(GEO, n_theta_bins=1, n_energy_bins=1, n_knots=17, copula=copula)
    module.fit([(ref, e, angles)], [(gen, e, angles)])
    return module, e, angles


@pytest.mark.parametrize("seed", [0, 1])
def test_the_copula_gives_the_layers_the_training_correlation(seed):
    rng = np.random.default_rng(seed)
    plain, e, angles = _fitted(np.random.default_rng([seed, 1]), copula=False)
    module, _, _ = _fitted(np.random.default_rng([seed, 1]), copula=True)
    fresh_ref = _blobs(rng, len(e), (9.0, 1.0), 3.0, common=0.8)
    fresh_gen = _blobs(rng, len(e), (9.0, 1.0), 3.0)
    want = _centre_correlation(module, fresh_ref)
    before = _centre_correlation(module, fresh_gen)
    assert want > 0.6 and abs(before) < 0.1  # the toy is what it says
    without = _centre_correlation(module, plain(fresh_gen, e, angles))
    got = _centre_correlation(module, module(fresh_gen, e, angles))
    assert abs(without - before) < 0.1  # the plain maps keep the generator's correlation
    assert abs(got - want) < 0.15, (want, got)
    # and the per-layer spread of the centres is still the training one
    sd = [module.layer_moments(x, angles)[0][..., 0].std(0)
          for x in (fresh_ref, module(fresh_gen, e, angles))]
    torch.testing.assert_close(sd[1], sd[0], rtol=0.15, atol=0.0)


def test_unmixed_scores_give_exactly_the_plain_maps():
    plain, e, angles = _fitted(np.random.default_rng(5), copula=False, n=600)
    module, _, _ = _fitted(np.random.default_rng(5), copula=True, n=600)
    # (the copula's tables hold the layer energies' quantiles as a fifth column)
    torch.testing.assert_close(module.q_gen[..., :4, :], plain.q_gen, rtol=0, atol=0)
    assert not torch.equal(module.mixing.matrix, module.mixing._identity())
    module.mixing.reset()
    x = _blobs(np.random.default_rng(6), 50, (9.0, 1.0), 3.0)
    assert torch.equal(module(x, e[:50], angles[:50]), plain(x, e[:50], angles[:50]))


def test_with_the_copula_batch_independent_and_the_traced_path_agrees():
    module, _, _ = _fitted(np.random.default_rng(7), copula=True, n=600)
    rng = np.random.default_rng(8)
    x = _blobs(rng, 9, (9.0, 1.0), 3.0) * torch.as_tensor(rng.random((9, GEO.n_voxels)) > 0.4)
    e, angles = torch.full((9,), 2e4), torch.zeros(9, 2)
    whole = module(x, e, angles)
    assert not torch.equal(whole, x)
    for i in range(9):
        assert torch.equal(module(x[i:i + 1], e[i:i + 1], angles[i:i + 1])[0], whole[i])
    traced = torch.jit.trace(module, (x, e, angles), check_trace=False)
    torch.testing.assert_close(traced(x, e, angles), whole, rtol=1e-4, atol=1e-5)


def test_the_moved_scores_get_the_training_second_moments_given_the_kept_ones():
    """Given scores e that stay, z' = K_R e + A (z - K_S e) has the training showers'
    joint second moment with e where e's own is the training one."""
    rng = np.random.default_rng(10)
    n, m, g = 200_000, 3, 2
    joint_gen, joint_ref = _spd(rng, m + g).numpy(), _spd(rng, m + g).numpy()
    joint_gen[m:, m:] = joint_ref[m:, m:]  # the kept scores' distribution is the same
    joint_gen = torch.as_tensor(joint_gen)
    gen = torch.as_tensor(rng.multivariate_normal(np.zeros(m + g), joint_gen, n))
    ref = torch.as_tensor(rng.multivariate_normal(np.zeros(m + g), joint_ref, n))
    mix = ScoreMixing(m, g)
    mix.fit(gen, ref)
    moved = torch.cat([mix(gen.float()).double(), gen[:, m:]], 1)
    got = moved.T @ moved / n
    torch.testing.assert_close(got, torch.as_tensor(joint_ref), rtol=0, atol=0.03)
    mix.reset()
    assert torch.equal(mix(gen[:5].float()), gen[:5, :m].float())


def test_the_mixing_is_the_same_for_any_chunking():
    mix = ScoreMixing(12)
    rng = np.random.default_rng(9)
    mix.fit(torch.as_tensor(rng.normal(size=(500, 12))),
            torch.as_tensor(rng.normal(size=(500, 12)) @ _spd(rng, 12).numpy()))
    z = torch.as_tensor(rng.normal(size=(300, 12)), dtype=torch.float32)
    whole = mix(z)
    assert torch.equal(torch.cat([mix(z[i:i + 7]) for i in range(0, 300, 7)]), whole)


def test_a_copula_without_its_maps_is_refused():
    from caloforge.errors import ConfigError
    from caloforge.models import build
    from caloforge.models.pointdiffusion import PointModelConfig

    with pytest.raises(ConfigError, match="calibration_moment_copula.*calibration_layer_moments"):
        build("l2lflows", GEO, config={"calibration_moment_copula": True}, preset="compact")
    with pytest.raises(ConfigError, match="moment_copula.*moment_knots"):
        PointModelConfig(moment_copula=True).validate()
