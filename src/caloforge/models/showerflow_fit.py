"""Training a :class:`~caloforge.models.showerflow.ShowerFlow` on its own, to convergence.

In the point models' training loop the ShowerFlow shares the steps (and the batches of
whole clouds) with the point denoiser: ``showerflow_fraction`` of them.  With a CPU-sized
run that is a few epochs, far from converged (the shipped teacher's flow: 3,000 steps of
32 showers; its held-out negative log-likelihood fell from 6.9 to -2.7 nats per shower when
fitted here).  The flow only needs each shower's summary (:class:`ShowerSummary`: a few
numbers per layer), so it can be fitted on all of them at once with large batches, as the
CaloClouds authors train theirs, separately from the point model.

:func:`fit_showerflow` holds out the last ``validation_fraction`` of the showers, trains
with Adam and a cosine learning-rate decay, validates every ``validate_every`` steps (fixed
dequantisation noise) and keeps the weights with the best held-out likelihood.  Every random
number (initial weights, batches, dequantisation) comes from ``seed``: the same call gives
the same flow.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from caloforge.errors import InputError
from caloforge.models.showerflow import ShowerFlow, ShowerSummary
from caloforge.utils import progress

MIN_SHOWERS = 20  # a held-out part and some batches to train on


def _rows(s: ShowerSummary, index: Tensor) -> ShowerSummary:
    return ShowerSummary(*[getattr(s, f.name)[index] for f in dataclasses.fields(s)])


def fit_showerflow(flow: ShowerFlow, summary: ShowerSummary, e_inc: Tensor, context: Tensor,
                   steps: int, batch_size: int = 512, lr: float = 1e-3, seed: int = 0,
                   validation_fraction: float = 0.1, validate_every: int = 250,
                   show_progress: bool | None = None) -> dict[str, float]:
    """Re-initialise ``flow`` from ``seed``, fit its standardisation and train it on the
    showers' ``summary`` (``e_inc`` (B,) MeV, ``context`` (B, C) the network condition).
    Returns the held-out negative log-likelihood (nats per shower) of the kept weights
    and the step they are from."""
    n = len(e_inc)
    if n < MIN_SHOWERS:
        raise InputError(f"fitting the ShowerFlow needs at least {MIN_SHOWERS} training "
                         f"showers, got {n}")
    n_val = max(1, int(round(n * validation_fraction)))
    n_fit = n - n_val
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # fresh weights from the seed, nothing else moved
        torch.manual_seed(seed)
        for m in flow.flow.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    n_layers = flow.n_layers
    device = context.device
    flow.fit(flow.encode(summary, e_inc, torch.rand(n, 1 + n_layers, generator=gen)
                         .to(device)))
    val = torch.arange(n_fit, n, device=device)
    val_features = flow.encode(_rows(summary, val), e_inc[val],
                               torch.rand(n_val, 1 + n_layers, generator=gen).to(device))

    def held_out() -> float:
        with torch.no_grad():
            return float(flow.loss(val_features, context[val]))

    opt = torch.optim.Adam(flow.parameters(), lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    best, best_step = held_out(), 0
    best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
    was_training = flow.training
    flow.train()
    bar = progress(total=steps, desc="fit ShowerFlow", unit="step", enabled=show_progress)
    try:
        for step in range(1, steps + 1):
            rows = torch.randint(n_fit, (min(batch_size, n_fit),), generator=gen).to(device)
            u = torch.rand(len(rows), 1 + n_layers, generator=gen).to(device)
            loss = flow.loss(flow.encode(_rows(summary, rows), e_inc[rows], u), context[rows])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)  # rare spiky batches
            opt.step()
            sched.step()
            bar.update(1)
            if step % validate_every == 0 or step == steps:
                nll = held_out()
                bar.set_postfix({"held_out_nll": f"{nll:.3f}"})
                if nll < best:
                    best, best_step = nll, step
                    best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
    finally:
        bar.close()
        flow.train(was_training)
    flow.load_state_dict(best_state)
    return {"held_out_nll": best, "best_step": float(best_step), "held_out_showers": float(n_val)}


__all__ = ["fit_showerflow"]
