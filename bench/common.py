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


def method_table(archs: list[str], devices: list[str], modes: list[str], run, frames: int, steps: int) -> None:
    """The sampler benches' table: one row per (arch, device, mode), s/frame relative to the first
    mode (the per-frame baseline) measured in the same run. ``run(arch, mode, device)`` returns
    ``(result, error)`` as ``run_child``; a result holds seconds, work, peak and params (a number or a
    dict of sub-model counts)."""
    width = max(len(m) for m in modes)
    print(f"{'arch':<5} {'device':<6} {'sampler':<{width}} {'params M':>9} {'s/frame':>9} {'s/frame/step':>12} "
          f"{'vs baseline':>12} {'work MiB':>9} {'peak MiB':>9}")
    for arch in archs:
        for device in devices:
            ref = None
            for mode in modes:
                r, err = run(arch, mode, device)
                if r is None:
                    print(f"{arch:<5} {device:<6} {mode:<{width}} failed: {err}")
                    continue
                params = sum(r["params"].values()) if isinstance(r["params"], dict) else r["params"]
                spf = r["seconds"] / frames
                ref = ref or spf
                print(f"{arch:<5} {device:<6} {mode:<{width}} {params / 1e6:>9.1f} {spf:>9.3f} {spf / steps:>12.4f} "
                      f"{spf / ref:>11.2f}x {r['work'] / 2**20:>9.0f} {r['peak'] / 2**20:>9.0f}")
