"""``caloforge evaluate``: compare generated showers with a reference, write a report."""

from __future__ import annotations

import argparse
import sys

from caloforge.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare generated showers with a reference (HTML report + JSON)",
        description="Physics observables, histogram metrics with noise floors, classifier "
                    "test, FPD/KPD and an HTML report (plots inline) plus metrics.json.")
    p.add_argument("reference", help="reference shower file (e.g. Geant4 test set)")
    p.add_argument("generated", nargs="+", help="one or more generated shower files")
    p.add_argument("--labels", nargs="+", help="legend labels of the generated files")
    p.add_argument("--geometry", help="geometry name if the files do not carry it")
    p.add_argument("--threshold-mip", type=float, default=None,
                   help="readout threshold in MIP (default: the geometry's threshold, "
                        "0.5 MIP for the ILD calorimeters)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier test")
    p.add_argument("--no-classifier-floor", action="store_true",
                   help="skip the reference-vs-reference classifier run (noise floor)")
    p.add_argument("--device", default="cpu", help="torch device of the classifier")
    p.add_argument("--train-ref", help="training file of the generator: enables the "
                                       "memorisation check")
    p.add_argument("--batch-size", type=int, default=1000, help="showers per chunk read")
    p.add_argument("--lowlevel-memory-gib", type=float, default=0.75,
                   help="memory for the low-level classifier subsample (float16 voxels)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for linear algebra and the classifier (default 1: "
                        "fastest on shared machines; 0 = library default)")
    p.add_argument("--report", required=True, help="output folder of the report")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caloforge.evaluation import EvaluationConfig, evaluate
    from caloforge.evaluation.config import check_device

    if args.labels and len(args.labels) != len(args.generated):
        raise InputError(f"{len(args.labels)} labels given for {len(args.generated)} "
                         "generated files (--labels)")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0 (0: library default), got {args.threads}")
    check_device(args.device)
    cfg = EvaluationConfig.from_dict(dict(
        geometry=args.geometry, threshold_mip=args.threshold_mip, seed=args.seed,
        labels=args.labels, classifier=not args.no_classifier,
        classifier_floor=not args.no_classifier_floor, device=args.device,
        train_reference=args.train_ref, batch_size=args.batch_size,
        lowlevel_memory_gib=args.lowlevel_memory_gib, threads=args.threads or None))
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
    print(f"report written to {args.report}/index.html")
    if not res.complete:
        # Scripts must not mistake a partial comparison for a complete one.
        print(f"caloforge evaluate: error: not compared: {'; '.join(m['not_compared'])} "
              f"(the report of what could be compared is in {args.report})", file=sys.stderr)
        return 1
    return 0
