"""``caloforge convert IN OUT --to FORMAT``: stream showers from one format to another."""

from __future__ import annotations

import argparse
from pathlib import Path

from caloforge.cli._options import add_no_progress, positive_int
from caloforge.data.io import FORMATS, POINT_FORMATS, open_showers, write_showers
from caloforge.errors import InputError
from caloforge.utils.progress import progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a shower file to another format",
                       description="Convert showers between formats, streaming in batches. "
                                   "Units are converted (GeV <-> MeV) as each format defines.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--geometry", help="geometry of the input, if the file does not say")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--lossy", action="store_true",
                   help="allow dropping what the output format cannot hold")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--sparse", dest="sparse", action="store_true", default=None,
                        help="caloforge format: store hits only")
    layout.add_argument("--dense", dest="sparse", action="store_false",
                        help="caloforge format: store dense voxels")
    p.add_argument("--batch-size", type=positive_int, default=1000,
                   help="showers per batch (default 1000)")
    add_no_progress(p)
    p.set_defaults(func=run)


def convert(input_path: str, output_path: str, to: str, geometry: str | None = None,
            overwrite: bool = False, lossy: bool = False, sparse: bool | None = None,
            batch_size: int = 1000, progress_bar: bool = True) -> int:
    """Convert a file; returns the number of showers written."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    options = {"sparse": sparse} if to == "caloforge" else {}
    if Path(output_path).exists() and Path(input_path).exists() \
            and Path(output_path).samefile(input_path):
        raise InputError("the output is the input file (convert writes a new file)",
                         output_path)
    with open_showers(input_path, geometry=geometry) as src:
        if src.n_showers == 0:  # a script must not take an empty output for work done
            raise InputError("holds no showers: nothing to convert", input_path)
        keep_points = src.is_point_cloud and to in POINT_FORMATS
        meta = dict(src.metadata, converted_from=f"{src.format}:{input_path}")
        with write_showers(output_path, to, src.geometry, overwrite=overwrite, metadata=meta,
                           lossy=lossy, **options) as dst:
            bar = progress(total=src.n_showers, desc=f"converting to {to}", unit="shower",
                           enabled=None if progress_bar else False)
            for lo in range(0, src.n_showers, batch_size):
                hi = min(lo + batch_size, src.n_showers)
                dst.append(src.read_points(lo, hi) if keep_points else src.read(lo, hi))
                bar.update(hi - lo)
            bar.close()
            return dst.n_written


def run(args: argparse.Namespace) -> int:
    n = convert(args.input, args.output, args.to, args.geometry, args.overwrite, args.lossy,
                args.sparse, args.batch_size, not args.no_progress)
    print(f"wrote {n} showers to {args.output} ({args.to})")
    return 0
