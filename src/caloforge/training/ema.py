"""Gradient clipping, and the training side of the weight average (EMA).

The :class:`~caloforge.models.ema.EMA` itself and its model-folder file live in
:mod:`caloforge.models.ema` (models never import training); the loop attaches one to the
model, updates it after each step and checkpoints its shadow.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from caloforge.models.ema import EMA, EMA_FILE, apply_ema, write_ema

__all__ = ["EMA", "EMA_FILE", "apply_ema", "clip_gradients", "write_ema"]


def clip_gradients(optimizers: dict[str, torch.optim.Optimizer], default: float,
                   per_optimizer: dict[str, float]) -> None:
    """Clip the gradient norm of each optimiser's parameters just before it steps (after
    unscaling and averaging across processes): ``per_optimizer[name]`` or ``default``;
    0 means no clipping."""
    for name, opt in optimizers.items():
        limit = float(per_optimizer.get(name, default))
        if limit <= 0:
            continue
        params = [p for g in opt.param_groups for p in g["params"]]

        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any,
                 params: list[Tensor] = params, limit: float = limit) -> None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], limit)

        opt.register_step_pre_hook(hook)
