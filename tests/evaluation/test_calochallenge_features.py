"""CaloChallenge high-level features: definitions checked on hand-made showers."""

import math

import numpy as np
import pytest

from caloforge.errors import GeometryError
from caloforge.evaluation.calochallenge.features import (
    LayerLayout,
    apply_official_threshold,
    compute_features,
    dataset_spec,
)


def test_voxel_centres_follow_the_binning_xml():
    lay = LayerLayout("calochallenge-2")
    # voxel 0: first radial bin [0, 4.65] mm, first angular bin [-pi, -pi + 2 pi/16]
    alpha = -math.pi + math.pi / 16
    assert lay.r[0] == pytest.approx(2.325)
    assert lay.x[0] == pytest.approx(2.325 * math.cos(alpha))
    assert lay.y[0] == pytest.approx(2.325 * math.sin(alpha))
    # voxel 9: radial bins run fastest, so this is the first radial bin of angular bin 1
    assert lay.r[9] == pytest.approx(2.325) and lay.r[1] == pytest.approx(6.975)
    assert len(lay.layers) == 45 and lay.alpha_layers == lay.layers
    assert lay.n_features == 1 + 45 + 4 * 45 + 1 + 45 + 2 * 45


def test_dataset_1_layers_and_feature_count():
    lay = LayerLayout("calochallenge-1-photons")
    assert lay.layers == [0, 1, 2, 3, 12] and lay.alpha_layers == [1, 2]
    # layers without angular bins sit at alpha = 0: x = r, y = 0
    sl = lay.slices[0]
    np.testing.assert_allclose(lay.x[sl], [2.5, 7.5, 20, 40, 75, 150, 300, 500])
    np.testing.assert_allclose(lay.y[sl], 0.0, atol=1e-12)
    assert lay.n_features == 2 + 4 * 5 + 4 * 2


def test_features_of_a_hand_made_shower():
    lay = LayerLayout("calochallenge-2")
    e = np.zeros((2, lay.n_voxels), np.float32)
    sl = lay.slices[3]
    # shower 0, layer 3: 1 MeV in voxel (alpha 0, r 0) and 3 MeV in (alpha 0, r 2)
    e[0, sl.start + 0] = 1.0
    e[0, sl.start + 2] = 3.0
    f = compute_features(e, np.array([10.0, 10.0]), lay)
    i = lay.layers.index(3)
    xs = np.array([lay.x[sl.start], lay.x[sl.start + 2]])
    rs = np.array([2.325, 11.625])
    w = np.array([0.25, 0.75])
    assert f.e_layer[0, i] == pytest.approx(4.0) and f.e_tot[0] == pytest.approx(4.0)
    assert f.ec_x[0, i] == pytest.approx(w @ xs)
    assert f.width_x[0, i] == pytest.approx(math.sqrt(w @ xs ** 2 - (w @ xs) ** 2))
    assert f.ec_r[0, i] == pytest.approx(w @ rs)
    assert f.width_r[0, i] == pytest.approx(math.sqrt(w @ rs ** 2 - (w @ rs) ** 2))
    assert f.sparsity[0, i] == pytest.approx(1 - 2 / 144)
    # empty layers / showers: centre 0, width 0, sparsity 1 (the 1e-16 guard)
    assert f.ec_x[1].max() == 0 and f.width_r[1].max() == 0 and f.sparsity[1].min() == 1
    v = f.vector()
    assert v.shape == (2, lay.n_features)
    assert v[0, 0] == pytest.approx(1.0)  # log10 E_inc
    assert v[0, 1 + i] == pytest.approx(math.log10(4.0 + 1e-8))
    assert v[1, 1] == pytest.approx(-8.0)  # log10(0 + 1e-8)


def test_threshold_zeroes_below_and_keeps_equal():
    e = np.array([[0.01, 0.5e-3 / 0.033, 0.02]], np.float32)
    out = apply_official_threshold(e, dataset_spec("2").threshold_mev)
    assert out[0, 0] == 0 and out[0, 1] > 0 and out[0, 2] > 0


def test_dataset_names_and_thresholds():
    assert dataset_spec("calochallenge-3").key == "3"
    assert dataset_spec("1-pions").threshold_mev == 1.0
    assert dataset_spec("2").threshold_mev == pytest.approx(15.1515e-3, rel=1e-4)
    with pytest.raises(GeometryError, match="CaloChallenge dataset"):
        dataset_spec("ild-ecal")
