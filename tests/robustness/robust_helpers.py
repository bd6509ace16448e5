"""Shared helpers of the bad-input suite: run the CLI (in-process or as a real process)
and the checks every case shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from caloforge.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``caloforge ARGS`` in this process: exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_process(args: list[str], **kw) -> subprocess.CompletedProcess:
    """``caloforge ARGS`` as a separate process (segfaults and signals are real there)."""
    return subprocess.run([sys.executable, "-m", "caloforge.cli", *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), timeout=300, **kw)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "CALOFORGE_NO_PROGRESS": "1"}


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Non-zero exit, one line on stderr that names what is wrong, no traceback."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.endswith(".part")]
    assert not left, left
