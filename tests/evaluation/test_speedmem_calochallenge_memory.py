"""Memory-lean steps of the CaloChallenge protocol give the same numbers (issue 14).

The feature vector is filled block by block instead of concatenated, and the low-level
classifier inputs are read in a second pass when their classifier runs: both must be
exactly what the one-pass code produced.
"""

from __future__ import annotations

import numpy as np

from caloforge.data import Conditions, ShowerBatch
from caloforge.evaluation.calochallenge.classifier import LowLevelInputs
from caloforge.evaluation.calochallenge.features import (
    LayerLayout,
    compute_features,
    dataset_spec,
)
from caloforge.evaluation.calochallenge.protocol import _low_level_inputs, _Sample


def _showers(n: int, seed: int) -> ShowerBatch:
    rng = np.random.default_rng(seed)
    lay = LayerLayout("calochallenge-2")
    e = (rng.exponential(2.0, (n, lay.n_voxels)) * (rng.random((n, lay.n_voxels)) < 0.1))
    return ShowerBatch("calochallenge-2", e.astype(np.float32),
                       Conditions(rng.uniform(1e3, 1e6, n)))


def test_feature_vector_equals_the_concatenated_blocks():
    lay = LayerLayout("calochallenge-2")
    b = _showers(40, 1)
    f = compute_features(b.energies, b.incident_energy, lay)
    expected = np.concatenate([
        np.log10(f.e_inc)[:, None], np.log10(f.e_layer + 1e-8),
        f.ec_x / 1e2, f.ec_y / 1e2, f.width_x / 1e2, f.width_y / 1e2,
        np.log10(f.e_tot + 1e-8)[:, None], f.sparsity, f.ec_r / 1e2, f.width_r / 1e2], axis=1)
    got = f.vector()
    assert got.shape == expected.shape == (40, lay.n_features)
    assert np.array_equal(got, expected)


def test_second_pass_low_level_inputs_equal_one_pass_filling():
    spec, lay = dataset_spec("2"), LayerLayout("calochallenge-2")
    b = _showers(30, 2)
    rows = 7  # several chunks
    one_pass = LowLevelInputs(len(b), lay.n_voxels)
    sample = _Sample(b, spec, "reference")
    for lo, e, e_inc in sample.chunks(rows):
        one_pass.fill(lo, e, e_inc)
    second = _low_level_inputs(b, spec, "reference", rows, lay)
    assert np.array_equal(second.scaled, one_pass.scaled)
    assert np.array_equal(second.log_e_inc, one_pass.log_e_inc)
    assert np.array_equal(second.take(np.arange(30)), one_pass.take(np.arange(30)))
    assert (second.scaled > 0).any()
