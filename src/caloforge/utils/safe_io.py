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
from types import FrameType

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
# file name only inside the message text, e.g. "... filename = '/x.h5', ..., errno = 28";
# safetensors (Rust) as SafetensorError "... No space left on device (os error 28)".
_H5_ERRNO = re.compile(r"\berrno = (\d+)|\(os error (\d+)\)")
_H5_NAME = re.compile(r"\b(?:file)?name = '([^']*)'")


def system_error_code(exc: BaseException) -> int | None:
    """The errno behind an OSError, or behind an h5py / safetensors error that wraps one;
    else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    if not code:
        m = _H5_ERRNO.search(str(exc))
        code = int(m.group(1) or m.group(2)) if m else None
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


# A signal handler's exception can land where Python ignores exceptions (a __del__ or a
# weakref callback): it is then printed and lost.  The CLI's handler therefore also notes
# it here, and every guarded file raises it at its next safe point (after a batch).
_pending_interrupt: BaseException | None = None


def note_interrupt(exc: BaseException | None) -> None:
    """Record (or, with None, forget) an interrupt for guarded files to raise."""
    global _pending_interrupt
    _pending_interrupt = exc


def pending_interrupt() -> BaseException | None:
    """The interrupt noted and not yet raised at a safe point, if any."""
    return _pending_interrupt


def _take_pending_interrupt() -> BaseException | None:
    global _pending_interrupt
    exc, _pending_interrupt = _pending_interrupt, None
    return exc


class GuardedFile(io.RawIOBase):
    """A binary file opened for writing whose failed writes are recorded, not raised.

    Pass it to ``h5py.File``; call :meth:`raise_if_failed` after each batch and after
    closing the HDF5 file.  Ctrl-C and SIGTERM are deferred the same way: an exception
    raised inside a callback from HDF5 would be swallowed by h5py or leave HDF5 with a
    failed write, so a :class:`KeyboardInterrupt` that arrives during a read or write is
    recorded and re-raised by :meth:`raise_if_failed`.  Reads and writes use explicit
    offsets (``pread``/``pwrite``), so an operation interrupted halfway is simply redone.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._pos = 0
        self.error: OSError | None = None
        self.interrupt: BaseException | None = None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)

    def _shielded(self, operation):  # noqa: ANN001, ANN202 - a retry-safe closure
        while True:
            try:
                return operation()
            except KeyboardInterrupt as exc:
                self.interrupt = self.interrupt or exc

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        view = memoryview(buffer).cast("B")
        data = self._shielded(lambda: os.pread(self._fd, len(view), self._pos))
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def _write_all(self, view: memoryview, offset: int) -> None:
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            self.error = exc

    def write(self, data) -> int:  # noqa: ANN001 - any bytes-like object
        view = memoryview(data).cast("B")
        if self.error is None:
            start = self._pos
            self._shielded(lambda: self._write_all(view, start))
        self._pos += len(view)
        return len(view)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = os.fstat(self._fd).st_size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        try:
            self._shielded(lambda: os.ftruncate(self._fd, size))
        except OSError as exc:
            self.error = self.error or exc
        return size

    def flush(self) -> None:
        pass  # unbuffered

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            except OSError as exc:
                self.error = self.error or exc
        super().close()

    def raise_if_failed(self, target: str | Path) -> None:
        """Re-raise a deferred interrupt, or the first failed write as a
        :class:`ResourceError` naming ``target``."""
        if self.interrupt is None:
            self.interrupt = _take_pending_interrupt()
        if self.interrupt is not None:
            raise self.interrupt
        if self.error is not None:
            raise as_resource_error(self.error, target) or ResourceError(
                f"write failed: {self.error}", target)


def defer_interrupt(frame: FrameType | None, exc: BaseException) -> bool:
    """For signal handlers: if the signal arrived while HDF5 was calling back into a
    :class:`GuardedFile`, hand ``exc`` to that file (it re-raises it after the batch) and
    return True; raising it there would corrupt the write."""
    while frame is not None:
        code = frame.f_code
        owner = frame.f_locals.get("self") if code.co_filename == __file__ else None
        # Raising in __init__ or raise_if_failed is safe: HDF5 is not calling back there.
        if isinstance(owner, GuardedFile) and code.co_name not in ("__init__",
                                                                  "raise_if_failed"):
            owner.interrupt = owner.interrupt or exc
            return True
        frame = frame.f_back
    return False
