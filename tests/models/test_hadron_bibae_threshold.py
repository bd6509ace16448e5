"""BIB-AE's network threshold (seed 001, Sec. 3.2): cells of the decoder's and of the
post-processor's output below 10 % of the geometry's MIP are zeroed, in training (what the
critics and the post-processor see) and in generation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from caloforge.errors import ConfigError
from caloforge.models import build
from caloforge.models.base import StepContext, TrainBatch
from caloforge.models.noise import ShowerNoise
from caloforge.training import TrainConfig, train


def _model(toy_geo, toy_data, **config):
    torch.manual_seed(0)
    model = build("bibae", toy_geo.name, preset="tiny", config=config)
    x = torch.as_tensor(toy_data.energies)
    e = torch.as_tensor(toy_data.incident_energy, dtype=torch.float32)
    model.fit_preprocessing(x, e)
    return model, x[:32], e[:32]


def _below_cut(model, y, e_inc, fraction=0.1):
    """Number of non-zero network-space cells of ``y`` below ``fraction`` MIP."""
    cut_mev = torch.full((len(e_inc), 1), fraction * model.geometry.mip_mev)
    cut = model.transform(cut_mev, e_inc).view(-1, *([1] * (y.dim() - 1)))
    return int(((y > 0) & (y < cut)).sum())


def _step_context(model):
    opts = model.configure_optimizers()
    return StepContext(opts, torch.Generator().manual_seed(1), torch.device("cpu"))


def test_default_is_the_seed_ten_percent_of_a_mip(toy_geo):
    assert build("bibae", toy_geo.name).config.network_threshold_mip == 0.1
    # the tiny preset (a few dozen test steps) leaves it off
    assert build("bibae", toy_geo.name, preset="tiny").config.network_threshold_mip == 0.0


def test_trains_through_the_threshold(two_energy_data, tmp_path):
    """The cut sits far above an untrained decoder's output in the log-scaled network
    space; the straight-through gradient still lets the model learn hits (a plain cut
    leaves every shower empty: measured 0 hits at both energies after 60 steps)."""
    torch.manual_seed(0)
    model = train("bibae", two_energy_data, tmp_path / "run", preset="tiny",
                  model_config={"network_threshold_mip": 0.1},
                  train_config=TrainConfig(steps=60, batch_size=32, validate_every=0),
                  progress=False)
    assert model.config.network_threshold_mip == 0.1
    hits = {e: (model.sample(np.full(200, e), generator=11).energies > 0).sum(1).mean()
            for e in (2e3, 80e3)}
    # measured: 2.7 and 47 hits (the reference toys have 21 and 50)
    assert hits[2e3] > 0.5 and hits[80e3] > 10 and hits[80e3] > 3 * hits[2e3]


def test_generated_cells_below_the_threshold_are_zero(toy_geo, toy_data):
    e = torch.tensor([2e3, 2e4, 8e4])
    counts = {}
    for mip in (0.1, 0.0):
        model, _, _ = _model(toy_geo, toy_data, network_threshold_mip=mip)
        with torch.no_grad():
            # untrained outputs are tiny: lift them around the cut (about 2 in network
            # space at 20 GeV), so that cells fall on both sides of it
            model.postprocessor[-1].bias.fill_(2.0)
            x = model.generate(e, ShowerNoise.for_showers(5, range(3)))
        # (zero in network space comes back as float rounding, ~1e-10 MeV)
        small = (x > 1e-6 * toy_geo.mip_mev) & (x < 0.1 * toy_geo.mip_mev)
        counts[mip] = (int(small.sum()), int((x >= 0.1 * toy_geo.mip_mev).sum()))
    # Without the threshold the untrained networks give many tiny cells; with it none.
    assert counts[0.0][0] > 10
    assert counts[0.1][0] == 0 and counts[0.1][1] > 0


def test_the_postprocessor_trains_on_thresholded_decoder_output(toy_geo, toy_data):
    for mip, expect_small in ((0.1, False), (0.0, True)):
        model, x, e = _model(toy_geo, toy_data, network_threshold_mip=mip)
        seen = []
        model.postprocessor.register_forward_pre_hook(
            lambda _m, inp, seen=seen: seen.append(inp[0][:, :1]))
        model.training_step(TrainBatch(x, e), "postprocessor", _step_context(model))
        assert seen and (_below_cut(model, seen[0].detach(), e) > 0) == expect_small


def test_the_critics_judge_thresholded_reconstructions(toy_geo, toy_data):
    """The critic step's fake pair (input, reconstruction) carries the thresholded output
    (the toy data are cut at 0.5 MIP, so the real pair has no cell below 0.1 MIP)."""
    for mip, expect_small in ((0.1, False), (0.0, True)):
        model, x, e = _model(toy_geo, toy_data, network_threshold_mip=mip)
        pairs = []
        model.critics["critic"].register_forward_hook(
            lambda _m, inp, _out, pairs=pairs: pairs.append(inp[0].detach()))
        model.training_step(TrainBatch(x, e), "bibae", _step_context(model))
        reco = [p[:, 1:2] for p in pairs if not torch.equal(p[:, 0], p[:, 1])]
        assert reco
        assert (_below_cut(model, reco[0], e) > 0) == expect_small


def test_threshold_scales_with_the_geometry_mip(toy_geo, toy_data):
    """The cut is taken from the geometry's MIP, not from a fixed number of MeV."""
    model, _, e = _model(toy_geo, toy_data, network_threshold_mip=0.1)
    y = model.transform(torch.full((len(e), 1), 0.09 * toy_geo.mip_mev), e)
    y_above = model.transform(torch.full((len(e), 1), 0.11 * toy_geo.mip_mev), e)
    assert torch.all(model.threshold(y[:, :, None], e) == 0)
    assert torch.equal(model.threshold(y_above[:, :, None], e), y_above[:, :, None])
    geo = dataclasses.replace(toy_geo, mip_override_mev=toy_geo.mip_mev * 0.5)
    model.geometry = geo  # half the MIP: 0.09 of the old MIP is now above the cut
    assert torch.equal(model.threshold(y[:, :, None], e), y[:, :, None])


def test_a_folder_saved_before_the_threshold_keeps_generating_without_it(toy_geo):
    """Model folders store every config key; one without this key was trained without
    the threshold and must not get it on loading."""
    from caloforge.models.bibae import BIBAEConfig

    saved = BIBAEConfig().to_dict()
    del saved["network_threshold_mip"]
    assert BIBAEConfig.from_dict(saved).network_threshold_mip == 0.0
    # a user's partial config gets the default
    assert BIBAEConfig.from_dict({"latent_dim": 8}).network_threshold_mip == 0.1


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_bad_threshold_refused(toy_geo, bad):
    with pytest.raises(ConfigError, match="network_threshold_mip"):
        build("bibae", toy_geo.name, preset="tiny", config={"network_threshold_mip": bad})


def test_threshold_is_identity_above_the_cut(toy_geo, toy_data):
    model, x, e = _model(toy_geo, toy_data, network_threshold_mip=0.1)
    y = model.transform(x, e).view(len(e), 1, *model.grid_shape)
    kept = model.threshold(y, e)  # the toy data are cut at 0.5 MIP: nothing changes
    assert torch.equal(kept, y)
    assert np.isfinite(kept.numpy()).all()


def test_threshold_passes_the_gradient_straight_through(toy_geo, toy_data):
    model, _, e = _model(toy_geo, toy_data, network_threshold_mip=0.1)
    y = torch.full((len(e), 1, *model.grid_shape), 0.5, requires_grad=True)
    out = model.threshold(y, e)
    assert torch.all(out == 0)  # every cell under the cut (0.5 is far below it) ...
    out.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # ... and still gets the gradient


def test_exported_sampler_applies_the_threshold_at_any_batch(toy_data, toy_geo, tmp_path):
    """The traced graph (ONNX) takes the cut from its energy input: any batch size, the
    same cells as the PyTorch sampler, none under 0.1 MIP."""
    ort = pytest.importorskip("onnxruntime")
    from caloforge.export import export_model
    from caloforge.export.api import Sampler
    from caloforge.export.graph import shower_normals

    torch.manual_seed(0)
    model = train("bibae", toy_data, tmp_path / "run", preset="tiny",
                  model_config={"network_threshold_mip": 0.1, "threshold_output": False},
                  train_config=TrainConfig(steps=4, batch_size=16, validate_every=0),
                  progress=False)
    with torch.no_grad():
        model.postprocessor[-1].bias.fill_(2.0)  # cells on both sides of the cut
    path = tmp_path / "bibae.onnx"
    export_model(model, path, to="onnx", noise="input")
    sampler = Sampler(model, "ddml-grid", internal_noise=False)
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    mip = toy_geo.mip_mev
    for batch, seed in ((1, 11), (5, 12)):
        e = torch.linspace(80.0, 2.0, batch)[:, None]  # GeV
        ins = [e, torch.zeros(batch, 1), torch.zeros(batch, 1),
               shower_normals(seed, range(batch), sampler.noise_dim)]
        ref = sampler(*ins).numpy()
        out = session.run(None, {n: t.numpy() for n, t in zip(names, ins)})[0]
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
        assert not ((ref > 1e-6 * mip) & (ref < 0.1 * mip)).any()
        assert (ref >= 0.1 * mip).any()
