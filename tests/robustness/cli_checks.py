"""Helpers for the bad-input tests of the CLI: run a command, check it failed cleanly.

(A plain module, not a conftest, so that other test folders' helpers cannot clash.)
"""

from __future__ import annotations

from pathlib import Path

from caloforge.cli import main


def run_cli(argv: list[str]) -> int:
    """``caloforge ARGV`` in-process; argparse's exit status for option errors."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refused an option
        return int(exc.code)


def error_line(stderr: str) -> str:
    """The one error line of a failed command (option errors too: no usage lines)."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    assert lines[0].startswith("caloforge") and ": error: " in lines[0], lines[0]
    return lines[0]


def expect_failure(capsys, argv: list, *words: str) -> str:
    """The command exits non-zero with one error line on stderr that contains every one
    of ``words`` (and no traceback); returns that line."""
    capsys.readouterr()
    rc = run_cli(argv)
    captured = capsys.readouterr()
    assert rc != 0, f"exit 0 for {argv}: {captured.out}"
    line = error_line(captured.err)
    for word in words:
        assert str(word) in line, f"{word!r} not in {line!r}"
    return line


def leftovers(folder: Path) -> list[str]:
    """Temporary files that a failed write left behind."""
    return sorted(p.name for p in Path(folder).rglob("*") if ".part" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content, to prove a failed run harmed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}
