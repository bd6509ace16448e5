"""``caloforge info FILE``: format, geometry, number of showers, conditions, sparsity."""

from __future__ import annotations

import argparse
import json
from typing import Any

from caloforge.cli._options import add_no_progress, non_negative_int
from caloforge.cli._shards import format_spans, shard_info
from caloforge.data.summary import format_summary, summarize
from caloforge.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a shower file",
                       description="Print format, geometry, number of showers, condition "
                                   "ranges, sparsity and size of a shower file, and which "
                                   "part of a run it holds if it is a shard.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--geometry", help="geometry name, if the file does not say")
    p.add_argument("--max-showers", type=non_negative_int, default=2000,
                   help="showers scanned for voxel statistics (0 = all; default 2000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_no_progress(p)
    p.set_defaults(func=run)


def describe_run(info: dict[str, Any]) -> str | None:
    """Which part of which run the file holds (None for a file that is no shard)."""
    meta = info["metadata"] if isinstance(info["metadata"], dict) else {}
    try:
        shard = shard_info(info["file"], meta, info["n_showers"])
    except InputError as exc:
        return str(exc)
    if shard is None:
        return None
    held = sum(b - a for a, b in shard.ranges)
    if held == shard.run_size:
        return f"{shard.run_id}, complete ({held} showers)"
    return (f"{shard.run_id}, part of it: indices {format_spans(shard.ranges)} of "
            f"0..{shard.run_size - 1}")


def run(args: argparse.Namespace) -> int:
    infos = [summarize(f, args.geometry, args.max_showers or None,
                       progress_bar=not args.no_progress)
             for f in args.files]
    for info in infos:
        info["run"] = describe_run(info)
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2, default=str))
    else:
        print("\n\n".join(format_summary(i) + (f"\nrun         {i['run']}" if i["run"] else "")
                          for i in infos))
    return 0
