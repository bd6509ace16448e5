"""``caloforge generate``: sample showers from a trained model into a file."""

from __future__ import annotations

import argparse

from caloforge.cli._options import add_no_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="generate showers with a trained model",
        description="Generate showers for given conditions and stream them to a file. Shower "
                    "i depends only on (--seed, i): --batch-size and --threads do not change "
                    "what is generated. The file records the model, versions, seed and the "
                    "measured time per shower (metadata key time_per_shower_ms). Conditions "
                    "outside what the model is trained on are refused.")
    p.add_argument("--model", required=True,
                   help="trained model: a folder from 'caloforge train' or a shipped model name")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--energy", help="E or EMIN:EMAX in GeV (uniform)")
    source.add_argument("--energies", help="file of energies in GeV (text, one per line, or .npy)")
    source.add_argument("--conditions", metavar="FILE",
                        help="reuse the exact conditions of every shower of FILE: a shower file "
                             "(any format caloforge reads) or a CSV/text table with a header "
                             "of columns energy_gev (or energy_mev), theta_deg, phi_deg, "
                             "impact_x_mm, impact_y_mm, particle")
    p.add_argument("--theta", help="polar angle to the front-face normal in degrees: X or LO:HI "
                                   "(uniform); default: normal incidence")
    p.add_argument("--phi", help="azimuth in degrees: X or LO:HI (uniform); irrelevant at "
                                 "theta = 0")
    p.add_argument("--impact", metavar="X,Y", help="impact point on the front face (mm)")
    p.add_argument("-n", type=int, help="number of showers (default: all energies of "
                                        "--energies / all rows of --conditions)")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--format", default="caloforge", help="output format (default caloforge)")
    p.add_argument("--project", action="store_true",
                   help="point-cloud models: deposit the points into the geometry's cells "
                        "(energy conserved) to write a voxel format")
    p.add_argument("--realistic", action="store_true",
                   help="with --project: apply the geometry's wafer gaps and staggering "
                        "(energy in the gaps is lost and reported)")
    p.add_argument("--lossy", action="store_true",
                   help="allow formats that cannot store all conditions to drop them")
    p.add_argument("--shard", metavar="i/N",
                   help="generate only shard i of N (0-based) of the -n-shower run: the same "
                        "seed gives the same showers however the run is split; join the "
                        "shards with 'caloforge merge'")
    p.add_argument("--sampler", action="append", metavar="KEY=VALUE", default=[],
                   help="sampler option of the model, repeatable (diffusion models: e.g. "
                        "steps=10, sigma_max=80); recorded in the file's metadata")
    p.add_argument("--batch-size", type=int, default=100, help="showers per model call")
    p.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="allow condition values outside the trained ranges (with a warning)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    add_no_progress(p)
    p.set_defaults(func=run)


def _positive(value: int | None, option: str) -> None:
    from caloforge.errors import InputError

    if value is not None and value < 1:
        raise InputError(f"{option} must be >= 1, got {value}")


def sampler_options(specs: list[str]) -> dict[str, int | float | str]:
    """``--sampler KEY=VALUE`` options as a dict (numbers parsed)."""
    from caloforge.errors import InputError

    out: dict[str, int | float | str] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise InputError(f"--sampler {spec!r}: expect KEY=VALUE (e.g. steps=10)")
        value: int | float | str = text.strip()
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def _conditions(args: argparse.Namespace):  # noqa: ANN202 - avoids importing numpy at parse
    """The requested conditions (MeV, rad, mm) and a description for the metadata."""
    import numpy as np

    from caloforge.errors import InputError
    from caloforge.models.generation import (
        drawn_conditions,
        parse_energy_spec,
        read_conditions_file,
        read_energy_file,
    )

    if args.conditions is not None:
        given = [o for o, v in (("--theta", args.theta), ("--phi", args.phi),
                                ("--impact", args.impact)) if v is not None]
        if given:
            raise InputError(f"{given[0]} cannot be combined with --conditions (the file "
                             f"gives every condition)")
        cond = read_conditions_file(args.conditions)
        if args.n is not None and args.n != len(cond):
            raise InputError(f"-n {args.n} does not match the {len(cond)} showers of the "
                             f"conditions file", args.conditions)
        return cond, f"conditions of {args.conditions}"
    if args.energy is not None:
        if args.n is None:
            raise InputError("give the number of showers with -n")
        energies = parse_energy_spec(args.energy, args.n, np.random.default_rng(args.seed))
        spec = f"{args.energy} GeV"
    else:
        energies = read_energy_file(args.energies)
        if args.n is not None:
            if args.n > len(energies):
                raise InputError(f"-n {args.n}: the energy file holds {len(energies)} energies",
                                 args.energies)
            energies = energies[:args.n]
        spec = f"file {args.energies}"
    cond = drawn_conditions(energies, args.seed, args.theta, args.phi, args.impact)
    for option, value in (("theta", args.theta), ("phi", args.phi), ("impact", args.impact)):
        if value is not None:
            spec += f", {option} {value}"
    return cond, spec


def _shard(args: argparse.Namespace, conditions, spec: str):  # noqa: ANN202
    """This shard's slice of the run's conditions, its first global index, and the shard
    metadata that ``merge`` checks (see ``caloforge.cli._shards``)."""
    from caloforge.cli._shards import run_id_of
    from caloforge.errors import CaloforgeError
    from caloforge.models.folder import resolve_model_dir
    from caloforge.utils.shards import parse_shard_spec, shard_range

    i, n_shards = parse_shard_spec(args.shard)
    start, stop = shard_range(len(conditions), i, n_shards)
    try:
        model = str(resolve_model_dir(args.model).resolve())
    except CaloforgeError:  # the model load below reports it in one line
        model = str(args.model)
    # Everything that decides the showers, and nothing that does not (batch size,
    # threads, shard number): shards of one run share this id.
    settings = {"command": "generate", "model": model, "seed": args.seed, "conditions": spec,
                "n": len(conditions), "allow_extrapolation": args.allow_extrapolation,
                "project": args.project, "realistic": args.realistic, "format": args.format,
                "sampler": sampler_options(args.sampler)}
    meta = {"run_id": run_id_of(settings), "run_size": len(conditions), "first_index": start,
            "stop_index": stop, "shard": f"{i}/{n_shards}", "run_settings": settings}
    return conditions[start:stop], start, meta


def run(args: argparse.Namespace) -> int:
    from caloforge.data.io import FORMATS
    from caloforge.errors import InputError
    from caloforge.models.base import check_device
    from caloforge.models.generation import generate_file
    from caloforge.utils import check_output_path

    # Every option is checked before the model is loaded and before anything is written.
    _positive(args.n, "-n")
    _positive(args.batch_size, "--batch-size")
    _positive(args.threads, "--threads")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    if args.realistic and not args.project:
        raise InputError("--realistic applies to the projection of points: add --project")
    if args.format not in FORMATS:
        raise InputError(f"--format {args.format!r} is unknown; known: {', '.join(FORMATS)}")
    check_device(args.device)
    check_output_path(args.output, args.overwrite)
    sampler = sampler_options(args.sampler)
    conditions, spec = _conditions(args)
    shard_meta, first_index = {}, 0
    if args.shard is not None:
        conditions, first_index, shard_meta = _shard(args, conditions, spec)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    meta = generate_file(args.model, conditions, args.output, args.format, args.batch_size,
                         args.seed, args.device, args.allow_extrapolation, args.overwrite,
                         False if args.no_progress else None,
                         {"conditions": spec, **shard_meta}, project=args.project,
                         lossy=args.lossy, first_index=first_index, sampler=sampler,
                         realistic=args.realistic)
    extra = ""
    if meta.get("projected"):
        extra = (f", points projected: {meta['projected_outside_mev']:.4g} MeV "
                 f"({100 * meta['projected_outside_fraction']:.3g} %) outside the cells")
    part = f" (indices {first_index}..{first_index + meta['n_showers'] - 1})" \
        if shard_meta else ""
    print(f"wrote {meta['n_showers']} showers{part} to {args.output} "
          f"({meta['time_per_shower_ms']:.3g} ms/shower, model {meta['model']}{extra})")
    return 0
