"""``caloforge simulate``: make reference showers with the builtin engine (or Geant4)."""

from __future__ import annotations

import argparse
import math

from caloforge import __version__
from caloforge.data.io import FORMATS, POINT_FORMATS, write_showers
from caloforge.errors import InputError
from caloforge.simulation.api import ENGINES, Range, iter_simulate, make_config, shard_range
from caloforge.utils.atomic import check_output_path

EPILOG = """\
units: --energy is in GeV on the command line (files store MeV, or what their format
defines); --theta/--phi in degrees; --impact in mm.
energy: X (fixed), LO:HI (uniform) or LO:HI:log (log-uniform), e.g. --energy 10:100.
sharding: --shard i/N (0 <= i < N) simulates showers [i*n/N, (i+1)*n/N) of the n-shower
sample; shards of one seed together equal the single-process sample, and
`caloforge merge OUT SHARD...` joins them.  Same seed, same output, whatever --workers.
"""


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects i/N, got {text!r}") from None
    return i, n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="simulate reference showers (builtin Monte Carlo or Geant4)",
        description="Simulate showers of one particle type in a detector and write them, "
                    "streaming, to a shower file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", required=True, help="geometry name (see caloforge geometry)")
    p.add_argument("--particle", required=True,
                   help="photon, electron, positron, pi+ or pi-")
    p.add_argument("--energy", required=True, help="incident energy in GeV: X, LO:HI, LO:HI:log")
    p.add_argument("-n", "--n-showers", type=int, required=True, dest="n",
                   help="number of showers of the whole sample (all shards)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--format", default="caloforge", choices=FORMATS, help="output format")
    p.add_argument("--points", action="store_true",
                   help="write point clouds (deposits clustered on a 6x6 finer grid)")
    p.add_argument("--realistic", action="store_true",
                   help="apply wafer gaps and staggering when voxelising (Cartesian geometries)")
    p.add_argument("--theta", default="0", help="polar angle in degrees: X or LO:HI")
    p.add_argument("--phi", default="0", help="azimuth in degrees: X or LO:HI")
    p.add_argument("--impact", default="0,0", help="impact point x,y on the front face (mm)")
    p.add_argument("--engine", default="builtin", choices=ENGINES, help="shower engine")
    p.add_argument("--shard", type=_shard, default=None, metavar="i/N",
                   help="simulate only shard i of N (0-based)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--chunk-size", type=int, default=100, help="showers per written batch")
    p.add_argument("--min-hits", type=int, default=None,
                   help="reject showers with fewer cells above 0.25 MeV (default: 70 for pions)")
    p.add_argument("--lossy", action="store_true",
                   help="allow formats that cannot store all conditions (theta, phi, "
                        "particle, impact) to drop them")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.points and args.format not in POINT_FORMATS:
        raise InputError(f"--points needs a point-cloud format ({', '.join(POINT_FORMATS)}), "
                         f"not {args.format!r}")
    check_output_path(args.output, args.overwrite)
    energy = Range.parse(args.energy, 1000.0, "energy")
    deg = math.pi / 180.0
    theta = Range.parse(args.theta, deg, "theta")
    phi = Range.parse(args.phi, deg, "phi")
    try:
        impact = tuple(float(v) for v in args.impact.split(","))
    except ValueError:
        impact = ()
    if len(impact) != 2:
        raise InputError(f"--impact expects x,y in mm, got {args.impact!r}")
    if args.n <= 0:
        raise InputError(f"-n must be > 0 (got {args.n})")
    shard = args.shard or (0, 1)
    start, stop = shard_range(args.n, *shard)
    options = dict(theta=theta, phi=phi, impact=impact, points=args.points,
                   realistic=args.realistic, engine=args.engine, min_hits=args.min_hits)
    batches = iter_simulate(args.detector, args.particle, energy, args.n, args.seed,
                            start=start, stop=stop, chunk_size=args.chunk_size,
                            workers=args.workers, progress=None, **options)
    # The first batch validates everything (and fails) before the output is created.
    first = next(batches, None)
    cfg = make_config(args.detector, args.particle, energy, args.n, args.seed, **options)
    meta = {"simulation": cfg.to_dict(), "shard": list(shard), "first_index": start,
            "stop_index": stop, "caloforge_version": __version__}
    geometry = first.geometry if first is not None else args.detector
    with write_showers(args.output, args.format, geometry, overwrite=args.overwrite,
                       metadata=meta, lossy=args.lossy) as out:
        if first is not None:
            out.append(first)
        for batch in batches:
            out.append(batch)
        written = out.n_written
    print(f"wrote {written} {args.particle} showers (indices {start}..{stop - 1}) "
          f"to {args.output} ({args.format})")
    return 0
