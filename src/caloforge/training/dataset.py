"""Training showers streamed from a file in chunks, shuffled reproducibly, in bounded memory.

A training file can be far larger than memory (100k ILD ECAL showers are 10.8 GB as dense
float32).  :class:`ShowerStream` therefore never holds more than a *shuffle window* of
showers: every epoch the file's chunks (``chunk_showers`` consecutive showers) are put in
a random order, consecutive chunks of that order are grouped into windows of about
``buffer_showers`` showers, and the showers of a window are shuffled among themselves.
Reading a window touches only its chunks, each a contiguous slice of the file, so dense,
sparse and point-cloud files (voxelised by their readers) all stream at the speed of a
sequential read.  When a window holds the whole training set this is a full shuffle.

The order of epoch ``k`` is a pure function of ``(seed, k)`` and of the index sets, known
without reading a voxel; so the position in the data is just ``(epoch, step)``, a resumed
run reads exactly the batches it would have read, and the result does not depend on the
number of processes (process ``r`` of ``W`` takes its slice of each global batch).

A held-out validation set and the subsample that fitted preprocessing sees are random
showers gathered with one grouped read each.

>>> import numpy as np
>>> from caloforge.models.toy import toy_geometry, toy_showers
>>> data = toy_showers(toy_geometry(), np.full(40, 2e4), np.random.default_rng(0))
>>> stream = ShowerStream(MemorySource(data), seed=1, holdout=8, chunk_showers=8,
...                       buffer_showers=16)
>>> stream.n_train, len(stream.rows(epoch=0, start=0, stop=5))
(32, 5)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from caloforge.data.batch import Conditions, PointCloudBatch, ShowerBatch
from caloforge.errors import InputError

Showers = ShowerBatch | PointCloudBatch


class ShowerSource(Protocol):
    """What the stream needs from a reader (:class:`~caloforge.data.io.ShowerReader`)."""

    geometry: str
    n_showers: int

    def read(self, start: int, stop: int) -> ShowerBatch: ...

    def read_points(self, start: int, stop: int) -> PointCloudBatch: ...

    def read_conditions(self, start: int, stop: int) -> Conditions: ...

    def close(self) -> None: ...


class MemorySource:
    """A batch (voxels or points) already in memory, seen through the reader interface."""

    def __init__(self, batch: Showers) -> None:
        self.batch = batch
        if batch.geometry is None:
            raise InputError("point clouds in memory carry no geometry; set their geometry")
        self.geometry = batch.geometry
        self.n_showers = len(batch)

    def read(self, start: int, stop: int) -> ShowerBatch:
        part = self.batch[start:stop]
        return part.to_voxels()[0] if isinstance(part, PointCloudBatch) else part

    def read_points(self, start: int, stop: int) -> PointCloudBatch:
        part = self.batch[start:stop]
        return part if isinstance(part, PointCloudBatch) else part.to_points()

    def read_conditions(self, start: int, stop: int) -> Conditions:
        return self.batch.conditions[start:stop]

    def close(self) -> None:
        pass


def open_source(data: Showers | str | Path) -> ShowerSource:
    """A streaming reader of a shower file, or a batch in memory."""
    if isinstance(data, (ShowerBatch, PointCloudBatch)):
        return MemorySource(data)
    from caloforge.data.io import open_showers
    return open_showers(data)


def take_points(batch: PointCloudBatch, rows: np.ndarray) -> PointCloudBatch:
    """Showers ``rows`` (any order, repeats allowed) of a point-cloud batch."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = batch.n_points[rows]
    starts = batch.offsets[rows]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    idx = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    return PointCloudBatch(offsets, batch.x[idx], batch.y[idx], batch.z[idx],
                           batch.energy[idx], batch.conditions[rows],
                           None if batch.layer is None else batch.layer[idx], batch.geometry)


def concat_points(parts: list[PointCloudBatch]) -> PointCloudBatch:
    """Point-cloud batches one after the other (stored layers kept only if all have them)."""
    if len(parts) == 1:
        return parts[0]
    layers = None if any(p.layer is None for p in parts) else \
        np.concatenate([p.layer for p in parts])
    counts = np.concatenate([p.n_points for p in parts])
    return PointCloudBatch(
        np.concatenate([[0], np.cumsum(counts)]),
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "y", "z", "energy")),
        Conditions.concatenate([p.conditions for p in parts]), layers, parts[0].geometry)


def showers_fitting(memory_mb: float, n_voxels: int) -> int:
    """How many dense float32 showers fit in ``memory_mb`` megabytes."""
    return max(1, int(memory_mb * 2**20) // (4 * max(n_voxels, 1)))


class ShowerStream:
    """Seeded, chunked, windowed shuffling over the first ``n_showers`` of ``source``.

    ``holdout`` random showers are kept apart for validation (:meth:`validation_rows`);
    the rest are the training set, served by :meth:`rows` in each epoch's order.
    With ``points`` the stream serves :class:`PointCloudBatch` (read with the source's
    ``read_points``; a voxel file gives one point per hit cell) instead of voxels.
    """

    def __init__(self, source: ShowerSource, seed: int, holdout: int = 0,
                 chunk_showers: int = 256, buffer_showers: int = 4096,
                 n_showers: int = 0, points: bool = False) -> None:
        if chunk_showers < 1 or buffer_showers < 1:
            raise InputError("chunk and shuffle-buffer sizes must be >= 1")
        self.source = source
        self.seed = int(seed)
        self.points = bool(points)
        total = source.n_showers
        self.n_showers = total if n_showers <= 0 else min(n_showers, total)
        self.chunk_showers = int(chunk_showers)
        self.chunks_per_window = max(1, int(buffer_showers) // self.chunk_showers)
        order = np.random.default_rng([self.seed, 1]).permutation(self.n_showers)
        self.val_index = np.sort(order[:holdout])
        keep = np.ones(self.n_showers, dtype=bool)
        keep[self.val_index] = False
        self.train_index = np.flatnonzero(keep)
        self.n_train = len(self.train_index)
        n_chunks = -(-self.n_showers // self.chunk_showers)
        chunk_of = self.train_index // self.chunk_showers
        # chunk c holds train_index[bounds[c]:bounds[c + 1]]
        self._bounds = np.searchsorted(chunk_of, np.arange(n_chunks + 1))
        self._epoch: int | None = None
        self._windows: list[np.ndarray] = []  # file indices of each window, in epoch order
        self._starts = np.zeros(1, dtype=np.int64)
        self._cache: dict[int, Showers] = {}

    # ---- identity (stored in checkpoints) ---------------------------------------------
    def fingerprint(self) -> str:
        """SHA-256 of the incident energies of the showers used: a resumed run must see the
        same data (the file may have moved)."""
        e = self.source.read_conditions(0, self.n_showers).incident_energy
        return hashlib.sha256(np.ascontiguousarray(e, dtype="<f8").tobytes()).hexdigest()

    def state(self) -> dict[str, Any]:
        """What defines the order of the data (the position is the training step)."""
        return {"seed": self.seed, "n_showers": self.n_showers, "n_train": self.n_train,
                "chunk_showers": self.chunk_showers,
                "chunks_per_window": self.chunks_per_window, "fingerprint": self.fingerprint()}

    # ---- epoch order --------------------------------------------------------------------
    def _plan(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        rng = np.random.default_rng([self.seed, 2, epoch])
        chunks = rng.permutation(len(self._bounds) - 1)
        windows = []
        for w in range(0, len(chunks), self.chunks_per_window):
            members = np.sort(chunks[w:w + self.chunks_per_window])  # read in file order
            idx = np.concatenate([self.train_index[self._bounds[c]:self._bounds[c + 1]]
                                  for c in members])
            if len(idx):
                windows.append(idx[rng.permutation(len(idx))])
        self._windows = windows
        self._starts = np.concatenate([[0], np.cumsum([len(w) for w in windows])])
        self._epoch = epoch
        self._cache.clear()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """File indices of the training showers in the order epoch ``epoch`` visits them."""
        self._plan(epoch)
        return np.concatenate(self._windows) if self._windows else np.zeros(0, np.int64)

    def rows(self, epoch: int, start: int, stop: int) -> Showers:
        """Showers at positions ``start:stop`` of epoch ``epoch``'s order."""
        self._plan(epoch)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, stop, side="left")) - 1
        for w in [w for w in self._cache if w < first]:  # consumed: free the memory
            del self._cache[w]
        parts = []
        for w in range(first, last + 1):
            if w not in self._cache:
                self._cache[w] = self.gather(self._windows[w])
            lo = max(start - self._starts[w], 0)
            hi = min(stop, self._starts[w + 1]) - self._starts[w]
            parts.append(self._cache[w][int(lo):int(hi)])
        if self.points:
            return concat_points(parts)
        return parts[0] if len(parts) == 1 else ShowerBatch.concatenate(parts)

    # ---- reading ------------------------------------------------------------------------
    def gather(self, index: np.ndarray) -> Showers:
        """Showers at file indices ``index`` (any order), one read per chunk touched,
        written straight into their place (one copy of the data in memory)."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            raise InputError("no showers to read")
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        if self.points:
            return self._gather_points(ordered, order)
        x: np.ndarray | None = None
        overflow: np.ndarray | None = None  # kept where every block has it
        conditions, done, with_overflow = [], 0, True
        cuts = np.flatnonzero(np.diff(ordered // self.chunk_showers)) + 1
        for sel in np.split(ordered, cuts):
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            block = self.source.read(lo, hi)
            if len(sel) != hi - lo:
                block = block[sel - lo]
            if x is None:
                x = np.empty((len(index), block.n_voxels), np.float32)
            x[order[done:done + len(sel)]] = block.energies
            with_overflow = with_overflow and block.overflow is not None
            if with_overflow:
                if overflow is None:
                    overflow = np.empty((len(index), block.overflow.shape[1]), np.float32)
                overflow[order[done:done + len(sel)]] = block.overflow
            conditions.append(block.conditions)
            done += len(sel)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        cond = Conditions.concatenate(conditions)[inverse]
        return ShowerBatch(self.source.geometry, x, cond,
                           overflow if with_overflow else None)

    def _gather_points(self, ordered: np.ndarray, order: np.ndarray) -> PointCloudBatch:
        cuts = np.flatnonzero(np.diff(ordered // self.chunk_showers)) + 1
        parts = []
        for sel in np.split(ordered, cuts):
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            parts.append(take_points(self.source.read_points(lo, hi), sel - lo))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return take_points(concat_points(parts), inverse)

    def train_conditions(self) -> Conditions:
        """Conditions (energy, theta, phi, impact, particle) of every training shower, read
        without the voxels: what the model declares and records as its conditions."""
        return self.source.read_conditions(0, self.n_showers)[self.train_index]

    def validation_rows(self) -> Showers | None:
        return self.gather(self.val_index) if len(self.val_index) else None

    def subsample_index(self, n: int) -> np.ndarray:
        """``n`` random training showers (the same ones on every call)."""
        order = np.random.default_rng([self.seed, 3]).permutation(self.n_train)
        return self.train_index[order[:n]]

    def close(self) -> None:
        self._cache.clear()
        self.source.close()
