"""`caloforge train` and `caloforge generate` end to end (in-process, toy geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.cli import main
from caloforge.data.io import open_showers, write_showers


@pytest.fixture(scope="module")
def trained_dir(toy_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    rc = main(["train", "--model", "l2lflows", "--data", str(toy_file), "--out", str(out),
               "--preset", "tiny", "--steps", "8", "--batch-size", "16",
               "--validate-every", "4", "--stop-after", "4", "--no-progress"])
    assert rc == 0 and not (out / "model").exists()
    rc = main(["train", "--model", "l2lflows", "--data", str(toy_file), "--out", str(out),
               "--resume", "--no-progress"])
    assert rc == 0 and (out / "model" / "model.yaml").is_file()
    return out


def test_train_writes_run_folder(trained_dir):
    text = (trained_dir / "metrics.jsonl").read_text()
    assert '"gen_response_mean"' in text and '"nll_layers"' in text
    assert "model: l2lflows" in (trained_dir / "config.yaml").read_text()


def test_generate_streams_with_provenance(trained_dir, tmp_path, capsys):
    out = tmp_path / "gen.h5"
    rc = main(["generate", "--model", str(trained_dir), "--energy", "2:90", "-n", "25",
               "--batch-size", "10", "--seed", "4", "-o", str(out), "--no-progress"])
    assert rc == 0 and "ms/shower" in capsys.readouterr().out
    with open_showers(out) as f:
        assert f.n_showers == 25 and f.geometry == "toy-6x6x6"
        meta = f.metadata
        batch = f.read()
    assert meta["model"] == "l2lflows" and meta["seed"] == 4
    assert meta["time_per_shower_ms"] > 0 and meta["caloforge_version"]
    e = batch.incident_energy
    assert e.min() >= 2e3 and e.max() <= 90e3
    assert (batch.energies >= 0).all()
    # Same seed -> same file content.
    out2 = tmp_path / "gen2.h5"
    main(["generate", "--model", str(trained_dir), "--energy", "2:90", "-n", "25",
          "--batch-size", "10", "--seed", "4", "-o", str(out2), "--no-progress"])
    with open_showers(out2) as f:
        assert np.array_equal(f.read().energies, batch.energies)


def test_generate_energy_file_and_format(trained_dir, tmp_path):
    efile = tmp_path / "e.txt"
    efile.write_text("5\n10\n20\n")
    out = tmp_path / "gen.h5"
    rc = main(["generate", "--model", str(trained_dir), "--energies", str(efile),
               "--format", "calochallenge", "-o", str(out), "--no-progress"])
    assert rc == 0
    with open_showers(out) as f:
        assert f.format == "calochallenge"
        assert np.allclose(f.read_conditions().incident_energy, [5e3, 10e3, 20e3])


def test_generate_bad_input(trained_dir, tmp_path, capsys):
    out = tmp_path / "g.h5"
    args = ["generate", "--model", str(trained_dir), "-o", str(out), "--no-progress"]
    assert main(args + ["--energy", "150", "-n", "3"]) == 1
    assert "outside the trained range" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
    with pytest.warns(UserWarning, match="extrapolating"):
        assert main(args + ["--energy", "150", "-n", "3", "--allow-extrapolation"]) == 0
    assert main(args + ["--energy", "10", "-n", "3"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["generate", "--model", "nosuchmodel", "--energy", "10", "-n", "2",
                 "-o", str(tmp_path / "x.h5")]) == 1
    assert "no model folder or shipped model" in capsys.readouterr().err
    assert main(["generate", "--model", str(trained_dir), "--energy", "abc", "-n", "2",
                 "-o", str(tmp_path / "y.h5")]) == 1
    assert "--energy 'abc'" in capsys.readouterr().err


def test_train_bad_input(toy_file, tmp_path, capsys):
    base = ["train", "--data", str(toy_file), "--steps", "2", "--no-progress"]
    assert main(base + ["--model", "gan9000", "--out", str(tmp_path / "a")]) == 1
    assert "unknown model 'gan9000'" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  preset: tiny\n  latnet_dim: 3\n")
    assert main(base + ["--model", "wgan", "--out", str(tmp_path / "b"),
                        "--config", str(cfg)]) == 1
    assert "latnet_dim" in capsys.readouterr().err
    cfg.write_text("training:\n  batchsize: 3\n")
    assert main(base + ["--model", "wgan", "--out", str(tmp_path / "c"),
                        "--config", str(cfg)]) == 1
    assert "batchsize" in capsys.readouterr().err
    # CaloGAN layers differ in shape: the 3-D convolutional models say so.
    cg = tmp_path / "cg.h5"
    from caloforge.models.toy import toy_layered_showers
    rng = np.random.default_rng(0)
    with write_showers(cg, "caloforge", "calogan") as w:
        w.append(toy_layered_showers("calogan", rng.uniform(1e4, 1e5, 40), rng))
    assert main(["train", "--model", "bibae", "--data", str(cg), "--out", str(tmp_path / "d"),
                 "--steps", "2", "--no-progress"]) == 1
    assert "regular grid" in capsys.readouterr().err
    assert main(base + ["--model", "wgan", "--out", str(tmp_path / "e"),
                        "--data", str(tmp_path / "missing.h5")]) == 1
    assert "missing.h5" in capsys.readouterr().err


def test_unavailable_device(trained_dir, toy_file, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["generate", "--model", str(trained_dir), "--energy", "10", "-n", "2",
                 "--device", "cuda", "-o", str(tmp_path / "g.h5")]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["train", "--model", "wgan", "--data", str(toy_file), "--steps", "2",
                 "--device", "tpu9", "--out", str(tmp_path / "t")]) == 1
    assert "device" in capsys.readouterr().err
