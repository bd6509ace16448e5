"""``caloforge train``: train a generative model on a shower file."""

from __future__ import annotations

import argparse
import sys

from caloforge.cli._options import add_no_progress
from caloforge.errors import ConfigError

# Numeric options and their smallest allowed value (0 has a documented meaning where 0).
_MINIMUM = {"epochs": 1, "steps": 1, "batch_size": 1, "threads": 1, "seed": 0,
            "max_showers": 1, "stop_after": 1, "checkpoint_every": 1, "validate_every": 0}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a generative model on a shower file",
        description="Train an architecture (wgan, bibae, l2lflows, ...) on showers of one "
                    "geometry. Writes OUT/config.yaml, checkpoints under OUT/checkpoints "
                    "(atomic, resumable with --resume), metrics in OUT/metrics.jsonl and the "
                    "final model folder OUT/model. SIGINT (Ctrl-C) and SIGTERM stop after the "
                    "current step with a checkpoint that --resume continues bit for bit "
                    "(exit code 130 / 143). Multi-process: launch with "
                    "'torchrun --nproc_per_node N -m caloforge.cli train ...'.")
    p.add_argument("--model", required=True, help="architecture name")
    p.add_argument("--data", required=True, help="training shower file (any format)")
    p.add_argument("--out", required=True, help="output folder (new, or existing with --resume)")
    p.add_argument("--config", help="YAML with sections 'model' (model config, may name a "
                                    "'preset') and 'training'")
    p.add_argument("--preset", help="model size preset (e.g. tiny, default)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="passes over the training data (>= 1)")
    length.add_argument("--steps", type=int, help="optimisation steps (>= 1)")
    p.add_argument("--batch-size", type=int, help="showers per step and process (>= 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of initialisation, shuffling, noise (>= 0)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--teacher", help="frozen teacher model folder for a student (e.g. "
                                     "caloflow-student), attached by reference: same as "
                                     "training.frozen_models.teacher in --config")
    p.add_argument("--max-showers", type=int, help="read at most this many showers")
    p.add_argument("--stop-after", type=int,
                   help="stop this invocation after N steps (resume later; not remembered)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"],
                   help="mixed precision on CUDA (default auto)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--validate-every", type=int, help="steps between validations (0 = never)")
    add_no_progress(p)
    p.set_defaults(func=run)


def check_options(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers and unknown or absent devices before any work."""
    for key, low in _MINIMUM.items():
        value = getattr(args, key)
        if value is not None and value < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {low}, got {value}")
    from caloforge.utils import resolve_device

    resolve_device(args.device, "--device")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    # Imported here so that `caloforge --help` does not pay for torch.
    import torch

    from caloforge.models.base import get_model_class
    from caloforge.training.interrupt import TrainingInterrupted
    from caloforge.training.loop import TrainConfig, load_run_config, train

    if args.threads:
        torch.set_num_threads(args.threads)

    get_model_class(args.model)  # unknown names fail before the data are read
    model_cfg, train_cfg, preset = ({}, {}, None)
    if args.config:
        model_cfg, train_cfg, preset = load_run_config(args.config)
    overrides = {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size,
                 "max_showers": args.max_showers, "stop_after": args.stop_after,
                 "amp": args.amp, "checkpoint_every": args.checkpoint_every,
                 "validate_every": args.validate_every}
    train_cfg.update({k: v for k, v in overrides.items() if v is not None})
    if args.teacher:
        train_cfg["frozen_models"] = {**(train_cfg.get("frozen_models") or {}),
                                      "teacher": args.teacher}
    if args.steps is not None:
        train_cfg["epochs"] = 0
    cfg = TrainConfig.from_dict(train_cfg, source=args.config)
    try:
        model = train(args.model, args.data, args.out, model_cfg, args.preset or preset, cfg,
                      args.device, args.seed, args.resume,
                      progress=False if args.no_progress else None)
    except TrainingInterrupted as stop:
        print(f"caloforge train: {stop}", file=sys.stderr)
        return stop.exit_code
    import os
    from pathlib import Path
    if os.environ.get("RANK", "0") == "0":  # one message per torchrun job
        final = Path(args.out) / "model"
        where = final if final.is_dir() else Path(args.out) / "checkpoints"
        print(f"trained {model.name}; model in {where}")
    return 0
