"""``caloforge export``: a trained model as an ONNX or TorchScript sampler."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained model as ONNX / TorchScript for Geant4 hooks",
        description="Trace the sampler of a trained model (fitted preprocessing and "
                    "calibration included) into one file for the Geant4 fast-simulation "
                    "hooks: --convention ddml-grid (inputs energy [GeV], theta, phi "
                    "[degrees], output flat cell energies [MeV]), ddml-pointcloud (same inputs, output "
                    "per-layer counts then (x, y, layer, E) quadruplets) or par04 (genVector in, "
                    "r x phi x z energies over the incident energy out). The contract is "
                    "written into the file's metadata and into FILE.export.md.")
    p.add_argument("model", help="model folder or shipped model name")
    p.add_argument("--to", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--convention", default="ddml-grid",
                   choices=["ddml-grid", "par04", "ddml-pointcloud"])
    p.add_argument("--noise", choices=["internal", "input"], default="internal",
                   help="draw the noise inside the graph or take it as input 'noise'")
    p.add_argument("--batch", choices=["1", "dynamic"], default="dynamic",
                   help="fixed batch of 1 or a dynamic batch axis")
    p.add_argument("--max-points", type=int, default=None,
                   help="ddml-pointcloud: fixed number of point slots (default: the 99.9%% "
                        "quantile of the ShowerFlow's point counts; larger showers are "
                        "truncated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caloforge.export import export_model

    meta = export_model(args.model, args.output, to=args.to, convention=args.convention,
                        noise=args.noise, batch=args.batch, overwrite=args.overwrite,
                        max_points=args.max_points)
    names = ", ".join(i["name"] for i in meta["inputs"])
    print(f"wrote {args.output} ({meta['format']}, {meta['convention']}, inputs {names}; "
          f"contract in {args.output}.export.md)")
    return 0
