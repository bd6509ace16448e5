"""``caloforge evaluate`` on small AHCAL-like pion-style files shows every seed-001
observable under the seed's name: in metrics.json (the metric table's names, each pointing
at a computed result), in the report's figures and on its page."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.evaluation.report import named_figures

ENERGIES_GEV = (20.0, 50.0, 80.0)  # the seed's Fig. 6 energies

# Issue 13, item 4: (metric, path in its result, words of the seed's name, where shown)
SEED001 = [
    ("cell_spectrum", "above_threshold", "cell energy spectrum [MIP]", "seed 001, Fig. 4"),
    ("observables", "n_hits", "number of hits", "seed 001, Fig. 6"),
    ("observables", "e_vis", "visible energy", "seed 001, Fig. 6"),
    ("observables", "cog_x", "centre of gravity in x", "seed 001, Fig. 5"),
    ("observables", "cog_y", "centre of gravity in y", "seed 001, Fig. 5"),
    ("observables", "cog_z", "centre of gravity in z", "seed 001, Figs. 4, 5"),
    ("profiles", "longitudinal", "longitudinal energy profile", "seed 001, Fig. 4"),
    ("profiles", "r", "radial energy profile", "issue 13"),
    ("response", "generated.mu90", "mu90", "seed 001, Fig. 7"),
    ("response", "generated.sigma90_over_mu90", "sigma90/mu90", "seed 001, Fig. 7"),
    ("correlations", "reference", "correlation coefficients, Geant4", "seed 001, Fig. 5"),
    ("correlations", "generated", "correlation coefficients, generative model",
     "seed 001, Fig. 5"),
    ("correlations", "difference", "difference of the correlation coefficients",
     "seed 001, Fig. 5"),
]


@pytest.fixture(scope="module")
def report(ahcal_like, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed001")
    energies = np.repeat(ENERGIES_GEV, 50)
    paths = [ahcal_like(folder / f"{name}.h5", energies, seed)
             for name, seed in (("reference", 1), ("generated", 2))]
    out, config = folder / "report", folder / "eval.yaml"
    config.write_text("figure_formats: [png]\n")  # PDFs would double the drawing time
    assert main(["evaluate", *paths, "--report", str(out), "--config", str(config),
                 "--no-classifier", "--no-reco", "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text()), (out / "index.html").read_text()


def _names(m):
    return {(row["metric"], path): named for row in m["metric_table"]
            for path, named in row["names"].items()}


def _at(result, path):
    for part in path.split("."):
        result = result[part]
    return result


@pytest.mark.parametrize("metric,path,words,source", SEED001)
def test_each_seed001_observable_is_shown_under_its_seed_name(report, metric, path, words,
                                                               source):
    m, page = report
    named = _names(m)[(metric, path)]
    assert words in named["name"] and named["source"].startswith(source)
    value = _at(m["generated"][0][metric], path)
    assert not (isinstance(value, dict) and value.get("status") == "not computed")
    figures = named_figures(named["figures"], m["figures"])
    assert figures, named
    plain = re.sub(r"<[^>]+>", " ", page)
    assert named["name"] in plain.replace("&#x27;", "'")
    for f in figures:
        assert f"alt='{f}'" in page  # the figure is on the page


def test_every_named_path_of_the_table_resolves(report):
    m, _ = report
    g = m["generated"][0]
    for (metric, path), named in _names(m).items():
        _at(g[metric], path)  # KeyError if a name points nowhere
        assert named_figures(named["figures"], m["figures"]), (metric, path)


def test_correlation_matrices_are_the_seed_set_and_their_difference(report):
    m, _ = report
    c = m["generated"][0]["correlations"]
    assert c["observables"] == ["cog_x", "cog_y", "cog_z", "width_x", "width_y", "width_z",
                                "e_vis", "e_inc", "n_hits", "frac_first", "frac_second",
                                "frac_last"]
    ref, gen = np.asarray(c["reference"]), np.asarray(c["generated"])
    assert ref.shape == (12, 12) and np.allclose(np.diag(ref), 1.0)
    np.testing.assert_allclose(np.asarray(c["difference"]), gen - ref, atol=1e-12)


def test_energy_conditioned_curves_at_each_single_energy(report):
    """Fig. 6/7: the incident energies are discrete, so the curves have one point per
    energy and the per-energy visible energy and hit panels exist."""
    m, _ = report
    assert m["energy_bins_discrete"]
    resp = m["generated"][0]["response"]
    assert resp["reference"]["e_inc"] == pytest.approx([e * 1e3 for e in ENERGIES_GEV])
    assert all(n == 50 for n in resp["generated"]["n"])
    assert {"ebinned_e_vis", "ebinned_n_hits"} <= set(m["figures"])
