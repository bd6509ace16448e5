"""Fitting the point models' ShowerFlow on its own (``showerflow_fit_steps``,
:mod:`caloforge.models.showerflow_fit`): it learns the summaries' dependence on the
condition, gives the same flow for the same seed, and a point model trained with it fits
its flow before the loop, whose steps then all train the points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.errors import CaloforgeError, ConfigError, InputError
from caloforge.models.showerflow import ShowerFlow, ShowerSummary
from caloforge.models.showerflow_fit import fit_showerflow
from caloforge.training import TrainConfig, train

N_LAYERS = 4


def _summaries(n: int, seed: int) -> tuple[ShowerSummary, torch.Tensor, torch.Tensor]:
    """Toy summaries whose size follows a context c in [-1, 1]: about 50 e^c points, more
    of them in the later layers at high c; energies follow the counts."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, n)
    n_points = rng.poisson(50 * np.exp(c)) + 1
    share = np.stack([np.exp(-(k - 1.5 - c) ** 2) for k in range(N_LAYERS)], 1)
    share /= share.sum(1, keepdims=True)
    counts = np.stack([rng.multinomial(m, p) for m, p in zip(n_points, share)])
    energy = counts * rng.uniform(0.5, 1.5, counts.shape) * 10.0
    s = ShowerSummary(torch.as_tensor(n_points), torch.as_tensor(energy.sum(1), dtype=torch.float32),
                      torch.as_tensor(counts), torch.as_tensor(energy, dtype=torch.float32),
                      torch.as_tensor(rng.normal(0, 2, (n, 2)), dtype=torch.float32))
    e_inc = torch.full((n,), 1000.0)
    return s, e_inc, torch.as_tensor(c, dtype=torch.float32)[:, None]


def _flow() -> ShowerFlow:
    torch.manual_seed(3)  # the coupling masks
    return ShowerFlow(N_LAYERS, 1, transforms=2, hidden=(32,), bins=4)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fitted_flow_follows_the_condition(seed):
    s, e_inc, ctx = _summaries(600, seed)
    short, long = _flow(), _flow()
    r_short = fit_showerflow(short, s, e_inc, ctx, steps=1, batch_size=128, lr=1e-2,
                             seed=seed, show_progress=False)
    r_long = fit_showerflow(long, s, e_inc, ctx, steps=300, batch_size=128, lr=1e-2,
                            seed=seed, show_progress=False)
    assert r_long["held_out_showers"] == 60
    assert r_long["best_step"] > 0
    assert r_long["held_out_nll"] < r_short["held_out_nll"] - 1.0
    with torch.no_grad():
        draws = {c: long.sample(torch.full((400, 1), c), torch.Generator().manual_seed(seed),
                                torch.full((400,), 1000.0))
                 for c in (-0.8, 0.8)}
    # about 50 e^c points: x 4.9 between the two; the later layers hold more at high c
    ratio = draws[0.8].n_points.float().mean() / draws[-0.8].n_points.float().mean()
    assert 3.0 < ratio < 8.0
    late = {c: (d.layer_counts[:, 2:].sum(1) / d.n_points).float().mean()
            for c, d in draws.items()}
    assert late[0.8] > late[-0.8] + 0.2


def test_same_seed_same_flow_and_too_few_showers_refused():
    s, e_inc, ctx = _summaries(200, 4)
    flows = [_flow() for _ in range(3)]
    for f, seed in zip(flows, (5, 5, 6)):
        fit_showerflow(f, s, e_inc, ctx, steps=20, batch_size=64, seed=seed,
                       show_progress=False)
    a, b, c = (f.state_dict() for f in flows)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    few = ShowerSummary(*[getattr(s, k)[:5] for k in
                          ("n_points", "e_vis", "layer_counts", "layer_energy", "cog")])
    with pytest.raises(InputError, match="at least 20 training showers"):
        fit_showerflow(_flow(), few, e_inc[:5], ctx[:5], steps=5, show_progress=False)


@pytest.fixture(scope="module")
def point_file(write_toy_points, tmp_path_factory):
    return write_toy_points(tmp_path_factory.mktemp("sf_points") / "toy_points.h5", 96, seed=8)


def test_a_point_model_fits_its_flow_before_the_loop(point_file, tmp_path):
    cfg = TrainConfig(steps=4, batch_size=16, validate_every=0, checkpoint_every=0)
    model = train("caloclouds2", point_file, tmp_path / "run", preset="tiny",
                  model_config={"showerflow_fit_steps": 40, "showerflow_fit_batch": 32},
                  train_config=cfg, progress=False)
    assert model.phases() == [("diffusion", 1.0)]  # every step of the loop: the points
    pts = model.sample(np.geomspace(2.5e3, 4.5e4, 5), 2)
    assert (pts.n_points >= 1).all() and np.isfinite(pts.energy).all()
    # refitting the flow of the trained model changes the flow and nothing else
    from caloforge.data.io import open_showers
    from caloforge.training.loop import padded_points
    with open_showers(point_file) as f:
        b = f.read_points()
    x, mask = padded_points(b)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fit_showerflow(x, torch.as_tensor(b.conditions.incident_energy, dtype=torch.float32), mask,
                         seed=1, show_progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("showerflow.") for k in changed)


def test_bad_showerflow_fit_settings_are_refused(point_file, tmp_path):
    cfg = TrainConfig(steps=2, batch_size=16, validate_every=0, checkpoint_every=0)
    for bad, match in (({"showerflow_fit_steps": -1}, "showerflow_fit_steps"),
                       ({"showerflow_fit_batch": 0}, "showerflow_fit_batch")):
        with pytest.raises(ConfigError, match=match):
            train("caloclouds2", point_file, tmp_path / str(len(match)), preset="tiny",
                  model_config=bad, train_config=cfg, progress=False)
    model = train("caloclouds2", point_file, tmp_path / "plain", preset="tiny",
                  train_config=cfg, progress=False)
    with pytest.raises(CaloforgeError, match="showerflow_fit_steps"):
        model.fit_showerflow(torch.zeros(2, 3, 4), torch.ones(2), torch.ones(2, 3, dtype=bool))
