"""caloforge export: traced samplers run without caloforge and match PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from caloforge.cli import main
from caloforge.export import export_model
from caloforge.export.api import Sampler
from caloforge.export.graph import ExportError, shower_normals
from caloforge.training import TrainConfig, train

MODELS = ["wgan", "bibae", "l2lflows", "calogan", "caloflow-student"]
RUNNER = {
    "onnx": """
        import onnxruntime as ort
        sess = ort.InferenceSession(path)
        names = [i.name for i in sess.get_inputs()]
        meta = sess.get_modelmeta().custom_metadata_map["caloforge_export"]
        outs = [sess.run(None, {n: a for n, a in zip(names, ins)})[0] for ins in batches]
    """,
    "torchscript": """
        import torch
        extra = {"caloforge_export.json": ""}
        module = torch.jit.load(path, _extra_files=extra)
        meta = extra["caloforge_export.json"]
        meta = meta.decode() if isinstance(meta, bytes) else meta
        outs = [module(*[torch.from_numpy(a) for a in ins]).numpy() for ins in batches]
    """,
}


def run_fresh(fmt, path, batches, tmp_path):
    """Run an exported file in a fresh interpreter that imports only the runtime."""
    data = tmp_path / "inputs.npz"
    np.savez(data, **{f"{b}_{i}": a for b, ins in enumerate(batches) for i, a in enumerate(ins)})
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        path, data, n, k = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        batches = [[data[f"{b}_{i}"] for i in range(k)] for b in range(n)]
    """) + textwrap.dedent(RUNNER[fmt]) + textwrap.dedent("""
        assert not [m for m in sys.modules if m.startswith("caloforge")]
        np.savez(sys.argv[5], *outs)
        print(meta)
    """)
    out = tmp_path / "outputs.npz"
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(data), str(len(batches)),
                           str(len(batches[0])), str(out)], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = np.load(out)
    return [res[f"arr_{i}"] for i in range(len(batches))], json.loads(proc.stdout)


def assert_close(runtime, reference, atol=1e-5):
    """Within 1e-4 relative (plus a floor far below any readout threshold)."""
    assert runtime.shape == reference.shape
    np.testing.assert_allclose(runtime, reference, rtol=1e-4, atol=atol)


# caloflow(-student) drops cells under its 1 keV dequantisation floor and renormalises the
# layer: a cell at the floor that rounding flips moves its layer's other cells by up to a
# few 1e-5 MeV (far below any readout threshold).
ATOL_MEV = {"caloflow-student": 1e-4}


GEO = "toy-export"  # own geometries, unregistered after this module (see below)
CYLINDER = "toy-cyl-export"


@pytest.fixture(scope="module", autouse=True)
def _own_geometries():
    """Register this module's toy geometries and remove them afterwards, so that the
    list of known geometries seen by other test modules stays as it was."""
    from caloforge import geometry
    from caloforge.models.toy import toy_geometry

    toy_geometry(GEO)
    yield
    for name in (GEO, CYLINDER):
        geometry._FACTORIES.pop(name, None)
    geometry.get_geometry.cache_clear()


@pytest.fixture(scope="module")
def toy_data():
    """256 toy showers on this module's 6x6x6 grid, energies log-uniform in 1-100 GeV."""
    from caloforge.models.toy import toy_showers

    rng = np.random.default_rng(1)
    return toy_showers(GEO, np.exp(rng.uniform(np.log(1e3), np.log(1e5), 256)), rng)


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    cache, folders = {}, {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(name) / "run"
            frozen = {}
            if name == "caloflow-student":  # distils the caloflow teacher trained here
                get("caloflow")
                frozen = {"teacher": str(folders["caloflow"] / "model")}
            folders[name] = out
            cfg = TrainConfig(steps=6, batch_size=16, validate_every=0, checkpoint_every=6,
                              frozen_models=frozen)
            cache[name] = train(name, toy_data, out, preset="tiny", train_config=cfg,
                                progress=False)
        return cache[name]
    return get


def _inputs(sampler, batch, seed):
    torch.manual_seed(seed)
    return [t.numpy() for t in sampler.example_inputs(batch)][:-1] + \
        [shower_normals(seed, range(batch), sampler.noise_dim).numpy()]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", MODELS)
def test_runtime_equals_pytorch_for_the_same_noise(name, fmt, trained, tmp_path):
    model = trained(name)
    path = tmp_path / f"{name}.{fmt}"
    meta = export_model(model, path, to=fmt, noise="input")
    sampler = Sampler(model, "ddml-grid", internal_noise=False)
    batches = [_inputs(sampler, b, seed) for b, seed in ((1, 11), (5, 12))]
    outs, stored = run_fresh(fmt, path, batches, tmp_path)
    for ins, out in zip(batches, outs):
        ref = sampler(*[torch.from_numpy(a) for a in ins]).numpy()
        assert_close(out, ref, ATOL_MEV.get(name, 1e-5))
    assert stored == json.loads(json.dumps(meta))
    assert [i["name"] for i in stored["inputs"]] == ["energy", "theta", "phi", "noise"]
    assert (tmp_path / f"{name}.{fmt}.export.md").read_text().count("GeV") >= 1


@pytest.mark.parametrize("name", ["wgan", "l2lflows", "calogan", "caloflow-student"])
def test_noise_input_reproduces_generate(name, trained):
    """The documented noise input (shower i's stream) gives caloforge's own showers."""
    model = trained(name)
    sampler = Sampler(model, "ddml-grid", internal_noise=False)
    e = np.array([3e3, 2e4, 6e4])
    ref = model.sample(e, seed=9).energies
    # without gradients, as the exporters trace it: run alone (not after an export of
    # the same fixture model, which freezes its weights) the output would carry a graph
    with torch.no_grad():
        x = sampler(torch.tensor(e[:, None] / 1e3, dtype=torch.float32), torch.zeros(3, 1),
                    torch.zeros(3, 1), shower_normals(9, range(3), sampler.noise_dim))
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_bibae_kde_without_rejection_draws_the_kernel_weights(trained):
    """The traceable KDE picks stored latents with the rejection sampler's probabilities."""
    from caloforge.export.graph import _kde_latent

    model = trained("bibae")
    n = int(model.kde_count)
    pts, h = model.kde_points[:n], model.kde_bandwidth
    c = model.condition_features(torch.full((1,), 2e4))
    w = torch.exp(-0.5 * ((c[0, 0] - pts[:, -1]) / h[-1]) ** 2)
    expected = (w / w.sum()).numpy()
    normals = torch.randn(20000, 1 + model.config.latent_dim,
                          generator=torch.Generator().manual_seed(0))
    normals[:, 1:] = 0  # no kernel noise: the latent is the chosen stored point
    z = _kde_latent(model, c.expand(len(normals), -1), normals)
    chosen = (z[:, None, :] == pts[None, :, :-1]).all(-1).float().argmax(1)
    freq = np.bincount(chosen.numpy(), minlength=n) / len(normals)
    assert np.abs(freq - expected).max() < 5 * np.sqrt(expected.max() / len(normals)) + 1e-3


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_internal_noise_batch_one(fmt, trained, tmp_path):
    model = trained("l2lflows")
    path = tmp_path / f"m.{fmt}"
    meta = export_model(model, path, to=fmt, noise="internal", batch="1")
    assert [i["shape"] for i in meta["inputs"]] == [[1, 1]] * 3
    ins = [np.array([[20.0]], np.float32), np.zeros((1, 1), np.float32),
           np.zeros((1, 1), np.float32)]
    (a, b), _ = run_fresh(fmt, path, [ins, ins], tmp_path)
    assert a.shape == (1, model.geometry.n_voxels) and np.isfinite(a).all() and (a >= 0).all()
    assert not np.array_equal(a, b)  # noise drawn inside: two calls, two showers


def test_bad_inputs_one_line_nothing_written(trained, tmp_path, capsys):
    folder = tmp_path / "model"
    trained("wgan").save(folder)
    out = tmp_path / "m.onnx"
    cases = [
        (["--convention", "ddml-pointcloud"], "point-cloud models"),
        (["--convention", "par04", "--noise", "input"], "cylindrical"),
        (["--convention", "par04"], "--noise input"),
    ]
    for extra, message in cases:
        assert main(["export", str(folder), "-o", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert list(tmp_path.glob("m.onnx*")) == [] and not list(tmp_path.glob(".m.onnx*"))
    out.write_text("keep")
    assert main(["export", str(folder), "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep"
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["export", str(folder), "-o", str(tmp_path / "ok.pt"), "--to", "torchscript",
                 "--batch", "1", "--noise", "input"]) == 0
    assert "ok.pt.export.md" in capsys.readouterr().out
    assert (tmp_path / "ok.pt").stat().st_size > 0 and (tmp_path / "ok.pt.export.md").is_file()


def test_untraceable_step_is_one_clear_error(trained, tmp_path, monkeypatch):
    """A sampler step the tracer cannot follow: ExportError naming the model, no file."""
    from caloforge.errors import CaloforgeError

    model = trained("wgan")

    def data_dependent(*args, **kwargs):
        raise RuntimeError("Could not export a data-dependent loop\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", data_dependent)
    with pytest.raises(CaloforgeError, match="'wgan' could not be traced to onnx: Could not"):
        export_model(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package_is_one_clear_error(trained, tmp_path, monkeypatch, capsys):
    """onnx is an optional dependency (the README's main install lacks it)."""
    import sys

    folder = tmp_path / "model"
    trained("wgan").save(folder)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    assert main(["export", str(folder), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".[export]" in err, err
    assert not list(tmp_path.glob("*m.onnx*"))


def test_par04_refuses_a_model_conditioned_on_phi(trained, tmp_path):
    model = trained("wgan")
    model.condition_space.ranges["phi"] = (0.0, 1.0)
    try:
        with pytest.raises(ExportError, match="phi"):
            export_model(model, tmp_path / "m.onnx", convention="par04", noise="input")
        assert list(tmp_path.iterdir()) == []
    finally:
        del model.condition_space.ranges["phi"]


def test_par04_cell_order_on_a_cylindrical_mesh(tmp_path):
    """genVector in, (r, phi, z) cell energies over the incident energy out."""
    from caloforge.data import Conditions
    from caloforge.geometry import register_geometry
    from caloforge.geometry.base import CylindricalGeometry, LayerSpec
    from caloforge.models import build

    n_z, n_phi, n_r = 4, 3, 2
    geo = CylindricalGeometry(
        name=CYLINDER, description="toy cylinder for the par04 test",
        layers=tuple(LayerSpec("W", 5.6, "Si", 0.5) for _ in range(n_z)),
        r_edges=((0.0, 5.0, 15.0),) * n_z, n_alpha=(n_phi,) * n_z)
    register_geometry(geo, overwrite=True)
    model = build("l2lflows", geo, preset="tiny")
    rng = np.random.default_rng(0)
    e = rng.uniform(1e4, 5e4, 64)
    x = torch.as_tensor(rng.exponential(1.0, (64, geo.n_voxels)) * e[:, None] / 200,
                        dtype=torch.float32)
    model.fit_conditions(Conditions(e))
    model.fit_preprocessing(x, torch.as_tensor(e, dtype=torch.float32))
    meta = export_model(model, tmp_path / "par04.onnx", convention="par04", noise="input")
    k = meta["noise_width"]
    assert meta["inputs"][0]["shape"] == ["batch", k + 4]
    sampler = Sampler(model, "par04", internal_noise=False)
    flat = Sampler(model, "ddml-grid", internal_noise=False)
    noise = shower_normals(3, range(2), k)
    energy = torch.tensor([[2e4], [4e4]])
    gen = torch.cat([noise, energy / meta["trained_energy_range_mev"][1], torch.zeros(2, 1),
                     torch.tensor([[0.0, 1.0]]).expand(2, 2)], 1)
    cells = flat(energy / 1e3, torch.zeros(2, 1), torch.zeros(2, 1), noise)
    expected = (cells.view(2, n_z, n_phi, n_r).permute(0, 3, 2, 1).reshape(2, -1)
                / energy).numpy()
    (out,), _ = run_fresh("onnx", tmp_path / "par04.onnx", [[gen.numpy()]], tmp_path)
    assert_close(out, expected)
    assert_close(sampler(gen).numpy(), expected)


def test_traceable_spline_inverse_is_zukos():
    from zuko.transforms import MonotonicRQSTransform

    from caloforge.export.onnx_ops import traceable_flows

    g = torch.Generator().manual_seed(0)
    w, h, d = (torch.randn(50, 3, n, generator=g) for n in (8, 8, 7))
    y = 6 * torch.randn(50, 3, generator=g)  # also outside the spline's bounds
    ref = MonotonicRQSTransform(w, h, d).inv(y)
    with traceable_flows():
        patched = MonotonicRQSTransform(w, h, d).inv(y)
    torch.testing.assert_close(patched, ref)
    assert MonotonicRQSTransform(w, h, d).inv(y).equal(ref)  # restored


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])
@pytest.mark.parametrize("name", ["ild-ecal-photons",
                                  # its tables per response bin, layer cap and thinning
                                  "ild-ahcal-pions"])
def test_shipped_default_reproduces_generate(name, fmt, tmp_path):
    from caloforge import zoo

    model = zoo.load(name)
    path = tmp_path / f"default.{fmt}"
    meta = export_model(name, path, to=fmt, noise="input")
    e = np.array([15e3, 80e3])
    ref = model.sample(e, seed=4).energies
    ins = [(e[:, None] / 1e3).astype(np.float32), np.zeros((2, 1), np.float32),
           np.zeros((2, 1), np.float32), shower_normals(4, range(2), meta["noise_width"]).numpy()]
    (out,), _ = run_fresh(fmt, path, [ins], tmp_path)
    assert_close(out, ref)


@pytest.mark.parametrize("name,config", [  # those taking angles
    ("wgan", {}), ("bibae", {}), ("l2lflows", {}),
    # the shipped default's cell features: the calibration per theta bin and per ring
    # around each shower's axis is part of the graph
    ("l2lflows", {"cell_feature": "log_threshold", "calibration_theta_bins": 3}),
    # ... and the per-shower maps of the layers' centres and widths (the traced path)
    ("l2lflows", {"cell_feature": "log_threshold", "calibration_layer_moments": 9,
                  "calibration_moment_theta_bins": 1, "calibration_moment_energy_bins": 1,
                  "calibration_moment_layer_bins": 2, "calibration_moment_copula": True,
                  "calibration_moment_passes": 2}),
    # ... drawing its layers in the frame that follows the shower axis
    ("l2lflows", {"cell_feature": "log_threshold", "shared_layer_flow": True,
                  "axis_frame": True}),
    # ... with the hit counts that the energy flow draws in every layer's context and
    # read out
    ("l2lflows", {"cell_feature": "log_threshold", "shared_layer_flow": True,
                  "context_hits": True, "readout_drawn_hits": True})])
def test_angle_conditioned_model_takes_theta_phi_in_degrees(name, config, tmp_path):
    """The direction inputs reach the networks: runtime == generate at those angles."""
    from caloforge.data import Conditions
    from caloforge.models import build, get_model_class
    from caloforge.models.toy import toy_showers

    rng = np.random.default_rng(5)
    n = 96
    e = np.exp(rng.uniform(np.log(2e3), np.log(5e4), n))
    data = toy_showers(GEO, e, rng, theta=np.radians(rng.uniform(0, 30, n)),
                       phi=rng.uniform(0, 2 * np.pi, n))
    conditions = get_model_class(name).conditions_from_data(data.conditions)
    model = build(name, GEO, preset="tiny", config={"conditions": list(conditions), **config})
    model.fit_conditions(data.conditions)
    x = torch.as_tensor(data.energies, dtype=torch.float32)
    e_t = torch.as_tensor(e, dtype=torch.float32)
    angles = model.angle_tensor(data.conditions, n)
    model.fit_preprocessing(x, e_t, angles=angles)
    model.finalize(x, e_t, torch.Generator().manual_seed(0), angles)
    model.eval()
    if config:
        assert model.axis_cal.is_fitted and (model.axis_cal.cut != 0).any()
    if config.get("calibration_layer_moments"):
        assert model.moments.is_fitted and not torch.equal(model.moments.q_gen,
                                                           model.moments.q_ref)
        assert not torch.equal(model.moments.mixing.matrix,
                               torch.eye(len(model.moments.mixing.matrix)))
    meta = export_model(model, tmp_path / "m.onnx", noise="input")
    assert meta["conditions_taken"] == ["theta", "phi"]
    theta, phi = np.array([5.0, 25.0]), np.array([40.0, 300.0])
    want = Conditions(np.array([5e3, 3e4]), theta=np.radians(theta), phi=np.radians(phi))
    ref = model.sample(want, seed=2).energies
    ins = [np.array([[5.0], [30.0]], np.float32), theta[:, None].astype(np.float32),
           phi[:, None].astype(np.float32),
           shower_normals(2, range(2), meta["noise_width"]).numpy()]
    (out,), _ = run_fresh("onnx", tmp_path / "m.onnx", [ins], tmp_path)
    assert_close(out, ref)
    other = [ins[0], ins[1] + 4, ins[2] - 30, ins[3]]  # another direction
    (out_other,), _ = run_fresh("onnx", tmp_path / "m.onnx", [other], tmp_path)
    if name == "l2lflows":  # the untrained tiny GAN and BIB-AE output zeros (ReLU)
        assert not np.allclose(out_other, out)
    out = out_other
    want = Conditions(want.incident_energy, theta=np.radians(theta + 4),
                      phi=np.radians(phi - 30))
    assert_close(out, model.sample(want, seed=2).energies)


@pytest.mark.parametrize("right", [False, True])
def test_onnx_searchsorted_equals_torch(right, tmp_path):
    """The ONNX translation of searchsorted (calibration maps) on ties, ends, 1-D knots."""
    import onnxruntime as ort

    from caloforge.export.onnx_ops import register

    class Search(torch.nn.Module):
        def forward(self, rows, flat, x):
            return torch.searchsorted(rows, x, right=right), \
                torch.searchsorted(flat, x[0].contiguous(), right=right)

    g = torch.Generator().manual_seed(0)
    rows = torch.sort(torch.randn(7, 13, generator=g), 1).values
    rows[:, 5] = rows[:, 4]  # a tie
    flat = rows[0]
    x = torch.cat([torch.randn(7, 40, generator=g) * 2, rows[:, :4]], 1)  # on the knots too
    register(17)
    torch.onnx.export(Search(), (rows, flat, x), str(tmp_path / "s.onnx"), dynamo=False,
                      opset_version=17, input_names=["rows", "flat", "x"])
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"))
    got = sess.run(None, {"rows": rows.numpy(), "flat": flat.numpy(), "x": x.numpy()})
    want = Search()(rows, flat, x)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b.numpy())


def test_caloflow_teacher_export_is_refused_naming_the_student(trained, tmp_path):
    """The teacher's sampler is one network pass per cell: refused with one clear error,
    nothing written; its student exports (MODELS above)."""
    with pytest.raises(ExportError, match="one cell per network pass.*caloflow-student"):
        export_model(trained("caloflow"), tmp_path / "t.onnx")
    assert list(tmp_path.iterdir()) == []
