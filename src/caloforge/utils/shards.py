"""Splitting a run of n showers into N shards: shard i holds showers [i*n/N, (i+1)*n/N).

Every command that splits a run (``simulate --shard``, ``generate --shard``) uses these, so
shards of one run always tile it the same way and ``merge`` can check the cover.
"""

from __future__ import annotations

from caloforge.errors import InputError


def parse_shard_spec(text: str, option: str = "--shard") -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)``, checked: integers with 0 <= i < N.

    >>> parse_shard_spec("1/4")
    (1, 4)
    """
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"{option} expects i/N (integers, 0 <= i < N), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"{option} {text!r}: shard out of range (use i/N with 0 <= i < N)")
    return i, n


def shard_range(n: int, shard: int, n_shards: int) -> tuple[int, int]:
    """Global shower indices ``[start, stop)`` of shard ``shard`` (0-based) of ``n_shards``.

    >>> shard_range(10, 2, 3)
    (6, 10)
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise InputError(f"shard {shard}/{n_shards} out of range (use i/N with 0 <= i < N)")
    if n_shards > n:
        raise InputError(f"shard {shard}/{n_shards}: more shards than showers ({n}), "
                         "some shards would be empty")
    return n * shard // n_shards, n * (shard + 1) // n_shards
