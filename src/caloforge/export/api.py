"""``export_model``: a trained voxel model as an ONNX or TorchScript file for the Geant4
fast-simulation hooks, with its contract written into the file and into ``FILE.export.md``.

Conventions (:data:`CONVENTIONS`):

- ``ddml-grid`` (Key4hep DDML grid models): inputs ``energy`` (B, 1) GeV, ``theta`` and
  ``phi`` (B, 1) degrees, optionally ``noise`` (B, K); output ``energies`` (B, n_cells)
  MeV in the geometry's cell order.
- ``par04`` (Geant4 example Par04): one input ``genVector`` (B, K + 4) = K latent normals,
  then E / E_max, theta_deg / 90 and the two geometry one-hot entries the example appends;
  output (B, R * PHI * Z) cell energy over incident energy, r slowest and z fastest (the
  example multiplies by the incident energy).  Needs a cylindrical geometry with the
  same (alpha, r) binning in every layer.
- ``ddml-pointcloud`` (DDML's point-cloud models): inputs as ``ddml-grid``; output
  ``points`` (B, 4 (L + P)): per-layer point counts, then zero-padded (x, y, layer, E)
  quadruplets (:mod:`caloforge.export.points`).  Point-cloud models only.

>>> sorted(CONVENTIONS)
['ddml-grid', 'ddml-pointcloud', 'par04']
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge import __version__
from caloforge.errors import InputError
from caloforge.export.graph import ExportError, VoxelSampler
from caloforge.utils.atomic import atomic_path, check_output_path

CONVENTIONS = ("ddml-grid", "par04", "ddml-pointcloud")
FORMATS = ("onnx", "torchscript")
OPSET = 17
METADATA_KEY = "caloforge_export"
TORCHSCRIPT_EXTRA = "caloforge_export.json"
PAR04_CONDITIONS = 4  # E / E_max, angle / max angle, geometry one-hot (2)


def _par04_order(model: Any) -> torch.Tensor:
    """Caloforge cell index of each Par04 output cell (r slowest, then phi, then z)."""
    from caloforge.geometry.base import CylindricalGeometry

    geo = model.geometry
    if not isinstance(geo, CylindricalGeometry):
        raise ExportError(
            f"convention par04 expects a cylindrical (r, phi, z) mesh; geometry {geo.name!r} "
            f"is a Cartesian grid (use --convention ddml-grid)")
    shapes = {geo.layer_shape(k) for k in range(geo.n_layers)}
    if len(shapes) != 1:
        raise ExportError(
            f"convention par04 needs the same (phi, r) binning in every layer; geometry "
            f"{geo.name!r} has {len(shapes)} different layer binnings")
    n_alpha, n_r = shapes.pop()
    # caloforge order: layer slowest, then alpha, then r fastest
    index = np.arange(geo.n_voxels).reshape(geo.n_layers, n_alpha, n_r)
    return torch.as_tensor(index.transpose(2, 1, 0).reshape(-1))  # (r, phi, z)


def _check_convention(model: Any, convention: str, noise: str) -> None:
    if convention not in CONVENTIONS:
        raise InputError(f"--convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    if convention == "ddml-pointcloud" and model.representation != "points":
        raise ExportError(f"--convention ddml-pointcloud is for point-cloud models; model "
                          f"{model.name!r} generates voxels (use ddml-grid or par04)")
    if convention != "ddml-pointcloud" and model.representation == "points":
        raise ExportError(f"model {model.name!r} generates point clouds: use --convention "
                          f"ddml-pointcloud")
    if convention == "par04":
        if noise == "internal":
            raise ExportError("convention par04 draws the latent noise in C++ and passes it "
                              "in genVector: use --noise input")
        ranges = model.condition_space.ranges
        if "phi" in ranges:
            raise ExportError(f"model {model.name!r} is conditioned on phi, which the par04 "
                              f"conditions vector (energy, angle) cannot express")


class Sampler(VoxelSampler):
    """:class:`VoxelSampler` with the Par04 single-input layout."""

    def __init__(self, model: Any, convention: str, internal_noise: bool) -> None:
        par04 = convention == "par04"
        super().__init__(model, energy_unit="MeV" if par04 else "GeV", angles=not par04,
                         internal_noise=internal_noise,
                         cell_order=_par04_order(model) if par04 else None,
                         per_incident=par04)
        self.par04 = par04
        self.max_energy_mev = float(model.energy_range_mev[1])

    @property
    def input_names(self) -> list[str]:
        return ["genVector"] if self.par04 else super().input_names

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        if not self.par04:
            return super().example_inputs(batch)
        e, noise = super().example_inputs(batch)
        cond = torch.cat([e / self.max_energy_mev, torch.zeros(batch, 1),
                          torch.tensor([[0.0, 1.0]]).expand(batch, 2)], 1)
        return (torch.cat([noise, cond], 1),)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not self.par04:
            return super().forward(*inputs)
        gen = inputs[0]
        k = self.noise_dim
        energy = gen[:, k:k + 1] * self.max_energy_mev
        theta = gen[:, k + 1:k + 2] * 90.0
        angles = torch.cat([theta, torch.zeros_like(theta)], 1) * (np.pi / 180)
        x = self.cells(energy[:, 0], angles if self.model.takes_angles else None, gen[:, :k])
        x = x[:, self.cell_order] / energy
        return x + 0 * gen[:, k + 1:].sum(1, keepdim=True)  # keep every input in the graph


def describe(sampler: Sampler, convention: str, fmt: str, batch: str) -> dict[str, Any]:
    """The exported file's contract (written into its metadata and the .md)."""
    m = sampler.model
    b = 1 if batch == "1" else "batch"
    k = sampler.noise_dim
    lo, hi = m.energy_range_mev
    inputs: list[dict[str, Any]]
    if sampler.par04:
        inputs = [{"name": "genVector", "shape": [b, k + PAR04_CONDITIONS], "dtype": "float32",
                   "layout": f"{k} standard normals, then E/E_max (E_max = {hi:.6g} MeV), "
                             f"theta_deg/90, then two geometry one-hot entries (ignored)"}]
        out_unit = "cell energy / incident energy"
        g = m.geometry
        n_alpha, n_r = g.layer_shape(0)
        order = f"r slowest, then phi, then z fastest (r={n_r}, phi={n_alpha}, z={g.n_layers})"
    else:
        inputs = [{"name": "energy", "shape": [b, 1], "dtype": "float32", "unit": "GeV"}]
        if sampler.angles:
            inputs += [{"name": n, "shape": [b, 1], "dtype": "float32", "unit": "degree"}
                       for n in ("theta", "phi")]
        if not sampler.internal_noise:
            inputs.append({"name": "noise", "shape": [b, k], "dtype": "float32",
                           "unit": "standard normal"})
        out_unit = "MeV"
        order = f"caloforge cell order of geometry {m.geometry.name!r}: layer slowest, " \
                f"then the two in-layer axes (see caloforge.geometry)"
    n_out = m.geometry.n_voxels
    takes = list(m.condition_space.ranges)
    return {
        "producer": f"caloforge {__version__}", "model": m.name, "geometry": m.geometry.name,
        "format": fmt, "convention": convention, "batch": batch,
        "noise": "internal" if sampler.internal_noise else "input", "noise_width": k,
        "inputs": inputs,
        "outputs": [{"name": "energies", "shape": [b, n_out], "dtype": "float32",
                     "unit": out_unit, "order": order}],
        "trained_energy_range_mev": [float(lo), float(hi)],
        "conditions_taken": takes, "fixed_conditions": m.condition_space.fixed,
        "readout_threshold_mev": sampler.threshold,
    }


def _trace_onnx(sampler: Any, path: Path, batch: str, meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("--to onnx needs the onnx package, an optional dependency: "
                          "pip install -e '.[export]' (or pip install onnx onnxruntime)") from None

    from caloforge.export import onnx_ops

    onnx_ops.register(OPSET)
    names = sampler.input_names
    output = meta["outputs"][0]["name"]
    dynamic = None if batch == "1" else {n: {0: "batch"} for n in [*names, output]}
    with onnx_ops.traceable_flows(), _quiet():
        torch.onnx.export(sampler, sampler.example_inputs(1 if batch == "1" else 2), str(path),
                          input_names=names, output_names=[output], dynamic_axes=dynamic,
                          opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.doc_string = f"caloforge {meta['model']} sampler ({meta['convention']})"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _trace_torchscript(sampler: Any, path: Path, batch: str, meta: dict[str, Any]) -> None:
    from caloforge.export import onnx_ops

    with onnx_ops.traceable_flows(), _quiet():
        traced = torch.jit.trace(sampler, sampler.example_inputs(1 if batch == "1" else 2),
                                 check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)})


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """The tracers warn about every Python-level shape use; those are checked by
    running the exported file at other batch sizes, not read by a user."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_model(model: Any, output: str | Path, to: str = "onnx",
                 convention: str = "ddml-grid", noise: str = "internal", batch: str = "dynamic",
                 overwrite: bool = False, max_points: int | None = None) -> dict[str, Any]:
    """Export ``model`` (a loaded model, a model folder or a zoo name) to ``output``.

    Writes ``output`` and ``output.export.md`` (both via temporary files, nothing left
    behind on failure) and returns the contract (:func:`describe`).  ``max_points``:
    the fixed number of point slots of ``ddml-pointcloud`` (default: a quantile of the
    ShowerFlow's draws, see :mod:`caloforge.export.points`).
    """
    from caloforge.models import GenerativeModel, load

    if to not in FORMATS:
        raise InputError(f"--to {to!r}: choose onnx or torchscript")
    if noise not in ("internal", "input"):
        raise InputError(f"--noise {noise!r}: choose internal or input")
    if batch not in ("1", "dynamic"):
        raise InputError(f"--batch {batch!r}: choose 1 or dynamic")
    output = Path(output)
    doc = output.with_name(output.name + ".export.md")
    check_output_path(output, overwrite)
    check_output_path(doc, overwrite)
    if not isinstance(model, GenerativeModel):
        model = load(model, "cpu")
    model = model.cpu().eval().requires_grad_(False)
    if not bool(model.fitted):
        raise InputError(f"model {model.name!r} is not trained (preprocessing not fitted)")
    if model.export_refusal:
        raise ExportError(f"model {model.name!r} cannot be exported: {model.export_refusal}")
    if max_points is not None and convention != "ddml-pointcloud":
        raise InputError("--max-points applies to --convention ddml-pointcloud only")
    _check_convention(model, convention, noise)
    sampler: Any
    if convention == "ddml-pointcloud":
        from caloforge.export.points import PointSampler, describe_points

        sampler = PointSampler(model, noise == "internal", max_points)
        meta = describe_points(sampler, to, batch)
    else:
        sampler = Sampler(model, convention, internal_noise=noise == "internal")
        meta = describe(sampler, convention, to, batch)
    from caloforge.export.document import render

    with atomic_path(output, overwrite) as tmp, atomic_path(doc, overwrite) as tmp_doc:
        try:
            (_trace_onnx if to == "onnx" else _trace_torchscript)(sampler, tmp, batch, meta)
        except (RuntimeError, TypeError, ValueError) as exc:  # torch's tracer / exporter
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"model {model.name!r} could not be traced to {to}: "
                              f"{reason[:300]}") from None
        tmp_doc.write_text(render(meta, output.name))
    return meta
