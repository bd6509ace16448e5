"""``caloforge simulate``: make reference showers with the builtin engine (or Geant4)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import numba
import numpy as np

from caloforge import __version__
from caloforge.cli._options import add_no_progress, progress_choice
from caloforge.data.batch import PointCloudBatch, ShowerBatch
from caloforge.data.io import FORMATS, POINT_FORMATS, write_showers
from caloforge.errors import CaloforgeError, InputError
from caloforge.simulation.api import (
    ENGINES,
    MAX_WORKERS,
    PION_NAMES,
    Range,
    check_count,
    iter_simulate,
    make_config,
    shard_range,
)
from caloforge.utils.atomic import check_output_path
from caloforge.utils.safe_io import defer_interrupt, note_interrupt
from caloforge.utils.shards import parse_shard_spec

EPILOG = """\
units: --energy is in GeV on the command line (files store MeV, or what their format
defines); --theta/--phi in degrees; --impact in mm.
energy: X (fixed), LO:HI (uniform), LO:HI:log (log-uniform) or LO:HI:pow2 (LO times
powers of two up to HI, equally likely: the CaloChallenge dataset-1 spectrum is
--energy 0.256:4194.304:pow2), e.g. --energy 10:100.
ranges of the builtin engine: photon, electron, positron 0.01-1000 GeV; pi+, pi- 2-500
GeV.  --theta in [0, 90); --impact must hit the cells of the front face.
pion cleaning: showers with fewer than --min-hits cells above 0.25 MeV are redrawn from
their own random stream (shower i depends only on seed and i); the default cut is 70
(seed 001) scaled by E / 10 GeV below 10 GeV.  The count of redrawn showers is printed
and stored in the metadata; a shower with no accepted draw in 200 fails the run.
sharding: --shard i/N (0 <= i < N) simulates showers [i*n/N, (i+1)*n/N) of the n-shower
sample; shards of one seed together equal the single-process sample, and
`caloforge merge OUT SHARD...` joins them.  Same seed, same output, whatever --workers.
"""


SPACE_MARGIN_BYTES = 8 << 20  # HDF5 metadata and chunk rounding on top of the data


def _integer(text: str, option: str, minimum: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InputError(f"{option} expects an integer, got {text!r}") from None
    return check_count(value, option, minimum)


def _impact(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--impact expects x,y in mm, got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InputError(f"--impact expects finite x,y in mm, got {text!r}")
    return x, y


def _batch_nbytes(batch: ShowerBatch | PointCloudBatch) -> int:
    arrays = list(vars(batch).values()) + list(vars(batch.conditions).values())
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


def _ensure_space(output: Path, batch: ShowerBatch | PointCloudBatch) -> None:
    """Refuse to write a batch the disk cannot hold.

    HDF5 does not survive a full disk: writes that fail inside the library surface only
    when h5py frees an object (h5py prints and ignores those errors), the run goes on,
    and closing the file then crashes the process (segfault, exit 139; reproduced with
    h5py 3.16 on a 1 MiB tmpfs).  So the free space is checked before every batch, with
    room for twice the batch's uncompressed size (a chunk may be allocated whole) plus
    a margin.  A disk filled by another process between the check and the write can
    still hit the HDF5 failure.
    """
    need = 2 * _batch_nbytes(batch) + SPACE_MARGIN_BYTES
    free = shutil.disk_usage(output.parent).free
    if free < need:
        raise CaloforgeError(
            f"not enough free disk space ({free / 2**20:.1f} MiB free; the next {len(batch)} "
            f"showers need up to {need / 2**20:.1f} MiB)", output)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM (what batch systems send first) into KeyboardInterrupt, so that it
    unwinds like Ctrl-C: workers stopped, temporary output removed, exit 130.

    Like the CLI's own handler, the exception is handed to the guarded output file when
    the signal lands while HDF5 is calling back into it (raising there crashed the
    process with SIGSEGV), and a second SIGTERM is ignored while the cleanup runs."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_IGN)
        exc = KeyboardInterrupt(f"signal {signum}")
        note_interrupt(exc)
        if not defer_interrupt(frame, exc):
            raise exc

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave the handler alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="simulate reference showers (builtin Monte Carlo or Geant4)",
        description="Simulate showers of one particle type in a detector and write them, "
                    "streaming, to a shower file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", required=True, help="geometry name (see caloforge geometry)")
    p.add_argument("--particle", required=True,
                   help="photon, electron, positron, pi+ or pi-")
    p.add_argument("--energy", required=True, help="incident energy in GeV: X, LO:HI, LO:HI:log, LO:HI:pow2")
    p.add_argument("-n", "--n-showers", required=True, dest="n",
                   help="number of showers of the whole sample (all shards), >= 1")
    p.add_argument("--seed", default="0", help="random seed, >= 0 (default 0)")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--format", default="caloforge", choices=FORMATS, help="output format")
    p.add_argument("--points", action="store_true",
                   help="write point clouds (deposits clustered on a 6x6 finer grid)")
    p.add_argument("--realistic", action="store_true",
                   help="apply wafer gaps and staggering when voxelising (Cartesian geometries)")
    p.add_argument("--theta", default="0", help="polar angle in degrees, in [0, 90): X or LO:HI")
    p.add_argument("--phi", default="0", help="azimuth in degrees: X or LO:HI")
    p.add_argument("--impact", default="0,0",
                   help="impact point x,y on the front face (mm); must hit the cells")
    p.add_argument("--engine", default="builtin", choices=ENGINES, help="shower engine")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="simulate only shard i of N (0-based, N <= -n)")
    p.add_argument("--workers", default="1", help="worker processes, >= 1 (default 1)")
    p.add_argument("--chunk-size", default="100", help="showers per written batch, >= 1")
    p.add_argument("--min-hits", default=None,
                   help="redraw showers with fewer cells above 0.25 MeV, >= 0 (default for "
                        "pions: 70, scaled by E / 10 GeV below 10 GeV; 0 for others)")
    p.add_argument("--lossy", action="store_true",
                   help="allow formats that cannot store all conditions (theta, phi, "
                        "particle, impact) to drop them")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Every option is checked before anything is simulated or written.
    n = _integer(args.n, "-n", 1)
    seed = _integer(args.seed, "--seed", 0)
    workers = _integer(args.workers, "--workers", 1)
    chunk_size = _integer(args.chunk_size, "--chunk-size", 1)
    min_hits = None if args.min_hits is None else _integer(args.min_hits, "--min-hits", 0)
    shard = (0, 1) if args.shard is None else parse_shard_spec(args.shard)
    if args.points and args.format not in POINT_FORMATS:
        raise InputError(f"--points needs a point-cloud format ({', '.join(POINT_FORMATS)}), "
                         f"not {args.format!r}")
    energy = Range.parse(args.energy, 1000.0, "--energy")
    deg = math.pi / 180.0
    theta = Range.parse(args.theta, deg, "--theta")
    phi = Range.parse(args.phi, deg, "--phi")
    options = dict(theta=theta, phi=phi, impact=_impact(args.impact), points=args.points,
                   realistic=args.realistic, engine=args.engine, min_hits=min_hits)
    cfg = make_config(args.detector, args.particle, energy, n, seed, **options)
    start, stop = shard_range(n, *shard)
    if workers > MAX_WORKERS:
        raise InputError(f"--workers must be <= {MAX_WORKERS} (got {workers})")
    output = check_output_path(args.output, args.overwrite)
    meta = {"simulation": cfg.to_dict(), "shard": list(shard), "first_index": start,
            "stop_index": stop, "caloforge_version": __version__,
            # the showers of a seed are reproducible with the same numpy and numba
            "versions": {"numpy": np.__version__, "numba": numba.__version__}}
    rejected = 0
    with _sigterm_interrupts():
        batches = iter_simulate(args.detector, args.particle, energy, n, seed,
                                start=start, stop=stop, chunk_size=chunk_size,
                                workers=workers, progress=progress_choice(args),
                                **options)
        try:
            # The first batch also fails early (e.g. Geant4 missing) before any file exists.
            first = next(batches)
            with write_showers(output, args.format, first.geometry, overwrite=args.overwrite,
                               metadata=meta, lossy=args.lossy) as out:
                for batch in itertools.chain([first], batches):
                    _ensure_space(output, batch)
                    out.append(batch)
                    rejected += batch.metadata.get("rejected_showers", 0)
                out.metadata["rejected_showers"] = rejected
                written = out.n_written
        finally:
            batches.close()  # stops worker processes on any failure
    print(f"wrote {written} {args.particle} showers (indices {start}..{stop - 1}) "
          f"to {args.output} ({args.format})")
    if cfg.particle in PION_NAMES or cfg.min_hits:
        print(f"hit cut: {rejected} showers with too few cells above "
              f"{cfg.hit_threshold_mev:g} MeV were rejected and redrawn "
              f"({100 * rejected / (rejected + written):.1f} % of {rejected + written} drawn)")
    return 0
