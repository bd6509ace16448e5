"""Issue 10's comparison in one run: point models, the voxel default and the simulation.

For every ``--model LABEL=FOLDER_OR_NAME`` (trained ``caloclouds``, ``caloclouds2``,
``caloclouds2-cm`` folders or shipped names, and the voxel default ``ild-ecal-photons``)
it prints, measured in this run at the conditions of the held-out ``--reference`` file
(a point file from ``caloforge simulate --points``):

- ms per shower at batch 1 on 1 thread (the way Geant4's fast-simulation hooks call a
  model) and at the best of ``--batches`` on 2 threads; point models include the
  ShowerFlow and the projection of the points into the detector cells;
- fidelity: showers generated at the reference's exact conditions, compared with the
  reference by one ``caloforge evaluate`` of all samples together: low- and high-level
  classifier AUC with their noise floors, and every observable's Wasserstein distance
  over its noise floor (voxel observables after projection; point observables for
  point models);
- the builtin reference simulation's time per shower at the same conditions (points).

Slow samplers (``caloclouds`` at 100 steps) can be given fewer fidelity showers with
``--showers LABEL=N`` (a smaller sample lowers the classifier's power; the printout gives
the sample sizes).  Prints figures; asserts nothing.

    python benchmarks/bench_point_models.py --reference heldout_points.h5 \\
        --model cm=ild-ecal-photons-points --model teacher=RUN/model \\
        --model voxel=ild-ecal-photons --showers teacher=5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_caloflow import print_classifiers, print_distances  # benchmarks/ is on sys.path
from bench_points import per_shower_ms

from caloforge.data import Conditions, PointCloudBatch
from caloforge.data.io import open_showers
from caloforge.models import load


def _pairs(values: list[str], name: str) -> dict[str, str]:
    out = {}
    for v in values:
        label, sep, rest = v.partition("=")
        if not sep or not label or not rest:
            raise SystemExit(f"{name} wants LABEL=VALUE (got {v!r})")
        out[label] = rest
    return out


def sample_voxels(model, conditions: Conditions, seed: int, batch: int):  # noqa: ANN001, ANN201
    """Showers of ``model`` at ``conditions``; point clouds projected into the cells."""
    out = model.sample(conditions, seed, batch_size=batch)
    return out.to_voxels()[0] if isinstance(out, PointCloudBatch) else out


def model_ms(model, conditions: Conditions, batch: int, threads: int,  # noqa: ANN001
             min_seconds: float) -> float:
    """Wall ms per shower (:func:`bench_points.per_shower_ms`) of calls of ``batch``
    showers, drawing the conditions in turn from the reference's."""
    torch.set_num_threads(threads)
    drawn = [0]

    def call(b: int) -> None:
        rows = (drawn[0] + np.arange(b)) % len(conditions)
        drawn[0] += b
        sample_voxels(model, conditions[rows], drawn[0], b)

    return per_shower_ms(call, batch, 1, min_seconds)


def simulation_ms(conditions: Conditions, geometry: str, n: int) -> float:
    """The builtin simulation (point output) per shower at ``n`` of the conditions."""
    from caloforge.simulation import simulate

    def one(i: int, seed: int) -> None:
        simulate(geometry, "photon", float(conditions.incident_energy[i]), 1, seed=seed,
                 theta=float(conditions.theta[i]), phi=float(conditions.phi[i]), points=True)

    one(0, 0)  # compile
    t0 = time.perf_counter()
    for i in range(n):
        one(i % len(conditions), i + 1)
    return 1e3 * (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="held-out point file")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=MODEL",
                   help="a model folder or shipped name (repeat)")
    p.add_argument("--showers", action="append", default=[], metavar="LABEL=N",
                   help="fidelity showers of one model (default: the whole reference)")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--reference-showers", type=int, default=0,
                   help="use the first N showers of the reference (0: all)")
    p.add_argument("--simulation-showers", type=int, default=200,
                   help="showers to time the builtin simulation on (0: skip it)")
    p.add_argument("--no-fidelity", action="store_true")
    args = p.parse_args()
    models = {label: load(name) for label, name in _pairs(args.model, "--model").items()}
    if not models:
        raise SystemExit("give at least one --model LABEL=MODEL")
    caps = {k: int(v) for k, v in _pairs(args.showers, "--showers").items()}
    with open_showers(args.reference) as f:
        reference = f.read_points(0, args.reference_showers or None)
    cond, geometry = reference.conditions, reference.geometry
    print(f"torch {torch.__version__}; reference {args.reference}: {len(reference)} showers "
          f"on {geometry}")
    for label, model in models.items():
        one = model_ms(model, cond, 1, 1, args.min_seconds)
        best = min((model_ms(model, cond, b, 2, args.min_seconds), b)
                   for b in args.batches)
        print(f"{label:10s} ({model.name}): batch 1, 1 thread {one:8.2f} ms; best batch, "
              f"2 threads {best[0]:7.3f} ms (batch {best[1]})", flush=True)
    torch.set_num_threads(1)
    if args.simulation_showers > 0:
        sim = simulation_ms(cond, geometry, args.simulation_showers)
        print(f"reference simulation: {sim:.1f} ms/shower (builtin engine, points, 1 process, "
              f"{args.simulation_showers} showers)")
    if not args.no_fidelity:
        fidelity(reference, models, caps)


def fidelity(reference: PointCloudBatch, models: dict, caps: dict[str, int]) -> None:
    from caloforge.evaluation import evaluate

    torch.set_num_threads(2)
    samples, sizes = [], {}
    for label, model in models.items():
        n = min(caps.get(label, len(reference)), len(reference))
        t0 = time.perf_counter()
        samples.append(model.sample(reference.conditions[:n], 7, batch_size=256))
        sizes[label] = n
        print(f"generated {n} {label} showers at the reference conditions in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    ev = evaluate(reference, samples, list(models), threads=2, progress_bar=False)
    for entry in ev.metrics["generated"]:
        label = entry["label"]
        print(f"--- {label}: {sizes[label]} generated vs {len(reference)} reference showers")
        print_classifiers(entry)
        for section in ("observables", "points"):
            print_distances(f"{section} ", entry.get(section) or {})

if __name__ == "__main__":
    main()
