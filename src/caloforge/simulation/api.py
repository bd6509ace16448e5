"""Python API of the reference simulation: conditions, reproducible seeding, chunks,
worker processes.

Shower ``i`` (its global index in the requested sample) draws all its random numbers
from ``numpy.random.SeedSequence(seed, spawn_key=(i,))``, so a sample split into
shards or spread over worker processes is identical to the one made in one go.

>>> from caloforge.simulation import simulate
>>> batch = simulate("ild-ecal", "photon", 1000.0, n=2, seed=1)
>>> batch.energies.shape
(2, 27000)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from caloforge.data.batch import PARTICLES, Conditions, PointCloudBatch, ShowerBatch
from caloforge.errors import CaloforgeError, ConfigError, InputError
from caloforge.geometry import CartesianGeometry, Geometry, get_geometry
from caloforge.simulation.engine import Deposits, Primary
from caloforge.simulation.outputs import (
    cluster_points,
    layer_overflow,
    point_pitch_mm,
    voxelise,
)
from caloforge.simulation.workers import ordered_map
from caloforge.utils.shards import shard_range

ENGINES = ("builtin", "geant4")
PION_NAMES = ("pi+", "pi-")
# Seed 001 (10-100 GeV pions): showers with fewer than 70 cells above 0.25 MeV "did not
# shower" and were rejected.  Below 10 GeV that cut would reject nearly every shower (a
# 2 GeV pion lights ~20 AHCAL cells), so the default scales it with the energy:
# min_hits(E) = 70 * min(E, 10 GeV) / 10 GeV, which rejects a similar share (~15-30 %)
# at 2-10 GeV.
PION_MIN_HITS = 70
PION_MIN_HITS_FULL_MEV = 10000.0
PION_HIT_THRESHOLD_MEV = 0.25
# A rejected shower is redrawn from its own random stream; a shower with no accepted
# draw in this many tries means an acceptance below ~1.5 % (95 % CL): the request fails.
MAX_ATTEMPTS = 200


def pion_min_hits(energy_mev: float) -> int:
    """Default hit cut of a pion shower of ``energy_mev`` (see PION_MIN_HITS)."""
    return int(round(PION_MIN_HITS * min(energy_mev, PION_MIN_HITS_FULL_MEV)
                     / PION_MIN_HITS_FULL_MEV))


@dataclass(frozen=True)
class Range:
    """A fixed value (``lo == hi``), a uniform / log-uniform range, or (``pow2``) the
    discrete values ``lo * 2**k`` up to ``hi``, equally likely (the CaloChallenge dataset-1
    spectrum: 256 MeV to 4.2 TeV in powers of two).

    >>> r = Range.parse("0.256:4194.304:pow2", 1000.0)
    >>> r.values()[:3], len(r.values())
    ([256.0, 512.0, 1024.0], 15)
    """

    lo: float
    hi: float
    log: bool = False
    pow2: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi < self.lo:
            raise InputError(f"invalid range {self.lo}:{self.hi} (finite numbers, LO <= HI)")
        if self.pow2 and (self.lo <= 0 or self.log):
            raise InputError(f"invalid range {self.lo}:{self.hi}: powers of two need LO > 0")

    def values(self) -> list[float]:
        """The discrete values of a ``pow2`` range (``hi`` included up to rounding)."""
        n = int(math.floor(math.log2(self.hi / self.lo) + 1e-9))
        return [self.lo * 2.0 ** k for k in range(n + 1)]

    @classmethod
    def of(cls, value: float | tuple | Range) -> Range:
        if isinstance(value, Range):
            return value
        if isinstance(value, (tuple, list)):
            return cls(float(value[0]), float(value[1]), len(value) > 2 and bool(value[2]))
        return cls(float(value), float(value))

    @classmethod
    def parse(cls, text: str, scale: float = 1.0, what: str = "value") -> Range:
        """``"50"``, ``"10:100"`` (uniform), ``"10:100:log"`` (log-uniform) or
        ``"0.256:4194.304:pow2"`` (LO times powers of two up to HI), times ``scale``."""
        parts = str(text).split(":")
        mode = parts[2].strip().lower() if len(parts) == 3 else ""
        log = mode in ("log", "log-uniform", "loguniform")
        pow2 = mode == "pow2"
        usage = "use X, LO:HI, LO:HI:log or LO:HI:pow2"
        if len(parts) not in (1, 2) and not (log or pow2):
            raise InputError(f"cannot parse {what} {text!r}; {usage}")
        try:
            lo = float(parts[0]) * scale
            hi = float(parts[1]) * scale if len(parts) > 1 else lo
        except ValueError:
            raise InputError(f"cannot parse {what} {text!r}; {usage}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError(f"{what} {text!r} is not a finite number")
        if hi < lo:
            raise InputError(f"{what} range {text!r} is reversed")
        if (log or pow2) and lo <= 0:
            kind = "log-uniform" if log else "powers-of-two"
            raise InputError(f"{what} range {text!r}: a {kind} range needs LO > 0")
        if pow2:
            ratio = math.log2(hi / lo)
            if abs(ratio - round(ratio)) > 1e-6:
                raise InputError(f"{what} range {text!r}: HI / LO = {hi / lo:g} is not a "
                                 f"power of two")
        return cls(lo, hi, log, pow2)

    def sample(self, rng: np.random.Generator) -> float:
        u = rng.random()  # always drawn, so that every shower uses the same stream layout
        if self.hi == self.lo:
            return self.lo
        if self.pow2:
            values = self.values()
            return values[min(int(u * len(values)), len(values) - 1)]
        if self.log:
            return float(math.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo))))
        return float(self.lo + u * (self.hi - self.lo))


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or one clear :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum} (got {value})")
    return int(value)


def face_limits(geo: Geometry) -> str:
    """The front-face area with cells, in words (for error messages)."""
    if isinstance(geo, CartesianGeometry):
        hx, hy = geo.extent_mm(0)
        return f"|x| < {hx:g} mm and |y| < {hy:g} mm"
    r_max = max((max(e) for e in getattr(geo, "r_edges", ()) if len(e)), default=0.0)
    return f"x^2 + y^2 < ({r_max:g} mm)^2"


def impact_inside(geo: Geometry, x: float, y: float) -> bool:
    """Whether a particle entering at (x, y) along the beam axis hits a cell of any layer."""
    cells = geo.locate(np.full(geo.n_layers, x), np.full(geo.n_layers, y),
                       np.arange(geo.n_layers))
    return bool(np.any(cells >= 0))


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated sample (energies MeV, angles rad, mm)."""

    detector: str
    particle: str
    energy: Range
    n: int
    seed: int = 0
    theta: Range = field(default_factory=lambda: Range(0.0, 0.0))
    phi: Range = field(default_factory=lambda: Range(0.0, 0.0))
    impact: tuple[float, float] = (0.0, 0.0)
    points: bool = False
    realistic: bool = False
    engine: str = "builtin"
    min_hits: int | None = None  # None: pion default (pion_min_hits), 0 otherwise
    hit_threshold_mev: float = PION_HIT_THRESHOLD_MEV

    def min_hits_at(self, energy_mev: float) -> int:
        """The hit cut applied to a shower of ``energy_mev`` (see :func:`pion_min_hits`)."""
        if self.min_hits is not None:
            return self.min_hits
        return pion_min_hits(energy_mev) if self.particle in PION_NAMES else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["impact"] = list(self.impact)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationConfig:
        d = dict(d)
        for k in ("energy", "theta", "phi"):
            d[k] = Range(**d[k])
        d["impact"] = tuple(d["impact"])
        return cls(**d)

    def validate(self) -> None:
        """Raise one clear :class:`CaloforgeError` for anything that cannot be simulated.

        Energies must lie in the engine's range (builtin: :data:`SUPPORTED_MEV`, i.e.
        e+-/photons 10 MeV - 1 TeV, charged pions 2 - 500 GeV; Geant4: > 0), theta in
        [0, 90) degrees, the impact point on the cells of the detector's front face.
        """
        geo = get_geometry(self.detector)
        if self.particle not in PARTICLES:
            raise InputError(f"unknown particle {self.particle!r}; known: {', '.join(PARTICLES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; known: {', '.join(ENGINES)}")
        check_count(self.n, "number of showers n")
        check_count(self.seed, "seed", minimum=0)
        if self.energy.lo <= 0:
            raise InputError(f"incident energies must be > 0 (got {self.energy.lo / 1e3:g} GeV)")
        if not 0 <= self.theta.lo <= self.theta.hi < 0.5 * math.pi:
            raise InputError("theta must lie in [0, 90) degrees (got "
                             f"{math.degrees(self.theta.lo):g}:{math.degrees(self.theta.hi):g})")
        if len(self.impact) != 2 or not all(math.isfinite(v) for v in self.impact):
            raise InputError(f"impact must be two finite numbers x, y in mm (got {self.impact})")
        if not impact_inside(geo, *self.impact):
            raise InputError(
                f"impact point ({self.impact[0]:g}, {self.impact[1]:g}) mm is outside the "
                f"{geo.name} front face ({face_limits(geo)}): the showers would be empty")
        if self.min_hits is not None:
            check_count(self.min_hits, "min_hits", minimum=0)
        if not (math.isfinite(self.hit_threshold_mev) and self.hit_threshold_mev >= 0):
            raise InputError(f"hit_threshold_mev must be >= 0 (got {self.hit_threshold_mev})")
        if self.points:
            point_pitch_mm(geo)
        if self.engine == "builtin":
            from caloforge.simulation.builtin import SUPPORTED_MEV

            lo, hi = SUPPORTED_MEV[self.particle]
            if self.energy.lo < lo or self.energy.hi > hi:
                raise InputError(
                    f"{self.particle} energies {self.energy.lo / 1e3:g}-{self.energy.hi / 1e3:g} "
                    f"GeV outside the range of the builtin engine ({lo / 1e3:g}-{hi / 1e3:g} GeV)")


_ENGINE_CACHE: dict[tuple[str, str], Any] = {}


def make_engine(engine: str, detector: str | Geometry):
    """The engine called ``engine`` on ``detector`` (cached per process)."""
    geo = detector if isinstance(detector, Geometry) else get_geometry(detector)
    key = (engine, geo.name)
    if key in _ENGINE_CACHE:
        return _ENGINE_CACHE[key]
    if engine == "builtin":
        from caloforge.simulation.builtin import BuiltinEngine

        eng = BuiltinEngine(geo)
    elif engine == "geant4":
        try:
            from caloforge.simulation.geant4 import Geant4Engine
        except ImportError as exc:
            raise ConfigError(
                f"the geant4 engine cannot be loaded ({exc}); install it with "
                "pip install 'caloforge[geant4]'") from None
        try:
            eng = Geant4Engine(geo)
        except CaloforgeError:
            raise
        except ImportError as exc:
            raise ConfigError(
                f"the geant4 engine needs geant4_pybind ({exc}); install it with "
                "pip install 'caloforge[geant4]'") from None
    else:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    _ENGINE_CACHE[key] = eng
    return eng


def shower_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of shower ``index`` of a sample with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def _one_shower(cfg: SimulationConfig, engine, geo: Geometry, index: int
                ) -> tuple[Primary, Deposits, int]:
    """Shower ``index`` and how many draws the hit cut rejected before it.  Redraws come
    from the shower's own stream, so the result depends only on (seed, index)."""
    rng = shower_rng(cfg.seed, index)
    primary = Primary(cfg.particle, cfg.energy.sample(rng), float(cfg.impact[0]),
                      float(cfg.impact[1]), cfg.theta.sample(rng), cfg.phi.sample(rng))
    min_hits = cfg.min_hits_at(primary.energy_mev)
    for rejected in range(MAX_ATTEMPTS):
        dep = engine.simulate(primary, rng)
        if min_hits <= 0:
            return primary, dep, rejected
        cells = voxelise([dep], geo, cfg.realistic)[0]
        if int((cells > cfg.hit_threshold_mev).sum()) >= min_hits:
            return primary, dep, rejected
    raise InputError(
        f"shower {index}: none of {MAX_ATTEMPTS} {cfg.particle} showers of "
        f"{primary.energy_mev / 1e3:g} GeV had {min_hits} cells above "
        f"{cfg.hit_threshold_mev:g} MeV (acceptance below ~1.5 %); lower --min-hits / "
        "min_hits or raise the energy")


def simulate_range(cfg: SimulationConfig, start: int, stop: int
                   ) -> ShowerBatch | PointCloudBatch:
    """Showers ``start..stop-1`` (global indices) of the sample ``cfg``.  The batch's
    ``metadata["rejected_showers"]`` counts the draws the hit cut rejected (and redrew)."""
    geo = get_geometry(cfg.detector)
    engine = make_engine(cfg.engine, geo)
    prims, deps = [], []
    rejected = 0
    for i in range(start, stop):
        p, d, r = _one_shower(cfg, engine, geo, i)
        prims.append(p)
        deps.append(d)
        rejected += r
    cond = Conditions(
        incident_energy=np.array([p.energy_mev for p in prims]),
        theta=np.array([p.theta for p in prims]),
        phi=np.array([p.phi for p in prims]),
        particle=np.full(len(prims), PARTICLES[cfg.particle]),
        impact=np.array([[p.x_mm, p.y_mm] for p in prims]).reshape(-1, 2))
    meta = {"simulation": cfg.to_dict(), "first_index": start, "rejected_showers": rejected}
    if not cfg.points:
        return ShowerBatch(geo.name, voxelise(deps, geo, cfg.realistic), cond,
                           layer_overflow(deps, geo, cfg.realistic), metadata=meta)
    cols: list[list[np.ndarray]] = [[], [], [], [], []]
    counts = []
    for d in deps:
        for c, arr in zip(cols, cluster_points(d, geo)):
            c.append(arr)
        counts.append(len(cols[0][-1]))
    x, y, z, e, lay = (np.concatenate(c) if c else np.zeros(0) for c in cols)
    return PointCloudBatch(np.concatenate([[0], np.cumsum(counts)]), x, y, z, e, cond,
                           lay.astype(np.int64), geo.name, meta)


MAX_WORKERS = 1024  # a guard against typos; the pool never exceeds the number of chunks


def _worker(args: tuple[dict, int, int]) -> ShowerBatch | PointCloudBatch:
    cfg, start, stop = args
    return simulate_range(SimulationConfig.from_dict(cfg), start, stop)


def _as_range(value: float | tuple | Range, name: str) -> Range:
    try:
        return Range.of(value)
    except (TypeError, ValueError, IndexError, InputError) as exc:
        raise InputError(f"{name}: {value!r} is not a number or range ({exc})") from None


def make_config(detector: str, particle: str, energy: float | tuple | Range, n: int,
                seed: int, **kw: Any) -> SimulationConfig:
    """A validated :class:`SimulationConfig` (one clear error for any bad value)."""
    for k in ("theta", "phi"):
        if k in kw:
            kw[k] = _as_range(kw[k], k)
    if "impact" in kw:
        try:
            kw["impact"] = tuple(float(v) for v in kw["impact"])
        except (TypeError, ValueError):
            raise InputError(f"impact must be two numbers x, y in mm (got {kw['impact']!r})"
                             ) from None
    cfg = SimulationConfig(detector, particle, _as_range(energy, "energy"),
                           check_count(n, "number of showers n"),
                           check_count(seed, "seed", minimum=0), **kw)
    cfg.validate()
    return cfg


def iter_simulate(detector: str, particle: str, energy: float | tuple | Range, n: int,
                  seed: int = 0, *, start: int = 0, stop: int | None = None,
                  chunk_size: int = 100, workers: int = 1, progress: bool | None = False,
                  **options: Any) -> Iterator[ShowerBatch | PointCloudBatch]:
    """Yield showers ``start..stop-1`` of the sample in chunks of ``chunk_size``.

    ``energy`` in MeV: a number, ``(lo, hi)`` (uniform) or ``(lo, hi, True)``
    (log-uniform).  Options: ``theta``, ``phi`` (rad, value or range), ``impact``
    (x, y mm), ``points`` (point clouds on the 6x6 finer grid), ``realistic`` (wafer gaps
    and staggering of Cartesian geometries), ``engine``, ``min_hits``.  ``workers`` > 1
    uses that many processes; the showers are the same whatever ``workers`` is.  Every
    argument is checked before any shower is made.
    """
    from caloforge.utils import progress as bar

    cfg = make_config(detector, particle, energy, n, seed, **options)
    check_count(chunk_size, "chunk_size")
    check_count(workers, "workers")
    if workers > MAX_WORKERS:
        raise InputError(f"workers must be <= {MAX_WORKERS} (got {workers})")
    stop = cfg.n if stop is None else stop
    if not 0 <= start < stop <= cfg.n:
        raise InputError(f"shower range {start}:{stop} is empty or outside 0:{cfg.n}")
    make_engine(cfg.engine, cfg.detector)  # fail early (e.g. Geant4 missing)
    chunks = [(s, min(s + chunk_size, stop)) for s in range(start, stop, chunk_size)]
    pbar = bar(total=stop - start, desc=f"simulate {particle}", unit="shower", enabled=progress)
    try:
        if workers <= 1 or len(chunks) <= 1:
            for s, e in chunks:
                out = simulate_range(cfg, s, e)
                pbar.update(e - s)
                yield out
        else:
            jobs = [(cfg.to_dict(), s, e) for s, e in chunks]
            for out in ordered_map(_worker, jobs, workers):
                pbar.update(len(out))
                yield out
    finally:
        pbar.close()


def simulate(detector: str, particle: str, energy: float | tuple | Range, n: int,
             seed: int = 0, **options: Any) -> ShowerBatch | PointCloudBatch:
    """Simulate ``n`` showers in memory (see :func:`iter_simulate` for the options).
    ``metadata["rejected_showers"]`` counts the draws rejected by the hit cut."""
    parts = list(iter_simulate(detector, particle, energy, n, seed, **options))
    if isinstance(parts[0], ShowerBatch):
        out = ShowerBatch.concatenate(parts)
    else:
        out = concatenate_points(parts)
    out.metadata = dict(parts[0].metadata)
    out.metadata["rejected_showers"] = sum(p.metadata["rejected_showers"] for p in parts)
    return out


def concatenate_points(parts: list[PointCloudBatch]) -> PointCloudBatch:
    """Concatenate point-cloud batches of one geometry."""
    offs, total = [np.zeros(1, np.int64)], 0
    for p in parts:
        offs.append(p.offsets[1:] + total)
        total += int(p.offsets[-1])
    cat = np.concatenate
    return PointCloudBatch(
        cat(offs), cat([p.x for p in parts]), cat([p.y for p in parts]),
        cat([p.z for p in parts]), cat([p.energy for p in parts]),
        Conditions.concatenate([p.conditions for p in parts]),
        None if parts[0].layer is None else cat([p.layer for p in parts]),
        parts[0].geometry, dict(parts[0].metadata))


__all__ = ["Range", "SimulationConfig", "iter_simulate", "make_engine",
           "shard_range", "shower_rng", "simulate", "simulate_range"]
