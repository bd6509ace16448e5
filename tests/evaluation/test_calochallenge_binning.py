"""Official CaloChallenge histograms: edges, dropped entries, separation power by hand."""

import math

import numpy as np
import pytest

from caloforge.evaluation.calochallenge.binning import (
    counts,
    feature_histograms,
    log_edges,
    separation_power_official,
)
from caloforge.evaluation.calochallenge.features import (
    LayerLayout,
    compute_features,
    dataset_spec,
)


def test_separation_power_by_hand():
    # p = (1/4, 3/4), q = (3/4, 1/4): 1/2 * 2 * (1/2)^2 / 1 = 1/4
    assert separation_power_official([1, 3], [3, 1]) == pytest.approx(0.25)
    assert separation_power_official([2, 0], [0, 5]) == pytest.approx(1.0, abs=1e-12)
    assert separation_power_official([3, 3], [1, 1]) == 0.0
    assert math.isnan(separation_power_official([0, 0], [1, 1]))


def test_log_edges_and_dropped_entries():
    thr = 0.5e-3 / 0.033
    edges, why = log_edges(thr, 1000.0, 40)
    assert len(edges) == 40 and edges[0] == pytest.approx(thr) and edges[-1] == pytest.approx(1e3)
    np.testing.assert_allclose(np.diff(np.log(edges)), math.log(1e3 / thr) / 39)
    assert log_edges(thr, 0.0, 40)[0] is None and "not above" in log_edges(thr, 0.0, 40)[1]
    # outside [0.5, 1.5] dropped, 1.5 itself in the last bin, NaN dropped
    c = counts([0.4, 0.5, 1.0, 1.5, 1.6, np.nan], np.linspace(0.5, 1.5, 101))
    assert c.sum() == 3 and c[0] == 1 and c[-1] == 1


def _features(geometry, n=5, seed=0):
    lay = LayerLayout(geometry)
    rng = np.random.default_rng(seed)
    e = rng.exponential(1.0, (n, lay.n_voxels)).astype(np.float32)
    return lay, compute_features(e, np.full(n, 500.0), lay)


def test_official_histogram_set_dataset_2():
    lay, f = _features("calochallenge-2")
    hs = {h.name: h for h, _, _ in feature_histograms(dataset_spec("2"), lay.layers,
                                                      lay.alpha_layers, f, f)}
    official = [k for k, h in hs.items() if h.official]
    assert len(official) == 1 + 45 + 4 * 45
    assert len(hs) - len(official) == 3 * 45
    np.testing.assert_allclose(hs["Etot / Einc"].edges, np.linspace(0.5, 1.5, 101))
    np.testing.assert_allclose(hs["EC Eta layer 7"].edges, np.linspace(-30, 30, 101))
    np.testing.assert_allclose(hs["Width Phi layer 7"].edges, np.linspace(0, 30, 101))
    np.testing.assert_allclose(hs["EC r layer 7"].edges, np.linspace(0, 42, 101))
    np.testing.assert_allclose(hs["Width r layer 7"].edges, np.linspace(0, 20, 101))
    np.testing.assert_allclose(hs["Sparsity layer 7"].edges, np.linspace(0, 1, 21))
    e7 = hs["E layer 7"].edges
    assert len(e7) == 40 and e7[-1] == pytest.approx(f.e_layer[:, 7].max())


def test_official_histogram_set_dataset_1():
    lay, f = _features("calochallenge-1-pions")
    spec = dataset_spec("1-pions")
    hs = {h.name: h for h, _, _ in feature_histograms(spec, lay.layers, lay.alpha_layers,
                                                      f, f)}
    np.testing.assert_allclose(hs["EC Eta layer 12"].edges, np.linspace(-500, 500, 101))
    np.testing.assert_allclose(hs["Width Eta layer 12"].edges, np.linspace(0, 400, 101))
    np.testing.assert_allclose(hs["EC Phi layer 1"].edges, np.linspace(-100, 100, 101))
    np.testing.assert_allclose(hs["EC r layer 14"].edges, np.linspace(0, 1500, 101))
    assert hs["E layer 0"].edges[0] == pytest.approx(1.0)  # dataset 1 threshold 1 MeV
    discrete = [k for k in hs if k.startswith("Etot / Einc at E")]
    assert len(discrete) == 15 and "Etot / Einc at E = 256" in discrete
    np.testing.assert_allclose(hs["Etot / Einc at E = 65536"].edges, np.linspace(0.4, 1.4, 21))
    lay_p, f_p = _features("calochallenge-1-photons")
    hp = {h.name: h for h, _, _ in feature_histograms(dataset_spec("1-photons"), lay_p.layers,
                                                      lay_p.alpha_layers, f_p, f_p)}
    np.testing.assert_allclose(hp["Etot / Einc at E = 2048"].edges, np.linspace(0.4, 1.4, 21))
    np.testing.assert_allclose(hp["Etot / Einc at E = 4096"].edges, np.linspace(0.9, 1.1, 21))
