"""Run configuration as data: dataclasses that round-trip through plain dicts and YAML.

Unknown keys are an error that names them, so a typo in a config file never silently
falls back to a default.

>>> from dataclasses import dataclass
>>> @dataclass
... class C(Config):
...     width: int = 8
>>> C.from_dict({"width": 16}).width
16
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Self

import yaml

from caloforge.errors import ConfigError


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type (int/float/bool/str/tuple/list/Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a valid {tp}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass
class Config:
    """Base of all configuration dataclasses (flat fields of simple types)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str | None = None) -> Self:
        """Build from a dict; unknown keys raise :class:`ConfigError` naming them."""
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(names))})", source)
        try:
            kwargs = {k: _coerce(v, hints[k], k) for k, v in data.items()}
        except ConfigError as exc:
            raise ConfigError(str(exc), source) from None
        obj = cls(**kwargs)
        obj.validate()
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **changes: Any) -> Self:
        """Copy with some fields changed (validated like :meth:`from_dict`)."""
        merged = self.to_dict()
        merged.update(changes)
        return type(self).from_dict(merged)

    def validate(self) -> None:
        """Subclasses raise :class:`ConfigError` for invalid values."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v != v:
                raise ConfigError(f"config key {f.name!r} is NaN")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.from_dict(read_yaml(path), source=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file does not exist", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}".splitlines()[0], path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config file must hold a mapping of keys to values", path)
    return data


def positive(cfg: Config, *names: str) -> None:
    """Raise :class:`ConfigError` unless all ``names`` are > 0."""
    for n in names:
        if not getattr(cfg, n) > 0:
            raise ConfigError(f"config key {n!r} must be > 0, got {getattr(cfg, n)!r}")


@dataclasses.dataclass
class ModelConfig(Config):
    """Base of the architectures' configs.

    ``conditions``: conditions beyond the incident energy that the networks take as
    inputs (``theta``, ``phi``); declared from the training data
    (:meth:`~caloforge.models.base.GenerativeModel.conditions_from_data`), not by hand.
    """

    conditions: tuple[str, ...] = ()
