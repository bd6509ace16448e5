"""``caloforge amplify``: how many reference showers are a model's showers worth?"""

from __future__ import annotations

import argparse

from caloforge.cli._options import non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "amplify", help="amplification study: generated vs reference statistical power",
        description="The amplification study of Butter et al. (arXiv:2008.06545): for a set "
                    "of observables (energy sum and ratio, hits, centre of gravity in depth, "
                    "shower widths, energy thirds, layer energies), the quantile MSE against "
                    "the truth of N reference showers (disjoint subsamples of the truth, for "
                    "an error bar and the ~1/N curve) and of M generated showers for M on a "
                    "geometric grid up to --max-generated. Reports the M from which the "
                    "generated MSE stops improving (no later M lowers it by more than "
                    "--tolerance), the number of reference showers N_eq that plateau is "
                    "worth, and the amplification factor N_eq / N.")
    p.add_argument("truth", help="large reference sample (shower file)")
    p.add_argument("--model", required=True, help="model folder or shipped model name")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("-N", "--n-train", type=positive_int, help="training-sample size N")
    size.add_argument("--train", metavar="FILE", help="the training sample itself (N = its size)")
    p.add_argument("--max-generated", type=positive_int, default=20000, metavar="M",
                   help="largest generated sample (default 20000)")
    p.add_argument("--min-generated", type=positive_int, metavar="M",
                   help="smallest generated sample of the grid (default N/4)")
    p.add_argument("--quantiles", type=positive_int, default=10,
                   help="quantiles per observable (default 10)")
    p.add_argument("--tolerance", type=positive_float, default=0.1,
                   help="plateau criterion: relative gain below this (default 0.1)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the truth split, the conditions and the showers")
    p.add_argument("--batch-size", type=positive_int, default=500, help="showers per model call")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", metavar="FILE", help="write the curves and numbers as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the MSE curves (.png, .pdf, .svg)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caloforge.evaluation.amplify import amplify, plot
    from caloforge.utils.outputs import check_outputs, write_outputs

    check_outputs(args.json, args.plot, args.overwrite)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    res = amplify(args.truth, args.model, n_train=args.n_train, train_path=args.train,
                  max_generated=args.max_generated, min_generated=args.min_generated,
                  quantiles=args.quantiles, tolerance=args.tolerance, seed=args.seed,
                  batch_size=args.batch_size, device=args.device)
    print(f"{'M':>8} {'MSE':>10} {'+-':>9} {'N_eq':>9}")
    for m, v, e, n in zip(res.m_grid, res.gen_mse, res.gen_err, res.n_equivalent):
        print(f"{m:>8d} {v:>10.3g} {e:>9.2g} {n:>9.4g}")
    print(res.summary())
    written = write_outputs(res.to_dict(), args.json, lambda tmp, fmt: plot(res, tmp, fmt),
                            args.plot, args.overwrite)
    if written:
        print(f"wrote {' and '.join(written)}")
    return 0
