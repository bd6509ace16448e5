"""The ``caloforge`` command line.

Every subcommand is one module in this package with a ``register(subparsers)``
function that adds its parser and sets ``func`` (called with the parsed arguments,
returns an exit code).  Adding a command means adding a module; nothing here changes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading
from types import FrameType
from typing import NoReturn

from caloforge import __version__
from caloforge.errors import CaloforgeError, Terminated
from caloforge.utils.safe_io import (
    as_resource_error,
    defer_interrupt,
    note_interrupt,
    pending_interrupt,
)


class OneLineParser(argparse.ArgumentParser):
    """Refuses a bad option with one line, ``caloforge CMD: error: MESSAGE`` (exit 2), as
    every other error of the CLI reads; the usage stays available through ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="caloforge",
        description="Generative fast simulation of calorimeter showers: simulate reference "
                    "showers, train generative models, generate, evaluate, export.")
    parser.add_argument("--version", action="version", version=f"caloforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[command]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM, SIGHUP and SIGINT as exceptions, so that cleanup code runs (the default
    action of the first two kills without it).  Deferred while HDF5 is writing through a
    guarded file."""
    if signum == signal.SIGINT:
        exc: KeyboardInterrupt = KeyboardInterrupt()
    else:
        # Later signals are ignored so that the cleanup the first one started can finish.
        signal.signal(signum, signal.SIG_IGN)
        exc = Terminated(signum)
    note_interrupt(exc)
    if not defer_interrupt(frame, exc):
        raise exc


def _retry_swallowed_interrupt(info: sys.UnraisableHookArgs) -> None:
    """Python ignores (and prints) exceptions raised in a __del__ or weakref callback; if
    our signal's exception landed there, print nothing and raise it again shortly."""
    if info.exc_value is not None and info.exc_value is pending_interrupt():
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    sys.__unraisablehook__(info)


def _on_retry_alarm(signum: int, frame: FrameType | None) -> None:
    exc = pending_interrupt()  # None once a guarded file has raised it
    if exc is not None and not defer_interrupt(frame, exc):
        raise exc


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (``caloforge info f.h5 | head``): stop quietly.

    As the Python documentation advises, point stdout at devnull so that the interpreter's
    final flush does not raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand that refused them, as for any other option error
        command = getattr(args, "command", None)
        refuser = _subparser(parser, command) if command else parser
        refuser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"caloforge {args.command}"
    handlers = {signal.SIGTERM: _on_signal, signal.SIGHUP: _on_signal,
                signal.SIGINT: _on_signal, signal.SIGALRM: _on_retry_alarm}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in handlers}
    previous_hook = sys.unraisablehook
    if main_thread:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        sys.unraisablehook = _retry_swallowed_interrupt
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe must fail here, inside the handlers below
        return code
    except CaloforgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"{prog}: terminated ({signal.Signals(exc.signum).name})", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except Exception as exc:
        # Full disk, read-only folder, quota, I/O error -- also as h5py and safetensors wrap
        # them (RuntimeError, SafetensorError).  Anything else is a bug: traceback.
        err = as_resource_error(exc)
        if err is None:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    finally:
        note_interrupt(None)
        if main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.unraisablehook = previous_hook
            for s, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot restore
                    signal.signal(s, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
