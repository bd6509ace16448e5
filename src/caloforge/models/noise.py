"""Per-shower random streams: shower i of a run depends only on (seed, i).

Generation draws every shower's noise from its own :class:`torch.Generator`, seeded from
``numpy.random.SeedSequence(seed, spawn_key=(STREAM, i))`` (the reference simulation uses
``spawn_key=(i,)`` in the same way; the extra key keeps the two streams apart), so the
batch size, the number of threads, shards and workers never change what is generated.
Architectures draw through :func:`randn` / :func:`rand` / :func:`randint`, which accept
either a :class:`ShowerNoise` (generation) or a plain generator (training, whose noise is
one stream for the whole minibatch).

>>> a = ShowerNoise.for_showers(seed=7, indices=range(3)).randn(2)
>>> b = ShowerNoise.for_showers(seed=7, indices=[2]).randn(2)
>>> bool((a[2] == b[0]).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

NORMAL_BLOCK = 4096  # normals drawn per shower at least at a time
GROUP = 16  # torch fills normals on the CPU in groups of 16 (see reserve)
STREAM = 0x63616C6F  # "calo": model noise, apart from the simulation's streams


def shower_seed(seed: int, index: int) -> int:
    """The 64-bit torch seed of shower ``index`` of a run with ``seed``."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(STREAM, int(index)))
    return int(ss.generate_state(1, np.uint64)[0])


def draw_seed(generator: torch.Generator | int | None) -> int:
    """A run seed from an int, from a torch generator (one draw), or fresh entropy."""
    if generator is None:
        return int(np.random.SeedSequence().entropy % (2 ** 63))
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                 device=generator.device).item())
    return int(generator)


class ShowerNoise:
    """One random stream per shower of a batch; draws return ``(B, *shape)``."""

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu"
                 ) -> None:
        self.generators = list(generators)
        self.device = torch.device(device)
        # Normals are drawn per shower in blocks and handed out in order: one generator
        # call per shower and block instead of one per request (the loop over showers is
        # what costs; a 900-cell layer per request would pay it 30 times per shower).
        self._normals = torch.empty((len(self.generators), 0), device=self.device)
        self._used = 0

    @classmethod
    def for_showers(cls, seed: int, indices: Iterable[int], device: torch.device | str = "cpu"
                    ) -> ShowerNoise:
        """Streams of showers ``indices`` (their numbers in the run) of run ``seed``."""
        gens = [torch.Generator(device=device).manual_seed(shower_seed(seed, i)) for i in indices]
        return cls(gens, device)

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, rows: Tensor | Sequence[int]) -> ShowerNoise:
        """The streams of some rows (shared, not copied: drawing advances them; normals
        already drawn into this object's block stay with it)."""
        rows = rows.tolist() if isinstance(rows, Tensor) else rows
        return ShowerNoise([self.generators[int(r)] for r in rows], self.device)

    def _stack(self, draw, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:  # noqa: ANN001
        if not self.generators:
            return torch.empty((0, *shape), device=self.device, dtype=dtype)
        return torch.stack([draw(g) for g in self.generators])

    def reserve(self, k: int) -> None:
        """Make sure ``k`` normals per shower are drawn ahead, in one generator call per
        shower (a model that knows its needs calls this once per batch).  Only what is
        missing is drawn, rounded up to a multiple of 16: torch's CPU normal fill works in
        groups of 16, so a stream drawn in such pieces holds the same values as one long
        draw, and a model that needs few normals (a GAN's latent vector) does not pay for
        a whole block."""
        self._draw_ahead(k, GROUP)

    def _draw_ahead(self, k: int, minimum: int) -> None:
        if self._normals.shape[1] - self._used >= k:
            return
        left = self._normals[:, self._used:]
        need = k - left.shape[1]
        # A draw of a block or more is exact, as it always was; a smaller one is the
        # block's first values (see reserve), so neither changes what a seed generates.
        size = need if need >= NORMAL_BLOCK else max(-(-need // GROUP) * GROUP, minimum)
        buf = torch.empty((len(self), left.shape[1] + size), device=self.device)
        buf[:, :left.shape[1]] = left
        for row, g in enumerate(self.generators):  # out=: no per-shower temporaries
            torch.randn(size, generator=g, device=self.device, out=buf[row, left.shape[1]:])
        self._normals, self._used = buf, 0

    def randn(self, *shape: int) -> Tensor:
        k = math.prod(shape)
        self._draw_ahead(k, NORMAL_BLOCK)
        out = self._normals[:, self._used:self._used + k]
        self._used += k
        return out.reshape(len(self), *shape)

    def rand(self, *shape: int) -> Tensor:
        return self._stack(lambda g: torch.rand(shape, generator=g, device=self.device),
                           shape, torch.float32)

    def randint(self, high: int, *shape: int) -> Tensor:
        return self._stack(lambda g: torch.randint(0, high, shape, generator=g,
                                                   device=self.device), shape, torch.long)


Source = ShowerNoise | torch.Generator | None


def _check(source: ShowerNoise, n: int) -> None:
    if len(source) != n:
        raise ValueError(f"noise for {len(source)} showers, {n} requested")


def randn(source: Source, n: int, *shape: int, device: torch.device | str = "cpu") -> Tensor:
    """``(n, *shape)`` standard normals: row i from shower i's stream, or one generator."""
    if isinstance(source, ShowerNoise):
        _check(source, n)
        return source.randn(*shape)
    return torch.randn((n, *shape), generator=source, device=device)


def rand(source: Source, n: int, *shape: int, device: torch.device | str = "cpu") -> Tensor:
    """``(n, *shape)`` uniforms on [0, 1), as :func:`randn`."""
    if isinstance(source, ShowerNoise):
        _check(source, n)
        return source.rand(*shape)
    return torch.rand((n, *shape), generator=source, device=device)


def randint(source: Source, high: int, n: int, *shape: int,
            device: torch.device | str = "cpu") -> Tensor:
    """``(n, *shape)`` integers in [0, high), as :func:`randn`."""
    if isinstance(source, ShowerNoise):
        _check(source, n)
        return source.randint(high, *shape)
    return torch.randint(0, high, (n, *shape), generator=source, device=device)


def reserve(source: Source, k: int) -> None:
    """Tell per-shower streams that ``k`` normals per shower follow (see
    :meth:`ShowerNoise.reserve`); a plain generator needs no notice."""
    if isinstance(source, ShowerNoise):
        source.reserve(k)


def subset(source: Source, rows: Tensor) -> Source:
    """The streams of some rows (a plain generator is shared by all rows)."""
    return source.subset(rows) if isinstance(source, ShowerNoise) else source
