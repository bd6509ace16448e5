"""Write-to-temporary-then-rename, so that a failed run never leaves a partial file.

Temporaries live next to their target as ``.NAME.HOST-PID-RANDOM.part``.  The pid lets the
next run that writes the same output tell a temporary of a killed run (``kill -9``, power
loss: no cleanup code ran) from one a live run is still writing, and remove only the former.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from caloforge.errors import InputError, OutputExistsError, ResourceError

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{6}\.part$")
_PLAIN_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.[0-9a-f]{8})?\.part$")  # older / other writers


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name next to ``path`` that records this host and process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.part")


def target_of(path: str | Path) -> Path:
    """The output a temporary belongs to (``path`` itself if it is not one of ours)."""
    path = Path(path)
    m = _TEMP.match(path.name) or _PLAIN_TEMP.match(path.name)
    return path.with_name(m["name"]) if m else path


def _process_started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after time ``when`` (then it cannot have written a
    file last modified at ``when``: the pid was reused).  False where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                    .splitlines() if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return boot + ticks / os.sysconf("SC_CLK_TCK") > when + 2.0


def _writer_alive(pid: int, temp: Path) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        return not _process_started_after(pid, temp.lstat().st_mtime)
    except FileNotFoundError:
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of ``path`` whose writer (on this host) is dead; say so on stderr.

    Temporaries of live runs and of runs on other hosts (shared file systems) are left.
    """
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for cand in candidates:
        m = _TEMP.match(cand.name)
        if not m or m["name"] != path.name or m["host"] != _host():
            continue
        if not _writer_alive(int(m["pid"]), cand):
            _remove(cand)
            removed.append(cand)
    if removed:
        print(f"caloforge: removed {len(removed)} temporary file(s) of {path} left by an "
              f"interrupted run: {', '.join(p.name for p in removed)}", file=sys.stderr)
    return removed


def _not_writable_reason(folder: Path) -> str | None:
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output that is a directory, exists (unless ``overwrite``), or lies in a
    missing or unwritable folder; remove temporaries left there by killed runs."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a directory; give the output a file name (e.g. "
                         f"{path / 'showers.h5'})", path)
    if path.exists() and not overwrite:
        raise OutputExistsError("output exists (use --overwrite to replace it)", path)
    parent = path.parent
    if not parent.exists():
        raise InputError(f"output folder {parent} does not exist", path)
    if not parent.is_dir():
        raise InputError(f"{parent} is not a folder", path)
    reason = _not_writable_reason(parent)
    if reason:
        raise ResourceError(f"cannot write into {parent}: {reason}", path)
    clean_stale_temporaries(path)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception (including Ctrl-C and SIGTERM, which the CLI turns into
    :class:`KeyboardInterrupt`) the temporary file is removed and ``path`` is left untouched.
    """
    path = check_output_path(path, overwrite)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path``; move it onto ``path`` on success,
    replacing an existing folder (with ``overwrite``) only once the new one is complete."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("exists and is not a folder", path)
    if path.exists() and not overwrite:
        raise OutputExistsError("output folder exists (use --overwrite to replace it)", path)
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist", path)
    reason = _not_writable_reason(path.parent)
    if reason:
        raise ResourceError(f"cannot write into {path.parent}: {reason}", path)
    clean_stale_temporaries(path)
    tmp = temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = temp_path(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
