"""The compact L2LFlows variant (shared layer flow, threshold-relative log features,
lean affine couplings) used by the shipped default model."""

import numpy as np
import pytest
import torch

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.calibration import map_hits
from caloforge.models.l2lflows import AffineCouplingFlow
from caloforge.training import TrainConfig, train

TINY_COMPACT = {"hidden": [32], "context_embedding": 8, "transforms": 2,
                "energy_transforms": 2, "energy_bins": 4, "energy_hidden": [32], "lr": 3e-3}


def test_affine_coupling_flow_is_invertible():
    torch.manual_seed(0)
    flow = AffineCouplingFlow(7, 3, 4, (16,))
    for net in flow.nets:  # leave the identity start so the test means something
        torch.nn.init.normal_(net[-1].weight, std=0.3)
    z, ctx = torch.randn(50, 7), torch.randn(50, 3)
    x = flow.sample_from(z, ctx)
    assert not torch.allclose(x, z)
    # log_prob maps x back to the same latent (up to the blocks' permutation): compare
    # the densities of x with the change of variables computed independently.
    lp = flow.log_prob(x, ctx)
    jac = torch.autograd.functional.jacobian(lambda v: flow.sample_from(v, ctx[:1]), z[:1])
    logdet = torch.linalg.slogdet(jac.reshape(7, 7))[1]
    base = -0.5 * (z[0] ** 2).sum() - 3.5 * np.log(2 * np.pi)
    assert torch.allclose(lp[0], base - logdet, atol=1e-4)


def test_compact_needs_equal_layers_and_affine():
    with pytest.raises(ConfigError, match="lean_affine"):
        build("l2lflows", "ild-ecal", config={"lean_affine": True, "bins": 4})
    with pytest.raises(ConfigError, match="cell_feature"):
        build("l2lflows", "ild-ecal", config={"cell_feature": "sqrt"})


def test_compact_size_does_not_grow_with_layers():
    a = build("l2lflows", "ild-ecal", preset="compact")
    n_flow = sum(p.numel() for p in a.layer_flows.parameters())
    # one shared flow: parameters of one 900-cell layer flow plus a 30-wide one-hot input
    assert len(a.layer_flows) == 1
    assert n_flow < 2_000_000


def test_compact_trains_and_generates_read_out_showers(toy_data, tmp_path):
    torch.manual_seed(0)
    model = train("l2lflows", toy_data, tmp_path / "run", preset="compact",
                  model_config=TINY_COMPACT,
                  train_config=TrainConfig(steps=40, batch_size=32, validate_every=0),
                  progress=False)
    out = model.sample(np.array([5e3, 5e4, 9e4]), 3).energies
    thr = model.geometry.readout_threshold_mev
    assert out.shape == (3, model.geometry.n_voxels)
    assert np.isfinite(out).all() and (out >= 0).all()
    assert ((out > 0) & (out < thr)).sum() == 0
    assert (out >= thr).sum() > 0
    again = model.sample(np.array([5e3, 5e4, 9e4]), 3).energies
    assert np.array_equal(out, again)
    # finalize() calibrated the cells' occupancies and hit spectra on the training data:
    # the number of hits matches even after 40 steps of training.
    assert float(model.cell_cut.abs().sum()) > 0
    gen = model.sample(toy_data.conditions, 4).energies
    real = np.where(toy_data.energies >= thr, toy_data.energies, 0)
    assert abs((gen > 0).sum(1).mean() / (real > 0).sum(1).mean() - 1) < 0.2


def test_hit_map_is_monotone_and_identity_before_calibration():
    model = build("l2lflows", "ild-ecal", preset="compact")
    s = model._slice(3)
    h = torch.linspace(0, 12, 40)[:, None].expand(40, 900)
    out = map_hits(h, model.voxel_group[s], model.hit_q_gen, model.hit_q_ref)
    assert torch.allclose(out, h, atol=1e-4)
    model.hit_q_ref.mul_(2.0)  # a calibrated map that doubles log energies
    out = map_hits(h, model.voxel_group[s], model.hit_q_gen, model.hit_q_ref)
    assert (out[1:] >= out[:-1]).all()
    assert torch.allclose(out[:30], 2 * h[:30], atol=1e-3)


def test_calibration_on_the_first_showers_of_more_not_a_whole_number_of_chunks(toy_geo):
    """``calibration_showers`` below the showers handed to finalize and not a multiple of
    the 500-shower generation chunks: every pass generates exactly the first ones (a
    fresh training run hands finalize all its showers)."""
    from caloforge.models.toy import toy_showers

    rng = np.random.default_rng(3)
    data = toy_showers(toy_geo, np.exp(rng.uniform(np.log(2e3), np.log(5e4), 700)), rng)
    model = build("l2lflows", toy_geo, preset="compact",
                  config={**TINY_COMPACT, "calibration_showers": 600,
                          "calibration_axis_tables": True, "calibration_response_refine": True,
                          "calibration_occupancy_refine": True, "calibration_hit_refine": 1,
                          "calibration_layer_moments": 5, "calibration_moment_copula": True})
    x = torch.from_numpy(data.energies)
    e = torch.from_numpy(data.incident_energy.astype(np.float32))
    model.fit_preprocessing(x, e)
    model.finalize(x, e, torch.Generator().manual_seed(0))
    assert model.axis_cal.is_fitted and model.moments.is_fitted
    out = model.eval().sample(np.array([3e3, 3e4]), seed=1).energies
    assert np.isfinite(out).all() and (out > 0).any()
