"""Generate shower files with a trained model: energies, batching, timing, provenance.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> parse_energy_spec("10:100", 3, rng).round(1)   # GeV in, MeV out
array([67326.6, 34280.8, 13687.6])
>>> parse_energy_spec("50", 2, rng)
array([50000., 50000.])
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge import __version__
from caloforge.data.batch import Conditions
from caloforge.errors import InputError
from caloforge.models.base import (
    GenerativeModel,
    check_device,
    load,
    make_generator,
    resolve_model_dir,
)
from caloforge.utils import progress


def parse_energy_spec(spec: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``"50"`` (fixed) or ``"10:100"`` (uniform) in GeV -> ``n`` energies in MeV."""
    try:
        parts = [float(p) for p in spec.split(":")]
    except ValueError:
        raise InputError(f"--energy {spec!r}: expect E or EMIN:EMAX in GeV") from None
    if len(parts) == 1:
        lo = hi = parts[0]
    elif len(parts) == 2:
        lo, hi = parts
    else:
        raise InputError(f"--energy {spec!r}: expect E or EMIN:EMAX in GeV")
    if not (np.isfinite([lo, hi]).all() and 0 < lo <= hi):
        raise InputError(f"--energy {spec!r}: energies must be positive with EMIN <= EMAX")
    return rng.uniform(lo, hi, n) * 1e3 if hi > lo else np.full(n, lo * 1e3)


def read_energy_file(path: str | Path) -> np.ndarray:
    """Incident energies in GeV from a text file (one per line) or a .npy array -> MeV."""
    path = Path(path)
    if not path.is_file():
        raise InputError("energy file does not exist", path)
    try:
        e = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read energies ({str(exc).splitlines()[0]})", path) from None
    e = np.asarray(e, dtype=np.float64).reshape(-1)
    if len(e) == 0:
        raise InputError("energy file holds no energies", path)
    if not np.isfinite(e).all() or (e <= 0).any():
        raise InputError("energies must be positive and finite (GeV)", path)
    return e * 1e3


def generate_file(model: GenerativeModel | str | Path, energies_mev: np.ndarray,
                  output: str | Path, format: str = "caloforge", batch_size: int = 1000,
                  seed: int = 0, device: str = "cpu", allow_extrapolation: bool = False,
                  overwrite: bool = False, show_progress: bool | None = None,
                  extra_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate one shower per energy (MeV) and stream them to ``output``.

    The file appears only when complete.  Its metadata records the model, its caloforge
    version, the seed and the measured generation time per shower (``time_per_shower_ms``,
    model time only, writing excluded).  Returns that metadata.
    """
    from caloforge.data.io import write_showers

    check_device(device)
    source = ""
    if not isinstance(model, GenerativeModel):
        source = str(resolve_model_dir(model))
        model = load(model, device)
    else:
        model = model.to(device)
    energies_mev = np.asarray(energies_mev, dtype=np.float64).reshape(-1)
    model.check_energies(energies_mev, allow_extrapolation)
    if batch_size <= 0:
        raise InputError("--batch-size must be positive")
    gen = make_generator(seed, model.device)
    meta: dict[str, Any] = {
        "model": model.name, "model_source": source,
        "model_caloforge_version": getattr(model, "trained_version", __version__),
        "caloforge_version": __version__, "seed": int(seed), "device": str(model.device),
        "batch_size": int(batch_size), "n_showers": int(len(energies_mev)),
        "model_config": model.config.to_dict(), **(extra_metadata or {}),
    }
    elapsed = 0.0
    with write_showers(output, format, model.geometry.name, overwrite=overwrite,
                       metadata=meta) as writer:
        bar = progress(total=len(energies_mev), desc=f"generate {model.name}", unit="shower",
                       enabled=show_progress)
        for lo in range(0, len(energies_mev), batch_size):
            cond = Conditions(energies_mev[lo:lo + batch_size])
            t0 = time.perf_counter()
            batch = model.sample(cond, gen, batch_size)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            writer.append(batch)
            bar.update(len(cond))
        bar.close()
        meta["time_per_shower_ms"] = 1e3 * elapsed / max(len(energies_mev), 1)
        writer.metadata.update(meta)
    return meta
