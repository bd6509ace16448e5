"""The worker processes behind ``simulate(..., workers=N)``: order, errors, stopping."""

from __future__ import annotations

import math
import os
import time

import psutil
import pytest

from caloforge.errors import CaloforgeError
from caloforge.simulation.workers import JOBS_PER_WORKER, ordered_map


def _slow_square(x: int) -> int:
    # early jobs take longest, so results come back out of order
    time.sleep(0.05 * (x % 3 == 0) * (3 - min(x, 3)))
    return x * x


def _exit(code: int) -> None:
    os._exit(code)


def _live_workers() -> list[psutil.Process]:
    """Spawned workers still running (not multiprocessing's resource tracker)."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_results_come_in_job_order():
    jobs = list(range(13))
    assert list(ordered_map(_slow_square, jobs, 3)) == [x * x for x in jobs]
    assert _live_workers() == []


def test_fewer_jobs_than_workers_and_no_jobs():
    assert list(ordered_map(_slow_square, [4], 8)) == [16]
    assert list(ordered_map(_slow_square, [], 2)) == []


def test_a_worker_exception_is_raised_in_the_caller():
    with pytest.raises(ValueError, match="math domain error"):
        list(ordered_map(math.sqrt, [4.0, -1.0, 9.0], 2))
    assert _live_workers() == []


def test_a_dead_worker_is_an_error_not_a_hang():
    with pytest.raises(CaloforgeError, match=r"worker process \d+ died \(exit code 3\)"):
        list(ordered_map(_exit, [3], 1))
    assert _live_workers() == []


def test_leaving_early_kills_the_workers():
    jobs = [0.0] + [30.0] * (4 * JOBS_PER_WORKER)
    results = ordered_map(time.sleep, jobs, 2)
    assert next(results) is None
    assert len(_live_workers()) == 2
    start = time.monotonic()
    results.close()
    assert time.monotonic() - start < 15
    assert _live_workers() == []
