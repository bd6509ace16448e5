"""Timing harness: time per shower of a trained model (PyTorch, and its exported ONNX and
TorchScript forms) for several batch sizes and thread counts, on CPU and on CUDA when
present, next to the reference simulation timed in the same run.

Every setting is timed the same way: warm-up calls (TorchScript specialises its graph
during its first runs, CUDA initialises lazily), then repeated calls until
``max_repeats`` calls or ``min_time_s`` seconds, whichever comes first, with
``torch.cuda.synchronize`` after each call on CUDA; the figure is the median call time
over the batch size.  A run has a time limit: the smallest batch size of every backend
is always timed, and a larger one whose predicted cost (from the same backend at the
previous, smaller batch size) would overrun the limit is skipped and recorded as
skipped, so the default settings finish in bounded time.

The inputs are reproducible: the conditions are drawn from ``seed`` (within the model's
trained ranges unless given) and the showers from ``seed`` too.

>>> BenchSettings().batch_sizes
(1, 10, 100, 1000)
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge import __version__
from caloforge.data.batch import PDG_NAMES, Conditions
from caloforge.errors import ConfigError, InputError

BACKENDS = ("pytorch", "onnx", "torchscript")
MAX_BATCH = 10_000
SIMULATION = "simulation"


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class BenchSettings:
    """What to time.  ``threads`` None: 1 and all cores; ``device`` ``"auto"``: CPU,
    plus CUDA when present; ``energy_gev`` / ``theta_deg`` / ``phi_deg``: ``"X"`` or
    ``"LO:HI"`` (None: the model's trained ranges or fixed values)."""

    batch_sizes: tuple[int, ...] = (1, 10, 100, 1000)
    threads: tuple[int, ...] | None = None
    device: str = "auto"
    backends: tuple[str, ...] = BACKENDS
    simulation: bool = True
    seed: int = 0
    energy_gev: str | None = None
    theta_deg: str | None = None
    phi_deg: str | None = None
    min_time_s: float = 1.0
    max_repeats: int = 20
    time_limit_s: float = 240.0  # per model, exports included

    def validate(self) -> None:
        if not self.batch_sizes:
            raise InputError("--batch-sizes: give at least one batch size")
        for b in self.batch_sizes:
            if not 1 <= int(b) <= MAX_BATCH:
                raise InputError(f"--batch-sizes: {b} is not in 1..{MAX_BATCH}")
        cores = available_cores()
        for t in self.threads or ():
            if not 1 <= int(t) <= cores:
                raise InputError(f"--threads: {t} is not in 1..{cores} (the CPU cores this "
                                 f"process may use)")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise InputError(f"--formats: {', '.join(unknown) or 'none given'}: choose from "
                             f"{', '.join(BACKENDS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda":
            from caloforge.utils.device import resolve_device
            resolve_device("cuda")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0, got {self.seed}")
        for name in ("min_time_s", "time_limit_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"{name.replace('_s', '').replace('_', '-')} must be a "
                                 f"positive number of seconds, got {value}")
        if self.max_repeats < 1:
            raise InputError(f"--max-repeats must be >= 1, got {self.max_repeats}")

    def thread_counts(self) -> tuple[int, ...]:
        return tuple(self.threads) if self.threads else tuple(sorted({1, available_cores()}))

    def devices(self) -> tuple[str, ...]:
        if self.device == "auto":
            return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        return (self.device,)


@dataclass
class Timing:
    """One measured (or skipped) setting; ``ms_per_shower`` None when skipped."""

    model: str
    backend: str
    device: str
    threads: int | None
    batch: int
    ms_per_shower: float | None
    repeats: int = 0
    note: str = ""


@dataclass
class BenchResult:
    settings: BenchSettings
    models: list[dict[str, Any]] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)

    def simulation_ms(self, model: str) -> float | None:
        sims = [t.ms_per_shower for t in self.timings
                if t.model == model and t.backend == SIMULATION and t.ms_per_shower]
        return sims[0] if sims else None

    def to_dict(self) -> dict[str, Any]:
        return {"producer": f"caloforge {__version__}", "torch": torch.__version__,
                "cores": available_cores(), "settings": asdict(self.settings),
                "models": self.models,
                "timings": [asdict(t) | {"speedup_vs_simulation": self._speedup(t)}
                            for t in self.timings]}

    def _speedup(self, t: Timing) -> float | None:
        sim = self.simulation_ms(t.model)
        if t.backend == SIMULATION or not sim or not t.ms_per_shower:
            return None
        return sim / t.ms_per_shower

    def table(self) -> str:
        """Plain-text table: ms per shower (speed-up vs the simulation) per backend."""
        lines = []
        for info in self.models:
            name = info["label"]
            sim = self.simulation_ms(name)
            lines.append(f"{name} ({info['architecture']}, {info['geometry']}, "
                         f"{info['conditions']})")
            if sim is not None:
                lines.append(f"  reference simulation (builtin engine, 1 process): "
                             f"{sim:.2f} ms/shower")
            rows = [t for t in self.timings if t.model == name and t.backend != SIMULATION]
            backends = [b for b in BACKENDS if any(t.backend == b for t in rows)]
            head = f"  {'device':<6} {'threads':>7} {'batch':>6}" + "".join(
                f" {b:>20}" for b in backends)
            lines += [head + "   (ms/shower, speed-up vs simulation)"]
            keys = sorted({(t.device, t.threads or 0, t.batch) for t in rows})
            for dev, thr, batch in keys:
                cells = []
                for b in backends:
                    match = [t for t in rows if (t.device, t.threads or 0, t.batch, t.backend)
                             == (dev, thr, batch, b)]
                    cells.append(_cell(match[0], self._speedup(match[0])) if match else "-")
                lines.append(f"  {dev:<6} {thr or '-':>7} {batch:>6}"
                             + "".join(f" {c:>20}" for c in cells))
            notes = sorted({t.note for t in self.timings if t.model == name and t.note
                            and t.ms_per_shower is None})
            lines += [f"  note: {n}" for n in notes]
        return "\n".join(lines)


def _cell(t: Timing, speedup: float | None) -> str:
    if t.ms_per_shower is None:
        return "skipped"
    return f"{t.ms_per_shower:.3g}" + (f" ({speedup:.3g}x)" if speedup else "")


# ---- conditions ---------------------------------------------------------------------------
def bench_conditions(model: Any, settings: BenchSettings, n: int) -> Conditions:
    """``n`` conditions (MeV, rad) from ``settings.seed``: the given ranges or the model's
    trained ones (uniform), the training data's fixed values for the rest."""
    from caloforge.models.generation import parse_angle_spec, parse_energy_spec

    rng = np.random.default_rng(settings.seed)
    if settings.energy_gev is not None:
        energy = parse_energy_spec(settings.energy_gev, n, rng)
    else:
        energy = rng.uniform(*model.energy_range_mev, n)
    space = model.condition_space
    angles = {}
    for name, spec in (("theta", settings.theta_deg), ("phi", settings.phi_deg)):
        if spec is not None:
            angles[name] = parse_angle_spec(spec, n, rng, f"--{name}")
        elif name in space.ranges:
            angles[name] = rng.uniform(*space.ranges[name], n)
    cond = space.complete(Conditions(energy, **angles))
    model.check_conditions(cond)
    return cond


def _simulation_options(cond: Conditions) -> dict[str, Any]:
    """The simulation's options spanning the same conditions (ranges, rad and mm)."""
    opts: dict[str, Any] = {}
    for name in ("theta", "phi"):
        v = getattr(cond, name)
        if v is not None:
            opts[name] = (float(v.min()), float(v.max()))
    if cond.impact is not None:
        opts["impact"] = tuple(float(v) for v in cond.impact[0])
    return opts


# ---- timing -------------------------------------------------------------------------------
def time_call(call: Callable[[int], Any], batch: int, settings: BenchSettings,
              sync: Callable[[], None] = lambda: None, warmup: int = 2) -> tuple[float, int]:
    """(median ms per shower, repeats) of ``call(batch)`` after ``warmup`` calls."""
    for _ in range(warmup):
        call(batch)
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < settings.max_repeats:
        t0 = time.perf_counter()
        call(batch)
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= settings.min_time_s:
            break
    return 1e3 * statistics.median(times) / batch, len(times)


class _Clock:
    """The run's deadline and the cost predictions that keep it."""

    def __init__(self, limit_s: float) -> None:
        self.deadline = time.perf_counter() + limit_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def skip_reason(self, last_ms: float, batch: int, warmup: int) -> str | None:
        if self.left() <= 0:
            return "skipped: the time limit (--time-limit) was reached"
        need = (warmup + 1) * last_ms * batch / 1e3
        if need > self.left():
            return (f"skipped: about {need:.0f} s predicted, {max(self.left(), 0):.0f} s "
                    f"left of --time-limit")
        return None


def _warmup_calls(last_ms: float | None, batch: int) -> int:
    """Two warm-up calls, one when a call is predicted to take over a second."""
    return 1 if last_ms is not None and last_ms * batch > 1e3 else 2


def _runners(model: Any, files: dict[str, Path], cond: Conditions, device: str,
             threads: int, seed: int) -> dict[str, Callable[[int], Any] | str]:
    """backend -> call(batch) generating ``batch`` showers at ``cond[:batch]``, or the
    reason why that backend cannot run here."""
    out: dict[str, Callable[[int], Any] | str] = {}
    e_gev = (cond.incident_energy[:, None] / 1e3).astype(np.float32)
    deg = {n: np.degrees(getattr(cond, n) if getattr(cond, n) is not None
                         else np.zeros(len(cond)))[:, None].astype(np.float32)
           for n in ("theta", "phi")}
    columns = {"energy": e_gev, **deg}
    out["pytorch"] = lambda b: model.sample(cond[:b], seed=seed, batch_size=b)
    if "onnx" in files:
        out["onnx"] = _onnx_runner(files["onnx"], columns, device, threads)
    if "torchscript" in files:
        out["torchscript"] = _torchscript_runner(files["torchscript"], columns, device)
    return out


def _onnx_runner(path: Path, columns: dict[str, np.ndarray], device: str,
                 threads: int) -> Callable[[int], Any] | str:
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return f"onnx on {device}: onnxruntime has no {provider} here (onnxruntime-gpu)"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=[provider])
    names = [i.name for i in sess.get_inputs()]
    return lambda b: sess.run(None, {n: columns[n][:b] for n in names})


def _torchscript_runner(path: Path, columns: dict[str, np.ndarray],
                        device: str) -> Callable[[int], Any] | str:
    with warnings.catch_warnings():  # torch.jit.load is deprecated, still what DDML runs
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    tensors = {n: torch.from_numpy(a).to(device) for n, a in columns.items()}
    names = ["energy", "theta", "phi"]

    def scripted(b: int) -> torch.Tensor:
        with torch.no_grad():
            return module(*[tensors[n][:b] for n in names])

    if device != "cpu":
        try:  # traced on the CPU: a graph with CPU-only constants fails on a GPU
            scripted(1)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or ["error"])[0][:200]
            return f"torchscript on {device}: the traced file does not run there ({first})"
    return scripted


def _export(model: Any, backends: Sequence[str], folder: Path) -> dict[str, Path]:
    """Export ``model`` to the requested formats (errors raised as the exporter's)."""
    from caloforge.export.api import export_model

    files = {}
    for fmt in ("onnx", "torchscript"):
        if fmt in backends:
            path = folder / f"model.{fmt}"
            export_model(model, path, to=fmt)
            files[fmt] = path
    return files


def _time_simulation(model: Any, cond: Conditions, settings: BenchSettings,
                     label: str) -> Timing:
    from caloforge.simulation import simulate

    particle = PDG_NAMES.get(int(cond.particle[0]), "photon") if cond.particle is not None \
        else "photon"
    lo, hi = float(cond.incident_energy.min()), float(cond.incident_energy.max())
    opts = _simulation_options(cond)
    geo = model.geometry.name
    counter = iter(range(10**9))
    simulate(geo, particle, (lo, hi), 1, seed=settings.seed, **opts)  # compile the kernels

    def call(b: int) -> None:  # one shower per call, a new one each time
        simulate(geo, particle, (lo, hi), 1, seed=settings.seed + next(counter), **opts)

    ms, reps = time_call(call, 1, settings, warmup=0)
    return Timing(label, SIMULATION, "cpu", 1, 1, ms, reps,
                  f"builtin engine, 1 process, {particle}")


def bench_model(model: Any, settings: BenchSettings, label: str | None = None
                ) -> tuple[dict[str, Any], list[Timing]]:
    """Time one model (a loaded model, a model folder or a shipped name)."""
    from caloforge.models import GenerativeModel, load

    label = label or (model if isinstance(model, (str, Path)) else model.name)
    label = str(label)
    if not isinstance(model, GenerativeModel):
        model = load(model, "cpu")
    model = model.cpu().eval()
    clock = _Clock(settings.time_limit_s)
    cond = bench_conditions(model, settings, max(settings.batch_sizes))
    lo, hi = cond.incident_energy.min() / 1e3, cond.incident_energy.max() / 1e3
    info = {"label": label, "architecture": model.name, "geometry": model.geometry.name,
            "conditions": f"{lo:.4g}-{hi:.4g} GeV", "seed": settings.seed}
    timings: list[Timing] = []
    before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="caloforge-bench-") as tmp:
        files = _export(model, settings.backends, Path(tmp))
        if settings.simulation:
            timings.append(_time_simulation(model, cond, settings, label))
        try:
            for device in settings.devices():
                model.to(device)
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                for threads in settings.thread_counts() if device == "cpu" else (1,):
                    torch.set_num_threads(threads)
                    runners = _runners(model, files, cond, device, threads, settings.seed)
                    for backend in settings.backends:
                        timings += _time_backend(runners[backend], label, backend, device,
                                                 threads if device == "cpu" else None,
                                                 settings, sync, clock)
        finally:
            torch.set_num_threads(before)
            model.cpu()
    return info, timings


def _time_backend(call: Callable[[int], Any] | str, label: str, backend: str, device: str,
                  threads: int | None, settings: BenchSettings, sync: Callable[[], None],
                  clock: _Clock) -> list[Timing]:
    if isinstance(call, str):  # cannot run here: say why, once per batch size
        return [Timing(label, backend, device, threads, b, None, 0, f"skipped: {call}")
                for b in sorted(settings.batch_sizes)]
    out, last = [], None
    for batch in sorted(settings.batch_sizes):
        warmup = _warmup_calls(last, batch)
        # the smallest batch is always timed (cheap), so no backend is left without a figure
        reason = clock.skip_reason(last, batch, warmup) if last is not None else None
        if reason:
            out.append(Timing(label, backend, device, threads, batch, None, 0, reason))
            continue
        note = ""
        if clock.left() <= 0:  # past the limit: the smallest batch once, one warm-up call
            warmup, settings_now = 1, replace(settings, max_repeats=1)
            note = "one call after one warm-up (time limit reached)"
        else:
            settings_now = settings
        last, reps = time_call(call, batch, settings_now, sync, warmup)
        out.append(Timing(label, backend, device, threads, batch, last, reps, note))
    return out


def bench(models: Sequence[Any], settings: BenchSettings | None = None) -> BenchResult:
    """Time every model of ``models`` (loaded models, folders or shipped names).

    >>> result = bench(["ild-ecal-photons"], BenchSettings(batch_sizes=(1,)))  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
    """
    settings = settings or BenchSettings()
    settings.validate()
    result = BenchResult(settings)
    for m in models:
        info, timings = bench_model(m, settings)
        result.models.append(info)
        result.timings += timings
    return result


# ---- outputs ------------------------------------------------------------------------------
def write_outputs(result: BenchResult, json_path: str | Path | None = None,
                  plot_path: str | Path | None = None, overwrite: bool = False) -> list[str]:
    """The result as JSON and/or the plot (:func:`plot`), both complete or neither."""
    from caloforge.utils.outputs import write_outputs as write

    return write(result.to_dict(), json_path, lambda tmp, fmt: plot(result, tmp, fmt),
                 plot_path, overwrite)


def plot(result: BenchResult, path: str | Path, fmt: str = "png") -> None:
    """Time per shower vs batch size (one line per backend, device and thread count; the
    simulation as a horizontal line) and the speed-up vs the simulation, as ``fmt``
    (png, pdf, svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from caloforge.evaluation.report.plots import style

    style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    styles = {"pytorch": "-", "onnx": "--", "torchscript": ":"}
    for info in result.models:
        name = info["label"]
        sim = result.simulation_ms(name)
        curves: dict[tuple, list[Timing]] = {}
        for t in result.timings:
            if t.model == name and t.backend != SIMULATION and t.ms_per_shower:
                curves.setdefault((t.backend, t.device, t.threads), []).append(t)
        for (backend, device, threads), ts in sorted(curves.items(), key=str):
            ts.sort(key=lambda t: t.batch)
            x = [t.batch for t in ts]
            y = [t.ms_per_shower for t in ts]
            tag = f"{name} {backend}, {device}" + (f", {threads} thr" if threads else "")
            line, = axes[0].plot(x, y, styles[backend], marker="o", label=tag)
            if sim:
                axes[1].plot(x, [sim / v for v in y], styles[backend], marker="o",
                             color=line.get_color(), label=tag)
        if sim:
            axes[0].axhline(sim, color="0.4", lw=1, label=f"{name} simulation (1 core)")
    if any(result.simulation_ms(i["label"]) for i in result.models):
        axes[1].axhline(1.0, color="0.4", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="time per shower [ms]")
    axes[1].set(xscale="log", yscale="log", xlabel="batch size",
                ylabel="speed-up vs reference simulation")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path, format=fmt, dpi=90)
    finally:
        plt.close(fig)
