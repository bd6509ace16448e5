"""The report folder is written into a staging folder ``.NAME.part/`` next to it and
renamed into place only when complete, so a failed or killed run never leaves a
half-written report.

:func:`staged_report_dir` checks the output before any work, removes the staging folder
of an earlier run that was killed (and says so), and on every failure path removes its
own staging folder.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from caloforge.errors import CaloforgeError, InputError, OutputExistsError


def staging_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.part")


def check_report_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output that is a file, or a non-empty folder without ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("the report path is a file, not a folder (the report is a folder "
                         "of files: give a new or folder path)", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError("report folder exists and is not empty (use --overwrite)", out)
    return out


@contextlib.contextmanager
def staged_report_dir(out: str | Path, overwrite: bool, notes: list[str]
                      ) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out``.

    A stale staging folder (from a killed run) is removed and reported in ``notes``.
    OSErrors (read-only folder, full disk) become one-line :class:`CaloforgeError`\\ s;
    the staging folder is removed on any exception, including KeyboardInterrupt.
    """
    out = check_report_dir(out, overwrite)
    tmp = staging_dir(out)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
            notes.append(f"removed the temporary folder {tmp} left by an interrupted run")
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise CaloforgeError(f"cannot create the report folder: {_why(exc)}", out) from None
    try:
        yield tmp
        _replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CaloforgeError(f"cannot write the report: {_why(exc)}", out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` onto ``out``; an old report stays until the new one is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
