"""``run_calochallenge_protocol``: the CaloChallenge 2022 evaluation, reproducible.

>>> from caloforge.evaluation.calochallenge import run_calochallenge_protocol
>>> res = run_calochallenge_protocol("ref.h5", "gen.h5", "2", "cc_eval")  # doctest: +SKIP
>>> res["histograms"]["E layer 20"]["separation_power"]  # doctest: +SKIP
0.0123

Steps, as the challenge's ``evaluate.py`` (see the modules of this package for every
definition): voxels below the dataset threshold zeroed; the high-level features; the
official histograms and their separation powers; the low- and high-level classifiers
(AUC, JSD, with a stated power); FPD and KPD on the high-level feature vector.  Results go
to ``out_dir/calochallenge_metrics.json`` (written atomically) and a summary figure.
Energies are taken in the files' convention (datasets 2 and 3: deposits / 0.033); inputs
are CaloChallenge files, any caloforge-readable file of a CaloChallenge geometry, or
in-memory :class:`~caloforge.data.ShowerBatch` objects (caloforge's deposit convention).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.data.batch import ShowerBatch
from caloforge.errors import CaloforgeError, GeometryError, InputError
from caloforge.evaluation.calochallenge.binning import (
    counts,
    feature_histograms,
    log_edges,
    separation_power_official,
)
from caloforge.evaluation.calochallenge.classifier import (
    DenseInputs,
    LowLevelInputs,
    OfficialClassifierConfig,
    power_control,
    train_official_classifier,
)
from caloforge.evaluation.calochallenge.features import (
    DatasetSpec,
    HighLevelFeatures,
    LayerLayout,
    compute_features,
    dataset_spec,
)
from caloforge.evaluation.calochallenge.fpd_kpd import fpd_official, kpd_official
from caloforge.evaluation.metrics import chi2_ndf
from caloforge.geometry.calochallenge import SAMPLING_FRACTION

MIN_SHOWERS_PROTOCOL = 500  # per sample: 100 per class in the classifiers' final split
METRICS_FILE = "calochallenge_metrics.json"
CONTROL_FACTOR = 1.05  # power control: reference vs reference with energies x 1.05

DEVIATIONS = [
    "seeded: every random choice (splits, initialisation, batch order, FPD/KPD batches) "
    "comes from --seed; the official script is unseeded (FPD/KPD use jetnet's seed 42 "
    "offset by --seed)",
    "classifier splits are fractions 0.6 / 0.2 / 0.2 of the smaller sample (both samples "
    "subsampled to equal size) instead of the hard-coded event counts "
    "(60k/20k/20k for datasets 2 and 3)",
    "classifiers run in float32 (official: float64); low-level inputs are stored as "
    "float16 2^15 E/E_inc (relative rounding 2^-11) to fit 100k + 100k showers in memory",
    "features are computed in float64 (the official code divides by float32 layer sums, "
    "whose rounding shifts widths by up to ~1e-3 mm through cancellation); on toy "
    "showers the separation powers agree with the official code within 2e-4 and "
    "FPD/KPD with jetnet within 1e-6 relative (same batch draws for seed 0)",
    "histograms of sparsity and radial centre/width are defined but never called by the "
    "official evaluate.py; they are reported with \"official\": false",
    "each classifier result states its power: learned (validation BCE < ln 2 and "
    "significant validation AUC), minimum detectable AUC and a control (reference vs "
    "reference with energies x 1.05); not part of the official protocol",
    "chi2_ndf: caloforge's chi2 homogeneity test on the official bins, next to the "
    "official separation power (the official histogram_chi2 file holds separation powers)",
]


def _check_convention(e_tot: np.ndarray, e_inc: np.ndarray, spec: DatasetSpec,
                      name: str) -> None:
    if spec.geometry not in SAMPLING_FRACTION or not len(e_tot):
        return
    ratio = float(np.median(e_tot / e_inc))
    sf = SAMPLING_FRACTION[spec.geometry]
    if ratio < 3 * sf:
        raise InputError(
            f"median E_tot/E_inc is {ratio:.3g}: the energies look like raw silicon deposits, "
            f"while CaloChallenge dataset {spec.key} files hold deposits divided by the "
            f"sampling fraction {sf} (E_tot/E_inc near 1); convert with `caloforge convert "
            f"IN OUT --to calochallenge` (or divide 'showers' by {sf})", name)


class _Sample:
    """Chunked reads of one input in the files' energy convention."""

    def __init__(self, source: str | Path | ShowerBatch, spec: DatasetSpec, role: str) -> None:
        self.spec, self.role = spec, role
        self.batch: ShowerBatch | None = None
        self.reader = None
        if isinstance(source, ShowerBatch):
            self.batch, self.name, geometry = source, f"<{role} showers>", source.geometry
            self.factor = 1.0 / SAMPLING_FRACTION.get(geometry, 1.0)
        else:
            from caloforge.data.io import open_showers
            from caloforge.data.io.calochallenge import CONVENTION_DEPOSITED

            self.name = str(source)
            self.reader = open_showers(source)
            geometry = self.reader.geometry
            self.factor = 1.0 / SAMPLING_FRACTION.get(geometry, 1.0)
            if self.reader.format == "calochallenge":
                self.factor = 1.0
                conv = self.reader.energy_convention
                if geometry in SAMPLING_FRACTION and conv == CONVENTION_DEPOSITED:
                    self.reader.close()
                    raise InputError(
                        f"holds raw silicon deposits (energy convention {conv!r}, caloforge's "
                        f"files before the challenge convention); the challenge's files "
                        f"divide by the sampling fraction {SAMPLING_FRACTION[geometry]}: "
                        f"convert with `caloforge convert {source} OUT --to calochallenge`",
                        source)
        if geometry != spec.geometry:
            self.close()
            raise GeometryError(f"{role} showers are on {geometry}, but the protocol was "
                                f"asked for CaloChallenge dataset {spec.key} "
                                f"({spec.geometry})", self.name)
        self.n = len(self.batch) if self.batch is not None else self.reader.n_showers

    def chunks(self, rows: int) -> Any:
        for lo in range(0, self.n, rows):
            hi = min(lo + rows, self.n)
            if self.batch is not None:
                e, e_inc = self.batch.energies[lo:hi], self.batch.incident_energy[lo:hi]
            elif self.reader.format == "calochallenge":
                e = self.reader.read_file_energies(lo, hi)
                e_inc = self.reader.read_conditions(lo, hi).incident_energy
            else:
                b = self.reader.read(lo, hi)
                e, e_inc = b.energies, b.incident_energy
            if self.batch is not None or e.dtype != np.float32:
                e = np.array(e, dtype=np.float32)  # never modify the caller's showers
            # In place on the chunk just read: one float32 copy of the showers at a time.
            if self.factor != 1.0:  # the product in float64, rounded once to float32
                np.multiply(e, np.float64(self.factor), out=e, casting="same_kind")
            e[e < np.float32(self.spec.threshold_mev)] = 0.0  # as apply_official_threshold
            yield lo, e, e_inc

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _scan(sample: _Sample, layout: LayerLayout, rows: int,
          voxel_edges: np.ndarray | None) -> tuple[HighLevelFeatures, float, np.ndarray | None]:
    # The features go straight into arrays for the whole sample (a list of parts and its
    # concatenation would hold them twice).
    whole: dict[str, np.ndarray] = {}
    vmax = 0.0
    hist = None if voxel_edges is None else np.zeros(len(voxel_edges) - 1, np.int64)
    for lo, e, e_inc in sample.chunks(rows):
        for key, part in vars(compute_features(e, e_inc, layout)).items():
            if key not in whole:
                whole[key] = np.empty((sample.n,) + part.shape[1:], part.dtype)
            whole[key][lo:lo + len(part)] = part
        vmax = max(vmax, float(e.max(initial=0.0)))
        if hist is not None:
            hist += counts(e[e > 0], voxel_edges)  # zeros lie below the first edge anyway
    return HighLevelFeatures(**whole), vmax, hist


def _release_freed_memory() -> None:
    """Hand the memory freed by the earlier steps back to the system before the largest
    allocation: glibc keeps freed heap pages (the classifier's many batch-sized arrays
    fragment it), which would count again on top of the low-level inputs.  A no-op
    where the C library has no ``malloc_trim``."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _low_level_inputs(source: str | Path | ShowerBatch, spec: DatasetSpec, role: str,
                      rows: int, layout: LayerLayout) -> LowLevelInputs:
    """The low-level classifier inputs of one input (thresholded, file convention)."""
    sample = _Sample(source, spec, role)
    try:
        low = LowLevelInputs(sample.n, layout.n_voxels)
        for lo, e, e_inc in sample.chunks(rows):
            low.fill(lo, e, e_inc)
    finally:
        sample.close()
    return low


def _histogram_metrics(spec: DatasetSpec, layout: LayerLayout, ref: HighLevelFeatures,
                       gen: HighLevelFeatures) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for h, vr, vg in feature_histograms(spec, layout.layers, layout.alpha_layers, ref, gen):
        if h.edges is None:
            out[h.name] = {"status": "not computed", "reason": h.problem,
                           "official": h.official}
            continue
        cr, cg = counts(vr, h.edges), counts(vg, h.edges)
        out[h.name] = {"separation_power": separation_power_official(cr, cg),
                       "chi2_ndf": chi2_ndf(cr, cg), "official": h.official,
                       "entries_in_range": [int(cr.sum()), int(cg.sum())],
                       "entries": [len(vr), len(vg)], "n_bins": len(h.edges) - 1}
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _summary_plot(path: Path, hist: dict[str, Any], layout: LayerLayout) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label in ("E layer", "EC Eta", "EC Phi", "Width Eta", "Width Phi"):
        pts = [(k, hist.get(f"{label} layer {k}", {}).get("separation_power"))
               for k in layout.layers]
        pts = [(k, v) for k, v in pts if v is not None and math.isfinite(v)]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("separation power (official binning)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(result: dict[str, Any]) -> list[str]:
    """A few lines with the headline numbers of a protocol result (for a CLI)."""
    hist = result["histograms"]
    lines = [f"CaloChallenge dataset {result['dataset']}: {result['n_reference']} reference "
             f"vs {result['n_generated']} generated showers"]
    for label in ("Etot / Einc", "E layer", "EC Eta", "EC Phi", "Width Eta", "Width Phi",
                  "Voxel distribution"):
        vals = [v["separation_power"] for k, v in hist.items()
                if (k == label or k.startswith(label + " layer"))
                and v.get("separation_power") is not None]
        if vals:
            lines.append(f"  separation power {label}: mean {np.mean(vals):.4g} "
                         f"(max {np.max(vals):.4g}, {len(vals)} histograms)")
    for name in ("fpd", "kpd"):
        r = result.get(name, {})
        if "value_x1e3" in r:
            lines.append(f"  {name.upper()} x10^3: {r['value_x1e3']:.4f} +- {r['error_x1e3']:.4f}")
    for name, r in result.get("classifiers", {}).items():
        if "auc" in r:
            lines.append(f"  classifier {name}: AUC {r['auc']:.4f}, JSD {r['jsd']:.4f}: "
                         f"{r['power_verdict']} ({r['power_reason']})")
        else:
            lines.append(f"  classifier {name}: not computed ({r.get('reason')})")
    return lines


def run_calochallenge_protocol(reference: str | Path | ShowerBatch,
                               generated: str | Path | ShowerBatch, dataset: str,
                               out_dir: str | Path | None = None, seed: int = 0,
                               device: str = "cpu", classifiers: tuple[str, ...] = (
                                   "high_level", "low_level"),
                               fpd_kpd: bool = True, control: bool = True,
                               classifier_config: OfficialClassifierConfig | None = None,
                               overwrite: bool = False,
                               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the CaloChallenge evaluation of ``generated`` against ``reference``.

    ``dataset``: "1-photons", "1-pions", "2", "3" (or the geometry name).  ``classifiers``
    selects "high_level" / "low_level"; ``control`` runs each classifier's power control.
    Returns the metrics dictionary (also written to ``out_dir/calochallenge_metrics.json``
    with a summary figure when ``out_dir`` is given).  Raises :class:`GeometryError` for a
    non-CaloChallenge geometry or mismatched files, :class:`InputError` for files in the
    wrong energy convention or with too few showers.
    """
    say = log or (lambda msg: None)
    spec = dataset_spec(dataset)
    out_path = None
    if out_dir is not None:
        from caloforge.utils.atomic import check_output_path

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out_path = check_output_path(Path(out_dir) / METRICS_FILE, overwrite)
    unknown = set(classifiers) - {"high_level", "low_level"}
    if unknown:
        raise InputError(f"unknown classifier(s) {sorted(unknown)}; use high_level, low_level")
    layout = LayerLayout(spec.geometry)
    ref_s = _Sample(reference, spec, "reference")
    try:
        gen_s = _Sample(generated, spec, "generated")
    except BaseException:
        ref_s.close()
        raise
    try:
        for s in (ref_s, gen_s):
            if s.n < MIN_SHOWERS_PROTOCOL:
                raise InputError(
                    f"{s.role} sample has {s.n} showers; the protocol's train / selection / "
                    f"final splits (0.6 / 0.2 / 0.2) need at least {MIN_SHOWERS_PROTOCOL} "
                    f"per sample", s.name)
        rows = max(1, 2 ** 25 // layout.n_voxels)
        say("reference: features")
        ref_f, vmax, _ = _scan(ref_s, layout, rows, None)
        _check_convention(ref_f.e_tot, ref_f.e_inc, spec, ref_s.name)
        voxel_edges, why = log_edges(spec.threshold_mev, vmax, 50)
        say("generated: features")
        gen_f, _, vox_g = _scan(gen_s, layout, rows, voxel_edges)
        _check_convention(gen_f.e_tot, gen_f.e_inc, spec, gen_s.name)
        hist = _histogram_metrics(spec, layout, ref_f, gen_f)
        if voxel_edges is None:
            hist["Voxel distribution"] = {"status": "not computed", "reason": why}
        else:
            say("reference: voxel spectrum")
            vox_r = np.zeros(len(voxel_edges) - 1, np.int64)
            for _, e, _ in ref_s.chunks(rows):
                vox_r += counts(e[e > 0], voxel_edges)
            hist["Voxel distribution"] = {
                "separation_power": separation_power_official(vox_r, vox_g),
                "chi2_ndf": chi2_ndf(vox_r, vox_g), "official": True,
                "n_bins": len(voxel_edges) - 1}
    finally:
        ref_s.close()
        gen_s.close()

    result: dict[str, Any] = {
        "protocol": "calochallenge", "dataset": spec.key, "geometry": spec.geometry,
        "threshold_mev": spec.threshold_mev, "energy_convention":
            "deposits / sampling fraction 0.033" if spec.geometry in SAMPLING_FRACTION
            else "calibrated cells (EM scale)",
        "n_reference": ref_s.n, "n_generated": gen_s.n, "seed": seed,
        "reference": ref_s.name, "generated": gen_s.name,
        "deviations_from_official": list(DEVIATIONS), "histograms": hist,
    }
    # 0.3 GB per 100k dataset-2 showers; each vector holds the same as its features
    x_ref = ref_f.vector()
    del ref_f
    x_gen = gen_f.vector()
    del gen_f
    if fpd_kpd:
        say("FPD / KPD")
        for name, fn in (("fpd", fpd_official), ("kpd", kpd_official)):
            try:
                r = fn(x_ref, x_gen, seed=42 + seed)
                result[name] = {"value": r.value, "error": r.error,
                                "value_x1e3": r.value * 1e3, "error_x1e3": r.error * 1e3}
            except CaloforgeError as exc:
                result[name] = {"status": "not computed", "reason": str(exc)}
        result["fpd_kpd_features"] = int(x_ref.shape[1])
    cfg = classifier_config or OfficialClassifierConfig(seed=seed, device=device)
    n_lay = len(layout.layers)
    # log10 energy columns of the feature vector: E_layer per layer and E_tot.
    energy_cols = np.r_[1:1 + n_lay, 1 + n_lay + 4 * len(layout.alpha_layers)]
    # float32 classifier inputs; the float64 vectors and each classifier's inputs are
    # dropped as soon as they are no longer needed.  The low-level inputs (2.6 GB for
    # 100k + 100k dataset-2 showers) are read in a second pass over the inputs when
    # their classifier runs, not held next to the features, vectors and FPD / KPD.
    inputs = {"high_level": (DenseInputs(x_ref), DenseInputs(x_gen), energy_cols)
              if "high_level" in classifiers else None}
    del x_ref, x_gen
    result["classifiers"] = {}
    for name in classifiers:
        if name == "low_level":
            say("low-level inputs")
            _release_freed_memory()
            xr, xg, cols = (_low_level_inputs(reference, spec, "reference", rows, layout),
                            _low_level_inputs(generated, spec, "generated", rows, layout),
                            None)
        else:
            xr, xg, cols = inputs.pop(name)
        try:
            ctl = None
            if control:
                say(f"{name} classifier: power control")
                _release_freed_memory()
                ctl = power_control(xr, cfg, CONTROL_FACTOR, cols)
            say(f"{name} classifier")
            _release_freed_memory()
            result["classifiers"][name] = train_official_classifier(xr, xg, cfg, control=ctl)
        except CaloforgeError as exc:
            result["classifiers"][name] = {"status": "not computed", "reason": str(exc)}
        del xr, xg
    result = _json_safe(result)
    if out_path is not None:
        from caloforge.utils.atomic import atomic_path

        with atomic_path(out_path, overwrite) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        _summary_plot(Path(out_dir) / "calochallenge_separation_power.png", hist, layout)
    return result
