"""Network building blocks shared by the voxel models (3-D grids ``(L, A, B)``).

The condition ``c`` is the normalised incident energy, shape ``(B, 1)``, followed by
the direction for angle-conditioned models (``(B, cond)``); convolutional blocks receive
it as extra constant input channels so that every layer can use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def mlp(sizes: Sequence[int], act: type[nn.Module] = nn.LeakyReLU,
        final_act: bool = False) -> nn.Sequential:
    """Fully connected stack ``sizes[0] -> ... -> sizes[-1]``."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_act:
            layers.append(act(0.2) if act is nn.LeakyReLU else act())
    return nn.Sequential(*layers)


def _with_cond(h: Tensor, c: Tensor) -> Tensor:
    return torch.cat([h, c[:, :, None, None, None].expand(-1, -1, *h.shape[2:])], 1)


class GridDecoder(nn.Module):
    """Vector + condition -> ``(B, L, A, B)`` grid: a linear map to a coarse grid, then
    nearest-neighbour upsampling + 3x3x3 convolutions, cropped to the target shape.

    Upsampling + convolution instead of transposed convolutions avoids checkerboard
    artefacts; the output is not activated (callers choose ReLU/softplus/identity).
    """

    def __init__(self, in_features: int, grid: tuple[int, int, int],
                 channels: Sequence[int] = (64, 32, 16), cond: int = 1) -> None:
        super().__init__()
        self.grid = tuple(grid)
        n_up = len(channels) - 1
        self.coarse = tuple(max(1, math.ceil(s / 2 ** n_up)) for s in self.grid)
        self.fc = nn.Linear(in_features + cond, channels[0] * math.prod(self.coarse))
        self.channels0 = channels[0]
        self.blocks = nn.ModuleList(
            nn.Conv3d(channels[i] + cond, channels[i + 1], 3, padding=1) for i in range(n_up))
        self.out = nn.Conv3d(channels[-1] + cond, 1, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        z = self.act(self.fc(torch.cat([h, c], 1)))
        z = z.view(h.shape[0], self.channels0, *self.coarse)
        for conv in self.blocks:
            z = nn.functional.interpolate(z, scale_factor=2, mode="nearest")
            z = self.act(conv(_with_cond(z, c)))
        z = self.out(_with_cond(z, c))[:, 0]
        L, A, B = self.grid
        return z[:, :L, :A, :B]


class ResBlock3d(nn.Module):
    """3-D residual block (two 3x3x3 convolutions + 1x1x1 skip), optional stride 2."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv3d(c_in, c_out, 1, stride=stride)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.skip(x) + self.conv2(self.act(self.conv1(x))))


class GridEncoder(nn.Module):
    """``(B, C_in, L, A, B)`` grid + condition -> feature vector: a stem convolution, strided
    3-D residual blocks, flatten (keeps position information), concatenated condition."""

    def __init__(self, grid: tuple[int, int, int], in_channels: int = 1,
                 channels: Sequence[int] = (16, 32, 64), cond: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv3d(in_channels + cond, channels[0], 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock3d(channels[i], channels[i + 1])
                                      for i in range(len(channels) - 1)])
        with torch.no_grad():
            probe = self.blocks(torch.zeros(1, channels[0], *grid))
        self.out_features = probe.numel() + cond
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.act(self.stem(_with_cond(x, c)))
        h = self.blocks(h).flatten(1)
        return torch.cat([h, c], 1)


class MinibatchDiscrimination(nn.Module):
    """Batch-level features for a critic (Salimans et al. 2016, as in seed 001).

    Per sample: sum and standard deviation of the (log-scaled) input and of its
    un-scaled counterpart ``expm1``; the matrices of pairwise differences of these four
    numbers pass through a small embedding network and are averaged over the batch.
    """

    def __init__(self, out_features: int = 16) -> None:
        super().__init__()
        self.embed = mlp([4, 32, out_features], final_act=True)
        self.out_features = out_features

    def forward(self, y: Tensor) -> Tensor:
        flat = y.flatten(1)
        lin = torch.expm1(flat.clamp(max=30.0))
        f = torch.stack([flat.mean(1), flat.std(1), torch.log1p(lin.mean(1)),
                         torch.log1p(lin.std(1))], 1)
        diff = f[:, None, :] - f[None, :, :]
        return self.embed(diff).mean(1)


class Critic3d(nn.Module):
    """3-D residual critic: scalar score of ``(B, C, L, A, B)`` inputs given the condition,
    with optional minibatch discrimination on the first input channel."""

    def __init__(self, grid: tuple[int, int, int], in_channels: int = 1,
                 channels: Sequence[int] = (16, 32, 64), hidden: int = 64,
                 minibatch: bool = False, cond: int = 1) -> None:
        super().__init__()
        self.encoder = GridEncoder(grid, in_channels, channels, cond)
        self.mbd = MinibatchDiscrimination() if minibatch else None
        extra = self.mbd.out_features if self.mbd is not None else 0
        self.head = mlp([self.encoder.out_features + extra, hidden, hidden, 1])

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.encoder(x, c)
        if self.mbd is not None:
            h = torch.cat([h, self.mbd(x[:, -1])], 1)
        return self.head(h)[:, 0]


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, c: Tensor,
                     generator: torch.Generator) -> Tensor:
    """WGAN-GP term ``E[(||grad C(x_hat)|| - 1)^2]`` on random interpolates (Gulrajani
    et al. 2017); computed in float32 outside autocast for stability."""
    shape = (len(real),) + (1,) * (real.ndim - 1)
    alpha = torch.rand(shape, generator=generator, device=real.device)
    with torch.autocast(real.device.type, enabled=False):
        x_hat = (alpha * real.float() + (1 - alpha) * fake.float()).requires_grad_(True)
        score = critic(x_hat, c.float())
        (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that knows how (used by resetting critics)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
