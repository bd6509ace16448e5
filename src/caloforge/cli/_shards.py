"""Which part of which run a shower file holds: the shard metadata ``merge`` checks.

A file holding part of a run (``caloforge simulate --shard i/N``, and any other command
that splits a run into shards) records in its JSON metadata:

==============================  ==========================================================
``run_id``                      identity of the whole run (all settings and the seed)
``run_size``                    number of showers of the whole run
``first_index``, ``stop_index`` global indices ``[first, stop)`` of its showers in the run
``index_ranges`` (optional)     ``[[a, b], ...]`` instead, for a file holding several
                                disjoint ranges (a ``merge --allow-partial`` result)
==============================  ==========================================================

Files of ``caloforge simulate`` that carry no ``run_id`` are identified by their full
simulation settings (metadata key ``simulation``, which includes the seed and the run
size ``n``): the run id is a hash of those settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from caloforge.errors import InputError

Span = tuple[int, int]


@dataclass(frozen=True)
class ShardInfo:
    """The index ranges of a run that one file holds."""

    path: str
    run_id: str
    run_size: int
    ranges: tuple[Span, ...]  # sorted, disjoint, non-empty, half-open
    settings: dict[str, Any] | None  # the simulation settings, to explain a mismatch


def run_id_of(settings: dict[str, Any]) -> str:
    """Stable identity of a run defined by ``settings`` (JSON-serialisable)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _index(value: Any, what: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"corrupt shard metadata: {what} is {value!r}, not an index >= 0",
                         path)
    return value


def shard_info(path: str, meta: dict[str, Any], n_showers: int) -> ShardInfo | None:
    """The run and index ranges recorded in ``meta``; None for a file that is no shard."""
    settings = meta.get("simulation") if isinstance(meta.get("simulation"), dict) else None
    if "run_id" in meta:
        run_id = meta["run_id"]
        if not isinstance(run_id, str) or not run_id:
            raise InputError(f"corrupt shard metadata: run_id is {run_id!r}", path)
        run_size = _index(meta.get("run_size"), "run_size", path)
    elif settings is not None:
        run_id = run_id_of(settings)
        run_size = _index(settings.get("n"), "simulation.n", path)
    else:
        return None
    if "index_ranges" in meta:
        raw = meta["index_ranges"]
        if not isinstance(raw, list) or not all(isinstance(r, list) and len(r) == 2
                                                for r in raw):
            raise InputError(f"corrupt shard metadata: index_ranges is {raw!r}", path)
        spans = [(_index(a, "index_ranges", path), _index(b, "index_ranges", path))
                 for a, b in raw]
    else:
        first = _index(meta.get("first_index", 0), "first_index", path)
        spans = [(first, _index(meta.get("stop_index", first + n_showers), "stop_index",
                                path))]
    spans = sorted(s for s in spans if s[0] != s[1])
    for a, b in spans:
        if not a < b <= run_size:
            raise InputError(f"corrupt shard metadata: index range {a}:{b} outside the "
                             f"run's 0:{run_size}", path)
    for (_, b), (c, _) in zip(spans, spans[1:]):
        if c < b:
            raise InputError("corrupt shard metadata: its index ranges overlap", path)
    claimed = sum(b - a for a, b in spans)
    if claimed != n_showers:
        raise InputError(f"holds {n_showers} showers but its metadata says "
                         f"{claimed} (indices {format_spans(spans)}); truncated or edited?",
                         path)
    return ShardInfo(path, run_id, run_size, tuple(spans), settings)


def format_spans(spans: list[Span] | tuple[Span, ...]) -> str:
    """``[(0, 33), (67, 100)]`` -> ``"0..32, 67..99"`` (inclusive, as simulate prints)."""
    return ", ".join(f"{a}..{b - 1}" for a, b in spans) or "none"


def check_same_run(shards: list[ShardInfo]) -> None:
    """Refuse shards of different runs, naming what differs where that is known."""
    ref = shards[0]
    for s in shards[1:]:
        if s.run_id == ref.run_id and s.run_size == ref.run_size:
            continue
        if s.settings is not None and ref.settings is not None:
            keys = sorted(k for k in set(s.settings) | set(ref.settings)
                          if s.settings.get(k) != ref.settings.get(k))
            why = f"simulated with other settings (differs in: {', '.join(keys) or 'run id'})"
        else:
            why = f"run {s.run_id} of {s.run_size} showers, not run {ref.run_id} of " \
                  f"{ref.run_size}"
        raise InputError(f"not a shard of the same run as {ref.path}: {why}", s.path)


def coverage(shards: list[ShardInfo]) -> tuple[list[tuple[int, int, ShardInfo, int]],
                                               list[Span], list[Span]]:
    """Segments in index order, covered ranges (adjacent ones joined) and missing ranges.

    A segment is ``(start, stop, shard, first row in the shard's file)``.  Overlapping
    shards are refused.
    """
    segments = []
    for s in shards:
        row = 0
        for a, b in s.ranges:
            segments.append((a, b, s, row))
            row += b - a
    segments.sort(key=lambda seg: seg[0])
    for (_, b, s, _), (c, d, t, _) in zip(segments, segments[1:]):
        if c < b:
            raise InputError(f"showers {format_spans([(c, min(b, d))])} are also in {s.path} "
                             "(same shard given twice?)", t.path)
    covered: list[Span] = []
    for a, b, _, _ in segments:
        if covered and covered[-1][1] == a:
            covered[-1] = (covered[-1][0], b)
        else:
            covered.append((a, b))
    missing, pos = [], 0
    for a, b in covered + [(shards[0].run_size, shards[0].run_size)]:
        if a > pos:
            missing.append((pos, a))
        pos = b
    return segments, covered, missing
