"""Classifier two-sample test: ~0.5 for identical samples, high for distorted, seeded."""

import numpy as np
import pytest

from caloforge.errors import InputError
from caloforge.evaluation.classifier import (
    ClassifierConfig,
    classifier_test,
    null_auc_std,
    platt_scaling,
)

FAST = ClassifierConfig(hidden=(32, 32), max_epochs=8, patience=3, learning_rate=2e-3)


def test_identical_samples_auc_half():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1500, 6)), rng.normal(size=(1500, 6))
    r = classifier_test(a, b, FAST)
    assert abs(r["auc"] - 0.5) < 4 * r["auc_null_std"]
    assert abs(r["jsd"]) < 0.03
    assert r["n_test"] == 600


def test_distorted_samples_detected_and_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(1500, 6)), rng.normal(size=(1500, 6))
    b[:, 2] *= 2.5  # widened in one feature
    r1 = classifier_test(a, b, FAST)
    r2 = classifier_test(a, b, FAST)
    assert r1["auc"] > 0.6 and r1["jsd"] > 0.03
    assert r1["auc"] == r2["auc"] and r1["jsd"] == r2["jsd"]  # same seed, same result


def test_float16_inputs_with_transform():
    rng = np.random.default_rng(2)
    a = rng.exponential(1.0, (600, 20)).astype(np.float16)
    b = (rng.exponential(1.0, (600, 20)) * 1.5).astype(np.float16)
    r = classifier_test(a, b, FAST, transform=np.log1p)
    assert r["auc"] > 0.7


def test_too_few_showers():
    x = np.zeros((100, 3))
    with pytest.raises(InputError, match="at least 250"):
        classifier_test(x, x, FAST)


def test_platt_and_null_std():
    rng = np.random.default_rng(3)
    z = rng.normal(size=20000)
    y = (rng.uniform(size=20000) < 1 / (1 + np.exp(-(2 * z - 0.5)))).astype(float)
    a, b = platt_scaling(z, y)
    assert a == pytest.approx(2.0, rel=0.1) and b == pytest.approx(-0.5, abs=0.1)
    assert null_auc_std(100, 100) == pytest.approx(np.sqrt(201 / 120000))
