"""What a model is trained on: which conditions it takes and over which ranges.

A model declares a :class:`ConditionSpace`, saved in its ``model.yaml``:

- ``ranges``: the conditions it takes as network inputs beyond the incident energy
  (``theta``, ``phi`` in rad; ``impact_x``, ``impact_y`` in mm) and their fitted ranges
  (the incident-energy range lives with the model's energy transform);
- ``fixed``: conditions that were constant in its training data (``theta`` = 0 is normal
  incidence, ``impact`` (0, 0), ``particle`` a PDG code).

:meth:`ConditionSpace.check` refuses anything else: a condition the model was not
trained on with another value than the fixed one, or a value outside a fitted range
(unless ``allow_extrapolation``), with one message naming the condition and the range.

At normal incidence (theta = 0) the azimuth phi does not change the direction, so phi
is accepted with any value there; models fed phi see the value given.

>>> import numpy as np
>>> from caloforge.data.batch import Conditions
>>> space = ConditionSpace(fixed={"theta": 0.0})
>>> space.check(Conditions([2e4], theta=[0.0], phi=[1.0]), "m", (1e4, 1e5))
>>> try:
...     space.check(Conditions([2e4], theta=[0.3]), "m", (1e4, 1e5))
... except InputError as exc:
...     print(exc)
model 'm' is not trained on theta: it generates at theta = 0 deg only (got 17.19 deg)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from caloforge.data.batch import PDG_NAMES, Conditions
from caloforge.errors import ConfigError, InputError

# Conditions an architecture may take as inputs beyond the incident energy.
ANGLES = ("theta", "phi")
# Normal incidence on the centre of the front face: what a model trained on data that
# does not record direction or impact point generates.
DEFAULT_FIXED: dict[str, Any] = {"theta": 0.0, "impact": [0.0, 0.0]}
ENERGY_SLACK = 0.01  # relative: a sample on [10, 100] GeV rarely reaches either bound
RANGE_SLACK = 0.01  # of the range width, for angles and impact points
ANGLE_TOL = 1e-6  # rad: "equal" for a fixed angle
IMPACT_TOL = 1e-3  # mm


def _unit(name: str) -> tuple[float, str]:
    """Display scale and unit of a condition (degrees for angles)."""
    if name in ANGLES:
        return 180.0 / math.pi, "deg"
    if name.startswith("impact"):
        return 1.0, "mm"
    return 1e-3, "GeV"


def _fmt(name: str, value: float) -> str:
    scale, unit = _unit(name)
    return f"{value * scale:.4g} {unit}"


def _columns(conditions: Conditions) -> dict[str, np.ndarray]:
    """Per-shower values of every range-able condition that is set."""
    cols = {}
    for name in ANGLES:
        v = getattr(conditions, name)
        if v is not None:
            cols[name] = v
    if conditions.impact is not None:
        cols["impact_x"], cols["impact_y"] = conditions.impact[:, 0], conditions.impact[:, 1]
    return cols


@dataclass
class ConditionSpace:
    """Ranges of the conditioning inputs and the fixed values of the other conditions."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FIXED))

    # ---- construction and persistence ----------------------------------------------------
    @classmethod
    def fit(cls, conditions: Conditions, inputs: tuple[str, ...], model: str = "model"
            ) -> ConditionSpace:
        """From training conditions: conditions in ``inputs`` that vary get a range, the
        constant ones are fixed; a varying condition the model cannot take is an error."""
        ranges: dict[str, tuple[float, float]] = {}
        fixed: dict[str, Any] = dict(DEFAULT_FIXED)
        for name, v in _columns(conditions).items():
            base = "impact" if name.startswith("impact") else name
            if len(v) and np.ptp(v) == 0:
                if base == "impact":
                    fixed["impact"] = [float(conditions.impact[0, 0]),
                                       float(conditions.impact[0, 1])]
                else:
                    fixed[name] = float(v[0])
                continue
            if base not in inputs:
                raise ConfigError(
                    f"the training showers vary in {base} but model {model!r} cannot be "
                    f"conditioned on it (it takes: {', '.join(('incident_energy', *inputs))})")
            ranges[name] = (float(v.min()), float(v.max()))
            fixed.pop(base, None)
        if conditions.particle is not None:
            kinds = np.unique(conditions.particle)
            if len(kinds) > 1:
                raise ConfigError(f"the training showers mix particles {kinds.tolist()}; "
                                  f"model {model!r} cannot be conditioned on the particle")
            fixed["particle"] = int(kinds[0])
        if "theta" in ranges and "phi" not in ranges and "phi" not in fixed:
            fixed["phi"] = 0.0
        return cls(ranges, fixed)

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": {k: [float(a), float(b)] for k, (a, b) in self.ranges.items()},
                "fixed": dict(self.fixed)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ConditionSpace:
        """From ``model.yaml``; models saved before conditions were recorded were trained at
        normal incidence on the centre of the front face (the defaults)."""
        if not d:
            return cls()
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in d.get("ranges", {}).items()}
            fixed = dict(d.get("fixed", {}))
        except (TypeError, ValueError, IndexError, AttributeError):
            raise ConfigError("model.yaml: malformed 'conditions'") from None
        return cls(ranges, fixed)

    @property
    def inputs(self) -> list[str]:
        """Conditions beyond the energy that the model takes (``theta``, ``phi``...)."""
        return sorted({"impact" if k.startswith("impact") else k for k in self.ranges})

    def describe(self, energy_range_mev: tuple[float, float]) -> str:
        """One line: 'incident_energy 10-100 GeV, theta 0-40 deg; fixed: ...'."""
        parts = [f"incident_energy {_fmt('e', energy_range_mev[0])}-"
                 f"{_fmt('e', energy_range_mev[1])}"]
        parts += [f"{k} {_fmt(k, a)}-{_fmt(k, b)}" for k, (a, b) in self.ranges.items()]
        fixed = [f"{k} = {_fmt(k, v) if k in ANGLES else v}" for k, v in self.fixed.items()]
        return ", ".join(parts) + (f"; fixed: {', '.join(fixed)}" if fixed else "")

    def complete(self, conditions: Conditions) -> Conditions:
        """``conditions`` with the fixed values filled in where none were given, so that a
        generated file states the conditions its showers stand for (theta = 0 for a model
        trained at normal incidence) and evaluation can compare them."""
        n = len(conditions)
        filled: dict[str, Any] = {}
        for name in ("theta", "phi"):
            if getattr(conditions, name) is None and name in self.fixed:
                filled[name] = np.full(n, float(self.fixed[name]))
            elif getattr(conditions, name) is None and name in self.ranges:
                filled[name] = np.zeros(n)  # what a model fed angles gets for one left out
        if conditions.impact is None and "impact" in self.fixed:
            filled["impact"] = np.tile(np.asarray(self.fixed["impact"], dtype=np.float64),
                                       (n, 1))
        if conditions.particle is None and "particle" in self.fixed:
            filled["particle"] = np.full(n, int(self.fixed["particle"]))
        return replace(conditions, **filled) if filled else conditions

    # ---- checking requests -----------------------------------------------------------------
    def check(self, conditions: Conditions, model: str, energy_range_mev: tuple[float, float],
              allow_extrapolation: bool = False) -> None:
        """Raise :class:`InputError` for conditions the model cannot generate."""
        conditions.validate()
        lo, hi = energy_range_mev
        e = conditions.incident_energy
        out = (e < lo * (1 - ENERGY_SLACK)) | (e > hi * (1 + ENERGY_SLACK))
        self._out_of_range("incident_energy", e, out, (lo, hi), model, allow_extrapolation)
        theta = conditions.theta if conditions.theta is not None else np.zeros(len(e))
        oblique = np.abs(theta) > ANGLE_TOL
        cols = _columns(conditions)
        for name in ANGLES:  # a model fed angles gets 0 for a direction left out
            if name in self.ranges and name not in cols:
                cols[name] = np.zeros(len(e))
        for name, v in cols.items():
            if name == "phi":
                v, rows = np.mod(v, 2 * math.pi), oblique  # phi only matters off the normal
            else:
                rows = np.ones(len(v), bool)
            if name in self.ranges:
                a, b = self.ranges[name]
                if name == "phi" and b - a >= 2 * math.pi * (1 - RANGE_SLACK):
                    continue  # trained on every azimuth
                slack = RANGE_SLACK * (b - a)
                vv = np.mod(v - a, 2 * math.pi) + a if name == "phi" else v
                out = rows & ((vv < a - slack) | (vv > b + slack))
                self._out_of_range(name, v, out, (a, b), model, allow_extrapolation)
            else:
                self._check_fixed(name, v, rows, model)
        if conditions.particle is not None and "particle" in self.fixed:
            want = int(self.fixed["particle"])
            bad = conditions.particle != want
            if bad.any():
                got = int(conditions.particle[bad][0])
                raise InputError(
                    f"model {model!r} is trained on {PDG_NAMES.get(want, want)} showers only "
                    f"(got particle {PDG_NAMES.get(got, got)})")

    def _check_fixed(self, name: str, v: np.ndarray, rows: np.ndarray, model: str) -> None:
        base = "impact" if name.startswith("impact") else name
        if base == "impact":
            want = float(self.fixed.get("impact", [0.0, 0.0])[name == "impact_y"])
            tol = IMPACT_TOL
        elif name == "phi" and "phi" not in self.fixed:
            want, tol = None, 0.0  # at theta = 0 only (checked below)
        else:
            want, tol = float(self.fixed.get(name, 0.0)), ANGLE_TOL
        if want is None:
            bad = rows
        elif name == "phi":
            d = np.abs(np.mod(v - want + math.pi, 2 * math.pi) - math.pi)
            bad = rows & (d > tol)
        else:
            bad = rows & (np.abs(v - want) > tol)
        if not bad.any():
            return
        got = float(v[bad][0])
        only = "any azimuth at theta = 0" if want is None else (
            f"{base} = ({', '.join(_fmt('impact', float(c)) for c in self.fixed['impact'])})"
            if base == "impact" else f"{name} = {_fmt(name, want)}")
        raise InputError(f"model {model!r} is not trained on {base}: it generates at "
                         f"{only} only (got {_fmt(name, got)})")

    @staticmethod
    def _out_of_range(name: str, v: np.ndarray, out: np.ndarray, rng: tuple[float, float],
                      model: str, allow_extrapolation: bool) -> None:
        if not out.any():
            return
        msg = (f"{int(out.sum())} requested {name} values lie outside the trained range "
               f"{_fmt(name, rng[0])} to {_fmt(name, rng[1])} of model {model!r} "
               f"(e.g. {_fmt(name, float(v[out][0]))})")
        if not allow_extrapolation:
            raise InputError(msg + "; pass --allow-extrapolation to generate anyway")
        warnings.warn(msg + "; extrapolating", stacklevel=3)
