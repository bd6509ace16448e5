"""Occupancy calibration of the point-cloud models: as many read-out cells as the data.

A point model is trained on clustered simulation steps, several of which usually share a
detector cell; its generated points are spread a little more evenly, so the same number of
points lights more cells (ILD photons, ``caloclouds2-cm`` trained on 30k showers: 18 %
more hits at the same point count).  The number of cells read out is what the detector
sees, so after training the point count of every layer is scaled down by a factor
``scale[k]`` in ``(0, 1]``, fitted on training showers:

- project the training clouds and clouds generated at the same conditions into the cells
  (:meth:`~caloforge.data.PointCloudBatch.to_voxels`, the evaluation's projection) and
  count the cells above the readout threshold, per layer, averaged over the showers;
- scale each layer's count by the ratio, then correct by secant steps in log-log space
  (hits grow more slowly than points: several points share a cell), generating with the
  same noise each time so that the steps see the calibration, not sampling noise.

A layer never loses its last point (its energy stays in it), so the visible energy is
unchanged; the number of points is then smaller than the training clouds' by design.

>>> import numpy as np
>>> first = secant_scale(np.array([100.0, 50.0]), np.array([[1.0, 1.0]]),
...                      np.array([[125.0, 50.0]]))  # first step: hits ~ points
>>> [round(float(v), 3) for v in first]
[0.8, 1.0]
>>> tries = np.array([[1.0, 1.0], [0.8, 1.0]])  # 0.8 gave 110 hits: hits ~ points^0.57
>>> [round(float(v), 3) for v in secant_scale(np.array([100.0, 50.0]), tries,
...                                            np.array([[125.0, 50.0], [110.0, 50.0]]))]
[0.677, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from caloforge.data import PointCloudBatch
from caloforge.geometry import Geometry

MIN_SCALE = 0.05
TOLERANCE = 0.01  # stop once every layer's mean hit count is this close (relative)
CHUNK = 500  # showers projected at once (dense cells of one chunk in memory)


def layer_hits(clouds: PointCloudBatch, geometry: Geometry) -> np.ndarray:
    """Mean number of cells above the readout threshold per layer ``(L,)`` after
    projecting ``clouds`` into ``geometry``."""
    total = np.zeros(geometry.n_layers)
    starts = np.asarray(geometry.layer_offsets[:-1])
    for i in range(0, len(clouds), CHUNK):
        dense = clouds[i:i + CHUNK].to_voxels(geometry)[0].energies
        hits = (dense > geometry.readout_threshold_mev).astype(np.int64)
        total += np.add.reduceat(hits, starts, axis=1).sum(0)
    return total / max(len(clouds), 1)


def secant_scale(target: np.ndarray, scales: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Next per-layer scale from the tried ``scales`` (T, L) and the ``hits`` (T, L) they
    gave: the log-log secant through the last two tries towards ``target`` (L,) hits (the
    first step assumes hits proportional to points), clipped to ``[MIN_SCALE, 1]``.
    Layers without hits in the target or the last try keep their last scale."""
    s, h = np.log(scales[-1]), np.log(np.maximum(hits[-1], 1e-12))
    slope = np.ones_like(s)
    if len(scales) > 1:
        ds = s - np.log(scales[-2])
        dh = h - np.log(np.maximum(hits[-2], 1e-12))
        ok = np.abs(ds) > 1e-6
        slope[ok] = np.clip(dh[ok] / ds[ok], 0.2, 2.0)
    step = (np.log(np.maximum(target, 1e-12)) - h) / slope
    valid = (target > 0) & (hits[-1] > 0)
    return np.clip(np.exp(np.where(valid, s + step, s)), MIN_SCALE, 1.0)


def fit_count_scale(reference: PointCloudBatch, draw: Callable[[np.ndarray], PointCloudBatch],
                    geometry: Geometry, iterations: int) -> np.ndarray:
    """Per-layer point-count scale ``(L,)`` such that clouds from ``draw(scale)`` (the
    model at the reference conditions, the same noise each call) light as many cells per
    layer as ``reference`` (see the module docstring)."""
    target = layer_hits(reference, geometry)

    def error(h: np.ndarray) -> np.ndarray:  # relative miss per layer with hits
        return np.abs(np.log(np.maximum(h, 1e-12) / np.maximum(target, 1e-12)))[target > 0]

    scales = [np.ones(geometry.n_layers)]
    hits = [layer_hits(draw(scales[0]), geometry)]
    for _ in range(iterations):
        nxt = secant_scale(target, np.array(scales), np.array(hits))
        if np.array_equal(nxt, scales[-1]) or error(hits[-1]).max(initial=0) < TOLERANCE:
            break
        scales.append(nxt)
        hits.append(layer_hits(draw(nxt), geometry))
    # the try closest to the target overall (the last one, unless the steps overshot)
    return scales[int(np.argmin([error(h).sum() for h in hits]))]
