"""One validator for every ``--device`` option (train, generate, evaluate)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from caloforge.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

KNOWN = "cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None, option: str = "--device") -> torch.device:
    """The torch device ``name`` if it exists on this machine, else a :class:`ConfigError`
    naming ``option`` and saying what is wrong.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if name is None or str(name).strip() == "":
        raise ConfigError(f"{option}: no device given (use {KNOWN})")
    try:
        dev = torch.device(str(name).strip())
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{option}: unknown device {str(name)!r} (use {KNOWN})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}: {name} requested but not available (no CUDA device "
                              "or driver on this machine, or torch built without CUDA)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{option}: {name} requested but this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{option}: {name} requested but not available (no Apple GPU)")
    elif dev.type != "cpu":
        raise ConfigError(f"{option}: unsupported device {str(name)!r} (use {KNOWN})")
    elif dev.index not in (None, 0):
        raise ConfigError(f"{option}: unknown device {str(name)!r} (use {KNOWN})")
    return dev
