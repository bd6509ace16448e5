"""What the operating system refuses (full disk, read-only folder, quota, failing disk),
turned into one clear line; and a file that never lets HDF5 see a failed write.

Why the latter: when a write fails inside HDF5 (disk full), the library is left in a state
in which closing the dataset or file, or even the interpreter's exit, crashes the process
(segmentation fault, exit 139) and no cleanup runs.  :class:`GuardedFile` is handed to
h5py as a Python file object: it records the first failed write and accepts the rest, so
HDF5 always closes cleanly; the writer then raises the recorded error and the temporary
file is removed.
"""

from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path

from caloforge.errors import ResourceError

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (failing disk or network file system?)",
    errno.EFBIG: "file too large for this file system",
    errno.EMFILE: "too many open files",
    errno.ENAMETOOLONG: "file name too long",
}
# h5py reports HDF5's low-level failures as OSError or RuntimeError with the errno and the
# file name only inside the message text, e.g. "... filename = '/x.h5', ..., errno = 28".
_H5_ERRNO = re.compile(r"\berrno = (\d+)")
_H5_NAME = re.compile(r"\b(?:file)?name = '([^']*)'")


def system_error_code(exc: BaseException) -> int | None:
    """The errno behind an OSError, or behind an h5py error that wraps one; else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    if not code:
        m = _H5_ERRNO.search(str(exc))
        code = int(m.group(1)) if m else None
    return code or None


def as_resource_error(exc: BaseException, path: str | Path | None = None
                      ) -> ResourceError | None:
    """One-line :class:`ResourceError` for an OS-level failure (naming ``path``, else the
    file the error names, mapped from a temporary to its output); None if ``exc`` is not
    an OS-level failure."""
    from caloforge.utils.atomic import target_of

    code = system_error_code(exc)
    if code is None:
        return None
    if path is None:
        path = getattr(exc, "filename", None)
        if path is None:
            m = _H5_NAME.search(str(exc))
            path = m.group(1) if m else None
    reason = _REASONS.get(code) or os.strerror(code).lower()
    return ResourceError(reason, None if path is None else target_of(path))


class GuardedFile(io.RawIOBase):
    """A binary file opened for writing whose failed writes are recorded, not raised.

    Pass it to ``h5py.File``; call :meth:`raise_if_failed` after each batch and after
    closing the HDF5 file.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._file = open(self.path, "w+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        return self._file.readinto(buffer)

    def write(self, data) -> int:  # noqa: ANN001 - any bytes-like object
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._file.write(view[done:])
            except OSError as exc:
                self.error = exc
        return len(view)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._file.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return self._file.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        if not self.closed:
            try:
                self._file.close()
            except OSError as exc:
                self.error = self.error or exc
        super().close()

    def raise_if_failed(self, target: str | Path) -> None:
        """Raise the first failed write as a :class:`ResourceError` naming ``target``."""
        if self.error is not None:
            raise as_resource_error(self.error, target) or ResourceError(
                f"write failed: {self.error}", target)
