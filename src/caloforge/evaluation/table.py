"""The table of metrics: one row per comparison a generated sample gets.

Each row says what the metric reads, how its noise floor is made and how its traffic
light is decided; the evaluation runs the rows in order, stores each result under the
row's key in ``metrics.json``, turns a :class:`~caloforge.errors.CaloforgeError` into a
"not computed" entry, and builds the per-section verdict from the row's ``parts`` flag.
Adding a metric means writing its ``fn(base, gen) -> dict`` (see :mod:`.compare`) and
adding one row here.

>>> [m.key for m in METRICS][:3]
['observables', 'calogan', 'layer_features']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
class Metric:
    """One row of the table."""

    key: str  # where the result goes in each generated sample's metrics
    fn: Callable[[Baseline, SampleSummary], dict[str, Any]]
    inputs: str  # what it compares
    noise_floor: str  # how the reference-vs-reference floor is made
    verdict: str  # how the traffic light is decided
    parts: bool = False  # the result is a dict of sub-metrics, each with its own verdict
    applies: Callable[[Baseline], bool] = _always

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
           f"worst of W1/sigma and separation power vs their floors; {LIGHTS}", parts=True),
    Metric("calogan", C.calogan_shapes, "CaloGAN shower shapes (seed 004)",
           f"{HALVES}, mean over {C.N_FLOOR_SPLITS} halvings",
           f"as observables; {LIGHTS}", parts=True,
           applies=lambda base: base.gf.geometry.name == "calogan"),
    Metric("layer_features", C.layer_features,
           "per-layer energy, hits, centres, widths, sparsity; mean over non-empty layers",
           f"{HALVES} (stored halving)", f"as observables; {LIGHTS}", parts=True),
    Metric("cell_spectrum", C.cell_spectrum, "cell energy spectrum (MIP), all cells and "
           "above the readout threshold", HALVES,
           f"separation power vs floor, above the threshold only; {LIGHTS}", parts=True),
    Metric("profiles", C.profiles, "mean x, y, radial and longitudinal profiles", HALVES,
           f"separation power vs floor; {LIGHTS}", parts=True),
    Metric("points", C.points,
           "point files: number of points, point energy sum, per-layer point counts and "
           "energies, point-energy spectrum, radial and longitudinal point profiles",
           f"{HALVES} (stored halving; scalars: mean over {C.N_FLOOR_SPLITS} halvings)",
           f"as observables and profiles; energy outside the cells shown without verdict; "
           f"{LIGHTS}", parts=True, applies=lambda base: base.summary.points is not None),
    Metric("response", C.response,
           "mu90 and sigma90/mu90 of E_vis/E_inc per incident-energy bin", HALVES,
           f"worst of the largest relative deviations of mu90 and sigma90/mu90; {LIGHTS}"),
    Metric("correlations", C.correlations, "Pearson correlations of the seed-001 observables",
           HALVES, f"mean |difference| vs floor; {LIGHTS}"),
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
             "verdict": m.verdict} for m in METRICS]
