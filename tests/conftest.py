"""Shared pytest fixtures.

``../shared`` (parity vectors, real clips) sits beside a developer's checkout and CI's clone, but not
beside a user's clone: tests that need it skip with a clear reason when it is absent.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VSR_SHARED_DIR", REPO.parent / "shared"))

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

torch.set_num_threads(min(2, torch.get_num_threads()))

# "auto" picks bf16 weights on a CPU with native bf16 (AVX512-BF16/AMX) and fp32 on others: the tests
# pin the fp32 choice so that they compute the same on every CI machine; the tests of the bf16 choice
# set VSR_CPU_BF16=1 themselves. Subprocesses (the CLI, Ray workers, a real ComfyUI) inherit it.
os.environ["VSR_CPU_BF16"] = "0"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """``../shared/parity`` (official-code vectors); skips when absent."""
    path = SHARED / "parity"
    if not path.is_dir():
        pytest.skip(f"parity vectors not found at {path} (set VSR_SHARED_DIR to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real test clips); skips when absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"real test clips not found at {path} (set VSR_SHARED_DIR to the shared/ folder)")
    return path


@pytest.fixture
def folders(tmp_path):
    """ComfyUI-like input/output/temp/models folders for nodes run without ComfyUI."""
    from pack import comfy_folders

    for kind in ("input", "output", "temp", "models"):
        (tmp_path / kind).mkdir()
    with comfy_folders(**{k: tmp_path / k for k in ("input", "output", "temp", "models")}):
        yield tmp_path
