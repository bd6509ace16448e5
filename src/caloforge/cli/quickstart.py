"""``caloforge quickstart``: simulate, generate with the shipped default, evaluate, report.

The whole chain of caloforge on one small sample: the built-in reference simulation makes
ILD ECAL photon showers, the shipped default model generates showers for exactly the same
incident energies, and the evaluation compares the two and writes its report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from caloforge.cli._options import add_no_progress, non_negative_int, positive_int

DEFAULT_MODEL = "ild-ecal-photons"
DETECTOR = "ild-ecal"
PARTICLE = "photon"
ENERGY_GEV = (10.0, 100.0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="simulate, generate with the shipped default model, evaluate",
        description="Simulate a small reference sample of ILD ECAL photons (10-100 GeV, over "
                    "the directions the model was trained on) with the built-in simulation, "
                    "generate showers at the same conditions with the shipped default model, "
                    "compare both with 'caloforge evaluate' and write the report. Takes a few "
                    "minutes on 2 cores with the defaults.")
    p.add_argument("--out", default="caloforge-quickstart",
                   help="output folder (default ./caloforge-quickstart)")
    p.add_argument("--n", type=positive_int, default=1000,
                   help="showers per sample (default 1000; the evaluation needs at least "
                        "about 500, checked before anything runs)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of simulation and generation (default 0)")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the classifier test (the slowest part of the evaluation)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"shipped model or model folder (default {DEFAULT_MODEL})")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="simulation processes (default 2)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads for generation and the classifier (default 1: on shared "
                        "CPUs more threads were measured to be much slower)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty output folder (its reference.h5, generated.h5 "
                        "and report/ are replaced)")
    add_no_progress(p)
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


#: chance, per test, that a random half of the reference falls below the test's minimum
HALF_SPLIT_RISK = 1e-6


def _n_for_random_halves(per_half: int, splits: int) -> int:
    """Smallest sample whose ``splits`` random halves all hold >= ``per_half`` showers,
    except with probability HALF_SPLIT_RISK (each shower joins a half with p = 1/2)."""
    from scipy.stats import binom

    n = 2 * per_half
    while 2 * splits * binom.cdf(per_half - 1, n, 0.5) > HALF_SPLIT_RISK:
        n += 1
    return n


def minimum_showers(classifier: bool = True) -> dict[str, int]:
    """Showers per sample that each test of the quickstart evaluation needs.

    Every test compares the generated sample with the reference and, for its noise floor,
    two halves of the reference with each other: random halves (the evaluation's
    ``N_FLOOR_SPLITS`` of them for the histograms, one for FPD and KPD), exact halves for
    the classifier.
    """
    from caloforge.evaluation import api as E
    from caloforge.evaluation import classifier as C
    from caloforge.evaluation import metrics as M

    need = {"histograms": _n_for_random_halves(M.MIN_SHOWERS_HIST, E.N_FLOOR_SPLITS),
            "FPD": _n_for_random_halves(M.MIN_SHOWERS_FPD, 1),
            "KPD": _n_for_random_halves(M.MIN_SHOWERS_KPD, 1)}
    if classifier:
        need["classifier"] = 2 * C.MIN_SHOWERS_CLASSIFIER
    return need


def _check_model(model: str) -> None:
    """Refuse a model that cannot generate the quickstart's showers, before simulating."""
    import numpy as np

    from caloforge.errors import GeometryMismatchError
    from caloforge.models.base import load

    loaded = load(model)
    if loaded.geometry.name != DETECTOR:
        raise GeometryMismatchError(f"--model {model}: generates {loaded.geometry.name} "
                                    f"showers; the quickstart needs {DETECTOR}")
    loaded.check_energies(np.array(ENERGY_GEV) * 1e3)


def _check_folder(out: Path, overwrite: bool) -> None:
    from caloforge.errors import InputError, OutputExistsError

    if out.exists() and not out.is_dir():
        raise InputError("--out exists and is not a folder", out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError("quickstart output folder is not empty (use --overwrite or "
                                "another --out)", out)
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {existing}", out)


@contextlib.contextmanager
def _removed_on_failure(out: Path):
    """Create ``out``; if the body fails, remove what this run created there (the folder
    itself if it did not exist), so that a rerun is not blocked by a half-made folder."""
    top = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    before = set(out.iterdir()) if top is None else set()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from caloforge.errors import InputError

        raise InputError(f"cannot create the folder ({exc.strerror})", out) from None
    try:
        yield
    except BaseException:
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
        else:
            for p in set(out.iterdir()) - before:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        raise


def quickstart(out: str | Path, n: int = 1000, seed: int = 0, classifier: bool = True,
               model: str = DEFAULT_MODEL, workers: int = 2, overwrite: bool = False,
               show_progress: bool | None = None) -> dict[str, Any]:
    """Run the quickstart chain; returns a summary dict (paths, timings, key metrics).

    The sample size, the output folder and the model are checked before anything runs.
    If a step fails, what this run created in ``out`` is removed again.
    """
    from caloforge.errors import InputError

    need = minimum_showers(classifier)
    if n < max(need.values()):
        tests = ", ".join(f"{k} {v}" for k, v in need.items())
        raise InputError(f"--n {n} is too small for the evaluation (showers needed per "
                         f"sample: {tests}); use --n {max(need.values())} or more")
    if seed < 0 or workers < 1:
        raise InputError(f"seed must be >= 0 and workers >= 1 (got {seed}, {workers})")
    out = Path(out)
    _check_folder(out, overwrite)
    _check_model(model)
    with _removed_on_failure(out):
        return _run_chain(out, n, seed, classifier, model, workers, show_progress)


def _run_chain(out: Path, n: int, seed: int, classifier: bool, model: str, workers: int,
               show_progress: bool | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from caloforge import __version__
    from caloforge.data import Conditions
    from caloforge.data.io import write_showers
    from caloforge.evaluation import ClassifierConfig, evaluate
    from caloforge.models import load
    from caloforge.models.generation import generate_file
    from caloforge.simulation import iter_simulate
    from caloforge.simulation.api import make_config

    ref_path, gen_path, report = out / "reference.h5", out / "generated.h5", out / "report"
    summary: dict[str, Any] = {"out": str(out), "n": n, "seed": seed, "model": model}

    # The reference covers the directions the model was trained on (normal incidence for
    # a model without angles), so that the comparison is like for like.
    ranges = load(model).condition_space.ranges
    directions = {k: tuple(ranges[k]) for k in ("theta", "phi") if k in ranges}
    where = ", ".join(f"{k} {np.degrees(lo):.0f}-{np.degrees(hi):.0f} deg"
                      for k, (lo, hi) in directions.items()) or "normal incidence"
    _say(f"1/3 simulating {n} {PARTICLE} showers in {DETECTOR}, "
         f"{ENERGY_GEV[0]:g}-{ENERGY_GEV[1]:g} GeV, {where} (built-in reference simulation)")
    t0 = time.perf_counter()
    energy = (ENERGY_GEV[0] * 1e3, ENERGY_GEV[1] * 1e3)
    cfg = make_config(DETECTOR, PARTICLE, energy, n, seed, **directions)
    meta = {"simulation": cfg.to_dict(), "caloforge_version": __version__,
            "produced_by": "caloforge quickstart"}
    conditions = []
    with write_showers(ref_path, "caloforge", DETECTOR, overwrite=True, metadata=meta) as w:
        for batch in iter_simulate(DETECTOR, PARTICLE, energy, n, seed, workers=workers,
                                   progress=show_progress, **directions):
            conditions.append(batch.conditions)
            w.append(batch)
    conditions = Conditions.concatenate(conditions)
    summary["simulation_s"] = time.perf_counter() - t0
    summary["simulation_ms_per_shower"] = 1e3 * summary["simulation_s"] / n
    _say(f"    {ref_path} ({summary['simulation_s']:.1f} s)")

    _say(f"2/3 generating showers at the same {n} conditions with model {model!r}")
    t0 = time.perf_counter()
    gmeta = generate_file(model, conditions, gen_path, batch_size=500, seed=seed + 1,
                          overwrite=True, show_progress=show_progress,
                          extra_metadata={"produced_by": "caloforge quickstart",
                                          "conditions": f"those of {ref_path.name}"})
    summary["generation_s"] = time.perf_counter() - t0
    summary["generation_ms_per_shower"] = gmeta["time_per_shower_ms"]
    _say(f"    {gen_path} ({gmeta['time_per_shower_ms']:.3g} ms/shower model time)")

    _say("3/3 evaluating generated against reference showers"
         + ("" if classifier else " (no classifier)"))
    t0 = time.perf_counter()
    res = evaluate(ref_path, [gen_path], [model], seed=seed, classifier=classifier,
                   classifier_config=ClassifierConfig(seed=seed, threads=torch.get_num_threads(),
                                                      max_seconds=60.0) if classifier
                   else None, report_dir=report, overwrite=True, progress_bar=show_progress,
                   threads=torch.get_num_threads())
    summary["evaluation_s"] = time.perf_counter() - t0
    summary["report"] = str(report)
    g = res.metrics["generated"][0]
    summary["verdict"] = g.get("verdict", {})
    resp = g.get("response", {})
    summary["mu90_max_rel_dev"] = resp.get("mu90_max_rel_dev")
    summary["sigma90_over_mu90_max_rel_dev"] = resp.get("sigma90_over_mu90_max_rel_dev")
    for key, val in (g.get("classifier") or {}).items():
        if isinstance(val, dict) and "auc" in val:
            summary[f"auc_{key}"] = val["auc"]
            summary[f"auc_{key}_floor"] = val.get("auc_floor")
    summary["not_computed"] = list(res.metrics.get("not_computed", []))
    return summary


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    s = quickstart(args.out, args.n, args.seed, not args.no_classifier, args.model,
                   args.workers, args.overwrite, False if args.no_progress else None)

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "n/a"

    _say(f"simulation {s['simulation_ms_per_shower']:.3g} ms/shower, generation "
         f"{s['generation_ms_per_shower']:.3g} ms/shower "
         f"(x{s['simulation_ms_per_shower'] / max(s['generation_ms_per_shower'], 1e-9):.0f})")
    _say(f"energy response: max |mu90 dev| {fmt(s['mu90_max_rel_dev'])}, max |sigma90/mu90 "
         f"dev| {fmt(s['sigma90_over_mu90_max_rel_dev'])} (relative, per energy bin)")
    for kind in ("low_level", "high_level"):
        if f"auc_{kind}" in s:
            _say(f"classifier AUC {kind.replace('_', '-')}: {fmt(s[f'auc_{kind}'])} "
                 f"(reference vs reference: {fmt(s[f'auc_{kind}_floor'])}; 0.5 = "
                 f"indistinguishable)")
    if s["verdict"]:
        _say("verdicts: " + ", ".join(f"{k} {v}" for k, v in s["verdict"].items()))
    _say(f"done in {time.perf_counter() - t0:.0f} s; report: {Path(s['report']) / 'index.html'}")
    if s["not_computed"]:
        from caloforge.errors import CaloforgeError

        raise CaloforgeError(f"{len(s['not_computed'])} results could not be computed (first: "
                             f"{s['not_computed'][0]}); the report lists them")
    return 0
