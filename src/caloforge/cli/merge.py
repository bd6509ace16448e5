"""``caloforge merge OUT SHARD...``: join the shards of a run (or concatenate files).

The merged file's metadata is that of the inputs, minus the shard keys (see
:mod:`caloforge.cli._shards`), plus ``merged_from``, ``run_id``, ``run_size`` and
``complete``.  Values that differ between the inputs (a shard's own shower count or
timing) are kept per input under ``per_input_metadata``, never presented as the whole's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from caloforge.cli._options import add_no_progress, positive_int
from caloforge.cli._shards import (
    ShardInfo,
    check_same_run,
    coverage,
    format_spans,
    shard_info,
)
from caloforge.data.io import open_showers, write_showers
from caloforge.errors import InputError
from caloforge.utils.atomic import check_output_path
from caloforge.utils.progress import progress

#: metadata keys that describe one shard, replaced by those of the merged file
SHARD_KEYS = ("shard", "first_index", "stop_index", "index_ranges", "missing_ranges",
              "complete")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge", help="join the shards of a run (or concatenate shower files)",
        description="Join shower files of the same format and geometry into OUT, streaming. "
                    "Shards of one run (`caloforge simulate --shard i/N`) must come from the "
                    "same settings and seed, must not overlap and must together cover the "
                    "whole run; they are written in the order of their shower indices. "
                    "Files that are no shards are concatenated in the order given, and so "
                    "are whole runs with --concatenate (e.g. single-energy samples).")
    p.add_argument("output", metavar="OUT")
    p.add_argument("inputs", metavar="SHARD", nargs="+")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-partial", action="store_true",
                   help="merge shards that do not cover the whole run; OUT records the "
                        "covered and missing index ranges and is marked incomplete")
    p.add_argument("--concatenate", action="store_true",
                   help="join the inputs one after another in the order given, whatever "
                        "runs they come from (each input's run settings are kept under "
                        "per_input_metadata)")
    p.add_argument("--batch-size", type=positive_int, default=1000,
                   help="showers per batch (default 1000)")
    add_no_progress(p)
    p.set_defaults(func=run)


def _describe(path: str) -> dict[str, Any]:
    with open_showers(path) as f:
        meta = f.metadata if isinstance(f.metadata, dict) else {}
        return {"path": path, "format": f.format, "geometry": f.geometry,
                "points": f.is_point_cloud, "n": f.n_showers, "meta": dict(meta),
                "shard": shard_info(path, meta, f.n_showers)}


def _plan(files: list[dict[str, Any]], allow_partial: bool, concatenate: bool = False
          ) -> tuple[list[tuple[str, int, int]], dict[str, Any]]:
    """Rows to copy, as (path, first row, stop row) in output order, and the metadata of
    the merged file."""
    metas = [{k: v for k, v in f["meta"].items() if k not in SHARD_KEYS} for f in files]
    differing = sorted({k for m in metas for k in m if any(k not in o or o[k] != m[k]
                                                           for o in metas)})
    # A value that differs between the inputs (e.g. a shard's own shower count or timing)
    # would be wrong for the merged file: keep one value per input instead.
    meta = {k: v for k, v in metas[0].items() if k not in differing}
    if differing:
        meta["per_input_metadata"] = {k: [m.get(k) for m in metas] for k in differing}
    meta["merged_from"] = [f["path"] for f in files]
    shards: list[ShardInfo | None] = [f["shard"] for f in files]
    if concatenate or all(s is None for s in shards):
        return [(f["path"], 0, f["n"]) for f in files], meta
    if any(s is None for s in shards):
        plain = next(f["path"] for f, s in zip(files, shards) if s is None)
        shard = next(s for s in shards if s is not None)
        raise InputError(f"records no run (not a shard), but {shard.path} is a shard of run "
                         f"{shard.run_id}", plain)
    runs = [s for s in shards if s is not None]
    check_same_run(runs)
    segments, covered, missing = coverage(runs)
    size = runs[0].run_size
    if missing and not allow_partial:
        n_missing = sum(b - a for a, b in missing)
        raise InputError(f"the shards miss {n_missing} of the run's {size} showers (indices "
                         f"{format_spans(missing)}); give the missing shards, or "
                         "--allow-partial to merge what is there")
    meta.update(run_id=runs[0].run_id, run_size=size, complete=not missing)
    if missing:
        meta.update(index_ranges=[list(s) for s in covered],
                    missing_ranges=[list(s) for s in missing])
    else:
        meta.update(first_index=0, stop_index=size)
    rows = [(s.path, row, row + b - a) for a, b, s, row in segments]
    return rows, meta


def merge(output: str, inputs: list[str], overwrite: bool = False, batch_size: int = 1000,
          progress_bar: bool = True, allow_partial: bool = False,
          concatenate: bool = False) -> tuple[int, dict[str, Any]]:
    """Merge ``inputs`` into ``output``; returns the number of showers written and the
    metadata of ``output``.

    Shards of a run must cover it completely unless ``allow_partial``; with
    ``concatenate`` the inputs are joined in the order given whatever their runs.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    check_output_path(output, overwrite)
    out_path = Path(output)
    # realpath, not Path.resolve: a symbolic-link loop must reach open_showers' clear error
    if any(os.path.realpath(p) == os.path.realpath(output)
           or (out_path.exists() and Path(p).exists() and out_path.samefile(p))
           for p in inputs):
        raise InputError("the output is also an input", output)
    files = [_describe(p) for p in inputs]
    if not any(f["n"] for f in files):  # a script must not take an empty output for work done
        if len(inputs) == 1:
            raise InputError("holds no showers: nothing to merge", inputs[0])
        raise InputError(f"none of the {len(inputs)} inputs holds a shower: nothing to merge")
    ref = files[0]
    for f in files[1:]:
        for key in ("format", "geometry", "points"):
            if f[key] != ref[key]:
                raise InputError(f"{key} {f[key]!r} differs from {ref[key]!r} of {ref['path']}",
                                 f["path"])
    rows, meta = _plan(files, allow_partial, concatenate)
    bar = progress(total=sum(hi - lo for _, lo, hi in rows), desc="merging", unit="shower",
                   enabled=None if progress_bar else False)
    with write_showers(output, ref["format"], ref["geometry"], overwrite=overwrite,
                       metadata=meta) as out:
        for path, first, stop in rows:
            with open_showers(path) as src:
                read = src.read_points if ref["points"] else src.read
                for lo in range(first, stop, batch_size):
                    hi = min(lo + batch_size, stop)
                    out.append(read(lo, hi))
                    bar.update(hi - lo)
        written = out.n_written
    with contextlib.suppress(Exception):
        bar.close()
    return written, meta


def run(args: argparse.Namespace) -> int:
    n, meta = merge(args.output, args.inputs, args.overwrite, args.batch_size,
                    progress_bar=not args.no_progress, allow_partial=args.allow_partial,
                    concatenate=args.concatenate)
    print(f"merged {len(args.inputs)} files, {n} showers, into {args.output}")
    if meta.get("complete") is False:
        missing = [tuple(s) for s in meta["missing_ranges"]]
        print(f"incomplete run: showers {format_spans(missing)} of {meta['run_size']} missing")
    return 0
