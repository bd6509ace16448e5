"""The axis frame of direction-conditioned L2LFlows models: whole-cell moves of each
layer that follow the shower axis (exact, reversible inside the window), and a model that
draws its layers in that frame and puts them back on the detector grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_models import assert_same_showers  # same folder: on sys.path under pytest

from caloforge.data import Conditions
from caloforge.errors import ConfigError, GeometryError
from caloforge.geometry import get_geometry
from caloforge.models import build, load
from caloforge.models.axis_frame import AxisFrame
from caloforge.models.toy import toy_geometry, toy_showers

GEO = toy_geometry()  # 6 layers of 6 x 6 cells, 10 mm pitch, window centred on x = y = 0
FRAME_MODEL = {"conditions": ["theta", "phi"], "cell_feature": "log_threshold",
               "shared_layer_flow": True, "axis_frame": True, "calibration_showers": 0}


def test_move_takes_the_cell_at_p_plus_shift_and_fills_outside():
    frame = AxisFrame(GEO, list(range(6)))
    img = torch.zeros(1, 1, 36)
    img[0, 0, 2 * 6 + 3] = 5.0  # grid position (2, 3)
    moved = frame.move(img, torch.tensor([[[1, -2]]]), fill=-1.0)
    assert moved[0, 0, 1 * 6 + 5] == 5.0  # (1, 5) + (1, -2) = (2, 3)
    assert (moved == 5.0).sum() == 1
    # x = 5 takes x = 6 and y = 0, 1 take y = -2, -1: outside the grid
    want = torch.zeros(6, 6)
    want[5, :], want[:, :2], want[1, 5] = -1.0, -1.0, 5.0
    assert moved.view(6, 6).equal(want)


def test_move_and_back_is_exact_inside_the_window():
    frame = AxisFrame(GEO, list(range(6)))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 6, 36, generator=gen) + 1.0
    shift = torch.randint(-3, 4, (4, 6, 2), generator=gen)
    back = frame.move(frame.move(x, shift, -1.0), -shift, -1.0)
    kept = back != -1.0
    assert kept.float().mean() > 0.2
    assert back[kept].equal(x[kept])
    # exactly the cells p whose position in the moved image (p - shift) is inside are kept
    ix = torch.arange(36) // 6 - shift[..., :1]
    iy = torch.arange(36) % 6 - shift[..., 1:]
    assert kept.equal((ix >= 0) & (ix < 6) & (iy >= 0) & (iy < 6))


def test_offsets_follow_the_axis_in_cells():
    frame = AxisFrame(GEO, list(range(6)))
    z_last = float(frame.layer_z[-1])
    theta = math.atan(23.0 / z_last)  # 2.3 cells at the last layer
    angles = torch.tensor([[0.0, 1.0], [theta, math.pi / 2], [theta, math.pi]])
    shift, rest = frame.offsets(angles, (0.0, 0.0))
    assert shift[0].eq(0).all() and rest[0].abs().max() == 0  # normal incidence
    assert shift[1, -1].tolist() == [0, 2] and rest[1, -1, 1].item() == pytest.approx(0.3, abs=1e-4)
    assert shift[2, -1].tolist() == [-2, 0]
    assert (rest.abs() <= 0.5 + 1e-6).all()
    # an impact point off the centre moves every layer
    shifted, _ = frame.offsets(angles[:1], (-20.0, 10.0))
    assert shifted[0].tolist() == [[-2, 1]] * 6


def _bilinear_showers(frame, depths, theta, phi):
    """One unit of energy per layer, shared bilinearly between the four cells around
    ``depth_k tan(theta) (cos phi, sin phi)``: its centroid is exactly that point."""
    nx, ny = frame.grid
    out = torch.zeros(len(theta), len(depths), nx * ny)
    for b, (t, p) in enumerate(zip(theta, phi)):
        for k, d in enumerate(depths):
            gx = (d * math.tan(t) * math.cos(p) - float(frame.cell_x.min())) / frame.pitch[0]
            gy = (d * math.tan(t) * math.sin(p) - float(frame.cell_y.min())) / frame.pitch[1]
            ix, iy = int(gx), int(gy)
            fx, fy = gx - ix, gy - iy
            for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                              (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
                out[b, k, (ix + dx) * ny + iy + dy] += w
    return out


def test_fitted_depths_put_the_frame_on_the_energy_centroid():
    """Where the energy of oblique showers crosses a layer, as a depth: recovered exactly
    from showers whose centroid is at depth_k tan(theta); normal incidence says nothing
    about it and leaves the layers' own z."""
    frame = AxisFrame(GEO, list(range(6)))
    rng = np.random.default_rng(2)
    theta, phi = np.radians(rng.uniform(2, 25, 40)), rng.uniform(0, 2 * np.pi, 40)
    depths = 0.7 * frame.layer_z.numpy() + 4.0  # a flatter line than the axis
    images = _bilinear_showers(frame, depths, theta, phi)
    angles = torch.as_tensor(np.stack([theta, phi], 1), dtype=torch.float32)
    frame.fit_depths(*frame.depth_sums(images, angles, (0.0, 0.0)))
    np.testing.assert_allclose(frame.depth.numpy(), depths, rtol=1e-3)
    shift, _ = frame.offsets(angles, (0.0, 0.0))
    geometric, _ = AxisFrame(GEO, list(range(6))).offsets(angles, (0.0, 0.0))
    assert not shift.equal(geometric)
    normal = AxisFrame(GEO, list(range(6)))
    normal.fit_depths(*normal.depth_sums(images, torch.zeros(40, 2), (0.0, 0.0)))
    assert normal.depth.equal(normal.layer_z)


def test_axis_frame_needs_layers_of_one_grid_and_the_compact_features():
    with pytest.raises(GeometryError, match="layer 1 of geometry 'calogan'"):
        AxisFrame(get_geometry("calogan"), [0, 1, 2])
    with pytest.raises(ConfigError, match="axis_frame"):
        build("l2lflows", GEO, preset="tiny", config={**FRAME_MODEL, "shared_layer_flow": False})
    with pytest.raises(ConfigError, match="axis_frame"):
        build("l2lflows", GEO, preset="tiny",
              config={**FRAME_MODEL, "cell_feature": "logit_fraction"})


def _centroid_shift_mm(showers: np.ndarray) -> np.ndarray:
    """Energy-weighted (x, y) of the last layer minus that of the first, per shower."""
    xy = np.asarray(GEO.cell_centres)[:36, :2]
    out = []
    for k in (5, 0):
        e = showers[:, k * 36:(k + 1) * 36]
        out.append((e @ xy) / np.maximum(e.sum(1, keepdims=True), 1e-9))
    return out[0] - out[1]


@pytest.fixture(scope="module")
def oblique():
    rng = np.random.default_rng(4)
    n = 400
    e = np.exp(rng.uniform(np.log(5e3), np.log(5e4), n))
    return toy_showers(GEO, e, rng, theta=np.radians(rng.uniform(0, 40, n)),
                       phi=rng.uniform(0, 2 * np.pi, n))


def _fitted(data, **config):
    """A model with its preprocessing fitted and no training: its per-cell feature means
    carry the shape of the data in whichever frame it models them."""
    model = build("l2lflows", GEO, preset="tiny", seed=3, config={**FRAME_MODEL, **config})
    model.fit_conditions(data.conditions)
    x = torch.as_tensor(data.energies)
    e = torch.as_tensor(data.incident_energy, dtype=torch.float32)
    model.fit_preprocessing(x, e, angles=model.angle_tensor(data.conditions, len(e)))
    return model.eval()


def test_layers_drawn_in_the_axis_frame_follow_the_requested_direction(oblique):
    """Untrained flows draw around the fitted per-cell means: in the axis frame the
    showers then lean as the request says, on the fixed grid they are pooled over all
    directions and barely lean at all."""
    n, theta = 300, math.radians(35)
    want = math.tan(theta) * (GEO.cell_centres[5 * 36][2] - GEO.cell_centres[0][2])
    lean = {}
    for frame in (True, False):
        model = _fitted(oblique, axis_frame=frame)
        for phi in (0.0, math.pi / 2):
            cond = Conditions(np.full(n, 2e4), theta=np.full(n, theta), phi=np.full(n, phi))
            lean[frame, phi] = np.nanmean(_centroid_shift_mm(model.sample(cond, 9).energies), 0)
    steep = np.radians(30) < oblique.conditions.theta
    d = _centroid_shift_mm(oblique.energies[steep])
    phi = oblique.conditions.phi[steep]
    assert np.nanmean(d[:, 0] * np.cos(phi) + d[:, 1] * np.sin(phi)) > 0.5 * want  # toys lean
    assert lean[True, 0.0][0] == pytest.approx(want, rel=0.35)
    assert abs(lean[True, 0.0][1]) < 0.2 * want
    assert lean[True, math.pi / 2][1] == pytest.approx(want, rel=0.35)
    assert abs(lean[True, math.pi / 2][0]) < 0.2 * want
    assert abs(lean[False, 0.0][0]) < 0.5 * want


def test_axis_frame_generation_is_batch_independent_and_reloads(oblique, tmp_path):
    model = _fitted(oblique)
    rng = np.random.default_rng(8)
    cond = Conditions(np.full(7, 2e4), theta=np.radians(rng.uniform(0, 40, 7)),
                      phi=rng.uniform(0, 2 * np.pi, 7))
    whole = model.sample(cond, 11, batch_size=7).energies
    for batch in (1, 3):  # equal up to the rounding of batched matrix products
        assert_same_showers(model.sample(cond, 11, batch_size=batch).energies, whole)
    model.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.sample(cond, 11).energies, whole)
    # the fitted depths are saved, and the calibration's rings follow them
    assert not loaded.frame.depth.equal(loaded.frame.layer_z)
    assert loaded.frame.depth.equal(model.frame.depth)
    layer_z = loaded.axis_cal.cell_z.view(6, 36)
    assert layer_z.equal(loaded.frame.depth[:, None].expand(6, 36))
