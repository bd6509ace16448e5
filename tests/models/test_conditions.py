"""The condition space a model declares: fitted from its training conditions, saved in
model.yaml, and enforced on every request with one message naming the condition."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from caloforge.data import Conditions
from caloforge.errors import ConfigError, InputError
from caloforge.models.conditioning import ConditionSpace

E_RANGE = (1e4, 1e5)


def _angled(n=50, seed=0, phi=True):
    rng = np.random.default_rng(seed)
    return Conditions(rng.uniform(*E_RANGE, n), theta=np.radians(rng.uniform(0, 40, n)),
                      phi=rng.uniform(0, 2 * math.pi, n) if phi else None,
                      particle=np.full(n, 22))


def test_fit_ranges_for_inputs_and_fixed_values_for_constants():
    space = ConditionSpace.fit(_angled(), ("theta", "phi"), "m")
    assert set(space.ranges) == {"theta", "phi"}
    assert space.ranges["theta"][1] <= math.radians(40)
    assert space.fixed == {"impact": [0.0, 0.0], "particle": 22}
    assert space.inputs == ["phi", "theta"]
    normal = ConditionSpace.fit(Conditions(np.full(3, 1e4), theta=np.zeros(3)), (), "m")
    assert normal.ranges == {} and normal.fixed["theta"] == 0.0
    with pytest.raises(ConfigError, match="vary in theta but model 'm' cannot"):
        ConditionSpace.fit(_angled(), (), "m")
    with pytest.raises(ConfigError, match="mix particles"):
        ConditionSpace.fit(Conditions(np.full(2, 1e4), particle=[22, 11]), (), "m")


def test_round_trip_and_legacy_default():
    space = ConditionSpace.fit(_angled(), ("theta", "phi"), "m")
    assert ConditionSpace.from_dict(space.to_dict()) == space
    legacy = ConditionSpace.from_dict(None)  # model.yaml written before conditions existed
    assert legacy.ranges == {} and legacy.fixed["theta"] == 0.0
    with pytest.raises(ConfigError, match="malformed"):
        ConditionSpace.from_dict({"ranges": {"theta": 3}})


def test_ranges_are_enforced_unless_extrapolating():
    space = ConditionSpace(ranges={"theta": (0.0, math.radians(40))}, fixed={"phi": 0.0})
    ok = Conditions([2e4, 5e4], theta=np.radians([0.0, 40.0]))
    space.check(ok, "m", E_RANGE)
    far = Conditions([2e4], theta=np.radians([60.0]))
    with pytest.raises(InputError, match=r"theta values lie outside the trained range 0 deg "
                                         r"to 40 deg of model 'm' \(e.g. 60 deg\)"):
        space.check(far, "m", E_RANGE)
    with pytest.warns(UserWarning, match="extrapolating"):
        space.check(far, "m", E_RANGE, allow_extrapolation=True)
    with pytest.raises(InputError, match="incident_energy"):
        space.check(Conditions([5e5]), "m", E_RANGE)
    # trained on theta but at one azimuth: another phi is refused off the normal only
    with pytest.raises(InputError, match="not trained on phi"):
        space.check(Conditions([2e4], theta=[0.3], phi=[1.0]), "m", E_RANGE)
    space.check(Conditions([2e4], theta=[0.0], phi=[1.0]), "m", E_RANGE)
    space.check(Conditions([2e4], theta=[0.3], phi=[2 * math.pi]), "m", E_RANGE)


def test_phi_ranges_wrap_and_full_circle_accepts_all():
    full = ConditionSpace(ranges={"theta": (0.0, 0.7), "phi": (0.0, 2 * math.pi - 1e-3)})
    full.check(Conditions([2e4] * 2, theta=[0.3, 0.3], phi=[-3.0, 9.0]), "m", E_RANGE)
    part = ConditionSpace(ranges={"theta": (0.0, 0.7), "phi": (-0.5, 0.5)})
    part.check(Conditions([2e4], theta=[0.3], phi=[2 * math.pi - 0.2]), "m", E_RANGE)
    with pytest.raises(InputError, match="phi values lie outside"):
        part.check(Conditions([2e4], theta=[0.3], phi=[2.0]), "m", E_RANGE)


def test_fixed_conditions_refuse_other_values():
    space = ConditionSpace(fixed={"theta": 0.0, "impact": [0.0, 0.0], "particle": 22})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space.check(Conditions([2e4], impact=[[0.0, 0.0]], particle=[22]), "m", E_RANGE)
    with pytest.raises(InputError, match=r"not trained on impact: .*impact = \(0 mm, 0 mm\)"):
        space.check(Conditions([2e4], impact=[[1e6, 0.0]]), "m", E_RANGE)
    with pytest.raises(InputError, match="trained on photon showers only .*electron"):
        space.check(Conditions([2e4], particle=[11]), "m", E_RANGE)
    with pytest.raises(InputError, match="NaN"):
        space.check(Conditions([2e4], theta=[np.nan]), "m", E_RANGE)
