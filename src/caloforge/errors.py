"""One exception family for everything caloforge reports to a user.

The CLI prints any :class:`CaloforgeError` as a single line on stderr and exits
non-zero; any other exception escaping a command is a bug in caloforge.
"""

from __future__ import annotations

from pathlib import Path


class CaloforgeError(Exception):
    """Base class of all errors caloforge raises on purpose."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(CaloforgeError):
    """A file or argument has the wrong content: missing keys, bad shapes, NaN, ..."""


class ConfigError(CaloforgeError):
    """A configuration names an unknown option or holds an invalid value."""


class GeometryError(CaloforgeError):
    """Unknown geometry, or data that does not fit the geometry it is used with."""


class GeometryMismatchError(GeometryError):
    """Two datasets (or a dataset and a model) live on different geometries."""


class FormatError(InputError):
    """A file is not of the format it claims (or that was detected), or is corrupt."""


class OutputExistsError(CaloforgeError):
    """The output path exists and overwriting was not asked for."""


class LossyConversionError(CaloforgeError):
    """A conversion would drop information the target format cannot hold."""


class ResourceError(CaloforgeError):
    """The system refused what a command needs: the disk is full, a folder is read-only or
    not ours, a quota is exceeded, a device is missing or failing."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what batch systems send before killing a job) or SIGHUP, raised as an
    exception so that cleanup code runs.  A :class:`KeyboardInterrupt` so that every
    handler written for Ctrl-C (removing temporary files, saving a checkpoint) also
    handles it; the CLI exits with 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"terminated by signal {self.signum}")
