"""``caloforge merge OUT SHARD...``: concatenate shower files (e.g. simulation shards)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from caloforge.data.io import open_showers, write_showers
from caloforge.errors import InputError
from caloforge.utils.atomic import check_output_path
from caloforge.utils.progress import progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge", help="concatenate shower files (simulation shards)",
        description="Concatenate shower files of the same format and geometry into OUT, "
                    "streaming.  Shards of `caloforge simulate --shard` are checked to come "
                    "from the same configuration and seed, sorted by their shower indices "
                    "and must not overlap.")
    p.add_argument("output", metavar="OUT")
    p.add_argument("inputs", metavar="SHARD", nargs="+")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--batch-size", type=int, default=1000, help="showers per batch")
    p.set_defaults(func=run)


def _describe(path: str) -> dict:
    with open_showers(path) as f:
        return {"path": path, "format": f.format, "geometry": f.geometry,
                "points": f.is_point_cloud, "n": f.n_showers, "meta": dict(f.metadata)}


def merge(output: str, inputs: list[str], overwrite: bool = False, batch_size: int = 1000,
          progress_bar: bool = True) -> int:
    """Merge ``inputs`` into ``output``; returns the number of showers written."""
    check_output_path(output, overwrite)
    if any(Path(p).resolve() == Path(output).resolve() for p in inputs):
        raise InputError("the output is also an input", output)
    files = [_describe(p) for p in inputs]
    ref = files[0]
    for f in files[1:]:
        for key in ("format", "geometry", "points"):
            if f[key] != ref[key]:
                raise InputError(f"{key} {f[key]!r} differs from {ref[key]!r} of {ref['path']}",
                                 f["path"])
    sims = [f["meta"].get("simulation") for f in files]
    meta = dict(ref["meta"])
    if all(s is not None for s in sims):
        for f, s in zip(files, sims):
            if s != sims[0]:
                diff = sorted(k for k in set(s) | set(sims[0]) if s.get(k) != sims[0].get(k))
                raise InputError(f"simulated with a different configuration than "
                                 f"{ref['path']} (differs in: {', '.join(diff)})", f["path"])
        files.sort(key=lambda f: f["meta"].get("first_index", 0))
        for a, b in zip(files, files[1:]):
            if b["meta"].get("first_index", 0) < a["meta"].get("stop_index", 0):
                raise InputError(f"shower indices overlap with {a['path']} (same shard twice?)",
                                 b["path"])
        meta.update(first_index=files[0]["meta"].get("first_index", 0),
                    stop_index=files[-1]["meta"].get("stop_index", 0),
                    shard=None, merged_from=[f["path"] for f in files])
    elif any(s is not None for s in sims):
        raise InputError("some inputs are simulation shards and some are not")
    else:
        meta["merged_from"] = [f["path"] for f in files]
    total = sum(f["n"] for f in files)
    bar = progress(total=total, desc="merging", unit="shower",
                   enabled=None if progress_bar else False)
    with write_showers(output, ref["format"], ref["geometry"], overwrite=overwrite,
                       metadata=meta) as out:
        for f in files:
            with open_showers(f["path"]) as src:
                for lo in range(0, src.n_showers, batch_size):
                    hi = min(lo + batch_size, src.n_showers)
                    out.append(src.read_points(lo, hi) if f["points"] else src.read(lo, hi))
                    bar.update(hi - lo)
        written = out.n_written
    with contextlib.suppress(Exception):
        bar.close()
    return written


def run(args: argparse.Namespace) -> int:
    n = merge(args.output, args.inputs, args.overwrite, args.batch_size)
    print(f"merged {len(args.inputs)} files, {n} showers, into {args.output}")
    return 0
