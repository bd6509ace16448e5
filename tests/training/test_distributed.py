"""Data-parallel training with 2 CPU processes (gloo) launched by torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from caloforge.models.toy import toy_geometry, toy_showers
    from caloforge.training import TrainConfig, train
    geo = toy_geometry()
    rng = np.random.default_rng(5)
    data = toy_showers(geo, rng.uniform(2e4, 1e5, 160), rng)
    out, batch = sys.argv[1], int(sys.argv[2])
    # No dequantisation noise: the only randomness left is the (seeded) shuffling, so the
    # 2-process run must match one process with the doubled batch.
    model = train("l2lflows", data, out, {"dequantize": 0.0}, preset="tiny",
                  train_config=TrainConfig(steps=6, batch_size=batch, validate_every=0,
                                           checkpoint_every=3),
                  seed=1, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(model.state_dict(), os.path.join(out + f".rank{rank}.pt"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, CALOFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script),
         str(tmp_path / "ddp"), "8"],
        env=env, capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "16"],
                            env=env, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    r0 = torch.load(str(tmp_path / "ddp") + ".rank0.pt", weights_only=True)
    r1 = torch.load(str(tmp_path / "ddp") + ".rank1.pt", weights_only=True)
    one = torch.load(str(tmp_path / "one") + ".rank0.pt", weights_only=True)
    for k in r0:  # replicas stay identical
        assert torch.equal(r0[k], r1[k]), k
    changed = 0
    for k in r0:  # gradient averaging over the two halves == gradient of the full batch
        if r0[k].is_floating_point():
            assert torch.allclose(r0[k], one[k], rtol=1e-4, atol=1e-5), k
            changed += 1
    assert changed > 10
    # Only rank 0 writes: one final model and complete checkpoints.
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == [
        "latest.json", "step-00000003", "step-00000006"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_single_process_has_no_group():
    from caloforge.training.distributed import init_distributed, make_grad_sync
    info = init_distributed("cpu")
    assert info.world_size == 1 and info.is_main and make_grad_sync(info) is None
