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

from caloforge import __version__
from caloforge.errors import CaloforgeError, Terminated
from caloforge.utils.safe_io import as_resource_error, defer_interrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caloforge",
        description="Generative fast simulation of calorimeter showers: simulate reference "
                    "showers, train generative models, generate, evaluate, export.")
    parser.add_argument("--version", action="version", version=f"caloforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGINT as exceptions, so that cleanup code runs (a SIGTERM's default
    action kills without it).  Deferred while HDF5 is writing through a guarded file."""
    if signum == signal.SIGTERM:
        # Later SIGTERMs are ignored so that the cleanup the first one started can finish.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        exc: KeyboardInterrupt = Terminated(f"terminated by signal {signum}")
    else:
        exc = KeyboardInterrupt()
    if not defer_interrupt(frame, exc):
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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"caloforge {args.command}"
    handled = (signal.SIGTERM, signal.SIGINT)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in handled}
    if main_thread:
        for s in handled:
            signal.signal(s, _on_signal)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe must fail here, inside the handlers below
        return code
    except CaloforgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
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
        if main_thread:
            for s, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot restore
                    signal.signal(s, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
