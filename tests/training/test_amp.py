"""Mixed precision: the loop enables it on CUDA only; here the same code path is forced on
CPU (bf16 autocast, and fp16 with a grad scaler) so that it is tested without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.training import TrainConfig, loop


@pytest.mark.parametrize("dtype,scaler", [(torch.bfloat16, False), (torch.float16, True)])
def test_autocast_path_trains_all_models(dtype, scaler, toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_amp_settings", lambda amp, device: (dtype, scaler))
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device="cpu": real_scaler("cpu"))
    for name in ("wgan", "bibae", "l2lflows"):
        model = loop.train(name, toy_data, tmp_path / name, preset="tiny",
                           train_config=TrainConfig(steps=4, batch_size=16, validate_every=0),
                           progress=False)
        out = model.sample(np.array([3e3, 3e4]), generator=0)
        assert np.isfinite(out.energies).all() and (out.energies >= 0).all()
        assert all(torch.isfinite(p).all() for p in model.parameters()), name


def test_amp_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loop._amp_settings("auto", cpu) == (None, False)
    assert loop._amp_settings("none", cuda) == (None, False)
    assert loop._amp_settings("fp16", cuda) == (torch.float16, True)
    assert loop._amp_settings("bf16", cuda) == (torch.bfloat16, False)
