"""The table of metrics: one row per comparison a generated sample gets.

Each row says what the metric reads, how its noise floor is made and how its traffic
light is decided; the evaluation runs the rows in order, stores each result under the
row's key in ``metrics.json``, turns a :class:`~caloforge.errors.CaloforgeError` into a
"not computed" entry, and builds the per-section verdict from the row's ``parts`` flag.
Adding a metric means writing its ``fn(base, gen) -> dict`` (see :mod:`.compare`) and
adding one row here.

A row's ``names`` give the parts of its result that a paper (seed) shows under its own
name: the dotted path in the result, that name, where it is shown in the paper and the
report's figures of it.  They go into ``metrics.json`` (``metric_table``) and the
report's table of named observables.

>>> [m.key for m in METRICS][:3]
['observables', 'calogan', 'layer_features']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from caloforge.errors import CaloforgeError
from caloforge.evaluation import angles as A
from caloforge.evaluation import compare as C
from caloforge.evaluation import metrics as M
from caloforge.evaluation.compare import Baseline
from caloforge.evaluation.reco.stage import reco_metric
from caloforge.evaluation.stream import SampleSummary

HALVES = "the same metric between two random halves of the reference"
LIGHTS = "green within 2x the floor, yellow within 5x, red beyond"


def _always(base: Baseline) -> bool:
    return True


@dataclass(frozen=True)
class Named:
    """The published name of one part of a metric's result."""

    name: str  # as the paper names it
    source: str  # where the paper shows it
    # the report's figures of it: a figure of that name, or of that name followed by
    # "_" and a generated sample's label
    figures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "figures": list(self.figures)}


def _seed001(figure: str, names: Mapping[str, str], prefix: str = "",
             fig_of: Callable[[str], tuple[str, ...]] | None = None) -> dict[str, Named]:
    """Named parts of seed 001 ("Hadrons, better, faster, stronger") shown in ``figure``;
    ``fig_of(part)`` gives the report figures of a part (default ``prefix`` + the last
    component of its path)."""
    return {part: Named(name, f"seed 001, {figure}",
                        fig_of(part) if fig_of else (prefix + part.split(".")[-1],))
            for part, name in names.items()}


# Seed 001 names: Fig. 4 (shower shapes), Fig. 5 (correlations: m_1, m_2, E_i/E_vis),
# Fig. 6 (visible energy and number of hits per incident energy), Fig. 7 (mu90, sigma90).
_SEED001_SCALARS = {
    "e_vis": ("visible energy E_vis", "Fig. 6"), "n_hits": ("number of hits n_hit", "Fig. 6"),
    "cog_x": ("centre of gravity in x (m_1,x)", "Fig. 5"),
    "cog_y": ("centre of gravity in y (m_1,y)", "Fig. 5"),
    "cog_z": ("centre of gravity in z (m_1,z)", "Figs. 4, 5"),
    "width_x": ("second moment in x (m_2,x)", "Fig. 5"),
    "width_y": ("second moment in y (m_2,y)", "Fig. 5"),
    "width_z": ("second moment in z (m_2,z)", "Fig. 5"),
    "shower_start": ("shower start", "Fig. 4"),
    "frac_first": ("energy fraction in the first third E_1/E_vis", "Fig. 5"),
    "frac_second": ("energy fraction in the second third E_2/E_vis", "Fig. 5"),
    "frac_last": ("energy fraction in the last third E_3/E_vis", "Fig. 5"),
}
_EBINNED = {"e_vis": ("ebinned_e_vis",), "n_hits": ("ebinned_n_hits",)}


def _scalar_names() -> dict[str, Named]:
    return {k: Named(name, f"seed 001, {fig}", (f"obs_{k}",) + _EBINNED.get(k, ()))
            for k, (name, fig) in _SEED001_SCALARS.items()}


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str  # where the result goes in each generated sample's metrics
    fn: Callable[[Baseline, SampleSummary], dict[str, Any]]
    inputs: str  # what it compares
    noise_floor: str  # how the reference-vs-reference floor is made
    verdict: str  # how the traffic light is decided
    parts: bool = False  # the result is a dict of sub-metrics, each with its own verdict
    applies: Callable[[Baseline], bool] = _always
    names: Mapping[str, Named] = field(default_factory=dict)  # path in the result -> name

    def run(self, base: Baseline, gen: SampleSummary) -> dict[str, Any]:
        try:
            return self.fn(base, gen)
        except CaloforgeError as exc:
            return C.not_computed(exc)

    def section_verdict(self, result: dict[str, Any]) -> str:
        if self.parts:
            return M.worst([v.get("verdict", "grey") for v in result.values()
                            if isinstance(v, dict)])
        return result.get("verdict", "grey")


METRICS: tuple[Metric, ...] = (
    Metric("observables", C.observables,
           "per-shower observables (energies, hits, centres, widths, shower start, ...), "
           "histograms binned on the reference",
           f"{HALVES}, mean over {C.N_FLOOR_SPLITS} halvings",
           f"worst of W1/sigma and separation power vs their floors; {LIGHTS}", parts=True,
           names=_scalar_names()),
    Metric("calogan", C.calogan_shapes, "CaloGAN shower shapes (seed 004)",
           f"{HALVES}, mean over {C.N_FLOOR_SPLITS} halvings",
           f"as observables; {LIGHTS}", parts=True,
           applies=lambda base: base.gf.geometry.name == "calogan"),
    Metric("layer_features", C.layer_features,
           "per-layer energy, hits, centres, widths, sparsity; mean over non-empty layers",
           f"{HALVES} (stored halving)", f"as observables; {LIGHTS}", parts=True),
    Metric("cell_spectrum", C.cell_spectrum, "cell energy spectrum (MIP), all cells and "
           "above the readout threshold", HALVES,
           f"separation power vs floor, above the threshold only; {LIGHTS}", parts=True,
           names=_seed001("Fig. 4", {"above_threshold": "visible cell energy spectrum [MIP]"},
                          fig_of=lambda _: ("cell_spectrum_mip", "cell_spectrum_mev"))),
    Metric("profiles", C.profiles, "mean x, y, radial and longitudinal profiles", HALVES,
           f"separation power vs floor; {LIGHTS}", parts=True,
           names={**_seed001("Fig. 4", {"x": "energy profile in x", "y": "energy profile in y",
                                        "longitudinal": "longitudinal energy profile (z)"},
                             "profile_"),
                  "r": Named("radial energy profile", "issue 13 (not a seed-001 figure)",
                             ("profile_r",))}),
    Metric("points", C.points,
           "point files: number of points, point energy sum, per-layer point counts and "
           "energies, point-energy spectrum, radial and longitudinal point profiles",
           f"{HALVES} (stored halving; scalars: mean over {C.N_FLOOR_SPLITS} halvings)",
           f"as observables and profiles; energy outside the cells shown without verdict; "
           f"{LIGHTS}", parts=True, applies=lambda base: base.summary.points is not None),
    Metric("response", C.response,
           "mu90 and sigma90/mu90 of E_vis/E_inc per incident-energy bin", HALVES,
           f"worst of the largest relative deviations of mu90 and sigma90/mu90; {LIGHTS}",
           names=_seed001("Fig. 7", {
               "generated.mu90": "mean of the 90% core mu90 vs incident energy",
               "generated.sigma90_over_mu90": "relative width sigma90/mu90 vs incident energy"},
               "response_")),
    Metric("correlations", C.correlations, "Pearson correlations of the seed-001 observables",
           HALVES, f"mean |difference| vs floor; {LIGHTS}",
           names=_seed001("Fig. 5", {
               "reference": "Pearson correlation coefficients, Geant4 (reference)",
               "generated": "Pearson correlation coefficients, generative model",
               "difference": "difference of the correlation coefficients to Geant4"},
               "correlation_")),
    Metric("fpd", C.fpd, "Frechet physics distance of the high-level features", HALVES,
           f"|FPD| vs |floor| + 2 errors; {LIGHTS}"),
    Metric("kpd", C.kpd, "kernel physics distance of the high-level features", HALVES,
           f"|KPD| vs |floor| + 2 errors; {LIGHTS}"),
    Metric("classifier", C.classifier, "MLP classifier on high-level features and voxels",
           "the classifier between two halves of the reference",
           f"|AUC - 0.5| vs the larger of the floor and 2 sigma of a useless classifier; "
           f"{LIGHTS}", parts=True, applies=lambda base: base.config.classifier),
    Metric("reconstructed_angle", A.reconstructed_angle,
           "polar angle of the shower axis (PCA of the energy-weighted hits) per true-theta "
           "bin (mean, RMS) and its distribution (seed 000)",
           "the same between two random halves of the reference",
           f"worst of the largest |mean difference| per bin and the distribution; {LIGHTS}",
           applies=A.has_theta),
    Metric("angle_bins", A.angle_bins_metrics,
           "per-shower observables and response in bins of theta (and of phi at oblique "
           "incidence) when they vary", f"{HALVES}, within each bin",
           f"worst over bins and observables; {LIGHTS}", parts=True,
           applies=A.has_varying_angles),
    Metric("reco", reco_metric,
           "reconstruction level (seed 001): digitised, calibrated energy with and without "
           "software compensation; mu90/E_inc and sigma90/mu90 per incident energy",
           f"{HALVES} (stored halving), same calibration",
           f"worst of the largest relative deviations of mu90 and sigma90/mu90 of both "
           f"energies; {LIGHTS}", applies=lambda base: base.reco is not None),
    Metric("memorisation", C.memorisation,
           "nearest-training-shower distances of generated vs held-out reference showers",
           "held-out reference showers (about 1% below their own 1st percentile)",
           "fraction below the held-out 1st percentile: yellow beyond 3, red beyond 6 "
           "binomial sigma (or median ratio < 0.8 / 0.5)",
           applies=lambda base: base.train is not None),
)


def run_metrics(base: Baseline, gen: SampleSummary) -> tuple[dict[str, Any], dict[str, str]]:
    """Every applicable row on one generated sample: (results by key, verdict by key)."""
    results, verdicts = {}, {}
    for metric in METRICS:
        if metric.applies(base):
            results[metric.key] = metric.run(base, gen)
            verdicts[metric.key] = metric.section_verdict(results[metric.key])
    return results, verdicts


def describe() -> list[dict[str, str]]:
    """The table as data (saved into metrics.json)."""
    return [{"metric": m.key, "inputs": m.inputs, "noise_floor": m.noise_floor,
             "verdict": m.verdict, "names": {p: n.to_dict() for p, n in m.names.items()}}
            for m in METRICS]
