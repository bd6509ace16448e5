"""``caloforge generate``: sample showers from a trained model into a file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="generate showers with a trained model",
        description="Generate showers for given incident energies (GeV) and stream them to a "
                    "file. The file records the model, versions, seed and the measured time "
                    "per shower (metadata key time_per_shower_ms).")
    p.add_argument("--model", required=True,
                   help="trained model: a folder from 'caloforge train' or a shipped model name")
    energy = p.add_mutually_exclusive_group(required=True)
    energy.add_argument("--energy", help="E or EMIN:EMAX in GeV (uniform)")
    energy.add_argument("--energies", help="file of energies in GeV (text, one per line, or .npy)")
    p.add_argument("-n", type=int, help="number of showers (default: all energies of --energies)")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--format", default="caloforge", help="output format (default caloforge)")
    p.add_argument("--batch-size", type=int, default=100, help="showers per model call")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="allow energies outside the trained range (with a warning)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from caloforge.errors import InputError
    from caloforge.models.generation import generate_file, parse_energy_spec, read_energy_file
    from caloforge.utils import check_output_path

    if args.threads:
        torch.set_num_threads(args.threads)

    check_output_path(args.output, args.overwrite)  # fail before loading the model
    if args.energy is not None:
        if not args.n or args.n <= 0:
            raise InputError("give a positive number of showers with -n")
        energies = parse_energy_spec(args.energy, args.n, np.random.default_rng(args.seed))
        spec = f"{args.energy} GeV"
    else:
        energies = read_energy_file(args.energies)
        if args.n is not None:
            if args.n <= 0 or args.n > len(energies):
                raise InputError(f"-n {args.n}: the energy file holds {len(energies)} energies",
                                 args.energies)
            energies = energies[:args.n]
        spec = f"file {args.energies}"
    meta = generate_file(args.model, energies, args.output, args.format, args.batch_size,
                         args.seed, args.device, args.allow_extrapolation, args.overwrite,
                         False if args.no_progress else None, {"energies": spec})
    print(f"wrote {meta['n_showers']} showers to {args.output} "
          f"({meta['time_per_shower_ms']:.3g} ms/shower, model {meta['model']})")
    return 0
