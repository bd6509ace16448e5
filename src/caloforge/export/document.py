"""``FILE.export.md``: the human-readable contract of an exported sampler."""

from __future__ import annotations

from typing import Any

from caloforge.models.noise import NORMAL_BLOCK

_UNCHECKED = {
    "ddml-grid": (
        "Not checked against DDML's C++ code (not available here): the input names and "
        "order DDML's grid-model inference passes, whether it feeds the energy in GeV (as "
        "assumed here) and expects the cell energies in MeV, and how it maps the flat cell "
        "index onto its readout. Check those before production use."),
    "par04": (
        "Checked against the Par04 example's public sources (Par04InferenceSetup.cc, "
        "Par04OnnxInference.cc): one float input of shape {1, latent + conditions}, "
        "energies multiplied by the incident energy after inference, cell positions looped "
        "r, then phi, then z. Not run inside Geant4 here: set the example's latent size to "
        "the noise width and its maximum energy and angle to the values below."),
    "ddml-pointcloud": (
        "Checked against DDML's public sources (ONNXInference.cc, "
        "CaloCloudsTwoAngleModel.cc), not run inside Geant4 here: three float inputs of "
        "shape {1, 1} in session order (energy in GeV, local theta and phi in degrees), "
        "the per-layer counts read at output[4 k], the points from output[4 L] on, the "
        "layer from the third entry of each quadruplet. Not checked: whether the origin "
        "and orientation of x, y match DDML's local frame (DDML flips both signs) and its "
        "local-angle convention; set maxNumElements to the output width (above)."),
}


def _output_text(meta: dict[str, Any]) -> list[str]:
    out = meta["outputs"][0]
    if meta["convention"] == "ddml-pointcloud":
        return [f"Layout: {out['order']}", "",
                f"Sampler settings: {meta['sampler']}. Energies are clamped at zero; the "
                f"real points are those `caloforge generate` gives for the same normals."]
    return [f"Cell order: {out['order']}.",
            f"Energies are clamped at zero and cells below the readout threshold "
            f"({meta['readout_threshold_mev']:.4g} MeV; 0 = none) set to zero, as "
            f"`caloforge generate` does."]


def _row(spec: dict[str, Any]) -> str:
    unit = spec.get("unit", spec.get("layout", ""))
    return f"| `{spec['name']}` | {spec['shape']} | {spec['dtype']} | {unit} |"


def render(meta: dict[str, Any], filename: str) -> str:
    """Markdown describing the inputs, output, units and cell order of ``meta``."""
    lo, hi = meta["trained_energy_range_mev"]
    noise = ("drawn inside the graph (the runtime's random generator, so no seed control "
             "from caloforge)" if meta["noise"] == "internal" else
             f"given as input: {meta['noise_width']} independent standard normals per shower; "
             f"the first {meta['noise_width']} normals of shower i's caloforge stream "
             f"(`caloforge.export.graph.shower_normals(seed, [i], width)`) reproduce "
             f"`caloforge generate --seed` exactly")
    if meta["convention"] == "ddml-pointcloud" and meta["noise"] == "input":
        noise = (f"given as input: {meta['noise_width']} independent standard normals per "
                 f"shower ({meta['inputs'][-1]['layout']}). `caloforge generate --seed` "
                 f"draws shower i's ShowerFlow normals first and its n points' normals "
                 f"after a block of {NORMAL_BLOCK} from the same stream: those values in "
                 f"those places reproduce its points")
    out = meta["outputs"][0]
    lines = [
        f"# {filename}: exported `{meta['model']}` sampler",
        "",
        f"Produced by {meta['producer']} as {meta['format']} in the `{meta['convention']}` "
        f"convention, batch {'1 (fixed)' if meta['batch'] == '1' else 'dynamic (axis 0)'}, "
        f"geometry `{meta['geometry']}`. The same description is stored in the file "
        f"(ONNX metadata_props / TorchScript extra file, key `caloforge_export`, JSON).",
        "", "## Inputs", "", "| name | shape | dtype | unit / layout |", "|---|---|---|---|",
        *[_row(s) for s in meta["inputs"]],
        "", f"Noise: {noise}.", "",
        f"Trained incident energies: {lo / 1e3:.4g} - {hi / 1e3:.4g} GeV; the graph does not "
        f"refuse energies outside (extrapolation). Conditions the model takes besides the "
        f"energy: {', '.join(meta['conditions_taken']) or 'none'}; fixed at training (rad, mm): "
        f"{meta['fixed_conditions'] or 'none'} (direction inputs of a model trained at one "
        f"direction are accepted and ignored).",
        "", "## Output", "", "| name | shape | dtype | unit |", "|---|---|---|---|",
        _row(out), "", *_output_text(meta),
        "", "## Not checked", "", _UNCHECKED.get(meta["convention"], ""), "",
    ]
    return "\n".join(lines)
