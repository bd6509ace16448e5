"""The reconstruction level as an evaluation stage (seed 001, Sec. 4.2, Figs. 7-8).

During the one streaming pass of each sample, :class:`RecoStream` digitises the cells and
keeps per shower the MIP sums per hit-energy-density bin.  After the reference pass the
calibration is fitted on the reference (or read from a file); :func:`reco_metric`
then reconstructs the energy of every shower with and without software compensation and
compares mu90/E_inc (linearity) and sigma90/mu90 (resolution) per incident energy with the
reference, with noise floors from the reference halves.

The stage is on by default for hadron calorimeters read out by SiPM-on-tile
(scintillator active layers, at least 3 interaction lengths deep: ild-ahcal) and on
request (``reco=True``, ``caloforge evaluate --reco``, or by giving a calibration file)
for others, which then need a calibration file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from caloforge.errors import GeometryError
from caloforge.evaluation import metrics as M
from caloforge.evaluation.observables import mu90_sigma90
from caloforge.evaluation.reco.calibration import (
    DENSITY_EDGES_MIP,
    RecoCalibration,
    check_sample_size,
    density_sums,
    fit_calibration,
)
from caloforge.evaluation.reco.digitise import SCINTILLATORS, DigitisationConfig, digitise
from caloforge.geometry import Geometry

VARIANTS = ("uncompensated", "compensated")
RATIO_EDGES = np.linspace(0.0, 2.0, 61)  # E_reco / E_inc histograms in metrics.json
CALIBRATION_FILE = "reco_calibration.json"


def is_hadron_calorimeter(geo: Geometry) -> bool:
    """Scintillator (SiPM-on-tile) calorimeter at least 3 interaction lengths deep."""
    return geo.active_material.name in SCINTILLATORS and geo.total_interaction_lengths >= 3


@dataclass
class RecoStream:
    """Per-shower reco features collected during the streaming pass."""

    digitisation: DigitisationConfig
    mip_mev: float
    seed: int
    edges_mip: tuple[float, ...] = DENSITY_EDGES_MIP

    def features(self, rows: np.ndarray, values_mev: np.ndarray, shower_index: np.ndarray
                 ) -> np.ndarray:
        """(n, K) MIP sums per density bin of the digitised hits above the threshold;
        ``rows``/``values_mev``: all cells with a deposit (sorted by row)."""
        amp = digitise(rows, values_mev, shower_index, self.mip_mev, self.digitisation,
                       self.seed)
        keep = amp >= self.digitisation.threshold_mip
        return density_sums(rows[keep], amp[keep], len(shower_index), self.edges_mip)


@dataclass
class RecoSetup:
    """What the stage needs before the reference pass, and the calibration after it."""

    stream: RecoStream
    calibration: RecoCalibration | None = None  # from a file, or fitted on the reference
    source: str = "fitted on the reference"
    max_rel_error: float = 0.10


def prepare(config: Any, geo: Geometry) -> RecoSetup | None:
    """The stage for an :class:`EvaluationConfig` and geometry (None when it is off)."""
    on = config.reco if config.reco is not None else \
        is_hadron_calorimeter(geo) or config.reco_calibration is not None
    if not on:
        return None
    if config.reco_calibration is not None:
        cal = RecoCalibration.load(config.reco_calibration, geo.name)
        return RecoSetup(RecoStream(cal.digitisation, cal.mip_mev, config.seed,
                                    cal.density_edges_mip), cal, str(config.reco_calibration),
                         config.reco_max_rel_error)
    if not is_hadron_calorimeter(geo):
        raise GeometryError(
            f"reco: geometry {geo.name} has no reconstruction calibration: the default "
            f"digitisation models SiPM-read scintillator tiles and {geo.name} has "
            f"{geo.active_material.name} active layers; fit one on a {geo.name} reference "
            "with caloforge.evaluation.reco.calibrate_file(reference, 'cal.json', "
            "digitisation=DigitisationConfig(sipm=False)) and pass it with "
            "--reco-calibration cal.json")
    digi = DigitisationConfig(light_yield=config.reco_light_yield,
                              sipm_pixels=config.reco_sipm_pixels,
                              noise_mip=config.reco_noise_mip,
                              threshold_mip=config.reco_threshold_mip)
    digi.validate()
    return RecoSetup(RecoStream(digi, geo.mip_mev, config.seed), None,
                     max_rel_error=config.reco_max_rel_error)


def calibrate(setup: RecoSetup, geometry: str, e_inc_mev: np.ndarray, sums: np.ndarray,
              source: str) -> RecoCalibration:
    """The setup's calibration: the file's, or one fitted on the reference now."""
    if setup.calibration is None:
        setup.calibration = fit_calibration(
            e_inc_mev, sums, geometry, setup.stream.mip_mev, setup.stream.digitisation,
            setup.max_rel_error, source, setup.stream.edges_mip)
    return setup.calibration


# ---- the comparison ------------------------------------------------------------------
def reco_energies(cal: RecoCalibration, sums: np.ndarray) -> dict[str, np.ndarray]:
    """Reconstructed energies (GeV) per variant."""
    return {"uncompensated": cal.energy(sums), "compensated": cal.compensated(sums)}


def response(e_reco: np.ndarray, e_inc_mev: np.ndarray, bins: np.ndarray, n_bins: int
             ) -> dict[str, list[float]]:
    """Per incident-energy bin: E_inc (GeV, median), mu90 (GeV), linearity mu90/E_inc and
    resolution sigma90/mu90 (both of E_reco/E_inc, so that the spread of E_inc inside a
    bin of a continuous spectrum does not count), and the number of showers."""
    out: dict[str, list[float]] = {k: [] for k in ("e_inc", "mu90", "linearity",
                                                   "sigma90_over_mu90", "n")}
    e_gev = np.asarray(e_inc_mev, np.float64) / 1e3
    for k in range(n_bins):
        sel = bins == k
        e = float(np.median(e_gev[sel])) if sel.any() else math.nan
        mu, sig = mu90_sigma90(e_reco[sel] / e_gev[sel])
        out["e_inc"].append(e)
        out["mu90"].append(mu * e)
        out["linearity"].append(mu)
        out["sigma90_over_mu90"].append(sig / mu if mu > 0 else math.nan)
        out["n"].append(int(sel.sum()))
    return out


def resolution_fit(table: dict[str, list[float]]) -> dict[str, float]:
    """Stochastic and constant term of sigma/E = a/sqrt(E/GeV) (+) b (least squares on
    the squares; a single energy gives a alone)."""
    e = np.asarray(table["e_inc"], float)
    r = np.asarray(table["sigma90_over_mu90"], float)
    ok = np.isfinite(e) & np.isfinite(r) & (e > 0)
    if ok.sum() == 0:
        return {"stochastic": math.nan, "constant": math.nan}
    e, r = e[ok], r[ok]
    if len(e) == 1:
        return {"stochastic": float(r[0] * math.sqrt(e[0])), "constant": 0.0}
    x = np.stack([1.0 / e, np.ones_like(e)], axis=1)
    a2, b2 = np.linalg.lstsq(x, r ** 2, rcond=None)[0]
    if b2 < 0:  # no constant term supported by the data
        a2, b2 = float((r ** 2 * e).mean()), 0.0
    return {"stochastic": math.sqrt(max(a2, 0.0)), "constant": math.sqrt(b2)}


def _ratio_histograms(e_reco: np.ndarray, e_inc_mev: np.ndarray, bins: np.ndarray,
                      n_bins: int) -> list[list[int]]:
    ratio = e_reco / (e_inc_mev / 1e3)
    return [np.histogram(ratio[bins == k], RATIO_EDGES)[0].tolist() for k in range(n_bins)]


def compare(cal: RecoCalibration, ref_sums: np.ndarray, ref_e: np.ndarray,
            ref_half: np.ndarray, gen_sums: np.ndarray, gen_e: np.ndarray,
            edges: np.ndarray, max_rel_error: float) -> dict[str, Any]:
    """The reco section of one generated sample (see :func:`reco_metric`)."""
    from caloforge.evaluation.compare import max_rel_dev

    n_bins = len(edges) - 1
    b_ref = check_sample_size(ref_e, max_rel_error, "reference", edges)
    b_gen = check_sample_size(gen_e, max_rel_error, "generated", edges)
    er, eg = reco_energies(cal, ref_sums), reco_energies(cal, gen_sums)
    out: dict[str, Any] = {"calibration": {
        "geometry": cal.geometry, "gev_per_mip": cal.gev_per_mip,
        "fitted_on": cal.fitted_on, "n_showers": cal.n_showers,
        "digitisation": cal.digitisation.to_dict(),
        "density_edges_mip": list(cal.density_edges_mip)},
        "ratio_edges": RATIO_EDGES}
    verdicts = []
    for v in VARIANTS:
        r = response(er[v], ref_e, b_ref, n_bins)
        g = response(eg[v], gen_e, b_gen, n_bins)
        ha = response(er[v][ref_half == 0], ref_e[ref_half == 0], b_ref[ref_half == 0], n_bins)
        hb = response(er[v][ref_half == 1], ref_e[ref_half == 1], b_ref[ref_half == 1], n_bins)
        sec: dict[str, Any] = {"reference": r, "generated": g,
                               "resolution_fit_reference": resolution_fit(r),
                               "resolution_fit_generated": resolution_fit(g)}
        for key in ("mu90", "sigma90_over_mu90"):
            sec[f"{key}_max_rel_dev"] = max_rel_dev(g, r, key)
            sec[f"{key}_max_rel_dev_floor"] = max_rel_dev(ha, hb, key)
        sec["verdict"] = M.worst([M.verdict(sec[f"{k}_max_rel_dev"],
                                            sec[f"{k}_max_rel_dev_floor"])
                                  for k in ("mu90", "sigma90_over_mu90")])
        sec["histograms_reference"] = _ratio_histograms(er[v], ref_e, b_ref, n_bins)
        sec["histograms_generated"] = _ratio_histograms(eg[v], gen_e, b_gen, n_bins)
        verdicts.append(sec["verdict"])
        out[v] = sec
    fu = out["uncompensated"]["resolution_fit_reference"]["stochastic"]
    fc = out["compensated"]["resolution_fit_reference"]["stochastic"]
    out["reference_stochastic_improvement"] = 1 - fc / fu if fu and fu > 0 else math.nan
    out["verdict"] = M.worst(verdicts)
    return out


def reco_metric(base: Any, gen: Any) -> dict[str, Any]:
    """Table row: reconstructed energy, linearity and resolution with and without
    software compensation, generated vs reference."""
    setup: RecoSetup = base.reco
    ref = base.summary
    return compare(setup.calibration, ref.reco, ref.scalars["e_inc"], ref.half, gen.reco,
                   gen.scalars["e_inc"], base.energy_edges, setup.max_rel_error)
