"""The CaloChallenge classifier recipe and the stated classifier power."""

import math

import numpy as np
import pytest

from caloforge.errors import InputError
from caloforge.evaluation.calochallenge.classifier import (
    DenseInputs,
    LowLevelInputs,
    OfficialClassifierConfig,
    ScaledEnergies,
    _network,
    power_control,
    train_official_classifier,
)
from caloforge.evaluation.classifier import (
    VERDICT_FAIL,
    VERDICT_INCONCLUSIVE,
    VERDICT_PASS,
    classifier_power,
    min_detectable_auc,
    null_auc_std,
)

SMALL = OfficialClassifierConfig(n_hidden=32, epochs=6, batch_size=100, learning_rate=2e-3)


def test_official_architecture():
    import torch

    net = _network(10, OfficialClassifierConfig())
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (10, 2048), (2048, 2048), (2048, 2048), (2048, 1)]
    acts = [m for m in net if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 3 and all(a.negative_slope == 0.01 for a in acts)
    cfg = OfficialClassifierConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate) == (50, 1000, 2e-4)


def test_distorted_detected_and_seeded():
    rng = np.random.default_rng(1)
    a = DenseInputs(rng.normal(size=(1500, 5)))
    b_raw = rng.normal(size=(1500, 5))
    b_raw[:, 1] *= 2.0
    b = DenseInputs(b_raw)
    r1 = train_official_classifier(a, b, SMALL)
    r2 = train_official_classifier(a, b, SMALL)
    assert r1["auc"] > 0.6 and r1["jsd"] > 0.02
    assert r1["power_verdict"] == VERDICT_FAIL and r1["learned"]
    assert r1["auc"] == r2["auc"] and r1["jsd"] == r2["jsd"]
    assert r1["n_final"] == 600 and r1["n_selection"] == 600 and r1["n_train"] == 1800


def test_tiny_sample_is_inconclusive_never_pass():
    rng = np.random.default_rng(2)
    # 600 per class: the final split has 120 + 120 showers; a 2 % width change is far below
    # what such a classifier can detect, and its control (x 1.05 on 300 + 300 showers) too.
    a = DenseInputs(rng.normal(size=(600, 4)))
    b = DenseInputs(rng.normal(size=(600, 4)) * 1.02)
    ctl = power_control(a, SMALL, 1.05, energy_columns=np.array([0]))
    r = train_official_classifier(a, b, SMALL, control=ctl)
    assert r["power_verdict"] in (VERDICT_INCONCLUSIVE, VERDICT_FAIL)
    if not ctl["detected"] and r["auc"] < r["min_detectable_auc"]:
        assert r["power_verdict"] == VERDICT_INCONCLUSIVE


def test_power_verdict_logic():
    n = 1000
    mda = min_detectable_auc(n, n)
    assert mda == pytest.approx(0.5 + 2.4865 * null_auc_std(n, n), rel=1e-4)
    ln2 = math.log(2.0)
    # no power: flat validation loss, no control -> inconclusive
    r = classifier_power(0.5, n, n, ln2 + 1e-4, 0.5, n, n)
    assert r["power_verdict"] == VERDICT_INCONCLUSIVE and not r["learned"]
    # above the detectable AUC -> fail whatever the rest
    assert classifier_power(mda + 0.01, n, n, ln2, 0.5, n, n)["power_verdict"] == VERDICT_FAIL
    # control detected -> pass; control missed -> inconclusive
    ok = {"distortion": "x", "auc": 0.7, "min_detectable_auc": 0.55, "detected": True}
    bad = dict(ok, auc=0.51, detected=False)
    assert classifier_power(0.5, n, n, ln2, 0.5, n, n, ok)["power_verdict"] == VERDICT_PASS
    assert classifier_power(0.5, n, n, ln2, 0.5, n, n, bad)["power_verdict"] == \
        VERDICT_INCONCLUSIVE


def test_lowlevel_inputs_round_trip_and_scaling():
    low = LowLevelInputs(3, 4)
    e = np.array([[0.0, 1.5e-2, 2.0, 1e5], [1.0, 0, 0, 0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    e_inc = np.array([1e6, 1e3, 3e4])
    low.fill(0, e, e_inc)
    x = low.take(np.arange(3))
    np.testing.assert_allclose(x[:, 0], np.log10(e_inc))
    np.testing.assert_allclose(x[:, 1:], e / e_inc[:, None], rtol=2 ** -11)
    scaled = ScaledEnergies(low, 1.05).take(np.arange(3))
    np.testing.assert_allclose(scaled[:, 1:], 1.05 * x[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(scaled[:, 0], x[:, 0])


def test_too_few_for_splits():
    x = DenseInputs(np.zeros((100, 3)))
    with pytest.raises(InputError, match="at least 250"):
        train_official_classifier(x, x, SMALL)
