"""Fixtures of the bad-input suite: small tmpfs mounts for a full disk and a read-only
folder, and a small shower file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root and mount permission needed; skipped otherwise)."""
    target = tmp_path / "tiny"
    if not _mount(target, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (not root / no CAP_SYS_ADMIN)")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path):
    """A read-only tmpfs: as root, chmod does not stop writes, a read-only mount does."""
    target = tmp_path / "ro"
    if not _mount(target, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (not root / no CAP_SYS_ADMIN)")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def shower_file(tmp_path, showers):
    """A caloforge file of 40 ild-ecal showers, all at theta = 0 (constant conditions)."""
    from caloforge.data.io import write_showers

    path = tmp_path / "in.h5"
    with write_showers(path, "caloforge", "ild-ecal") as w:
        w.append(showers("ild-ecal", 40, occupancy=0.3, theta=np.zeros(40)))
    return path
