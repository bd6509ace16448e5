"""caloforge export --convention ddml-pointcloud: the point-cloud models (ShowerFlow, point
sampler and placement in one graph) in DDML's layout, run without caloforge, equal
PyTorch and caloforge generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_export import assert_close, run_fresh

from caloforge.cli import main
from caloforge.export import export_model
from caloforge.export.points import PointSampler
from caloforge.models import load
from caloforge.models.noise import NORMAL_BLOCK, shower_seed
from caloforge.training import TrainConfig, train


@pytest.fixture(scope="module")
def runs(write_toy_points, tmp_path_factory):
    """Model folders of a tiny caloclouds2 teacher, its caloclouds2-cm student and a tiny
    caloclouds, trained a few steps on toy point clouds."""
    root = tmp_path_factory.mktemp("ptexport")
    data = write_toy_points(root / "points.h5", 64, seed=5)
    cfg = dict(steps=6, batch_size=16, validate_every=0, checkpoint_every=0)
    for name in ("caloclouds2", "caloclouds"):
        train(name, data, root / name, preset="tiny", train_config=TrainConfig(**cfg),
              progress=False)
    teacher = str(root / "caloclouds2" / "model")
    # the student with the layer-moment maps and their copula: part of the graph too
    train("caloclouds2-cm", data, root / "cm", preset="tiny",
          train_config=TrainConfig(**cfg, frozen_models={"teacher": teacher}), progress=False,
          model_config={"moment_knots": 9, "moment_energy_bins": 1, "moment_copula": True})
    # ... and with the moment flow (its noise after the ShowerFlow's)
    train("caloclouds2-cm", data, root / "cm_flow", preset="tiny",
          train_config=TrainConfig(**cfg, frozen_models={"teacher": teacher}), progress=False,
          model_config={"moment_knots": 9, "moment_energy_bins": 1, "moment_theta_bins": 1,
                        "moment_flow_steps": 20, "moment_flow_transforms": 2,
                        "moment_flow_hidden": 8})
    return {"caloclouds2-cm": root / "cm" / "model", "cm_flow": root / "cm_flow" / "model",
            "caloclouds2": root / "caloclouds2" / "model",
            "caloclouds": root / "caloclouds" / "model"}


def _inputs(sampler, energies_gev, seed):
    n = len(energies_gev)
    g = torch.Generator().manual_seed(seed)
    return [np.asarray(energies_gev, np.float32)[:, None],
            np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32),
            torch.randn(n, sampler.noise_dim, generator=g).numpy()]


def check_layout(out, n_layers, max_points):
    """Counts at every 4th entry, real points first, per-layer counts == points there."""
    out = out.reshape(len(out), n_layers + max_points, 4)
    head, pts = out[:, :n_layers], out[:, n_layers:]
    assert (head[..., 1:] == 0).all()
    counts = head[..., 0]
    assert (counts == np.round(counts)).all() and (counts >= 0).all()
    for c, p in zip(counts.astype(int), pts):
        real = p[:, 3] > 0
        n = int(c.sum())
        assert 1 <= n <= max_points and real[:n].all() and (p[n:] == 0).all()
        layers = p[:n, 2]
        assert (layers == np.round(layers)).all()
        np.testing.assert_array_equal(np.bincount(layers.astype(int), minlength=n_layers), c)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_point_runtime_equals_pytorch_for_the_same_noise(fmt, runs, tmp_path):
    model = load(runs["caloclouds2-cm"])
    assert model.moments.is_fitted and not torch.equal(model.moments.mixing.matrix,
                                                       model.moments.mixing._identity())
    path = tmp_path / f"cm.{fmt}"
    meta = export_model(model, path, to=fmt, convention="ddml-pointcloud", noise="input")
    p, n_l = meta["max_points"], model.geometry.n_layers
    assert 1 <= p <= int(model.max_points) and 0 <= meta["truncated_fraction"] <= 0.01
    assert meta["outputs"][0]["shape"] == ["batch", 4 * (n_l + p)]
    sampler = PointSampler(model, internal_noise=False, max_points=p)
    assert sampler.noise_dim == meta["noise_width"] == model.shower_flow().features + 4 * p
    batches = [_inputs(sampler, [20.0], 1), _inputs(sampler, [3.0, 12.0, 45.0], 2)]
    outs, stored = run_fresh(fmt, path, batches, tmp_path)
    for ins, out in zip(batches, outs):
        ref = sampler(*[torch.from_numpy(a) for a in ins]).numpy()
        assert_close(out, ref)
        check_layout(out, n_l, p)
    assert stored == json.loads(json.dumps(meta))
    assert [i["name"] for i in stored["inputs"]] == ["energy", "theta", "phi", "noise"]
    doc = (tmp_path / f"cm.{fmt}.export.md").read_text()
    assert "quadruplets" in doc and f"maxNumElements = {4 * (n_l + p)}" in doc


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_moment_flow_exports_with_its_noise(fmt, runs, tmp_path):
    model = load(runs["cm_flow"])
    assert model.moments.flow is not None
    path = tmp_path / f"cmf.{fmt}"
    meta = export_model(model, path, to=fmt, convention="ddml-pointcloud", noise="input")
    p, n_l = meta["max_points"], model.geometry.n_layers
    sampler = PointSampler(model, internal_noise=False, max_points=p)
    assert sampler.noise_dim == model.shower_flow().features + 4 * n_l + 4 * p
    assert "for the moment flow" in meta["inputs"][3]["layout"]
    batches = [_inputs(sampler, [20.0], 1), _inputs(sampler, [3.0, 12.0, 45.0], 2)]
    outs, _ = run_fresh(fmt, path, batches, tmp_path)
    for ins, out in zip(batches, outs):
        assert_close(out, sampler(*[torch.from_numpy(a) for a in ins]).numpy())
        check_layout(out, n_l, p)


@pytest.mark.parametrize("halved", [False, True])
def test_noise_input_reproduces_generate(runs, halved):
    """Shower i's own stream as the noise input gives caloforge generate's points (also
    with the layer counts scaled by an occupancy calibration)."""
    model = load(runs["caloclouds2-cm"]).requires_grad_(False)
    if halved:
        model.count_scale = (0.5,) * model.geometry.n_layers
    p = int(model.max_points)
    sampler = PointSampler(model, internal_noise=False, max_points=p)
    f = model.shower_flow().features
    e = np.array([4e3, 2.5e4, 4.5e4])
    ref = model.sample(e, seed=7)
    for i in range(len(e)):
        n = int(ref.n_points[i])
        g = torch.Generator().manual_seed(shower_seed(7, i))
        flow = torch.randn(max(f, NORMAL_BLOCK), generator=g)[:f]  # the block ShowerNoise draws
        pts = torch.randn(n, 4, generator=g).flatten()  # then point_noise, n points
        noise = torch.cat([flow, pts, torch.zeros(4 * (p - n))])[None]
        out = sampler(torch.tensor([[e[i] / 1e3]], dtype=torch.float32), torch.zeros(1, 1),
                      torch.zeros(1, 1), noise).numpy()
        check_layout(out, model.geometry.n_layers, p)
        got = out.reshape(-1, 4)[model.geometry.n_layers:][:n]
        lo, hi = ref.offsets[i], ref.offsets[i + 1]
        want = np.stack([ref.x[lo:hi], ref.y[lo:hi], ref.z[lo:hi], ref.energy[lo:hi]], 1)
        z = model.geometry.layer_z_mm[got[:, 2].astype(int)]
        np.testing.assert_allclose(np.c_[got[:, :2], z, got[:, 3]], want, rtol=1e-4, atol=1e-4)


def test_internal_noise_batch_one_onnx(runs, tmp_path):
    model = load(runs["caloclouds2-cm"])
    path = tmp_path / "cm.onnx"
    meta = export_model(model, path, convention="ddml-pointcloud", batch="1", max_points=40)
    assert [i["shape"] for i in meta["inputs"]] == [[1, 1]] * 3
    assert meta["max_points"] == 40 and meta["truncated_fraction"] is None
    ins = [np.array([[30.0]], np.float32), np.full((1, 1), 10.0, np.float32),
           np.full((1, 1), 45.0, np.float32)]
    (a, b), _ = run_fresh("onnx", path, [ins, ins], tmp_path)
    assert a.shape == (1, 4 * (model.geometry.n_layers + 40)) and np.isfinite(a).all()
    check_layout(a, model.geometry.n_layers, 40)  # truncated to 40 points at most
    assert not np.array_equal(a, b)  # noise drawn inside: two calls, two showers


@pytest.mark.parametrize("name", ["caloclouds2",
                                  pytest.param("caloclouds", marks=pytest.mark.slow)])
def test_teacher_and_ddpm_export_unrolled(name, runs, tmp_path):
    """The 25-step EDM teacher (here 3 steps) and the 100-step DDPM trace as unrolled graphs."""
    model = load(runs[name])
    if name == "caloclouds2":
        model.set_sampler(steps=3)
    path = tmp_path / f"{name}.onnx"
    meta = export_model(model, path, convention="ddml-pointcloud", noise="input",
                        max_points=30)
    assert meta["sampler"]["steps"] == (3 if name == "caloclouds2" else 100)
    sampler = PointSampler(model, internal_noise=False, max_points=30)
    draws = 1 if name == "caloclouds2" else 100  # the DDPM draws fresh noise every step
    assert meta["noise_width"] == model.shower_flow().features + 4 * 30 * draws
    ins = _inputs(sampler, [10.0, 40.0], 3)
    (out,), _ = run_fresh("onnx", path, [ins], tmp_path)
    assert_close(out, sampler(*[torch.from_numpy(a) for a in ins]).numpy())
    check_layout(out, model.geometry.n_layers, 30)


def test_point_export_bad_inputs_one_line_nothing_written(runs, tmp_path, capsys):
    folder = str(runs["caloclouds2-cm"])
    out = tmp_path / "m.onnx"
    cases = [
        ([], "generates point clouds: use --convention ddml-pointcloud"),
        (["--convention", "par04"], "generates point clouds"),
        (["--convention", "ddml-pointcloud", "--max-points", "0"], "--max-points 0"),
        (["--max-points", "10"], "ddml-pointcloud only"),
    ]
    for extra, message in cases:
        assert main(["export", folder, "-o", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not list(tmp_path.iterdir())
    out.write_text("keep")
    assert main(["export", folder, "-o", str(out), "--convention", "ddml-pointcloud"]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert main(["export", folder, "-o", str(tmp_path / "ok.pt"), "--to", "torchscript",
                 "--convention", "ddml-pointcloud", "--max-points", "20", "--batch", "1"]) == 0
    assert "ok.pt.export.md" in capsys.readouterr().out
    assert (tmp_path / "ok.pt").stat().st_size > 0


def test_two_step_consistency_sampler_takes_two_noise_draws(runs):
    """caloclouds2-cm with steps=2 re-noises once: twice the point normals, valid layout."""
    model = load(runs["caloclouds2-cm"]).requires_grad_(False)
    model.set_sampler(steps=2)
    sampler = PointSampler(model, internal_noise=False, max_points=25)
    assert sampler.noise_dim == model.shower_flow().features + 2 * 4 * 25
    ins = _inputs(sampler, [5.0, 30.0], 4)
    out = sampler(*[torch.from_numpy(a) for a in ins]).numpy()
    check_layout(out, model.geometry.n_layers, 25)
