"""What the bench scripts share: running a measurement in a fresh process, and choosing devices.

Each measurement runs in its own Python process so that its peak memory is its own.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_child(code: str) -> tuple[dict | None, str | None]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last. Returns (result, None) or
    (None, the last line of its error)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def resolve_devices(spec: str) -> list[str]:
    """"cpu,cuda" as given, or "auto": the CPU, plus CUDA when present."""
    if spec != "auto":
        return spec.split(",")
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
