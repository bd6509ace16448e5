"""The ``caloforge`` command line.

Every subcommand is one module in this package with a ``register(subparsers)``
function that adds its parser and sets ``func`` (called with the parsed arguments,
returns an exit code).  Adding a command means adding a module; nothing here changes.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from caloforge import __version__
from caloforge.errors import CaloforgeError


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CaloforgeError as exc:
        print(f"caloforge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"caloforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
