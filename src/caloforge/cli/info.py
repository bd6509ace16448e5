"""``caloforge info FILE``: format, geometry, number of showers, conditions, sparsity."""

from __future__ import annotations

import argparse
import json

from caloforge.cli._options import non_negative_int
from caloforge.data.summary import format_summary, summarize


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a shower file",
                       description="Print format, geometry, number of showers, condition "
                                   "ranges, sparsity and size of a shower file.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--geometry", help="geometry name, if the file does not say")
    p.add_argument("--max-showers", type=non_negative_int, default=2000,
                   help="showers scanned for voxel statistics (0 = all; default 2000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    infos = [summarize(f, args.geometry, args.max_showers or None, progress_bar=True)
             for f in args.files]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2, default=str))
    else:
        print("\n\n".join(format_summary(i) for i in infos))
    return 0
