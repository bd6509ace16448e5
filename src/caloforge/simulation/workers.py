"""Run jobs in worker processes and hand back their results in job order.

``multiprocessing.Pool`` is not used on purpose: its ``terminate()`` can wait for ever when
a worker is stopped while it writes a large result (the pool's result thread then waits
for the rest of a message that never comes).  That left ``caloforge simulate --workers``
running after SIGTERM.  Here every worker has its own two pipes and only the calling
thread reads them, so stopping is always: kill the workers, close the pipes.  A worker
that dies (killed, out of memory) is reported as an error instead of being waited for.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from caloforge.errors import CaloforgeError

#: jobs handed to one worker before its results come back (one running, one queued)
JOBS_PER_WORKER = 2


def _exit_with_parent() -> None:
    """Exit as soon as the parent process dies, even by SIGKILL, also in the middle of a
    job (a worker waiting for work sees its task pipe close anyway)."""
    parent = mp.parent_process()
    if parent is None:  # pragma: no cover - always set for spawned workers
        return

    def wait_then_exit() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=wait_then_exit, daemon=True, name="parent-watch").start()


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _serve(tasks: Connection, results: Connection, func: Callable[[Any], Any]) -> None:
    """Worker main loop: run ``func`` on each ``(index, args)`` until ``None`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    _exit_with_parent()
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, args = task
        try:
            reply = (index, True, func(args))
        except Exception as exc:
            reply = (index, False, _sendable(exc))
        results.send(reply)


@dataclass
class _Worker:
    process: Any
    tasks: Connection
    results: Connection
    running: list[int] = field(default_factory=list)

    def died(self) -> CaloforgeError:
        self.process.join(timeout=5)
        return CaloforgeError(f"worker process {self.process.pid} died "
                              f"(exit code {self.process.exitcode})")


def _start(ctx: Any, func: Callable[[Any], Any], name: str) -> _Worker:
    task_read, task_write = ctx.Pipe(duplex=False)
    result_read, result_write = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_serve, args=(task_read, result_write, func), name=name,
                          daemon=True)
    process.start()
    # only the worker keeps these ends: its death then closes the result pipe (EOF)
    task_read.close()
    result_write.close()
    return _Worker(process, task_write, result_read)


def _stop(pool: list[_Worker], orderly: bool) -> None:
    for w in pool:
        if orderly:
            try:
                w.tasks.send(None)
            except OSError:
                pass
        else:
            w.process.kill()
    for w in pool:
        w.process.join(timeout=10)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=10)
        w.tasks.close()
        w.results.close()


def ordered_map(func: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> Iterator[Any]:
    """Yield ``func(job)`` for each job, in order, computed by up to ``workers`` spawned
    processes (``func`` must be importable: a module-level function).

    At most ``JOBS_PER_WORKER * workers`` results are in flight or held back, so memory
    stays bounded when the consumer is slower than the workers.  A worker's exception is
    raised here; leaving the generator early (an exception in the consumer, Ctrl-C,
    ``close()``) kills the workers at once."""
    ctx = mp.get_context("spawn")
    pool: list[_Worker] = []
    orderly = False
    try:
        for i in range(min(workers, len(jobs))):
            pool.append(_start(ctx, func, f"caloforge-worker-{i}"))
        window = JOBS_PER_WORKER * len(pool)
        held: dict[int, Any] = {}
        sent = 0
        for wanted in range(len(jobs)):
            while wanted not in held:
                for w in pool:
                    while (len(w.running) < JOBS_PER_WORKER and sent < len(jobs)
                           and sent < wanted + window):
                        w.tasks.send((sent, jobs[sent]))
                        w.running.append(sent)
                        sent += 1
                busy = {w.results: w for w in pool if w.running}
                for conn in wait(list(busy)):
                    w = busy[conn]
                    try:
                        index, ok, value = conn.recv()
                    except (EOFError, OSError):
                        raise w.died() from None
                    w.running.remove(index)
                    if not ok:
                        raise value
                    held[index] = value
            yield held.pop(wanted)
        orderly = True
    finally:
        _stop(pool, orderly)


__all__ = ["JOBS_PER_WORKER", "ordered_map"]
