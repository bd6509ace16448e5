"""Data-parallel training across processes with ``torch.distributed`` (torchrun).

Launch with ``torchrun --nproc_per_node N -m caloforge.cli train ...`` (or ``--nnodes``
for several machines); the launcher sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``.  The
backend is gloo on CPU and nccl on GPU.

Every process holds the whole model and a disjoint shard of each minibatch.  Gradients
are averaged over processes before every optimiser step — what
:class:`~torch.nn.parallel.DistributedDataParallel` does, but done at the optimiser so
that adversarial models, which interleave several optimisers, forward passes through
frozen networks and gradient penalties, need no special wrapping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group if launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, local, world)


def device_for(device: str, info: DistInfo) -> torch.device:
    """One GPU per process on multi-GPU nodes."""
    if device.startswith("cuda") and info.enabled and device == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def make_grad_sync(info: DistInfo):
    """A function averaging the gradients of some parameters across processes (or None)."""
    if not info.enabled:
        return None

    def sync(params: list[Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        # One flat buffer, one collective: far fewer calls than one per tensor.
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= info.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    return sync


def broadcast_state(module: nn.Module, info: DistInfo) -> None:
    """Make every process start from rank 0's weights and fitted preprocessing."""
    if not info.enabled:
        return
    for t in module.state_dict().values():
        if t.is_floating_point():
            dist.broadcast(t, 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_process(flag: bool, info: DistInfo) -> bool:
    """True on every process if ``flag`` is true on any (e.g. a stop request that only
    some processes received), so that all stop at the same step."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
