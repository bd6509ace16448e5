"""Stopping a training cleanly on SIGINT (Ctrl-C) and SIGTERM (what batch systems send
before they kill a job).

The signal handler only records the request; the loop stops at the next boundary
between two steps and writes a checkpoint there.  Stopping inside a step would store
a half-updated state (an optimiser stepped, the noise generator advanced for a step
whose results are lost), and a resumed run would then differ from an uninterrupted one.
A second signal of the same kind restores the previous handler, so pressing Ctrl-C twice
aborts at once (without a checkpoint for the unfinished step).

>>> import os, signal
>>> with StopRequest() as stop:
...     os.kill(os.getpid(), signal.SIGTERM)
...     stop.signum == signal.SIGTERM
True
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A training stopped on a signal after a completed step, with a checkpoint written
    there (``checkpoint``); ``--resume`` continues it bit for bit."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; "
                         f"{where}; continue with --resume")

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + its number."""
        return 128 + int(self.signum)


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`signum` instead of ending
    the process.  Outside the main thread (where Python cannot install handlers) it does
    nothing and signals behave as usual."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signum:  # second time: give up waiting for the step to end
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        sys.stderr.write(f"\ncaloforge: {signal.Signals(signum).name} received - stopping "
                         f"after the current step with a checkpoint (send it again to abort "
                         f"at once)\n")
        sys.stderr.flush()

    def __bool__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                previous = signal.signal(s, self._handle)
                self._previous[s] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
