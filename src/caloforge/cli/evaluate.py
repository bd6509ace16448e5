"""``caloforge evaluate``: compare generated showers with a reference, write a report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from caloforge.cli._options import add_no_progress, non_negative_int
from caloforge.errors import InputError

# CLI option -> EvaluationConfig field; options left out keep the --config file's value
# (or the default).
FIELDS = {"labels": "labels", "geometry": "geometry", "threshold_mip": "threshold_mip",
          "seed": "seed", "classifier": "classifier", "classifier_floor": "classifier_floor",
          "device": "device", "train_ref": "train_reference", "batch_size": "batch_size",
          "lowlevel_memory_gib": "lowlevel_memory_gib", "threads": "threads",
          "reco": "reco", "reco_calibration": "reco_calibration",
          "reco_light_yield": "reco_light_yield", "reco_sipm_pixels": "reco_sipm_pixels",
          "reco_noise_mip": "reco_noise_mip", "reco_threshold_mip": "reco_threshold_mip",
          "reco_max_rel_error": "reco_max_rel_error", "realistic": "realistic"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare generated showers with a reference (HTML report + JSON)",
        description="Physics observables, histogram metrics with noise floors, classifier "
                    "test, FPD/KPD and an HTML report (plots inline) plus metrics.json. "
                    "Exits 1 if a requested comparison could not be made (the report of "
                    "what could be compared is still written).")
    p.add_argument("reference", help="reference shower file (e.g. Geant4 test set)")
    p.add_argument("generated", nargs="+", help="one or more generated shower files")
    p.add_argument("--config", help="evaluation settings (YAML, the keys of "
                                    "EvaluationConfig); options given here override it")
    p.add_argument("--labels", nargs="+", help="legend labels of the generated files")
    p.add_argument("--geometry", help="geometry name if the files do not carry it")
    p.add_argument("--threshold-mip", type=float,
                   help="readout threshold in MIP (default: the geometry's threshold, "
                        "0.5 MIP for the ILD calorimeters)")
    p.add_argument("--seed", type=non_negative_int, help="seed of every random choice (default 0)")
    p.add_argument("--no-classifier", dest="classifier", action="store_const", const=False,
                   help="skip the classifier test")
    p.add_argument("--no-classifier-floor", dest="classifier_floor", action="store_const",
                   const=False,
                   help="skip the reference-vs-reference classifier run (noise floor)")
    p.add_argument("--device", help="torch device of the classifier (default cpu)")
    p.add_argument("--train-ref", help="training file of the generator: enables the "
                                       "memorisation check")
    p.add_argument("--batch-size", type=int, help="showers per chunk read (default 1000)")
    p.add_argument("--lowlevel-memory-gib", type=float,
                   help="memory for the low-level classifier subsample (float16 voxels; "
                        "default 0.75)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for linear algebra and the classifier (default 1: "
                        "fastest on shared machines; 0 = library default)")
    p.add_argument("--protocol", choices=("caloforge", "calochallenge"), default="caloforge",
                   help="caloforge (default): this report; calochallenge: the CaloChallenge "
                        "2022 evaluation of datasets 1-photons, 1-pions, 2, 3 (official "
                        "thresholds, binning, separation powers, classifiers, FPD/KPD; "
                        "seeded, deviations listed in calochallenge_metrics.json)")
    p.add_argument("--dataset", help="CaloChallenge dataset for --protocol calochallenge "
                                     "(1-photons, 1-pions, 2, 3; default: the reference "
                                     "file's geometry)")
    p.add_argument("--classifier-epochs", type=int,
                   help="--protocol calochallenge: classifier epochs (official: 50; hours "
                        "on a CPU at 100k showers)")
    p.add_argument("--no-fpd-kpd", dest="fpd_kpd", action="store_false",
                   help="--protocol calochallenge: skip FPD/KPD (the official batch sizes of "
                        "10k-50k showers take minutes whatever the sample size)")
    g = p.add_argument_group(
        "reconstruction level (seed 001)",
        "digitisation (SiPM light yield, pixel saturation, noise, threshold), calibration "
        "fitted on the reference (saved as reco_calibration.json in the report) and "
        "software compensation; linearity and resolution with and without it.  On by "
        "default for SiPM-on-tile hadron calorimeters (ild-ahcal).")
    g.add_argument("--reco", dest="reco", action="store_const", const=True,
                   help="evaluate the reconstruction level (error if it cannot be made)")
    g.add_argument("--no-reco", dest="reco", action="store_const", const=False,
                   help="skip the reconstruction level")
    g.add_argument("--reco-calibration", metavar="FILE",
                   help="calibration file to use instead of fitting one on the reference "
                        "(e.g. reco_calibration.json of an earlier report)")
    g.add_argument("--reco-light-yield", type=float,
                   help="photo-electrons per MIP (default 15)")
    g.add_argument("--reco-sipm-pixels", type=int, help="SiPM pixels (default 2000)")
    g.add_argument("--reco-noise-mip", type=float,
                   help="electronics noise in MIP (default 0.05)")
    g.add_argument("--reco-threshold-mip", type=float,
                   help="threshold after digitisation in MIP (default 0.5)")
    g.add_argument("--reco-max-rel-error", type=float,
                   help="statistical precision of sigma90/mu90 that sets the minimum "
                        "showers per incident energy (default 0.10: 68 showers)")
    p.add_argument("--realistic", action="store_const", const=True,
                   help="project point files into the cells with the wafer gaps and "
                        "staggering of the geometry (as generate --project --realistic)")
    p.add_argument("--report", required=True, help="output folder of the report")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    add_no_progress(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from caloforge.evaluation import EvaluationConfig
    from caloforge.evaluation.config import check_device
    from caloforge.models.config import read_yaml

    given: dict[str, Any] = {FIELDS[k]: getattr(args, k) for k in FIELDS
                             if getattr(args, k) is not None}
    if "threads" in given:
        if given["threads"] < 0:
            raise InputError(f"--threads must be >= 0 (0: library default), got "
                             f"{given['threads']}")
        given["threads"] = given["threads"] or None
    data = read_yaml(args.config) if args.config else {}
    data.update(given)
    cfg = EvaluationConfig.from_dict(data, source=args.config)
    if cfg.labels and len(cfg.labels) != len(args.generated):
        raise InputError(f"{len(cfg.labels)} labels given for {len(args.generated)} "
                         "generated files (--labels)")
    check_device(cfg.device)
    return cfg


def _run_calochallenge(args: argparse.Namespace) -> int:
    from caloforge.data.io import open_showers
    from caloforge.evaluation.calochallenge import format_summary, run_calochallenge_protocol
    from caloforge.evaluation.calochallenge.classifier import OfficialClassifierConfig
    from caloforge.evaluation.config import check_device

    if len(args.generated) != 1:
        raise InputError(f"--protocol calochallenge compares one generated file, "
                         f"got {len(args.generated)}")
    if args.classifier_epochs is not None and args.classifier_epochs < 1:
        raise InputError(f"--classifier-epochs must be >= 1, got {args.classifier_epochs}")
    device = args.device or "cpu"
    check_device(device)
    dataset = args.dataset
    if dataset is None:
        with open_showers(args.reference, geometry=args.geometry) as f:
            dataset = f.geometry  # the protocol refuses geometries outside the challenge
    seed = 0 if args.seed is None else args.seed
    clf_cfg = OfficialClassifierConfig(device=device, seed=seed)
    if args.classifier_epochs is not None:
        clf_cfg.epochs = args.classifier_epochs
    classifiers = () if args.classifier is False else ("high_level", "low_level")
    res = run_calochallenge_protocol(args.reference, args.generated[0], dataset, args.report,
                                     seed=seed, device=device, classifiers=classifiers,
                                     classifier_config=clf_cfg, fpd_kpd=args.fpd_kpd,
                                     overwrite=args.overwrite,
                                     log=None if args.no_progress else print)
    print("\n".join(format_summary(res)))
    print(f"metrics written to {args.report}")
    return 0


def run(args: argparse.Namespace) -> int:
    from caloforge.evaluation import evaluate

    if args.protocol == "calochallenge":
        return _run_calochallenge(args)
    if args.dataset is not None or args.classifier_epochs is not None or not args.fpd_kpd:
        raise InputError("--dataset, --classifier-epochs and --no-fpd-kpd belong to "
                         "--protocol calochallenge")
    cfg = _config(args)
    res = evaluate(args.reference, args.generated, config=cfg, report_dir=args.report,
                   overwrite=args.overwrite,
                   progress_bar=False if args.no_progress else None)
    m = res.metrics
    for w in m["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for g in m["generated"]:
        if g.get("status") != "ok":
            print(f"{g['label']}: not compared ({g.get('reason', '')})")
            continue
        v = g.get("verdict", {})
        print(f"{g['label']}: " + ", ".join(f"{k} {c}" for k, c in v.items()))
        for kind, c in (g.get("classifier") or {}).items():
            if "power_verdict" in c:
                print(f"  classifier {kind}: AUC {c['auc']:.3f}, {c['power_verdict']} "
                      f"(smallest detectable AUC {c['min_detectable_auc']:.3f})")
    print(f"report written to {args.report}/index.html")
    if not res.complete:
        # Scripts must not mistake a partial comparison for a complete one.
        print(f"caloforge evaluate: error: not compared: {'; '.join(m['not_compared'])} "
              f"(the report of what could be compared is in {args.report})", file=sys.stderr)
        return 1
    return 0
