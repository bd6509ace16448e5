"""Sampling speed of the CaloFlow teacher (MAF) and its distilled student (IAF).

Trains (a few steps: speed does not depend on how well a flow is trained) or loads a
teacher and a student, then prints, measured in this run:

- ms per shower at batch 1 on 1 thread (the way the Geant4 fast-simulation hooks call a
  model), for teacher and student;
- ms per shower at the best of ``--batches`` on 2 threads;
- the student/teacher speed ratio at each;
- with ``--calogan DIR``, the same two figures for a trained CaloGAN (target: <= 0.1 ms
  per shower at its best batch on 2 threads).

Targets (issue 11): student >= 100x faster than the teacher at batch 1, and <= 1 ms per
shower at its best batch on 2 CPU threads.  The teacher at batch 1 needs one network pass
per feature and block, so it is timed on few showers (``--teacher-showers``).

With ``--reference FILE`` (held-out reference showers) it also prints, in the same run,
the fidelity of each model (teacher, student and, with ``--calogan DIR``, a trained
CaloGAN) generated at the reference's exact conditions: low- and high-level classifier
AUC with their noise floors, and each observable's Wasserstein distance over its noise
floor (the CaloGAN shower shapes on the CaloGAN geometry), from one ``caloforge
evaluate`` of all samples together; and the time per shower of the builtin reference
simulation at the same conditions.  The teacher samples cell after cell (a few ms per
shower in large batches): ``--teacher-fidelity-showers`` caps its sample (a smaller sample
lowers the classifier's power; the printout gives both sample sizes).

    python benchmarks/bench_caloflow.py --geometry calochallenge-1-photons --preset default
    python benchmarks/bench_caloflow.py --geometry calogan --preset tiny
    python benchmarks/bench_caloflow.py --teacher RUN/model --student RUN2/model
    python benchmarks/bench_caloflow.py --teacher calochallenge-1-photons \
        --student STUDENT/model --teacher-batch 1000 --reference heldout.h5 \
        --teacher-fidelity-showers 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from caloforge.data import Conditions, ShowerBatch
from caloforge.geometry import get_geometry
from caloforge.models import load
from caloforge.training import TrainConfig, train


def synthetic_showers(geometry: str, n: int, seed: int = 0) -> ShowerBatch:
    """Sparse showers on any geometry: a longitudinal profile peaking deeper with
    energy, exponential cell energies, 1-100 GeV log-uniform (not physics: for timing)."""
    geo = get_geometry(geometry)
    rng = np.random.default_rng(seed)
    e = np.exp(rng.uniform(np.log(1e3), np.log(1e5), n))
    depth = (np.arange(geo.n_layers) + 0.5) / geo.n_layers
    peak = 0.3 + 0.1 * np.log10(e / 1e3)
    profile = np.exp(-0.5 * ((depth[None] - peak[:, None]) / 0.3) ** 2)
    profile /= profile.sum(1, keepdims=True)
    x = np.zeros((n, geo.n_voxels), np.float32)
    off = geo.layer_offsets
    for k in range(geo.n_layers):
        cells = int(off[k + 1] - off[k])
        w = rng.exponential(1.0, (n, cells)) * (rng.random((n, cells)) < 0.3)
        w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
        x[:, off[k]:off[k + 1]] = w * (0.02 * e * profile[:, k])[:, None]
    return ShowerBatch(geo.name, x, Conditions(e))


def ms_per_shower(model, n: int, batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    e = np.full(n, 2e4)
    model.sample(e[:min(batch, n)], seed=0, batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    model.sample(e, seed=1, batch_size=batch)
    return (time.perf_counter() - t0) / n * 1e3


def generated_at(model, conditions, n: int, seed: int = 7) -> tuple[ShowerBatch, float]:
    """Showers of ``model`` at the first ``n`` ``conditions``, and ms per shower (2 threads)."""
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    batch = model.sample(conditions[:n], seed=seed, batch_size=1000)
    return batch, (time.perf_counter() - t0) / n * 1e3


def reference_ms_per_shower(reference: ShowerBatch, n: int = 240) -> float:
    """The builtin simulation's mean time per shower over the reference's energy spectrum
    (each distinct energy timed and weighted by its frequency; one process)."""
    from caloforge.data import PDG_NAMES
    from caloforge.simulation import simulate

    cond = reference.conditions
    particle = PDG_NAMES.get(int(cond.particle[0]), "photon") if cond.particle is not None \
        else "photon"
    values, counts = np.unique(cond.incident_energy, return_counts=True)
    if len(values) > 32:  # a continuous spectrum: time n of its energies
        values, counts = np.random.default_rng(0).choice(cond.incident_energy, n), np.ones(n)
    per = max(1, n // len(values))
    simulate(reference.geometry, particle, float(values[0]), 1, seed=0)  # compile
    total = 0.0
    for energy, count in zip(values, counts):
        t0 = time.perf_counter()
        simulate(reference.geometry, particle, float(energy), per, seed=1)
        total += (time.perf_counter() - t0) / per * count
    return total / counts.sum() * 1e3


def print_classifiers(entry: dict) -> None:
    """One line per classifier level of an evaluation's ``generated`` entry."""
    for level, c in entry["classifier"].items():
        if "auc" in c:
            print(f"  {level} classifier AUC {c['auc']:.3f} (noise floor {c['auc_floor']:.3f},"
                  f" train/test {c['n_train']}/{c['n_test']})")
        else:
            print(f"  {level} classifier: {c.get('reason', c.get('status'))}")


def print_distances(title: str, values: dict) -> None:
    """Each observable's Wasserstein distance over its noise floor, on one line."""
    ratios = {k: v["wasserstein"] / max(v["wasserstein_floor"], 1e-12)
              for k, v in values.items() if isinstance(v, dict) and "wasserstein" in v}
    if ratios:
        print(f"  {title}W / noise floor: "
              + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items()))


def fidelity(reference_file: str, models: dict, n_max: int, teacher_n: int) -> None:
    """Print classifier AUCs and Wasserstein distances over their noise floors."""
    from caloforge.data.io import open_showers
    from caloforge.evaluation import evaluate

    with open_showers(reference_file) as f:
        reference = f.read(0, min(len(f), n_max) if n_max else None)
    n = len(reference)
    samples, labels, sizes = [], [], {}
    for label, model in models.items():
        m = min(teacher_n, n) if label == "teacher" else n
        batch, ms = generated_at(model, reference.conditions, m)
        samples.append(batch)
        labels.append(label)
        sizes[label] = (m, ms)
        print(f"generated {m} {label} showers at the reference conditions: {ms:.3f} ms/shower "
              f"(batch 1000, 2 threads, sampling only)")
    print(f"reference simulation: {reference_ms_per_shower(reference):.1f} ms/shower "
          f"(builtin engine, 1 process, same conditions)")
    ev = evaluate(reference, samples, labels, threads=2, progress_bar=False)
    for entry in ev.metrics["generated"]:
        label = entry["label"]
        print(f"--- {label}: {sizes[label][0]} generated vs {n} reference showers")
        print_classifiers(entry)
        print_distances("", entry.get("calogan_shapes") or entry["observables"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", default="calochallenge-1-photons")
    p.add_argument("--preset", default="default")
    p.add_argument("--steps", type=int, default=20, help="training steps of each model")
    p.add_argument("--teacher", help="trained caloflow folder (skip training)")
    p.add_argument("--student", help="trained caloflow-student folder (skip training)")
    p.add_argument("--teacher-showers", type=int, default=3)
    p.add_argument("--student-showers", type=int, default=200)
    p.add_argument("--batches", default="64,256,1024", help="student batches on 2 threads")
    p.add_argument("--teacher-batch", type=int, default=32, help="teacher batch on 2 threads")
    p.add_argument("--reference", help="held-out reference showers: also print fidelity")
    p.add_argument("--calogan", help="trained calogan folder to compare as well")
    p.add_argument("--fidelity-showers", type=int, default=0,
                   help="reference showers for the fidelity part (0: all)")
    p.add_argument("--teacher-fidelity-showers", type=int, default=2000)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_caloflow_"))
    torch.set_num_threads(2)
    if args.teacher and args.student:
        teacher, student = load(args.teacher), load(args.student)
    else:
        data = synthetic_showers(args.geometry, 1024)
        cfg = TrainConfig(steps=args.steps, batch_size=64, validate_every=0)
        t0 = time.perf_counter()
        teacher = train("caloflow", data, tmp / "teacher", preset=args.preset,
                        train_config=cfg, progress=False)
        t1 = time.perf_counter()
        student = train("caloflow-student", data, tmp / "student", preset=args.preset,
                        progress=False, train_config=cfg.replace(
                            frozen_models={"teacher": str(tmp / "teacher" / "model")}))
        t2 = time.perf_counter()
        print(f"trained {args.preset} on {args.geometry} ({data.energies.shape[1]} voxels), "
              f"{args.steps} steps of 64 on 2 threads, set-up and saving included: teacher "
              f"{t1 - t0:.1f} s, student {t2 - t1:.1f} s")
    n_w = sum(p.numel() for p in teacher.shower_flow.parameters())
    layers = ("its own IAF" if student.layer_blocks is not None
              else "the teacher's MAF (distil_layers: false)")
    print(f"shower flow: {teacher.n_features} features, {len(student.blocks)} blocks, "
          f"{n_w / 1e6:.2f} M weights (teacher), "
          f"{sum(p.numel() for p in student.parameters()) / 1e6:.2f} M (student); layer flow "
          f"of the student: {layers}")

    t_b1 = ms_per_shower(teacher, args.teacher_showers, 1, 1)
    s_b1 = ms_per_shower(student, args.student_showers, 1, 1)
    print(f"batch 1, 1 thread:   teacher {t_b1:10.2f} ms/shower   student {s_b1:8.3f} "
          f"ms/shower   student/teacher speed ratio {t_b1 / s_b1:7.1f}x  (target >= 100x)")
    t_best = ms_per_shower(teacher, args.teacher_batch, args.teacher_batch, 2)
    s_times = {b: ms_per_shower(student, max(2 * b, 1024), b, 2)
               for b in (int(v) for v in args.batches.split(","))}
    best = min(s_times, key=s_times.get)
    one = {b: ms_per_shower(student, max(2 * b, 1024), b, 1) for b in s_times}
    print(f"2 threads:           teacher {t_best:10.2f} ms/shower (batch {args.teacher_batch})"
          f"   student {s_times[best]:8.3f} ms/shower (best batch {best}; "
          + ", ".join(f"{b}: {v:.3f}" for b, v in s_times.items())
          + f")   ratio {t_best / s_times[best]:7.1f}x  (target student <= 1 ms)")
    print("student on 1 thread: " + ", ".join(f"batch {b}: {v:.3f}" for b, v in one.items())
          + " ms/shower (2 threads lose to 1 on an oversubscribed machine)")

    calogan = load(args.calogan) if args.calogan else None
    if calogan is not None:
        g_b1 = ms_per_shower(calogan, args.student_showers, 1, 1)
        g_times = {b: ms_per_shower(calogan, max(2 * b, 1024), b, 2)
                   for b in (int(v) for v in args.batches.split(","))}
        g_best = min(g_times, key=g_times.get)
        print(f"calogan:             batch 1, 1 thread {g_b1:8.3f} ms/shower; 2 threads "
              f"{g_times[g_best]:8.4f} ms/shower (best batch {g_best}; "
              + ", ".join(f"{b}: {v:.4f}" for b, v in g_times.items())
              + ")  (target <= 0.1 ms at the best batch)")

    if args.reference:
        models = {"teacher": teacher, "student": student}
        if calogan is not None:
            models["calogan"] = calogan
        fidelity(args.reference, models, args.fidelity_showers, args.teacher_fidelity_showers)


if __name__ == "__main__":
    main()
