"""``caloforge bench``: time per shower of trained models next to the reference simulation."""

from __future__ import annotations

import argparse

from caloforge.cli._options import positive_float, positive_int


def batch_size(text: str) -> int:
    """A batch size in 1..10000."""
    from caloforge.export.bench import MAX_BATCH

    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH}, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time per shower of trained models vs the reference simulation",
        description="Time per shower of each MODEL for several batch sizes and thread counts "
                    "on CPU (and CUDA when present): the PyTorch model and its exported ONNX "
                    "(onnxruntime, intra-op threads) and TorchScript forms, next to the "
                    "builtin reference simulation timed in the same run at the same "
                    "conditions. Each figure is the median of repeated calls after warm-up "
                    "(synchronised on CUDA); repeats stop after --min-time seconds, and "
                    "settings that would overrun --time-limit are skipped and reported. "
                    "Prints a table; writes JSON and a plot when asked.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model folder or shipped model name")
    p.add_argument("--batch-sizes", type=batch_size, nargs="+", default=[1, 10, 100, 1000],
                   metavar="B", help="batch sizes, 1..10000 (default 1 10 100 1000)")
    p.add_argument("--threads", type=positive_int, nargs="+", metavar="T",
                   help="CPU thread counts (default: 1 and all cores)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU, plus CUDA when present (default)")
    p.add_argument("--formats", nargs="+", choices=["pytorch", "onnx", "torchscript"],
                   default=["pytorch", "onnx", "torchscript"],
                   help="what to time (default all three; ONNX and TorchScript are exported "
                        "to a temporary folder first)")
    p.add_argument("--no-simulation", action="store_true",
                   help="do not time the reference simulation")
    p.add_argument("--energy", help="E or EMIN:EMAX in GeV (default: the trained range)")
    p.add_argument("--theta", help="degrees, X or LO:HI (default: the trained range)")
    p.add_argument("--phi", help="degrees, X or LO:HI (default: the trained range)")
    p.add_argument("--seed", type=int, default=0, help="seed of conditions and showers (>= 0)")
    p.add_argument("--min-time", type=positive_float, default=1.0, metavar="S",
                   help="stop repeating a setting after S seconds (default 1)")
    p.add_argument("--max-repeats", type=positive_int, default=20,
                   help="at most this many timed calls per setting (default 20)")
    p.add_argument("--time-limit", type=positive_float, default=240.0, metavar="S",
                   help="per model, exports included: skip settings predicted to overrun "
                        "(default 240)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the plot (.png or .pdf)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caloforge.export.bench import BenchSettings, bench, write_outputs
    from caloforge.utils.outputs import check_outputs

    settings = BenchSettings(
        batch_sizes=tuple(args.batch_sizes), threads=tuple(args.threads or ()) or None,
        device=args.device, backends=tuple(dict.fromkeys(args.formats)),
        simulation=not args.no_simulation, seed=args.seed, energy_gev=args.energy,
        theta_deg=args.theta, phi_deg=args.phi, min_time_s=args.min_time,
        max_repeats=args.max_repeats, time_limit_s=args.time_limit)
    settings.validate()
    check_outputs(args.json, args.plot, args.overwrite)
    result = bench(args.models, settings)
    print(result.table())
    written = write_outputs(result, args.json, args.plot, args.overwrite)
    if written:
        print(f"wrote {' and '.join(written)}")
    return 0
