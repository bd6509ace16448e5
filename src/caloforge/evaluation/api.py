"""``evaluate(...)``: compare generated showers with a reference and write a report.

>>> import numpy as np
>>> from caloforge.data import Conditions, ShowerBatch
>>> rng = np.random.default_rng(0)
>>> def sample(n):
...     e = rng.exponential(5.0, (n, 504)).astype(np.float32)
...     return ShowerBatch("calogan", e, Conditions(np.full(n, 1e4)))
>>> res = evaluate(sample(300), [sample(300)], classifier=False, progress_bar=False)
>>> res.metrics["generated"][0]["observables"]["e_vis"]["verdict"] in ("green", "yellow")
True

The steps: settle the settings (:class:`EvaluationConfig`), stream the reference once
and fix everything derived from it (:func:`_baseline`), stream each generated sample
and run the table of metrics on it (:func:`_compare_sample`, :mod:`.table`), collect
the result (:func:`_result`), and write the report through a staging folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caloforge import __version__
from caloforge.data.batch import ShowerBatch
from caloforge.errors import CaloforgeError, GeometryMismatchError, InputError
from caloforge.evaluation import metrics as M
from caloforge.evaluation.compare import N_FLOOR_SPLITS, Baseline, floor_splits
from caloforge.evaluation.config import EvaluationConfig, check_device
from caloforge.evaluation.derived import (  # noqa: F401 - re-exported for existing callers
    correlation_matrix,
    fpd_features,
    high_level_features,
    is_cylindrical,
    profile_table,
    response_table,
)
from caloforge.evaluation.observables import (
    INTEGER_OBSERVABLES,
    GeometryFeatures,
    energy_bins,
)
from caloforge.evaluation.reco import stage as reco_stage
from caloforge.evaluation.report.folder import staged_report_dir
from caloforge.evaluation.result import Evaluation, json_safe
from caloforge.evaluation.stream import (
    SampleSummary,
    Source,
    StreamConfig,
    memo_projection,
    spectrum_edges_from,
    summarise,
)
from caloforge.evaluation.table import describe, run_metrics
from caloforge.geometry import get_geometry

__all__ = ["Evaluation", "EvaluationConfig", "evaluate"]


def evaluate(reference: str | Path | ShowerBatch,
             generated: Sequence[str | Path | ShowerBatch],
             labels: Sequence[str] | None = None, *, config: EvaluationConfig | None = None,
             report_dir: str | Path | None = None, overwrite: bool = False,
             train_reference: str | Path | ShowerBatch | None = None,
             progress_bar: bool | None = None, **options: Any) -> Evaluation:
    """Compare ``generated`` samples with ``reference`` and optionally write a report.

    Every input is a shower file (any format :func:`caloforge.data.io.open_showers`
    reads; streamed in chunks of ``batch_size``) or an in-memory ShowerBatch.  The
    settings are an :class:`EvaluationConfig`; ``options`` (its field names, e.g.
    ``seed=3, classifier=False``) override single fields of ``config``.
    ``train_reference`` may be a file or an in-memory ShowerBatch (a file name is also
    accepted as ``config.train_reference``).

    Samples that cannot be compared (unreadable, empty, other geometry) and an unusable
    training file do not stop the evaluation: they are listed in
    ``metrics["not_compared"]`` and :attr:`Evaluation.complete` is False.
    Returns an :class:`Evaluation` whose ``metrics`` equal the report's metrics.json.
    """
    from threadpoolctl import threadpool_limits

    cfg = config or EvaluationConfig()
    if labels is not None:
        options["labels"] = list(labels)
    if isinstance(train_reference, (str, Path)):
        options["train_reference"] = str(train_reference)
    if options:
        cfg = cfg.replace(**options)
    if train_reference is None and cfg.train_reference is not None:
        train_reference = cfg.train_reference
    check_device(cfg.device, "device")
    if cfg.classifier_config is not None:
        check_device(cfg.classifier_config.device, "classifier_config.device")
    if not generated:
        raise InputError("give at least one generated sample to compare")
    if cfg.labels and len(cfg.labels) != len(generated):
        raise InputError(f"{len(cfg.labels)} labels for {len(generated)} generated samples")
    for sample in generated:
        if _same_file(sample, reference):
            raise InputError("is the reference file itself: comparing a sample with itself "
                             "says nothing about it", sample)
    with threadpool_limits(limits=cfg.threads):
        if report_dir is None:
            return _compare(reference, generated, cfg, train_reference, progress_bar, Notes())
        notes = Notes()
        with staged_report_dir(report_dir, overwrite, notes.warnings) as staging:
            ev = _compare(reference, generated, cfg, train_reference, progress_bar, notes)
            _write_report(ev, staging, Path(report_dir), cfg.figure_formats)
        return ev


@dataclass
class Notes:
    """What the user must be told: warnings, and requested comparisons not made."""

    warnings: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)

    def fail(self, entry: dict[str, Any], msg: str) -> dict[str, Any]:
        self.warnings.append(msg)
        self.not_compared.append(msg)
        entry.update(status="failed", reason=msg)
        return entry


def _same_file(a: Any, b: Any) -> bool:
    """Two paths naming one existing file (links included); False for in-memory samples."""
    if not (isinstance(a, (str, Path)) and isinstance(b, (str, Path))):
        return False
    try:
        return Path(a).samefile(b)
    except OSError:  # a missing file is reported where it is opened
        return False


def _compare(reference, generated, cfg: EvaluationConfig, train_reference,
             progress_bar: bool | None, notes: Notes) -> Evaluation:
    t_start = time.perf_counter()
    base, stream_cfg = _baseline(reference, cfg, train_reference, progress_bar, notes)
    entries, summaries = [], []
    for i, data in enumerate(generated):
        entry, summ = _compare_sample(base, stream_cfg, i, data, notes)
        entries.append(entry)
        summaries.append(summ)
    if not any(s is not None for s in summaries):
        notes.warnings.append("no generated sample could be compared")
    result = _result(base, entries, notes)
    result["seconds_metrics"] = time.perf_counter() - t_start
    return Evaluation(json_safe(result), base.summary, summaries, geometry_features=base.gf)


# ---- step 1: the reference -------------------------------------------------------------
def _baseline(reference, cfg: EvaluationConfig, train_reference, progress_bar: bool | None,
              notes: Notes) -> tuple[Baseline, StreamConfig]:
    """Stream the reference and fix from it the binnings, splits and thresholds."""
    ref_src = Source(reference, "reference", cfg.geometry, cfg.batch_size, cfg.realistic)
    if ref_src.n_showers == 0:
        raise InputError("reference sample contains no showers", ref_src.name)
    geo = get_geometry(ref_src.geometry)
    if cfg.geometry is not None and get_geometry(cfg.geometry).name != geo.name:
        raise GeometryMismatchError(f"reference is on {geo.name}, not {cfg.geometry}",
                                    ref_src.name)
    gf = GeometryFeatures.of(geo)
    thr_mev = (geo.readout_threshold_mev if cfg.threshold_mip is None
               else cfg.threshold_mip * geo.mip_mev)
    first = next(iter(ref_src.batches()))
    spec_edges = spectrum_edges_from(first, geo.mip_mev)
    del first
    n_ll = int(cfg.lowlevel_memory_gib * 2**30 / (2 * 2 * (geo.n_voxels + 1))) \
        if cfg.classifier else 0
    train_src = _training_source(train_reference, cfg, geo.name, notes)
    proj = memo_projection(geo.n_voxels, cfg.seed)
    reco = reco_stage.prepare(cfg, geo)
    stream_cfg = StreamConfig(thr_mev, spec_edges, n_ll, cfg.n_memo if train_src else 0,
                              proj, cfg.seed, reco.stream if reco else None)
    ref = summarise(ref_src, gf, stream_cfg, geo.name == "calogan", progress_bar)
    if ref.bad_showers:
        notes.warnings.append(f"reference: skipped {len(ref.bad_showers)} showers "
                              f"({_reasons(ref)}); first at index {ref.bad_showers[:10]}")
    if ref.n_used < 2 * M.MIN_SHOWERS_HIST:
        raise InputError(f"reference has {ref.n_used} usable showers; at least "
                         f"{2 * M.MIN_SHOWERS_HIST} are needed", ref_src.name)

    def edges(values):
        return {k: M.hist_edges(v, integer=k in INTEGER_OBSERVABLES) for k, v in values.items()}

    e_edges, _ = energy_bins(ref.scalars["e_inc"])
    if reco is not None:
        reco = _calibrate(reco, cfg, geo.name, ref, ref_src.name, notes)
        stream_cfg.reco = reco.stream if reco else None
    base = Baseline(ref, gf, cfg, thr_mev, spec_edges, e_edges, edges(ref.scalars),
                    edges(ref.calogan), floor_splits(ref, cfg.seed),
                    cfg.resolved_classifier(), train_src, proj, progress_bar, reco)
    return base, stream_cfg


def _calibrate(reco, cfg: EvaluationConfig, geometry: str, ref: SampleSummary, name: str,
               notes: Notes):
    """The reco calibration (fitted on the reference unless a file was given); when the
    stage is only on by default, a reference unfit for it skips it with a warning."""
    try:
        reco_stage.calibrate(reco, geometry, ref.scalars["e_inc"], ref.reco, name)
    except InputError as exc:
        if cfg.reco:
            raise
        notes.warnings.append(f"reconstruction level skipped ({exc}); "
                              "--no-reco turns it off")
        return None
    return reco


def _training_source(data, cfg: EvaluationConfig, geometry: str, notes: Notes
                     ) -> Source | None:
    """The training file of the memorisation check, or None (and why) if unusable."""
    if data is None:
        return None
    src = _try_source(data, "training", cfg, notes.warnings)
    if src is not None and src.geometry != geometry:
        notes.warnings.append(f"training file {src.name} is on {src.geometry}, not "
                              f"{geometry}: memorisation check skipped")
        src = None
    if src is None:
        notes.not_compared.append(f"memorisation check: {notes.warnings[-1]}")
    return src


# ---- step 2: each generated sample -----------------------------------------------------
def _compare_sample(base: Baseline, stream_cfg: StreamConfig, i: int, data, notes: Notes
                    ) -> tuple[dict[str, Any], SampleSummary | None]:
    """Stream one generated sample and run the table of metrics on it."""
    labels = base.config.labels
    label = labels[i] if labels else None
    if label is None and isinstance(data, ShowerBatch):
        label = f"generated {i + 1}"  # files default to their name
    entry: dict[str, Any] = {"label": label or Path(str(data)).stem, "status": "ok"}
    warnings = notes.warnings
    src = _try_source(data, label, base.config, warnings)
    if src is None:
        return notes.fail(entry, warnings.pop()), None
    entry.update(label=src.label, source=src.name, n_showers=src.n_showers)
    geo = base.gf.geometry.name
    if src.geometry != geo:
        return notes.fail(entry, f"{src.name}: geometry {src.geometry} differs from the "
                                 f"reference's {geo}; not compared"), None
    if src.n_showers == 0:
        return notes.fail(entry, f"{src.name}: file contains no showers; not compared"), None
    try:
        summ = summarise(src, base.gf, stream_cfg, geo == "calogan", base.progress_bar)
    except CaloforgeError as exc:
        return notes.fail(entry, f"{exc}; not compared"), None
    entry["n_used"] = summ.n_used
    entry["skipped"] = {"count": len(summ.bad_showers), "reasons": summ.bad_reasons,
                        "indices": summ.bad_showers[:100]}
    if summ.bad_showers:
        more = " ..." if len(summ.bad_showers) > 10 else ""
        warnings.append(f"{src.label}: skipped {len(summ.bad_showers)} of {src.n_showers} "
                        f"showers ({_reasons(summ)}); shower indices "
                        f"{summ.bad_showers[:10]}{more}")
    tps = summ.metadata.get("time_per_shower_ms")
    entry["time_per_shower_ms"] = float(tps) if isinstance(tps, (int, float)) else None
    if summ.n_used == 0:
        return notes.fail(entry, f"{src.label}: no usable showers; not compared"), summ
    entry["incident_energy_outside_reference"] = _outside_energy_range(base, summ, warnings)
    results, verdicts = run_metrics(base, summ)
    if base.config.reco and results.get("reco", {}).get("status") == "not computed":
        # asked for explicitly: a missing reco level must not pass for a complete report
        notes.warnings.append(f"{src.label}: reco: {results['reco']['reason']}")
        notes.not_compared.append(notes.warnings[-1])
    entry.update(results)
    entry["verdict"] = verdicts
    return entry, summ


def _outside_energy_range(base: Baseline, summ: SampleSummary, warnings: list[str]) -> int:
    e_ref, gi = base.summary.scalars["e_inc"], summ.scalars["e_inc"]
    e_lo, e_hi = float(e_ref.min()), float(e_ref.max())
    # 0.5% of the range as margin: a continuous spectrum sampled twice never has
    # exactly the same end points.
    margin = 0.005 * (e_hi - e_lo) + 1e-6 * e_hi
    out_range = int(((gi < e_lo - margin) | (gi > e_hi + margin)).sum())
    if out_range:
        warnings.append(f"{summ.label}: {out_range} showers have incident energies outside "
                        f"the reference range {e_lo / 1e3:.4g}-{e_hi / 1e3:.4g} GeV; "
                        "distributions compare different populations")
    return out_range


# ---- step 3: the result and the report --------------------------------------------------
def _result(base: Baseline, entries: list[dict[str, Any]], notes: Notes) -> dict[str, Any]:
    ref, geo = base.summary, base.gf.geometry
    e_inc = ref.scalars["e_inc"]
    e_edges, discrete = energy_bins(e_inc)
    not_computed = [f"{e['label']}: {key}: {why}" for e in entries
                    for key, why in _walk_not_computed(e)]
    return {
        "caloforge_version": __version__,
        "config": base.config.to_dict(),
        "geometry": geo.name,
        "threshold_mev": base.threshold_mev,
        "threshold_mip": base.threshold_mip,
        "mip_mev": geo.mip_mev,
        "seed": base.config.seed,
        "noise_floor": "same metric between two random halves of the reference "
                       f"(scalars: mean over {N_FLOOR_SPLITS} splits)",
        "metric_table": describe(),
        "reference": {"source": ref.source, "n_showers": ref.n_total, "n_used": ref.n_used,
                      "skipped": len(ref.bad_showers),
                      "incident_energy_range_mev": [float(e_inc.min()), float(e_inc.max())]},
        "energy_bins_mev": e_edges, "energy_bins_discrete": discrete,
        "cell_spectrum_edges_mip": base.spectrum_edges,
        "generated": entries,
        "warnings": notes.warnings,
        "not_computed": not_computed,
        "not_compared": notes.not_compared,
        "reco_calibration": base.reco.calibration.to_dict() if base.reco else None,
    }


def _write_report(ev: Evaluation, staging: Path, out: Path, formats: tuple[str, ...]) -> None:
    """Figures, index.html and metrics.json into ``staging`` (renamed to ``out`` by the
    caller once complete)."""
    from caloforge.evaluation.report import write_report

    t0 = time.perf_counter()
    ev.report_dir = out
    ev.figures, failed = write_report(ev, ev.geometry_features, staging, formats=formats)
    m = ev.metrics
    m["not_computed"].extend(f"figure {f}" for f in failed)
    m["figures"] = ev.figures
    m["seconds_total"] = m["seconds_metrics"] + time.perf_counter() - t0
    (staging / "metrics.json").write_text(json.dumps(m, indent=1))
    if m.get("reco_calibration"):  # reusable with --reco-calibration
        (staging / reco_stage.CALIBRATION_FILE).write_text(
            json.dumps(m["reco_calibration"], indent=1))


# ---- helpers -------------------------------------------------------------------------------
def _reasons(s: SampleSummary) -> str:
    return ", ".join(f"{v} with {k}" for k, v in s.bad_reasons.items())


def _try_source(data, label: str | None, cfg: EvaluationConfig, warnings: list[str]
                ) -> Source | None:
    try:
        return Source(data, label, cfg.geometry, cfg.batch_size, cfg.realistic)
    except CaloforgeError as exc:
        # The error names the file already; an in-memory sample is named here.
        name = f"<in-memory {label}>: " if isinstance(data, ShowerBatch) else ""
        warnings.append(f"cannot read {name}{exc}")
        return None


def _walk_not_computed(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        if d.get("status") == "not computed":
            yield prefix, d.get("reason", "")
            return
        for k, v in d.items():
            yield from _walk_not_computed(v, f"{prefix}.{k}" if prefix else k)
