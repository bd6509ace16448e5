"""Generate shower files with a trained model: conditions, batching, timing, provenance.

Conditions come from value specs (``"50"`` fixed, ``"10:100"`` uniform; energies in GeV,
angles in degrees at this boundary), from a file of energies, or from a *conditions
file*: any shower file that :mod:`caloforge.data.io` reads (its exact conditions are
reused, e.g. to compare with a reference sample) or a CSV / whitespace table with a
header naming columns among :data:`TABLE_COLUMNS`.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> parse_energy_spec("10:100", 3, rng).round(1)   # GeV in, MeV out
array([67326.6, 34280.8, 13687.6])
>>> parse_energy_spec("50", 2, rng)
array([50000., 50000.])
>>> parse_angle_spec("30", 1, rng, "--theta").round(4)   # degrees in, rad out
array([0.5236])
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge import __version__
from caloforge.data.batch import PARTICLES, Conditions, PointCloudBatch
from caloforge.data.projection import check_points, project_points
from caloforge.errors import InputError
from caloforge.models.base import GenerativeModel, check_device, load, resolve_model_dir
from caloforge.models.noise import draw_seed
from caloforge.utils import progress

#: columns of a conditions table: name -> (Conditions field, factor to internal units)
TABLE_COLUMNS: dict[str, tuple[str, float]] = {
    "energy_gev": ("incident_energy", 1e3), "energy_mev": ("incident_energy", 1.0),
    "theta_deg": ("theta", math.pi / 180), "phi_deg": ("phi", math.pi / 180),
    "impact_x_mm": ("impact_x", 1.0), "impact_y_mm": ("impact_y", 1.0),
    "particle": ("particle", 1.0),
}
# Independent streams for each drawn condition: shower i's values depend on (seed, i).
_CONDITION_STREAMS = {"theta": 1, "phi": 2}


def _parse_spec(spec: str, option: str, unit: str) -> tuple[float, float]:
    parts = str(spec).split(":")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"{option} {spec!r}: expect X or LO:HI in {unit}") from None
    if len(vals) not in (1, 2):
        raise InputError(f"{option} {spec!r}: expect X or LO:HI in {unit}")
    lo, hi = vals[0], vals[-1]
    if not np.isfinite([lo, hi]).all():
        raise InputError(f"{option} {spec!r}: values must be finite (no NaN/inf)")
    if hi < lo:
        raise InputError(f"{option} {spec!r}: LO must not exceed HI")
    return lo, hi


def parse_energy_spec(spec: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``"50"`` (fixed) or ``"10:100"`` (uniform) in GeV -> ``n`` energies in MeV."""
    lo, hi = _parse_spec(spec, "--energy", "GeV")
    if lo <= 0:
        raise InputError(f"--energy {spec!r}: energies must be positive (GeV)")
    return rng.uniform(lo, hi, n) * 1e3 if hi > lo else np.full(n, lo * 1e3)


def parse_angle_spec(spec: str, n: int, rng: np.random.Generator, option: str) -> np.ndarray:
    """``"30"`` or ``"0:40"`` (uniform) in degrees -> ``n`` angles in rad."""
    lo, hi = _parse_spec(spec, option, "degrees")
    if option == "--theta" and not 0 <= lo <= hi < 90:
        raise InputError(f"--theta {spec!r}: the polar angle must lie in [0, 90) degrees")
    deg = rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo)
    return np.radians(deg)


def parse_impact(spec: str) -> tuple[float, float]:
    """``"x,y"`` in mm."""
    try:
        x, y = (float(v) for v in str(spec).split(","))
    except ValueError:
        raise InputError(f"--impact {spec!r}: expect x,y in mm") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InputError(f"--impact {spec!r}: values must be finite (no NaN/inf)")
    return x, y


def drawn_conditions(energies_mev: np.ndarray, seed: int, theta: str | None = None,
                     phi: str | None = None, impact: str | None = None) -> Conditions:
    """Conditions from energies and optional angle specs (degrees) and impact (mm); each
    drawn condition has its own stream, so shower i depends only on (seed, i)."""
    n = len(energies_mev)

    def draw(spec: str | None, name: str) -> np.ndarray | None:
        if spec is None:
            return None
        rng = np.random.default_rng(np.random.SeedSequence(
            int(seed), spawn_key=(_CONDITION_STREAMS[name],)))
        return parse_angle_spec(spec, n, rng, f"--{name}")

    th, ph = draw(theta, "theta"), draw(phi, "phi")
    if ph is not None and th is None:
        th = np.zeros(n)  # phi given alone: normal incidence, where phi is irrelevant
    xy = None
    if impact is not None:
        xy = np.tile(parse_impact(impact), (n, 1))
    return Conditions(energies_mev, theta=th, phi=ph, impact=xy)


def read_energy_file(path: str | Path) -> np.ndarray:
    """Incident energies in GeV from a text file (one per line) or a .npy array -> MeV."""
    path = Path(path)
    if not path.is_file():
        raise InputError("energy file does not exist", path)
    try:
        e = np.load(path, allow_pickle=False) if path.suffix == ".npy" \
            else np.loadtxt(path, ndmin=1)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read energies ({str(exc).splitlines()[0]})", path) from None
    e = np.asarray(e, dtype=np.float64).reshape(-1)
    if len(e) == 0:
        raise InputError("energy file holds no energies", path)
    if not np.isfinite(e).all() or (e <= 0).any():
        raise InputError("energies must be positive and finite (GeV)", path)
    return e * 1e3


def read_conditions_file(path: str | Path) -> Conditions:
    """The conditions of every shower in a shower file, or of every row of a table."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError("conditions file does not exist", path)
    if h5py.is_hdf5(path):
        from caloforge.data.io import open_showers

        with open_showers(path) as src:
            cond = src.read_conditions()
    else:
        cond = _read_table(path)
    if len(cond) == 0:
        raise InputError("conditions file holds no showers", path)
    cond.validate(str(path))
    return cond


def _read_table(path: Path) -> Conditions:
    try:
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the conditions table ({exc})", path) from None
    if not lines:
        raise InputError("conditions table is empty", path)
    sep = "," if "," in lines[0] else None
    header = [h.strip().lower() for h in lines[0].split(sep)]
    unknown = [h for h in header if h not in TABLE_COLUMNS]
    if unknown:
        raise InputError(f"unknown column {unknown[0]!r} in the header; known columns: "
                         f"{', '.join(TABLE_COLUMNS)}", path)
    if len(set(header)) != len(header):
        raise InputError("a column appears twice in the header", path)
    cols: dict[str, list[float]] = {h: [] for h in header}
    for row, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split(sep)]
        if len(cells) != len(header):
            raise InputError(f"line {row} has {len(cells)} columns, the header {len(header)}",
                             path)
        for h, c in zip(header, cells):
            if h == "particle" and c.lower() in PARTICLES:
                c = str(PARTICLES[c.lower()])
            try:
                v = float(c)
            except ValueError:
                raise InputError(f"line {row}, column {h}: {c!r} is not a number", path) from None
            if not math.isfinite(v):
                raise InputError(f"line {row}, column {h}: value is NaN/inf", path)
            cols[h].append(v)
    fields: dict[str, np.ndarray] = {}
    for h, vals in cols.items():
        name, scale = TABLE_COLUMNS[h]
        if name in fields:
            raise InputError(f"two columns give {name}", path)
        fields[name] = np.asarray(vals, dtype=np.float64) * scale
    if "incident_energy" not in fields:
        raise InputError("the table needs an energy_gev (or energy_mev) column", path)
    if ("impact_x" in fields) != ("impact_y" in fields):
        raise InputError("give both impact_x_mm and impact_y_mm, or neither", path)
    impact = None
    if "impact_x" in fields:
        impact = np.stack([fields.pop("impact_x"), fields.pop("impact_y")], 1)
    particle = fields.pop("particle", None)
    if particle is not None and (particle != np.round(particle)).any():
        raise InputError("column particle must hold PDG codes or particle names", path)
    return Conditions(impact=impact, particle=particle, **fields)


def check_point_format(model: GenerativeModel, format: str, project: bool) -> None:
    """A point-cloud model writes point formats, or voxels only when asked to project."""
    from caloforge.data.io import POINT_FORMATS

    if model.representation == "points" and format not in POINT_FORMATS and not project:
        raise InputError(
            f"model {model.name!r} generates point clouds and format {format!r} holds voxels "
            f"only: pass --project to deposit the points into the {model.geometry.name} cells "
            f"(energy outside the cells is reported), or use --format "
            f"{' or '.join(POINT_FORMATS)}")


def generate_file(model: GenerativeModel | str | Path, conditions: Conditions | np.ndarray,
                  output: str | Path, format: str = "caloforge", batch_size: int = 1000,
                  seed: int = 0, device: str = "cpu", allow_extrapolation: bool = False,
                  overwrite: bool = False, show_progress: bool | None = None,
                  extra_metadata: dict[str, Any] | None = None, project: bool = False,
                  lossy: bool = False, first_index: int = 0,
                  sampler: dict[str, Any] | None = None,
                  realistic: bool = False) -> dict[str, Any]:
    """Generate one shower per condition (or per incident energy in MeV) into ``output``.

    Everything is checked before the model runs; the file appears only when complete.
    Its metadata records the model, its caloforge version, the seed and the measured
    generation time per shower (``time_per_shower_ms``, model time only, writing
    excluded).  Shower i depends only on (seed, i), whatever ``batch_size``.  A
    point-cloud model writes point formats; ``project`` deposits its points into the
    geometry's cells for voxel formats (``realistic``: with its wafer gaps and staggering;
    the metadata records the point energy outside the cells, in MeV and as a fraction of
    the point energy).  ``first_index``: global index of the first shower (a shard of a
    larger run gives the same showers as the whole run).  ``sampler``: sampler options of
    the model (e.g. ``{"steps": 10}``, :meth:`GenerativeModel.set_sampler`), checked
    before anything is written; the settings in force are recorded as metadata key
    ``sampler``.  Returns the metadata.
    """
    from caloforge.data.io import write_showers

    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise InputError(f"--batch-size must be a positive integer, got {batch_size}")
    check_device(device)
    if realistic and not project:
        raise InputError("--realistic applies to the projection of points: add --project")
    if not isinstance(conditions, Conditions):
        conditions = Conditions(np.asarray(conditions, dtype=np.float64).reshape(-1))
    if len(conditions) == 0:
        raise InputError("no showers to generate (-n must be >= 1)")
    conditions.validate()
    source = ""
    if not isinstance(model, GenerativeModel):
        source = str(resolve_model_dir(model))
        model = load(model, device)
    else:
        model = model.to(device)
    model.check_conditions(conditions, allow_extrapolation)
    check_point_format(model, format, project)
    sampler_settings = model.set_sampler(**(sampler or {}))
    run_seed = draw_seed(seed)
    meta: dict[str, Any] = {
        "model": model.name, "model_source": source,
        "model_caloforge_version": getattr(model, "trained_version", __version__),
        "caloforge_version": __version__, "seed": int(run_seed), "device": str(model.device),
        "batch_size": int(batch_size), "n_showers": int(len(conditions)),
        "representation": model.representation, "model_config": model.config.to_dict(),
        "sampler": sampler_settings,
        **(extra_metadata or {}),
    }
    elapsed, outside, point_energy = 0.0, 0.0, 0.0
    with write_showers(output, format, model.geometry.name, overwrite=overwrite,
                       metadata=meta, lossy=lossy) as writer, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*extrapolating")  # warned once above
        bar = progress(total=len(conditions), desc=f"generate {model.name}", unit="shower",
                       enabled=show_progress)
        for lo in range(0, len(conditions), batch_size):
            cond = conditions[lo:lo + batch_size]
            t0 = time.perf_counter()
            batch = model.sample(cond, run_seed, batch_size, first_index=first_index + lo,
                                 allow_extrapolation=True)  # checked above
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            if project and isinstance(batch, PointCloudBatch):
                check_points(batch, output, first_index + lo)
                point_energy += float(batch.energy.sum(dtype=np.float64))
                batch, lost = project_points(batch, model.geometry, realistic)
                outside += float(lost.sum())
            writer.append(batch)
            bar.update(len(cond))
        bar.close()
        meta["time_per_shower_ms"] = 1e3 * elapsed / max(len(conditions), 1)
        if project and model.representation == "points":
            meta["projected"] = True
            meta["projected_realistic"] = bool(realistic)
            meta["projected_outside_mev"] = outside
            meta["projected_outside_fraction"] = outside / point_energy if point_energy else 0.0
        writer.metadata.update(meta)
    return meta
