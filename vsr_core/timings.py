"""How long a sampler run will take on this device, from how long the last ones took.

Sampling time grows with frames x steps x latent pixels (x2 with classifier-free guidance), so a run's
cost is recorded as seconds per *work unit* = frame · step · latent megapixel (· 2 with CFG), per
device, method and compute dtype, and the next run's time is that rate times its own units. There is
no calibration run: the first run of a method on a device says "first run: timing unknown" and records
its rate; later runs update it with an exponential moving average (weight ``ALPHA`` on the newest), so
a one-off slow run (weights loading from disk, a warm-up) fades out.

The record is a small JSON file (the node pack keeps it in ComfyUI's user folder) or, without a path,
lives for the process only.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

ALPHA = 0.5


def work_units(frames: int, steps: int, latent_size: Sequence[int], cfg: bool = False) -> float:
    """frame · step · latent megapixel, doubled with classifier-free guidance."""
    h, w = latent_size
    return max(int(frames), 1) * max(int(steps), 1) * (int(h) * int(w) / 1e6) * (2 if cfg else 1)


def device_name(device: Any) -> str:
    """"NVIDIA GeForce RTX 4090" for a CUDA device, else the device type ("cpu", "mps")."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            return torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):
            pass
    return device.type


def _key(device: str, method: str, dtype: Any) -> str:
    return f"{device}|{method}|{str(dtype).replace('torch.', '')}"


class TimingRecord:
    """Seconds per work unit, per (device name, method, dtype); see the module docstring."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._rates = {str(k): float(v) for k, v in data.get("seconds_per_unit", {}).items() if float(v) > 0}
            except (OSError, ValueError, AttributeError, TypeError):
                self._rates = {}  # a damaged record costs one "timing unknown", never a failed run

    def rate(self, device: str, method: str, dtype: Any) -> float | None:
        return self._rates.get(_key(device, method, dtype))

    def estimate(self, device: str, method: str, dtype: Any, units: float) -> float | None:
        """Predicted seconds for ``units`` of work, or None before the first run of this kind."""
        r = self.rate(device, method, dtype)
        return None if r is None else r * units

    def update(self, device: str, method: str, dtype: Any, units: float, seconds: float) -> None:
        """Fold a finished run (``units`` of work in ``seconds``) into the record, and save it."""
        if units <= 0 or seconds <= 0:
            return
        key, new = _key(device, method, dtype), seconds / units
        with self._lock:
            old = self._rates.get(key)
            self._rates[key] = new if old is None else (1 - ALPHA) * old + ALPHA * new
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".timings", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"unit": "seconds per frame*step*latent megapixel (x2 with CFG)",
                           "seconds_per_unit": self._rates}, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of the install
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only user folder only loses the record


def describe_time(seconds: float | None, frames: int, device: str = "this device") -> str:
    """"≈2.1 s/frame on cpu (≈1:03 for 30 frames)" or "first run on cpu: timing unknown"."""
    if seconds is None:
        return f"first run on {device}: timing unknown"
    per = seconds / max(int(frames), 1)
    return (f"≈{_duration(per)}/frame on {device} (≈{_duration(seconds)} for {frames} "
            f"frame{'s' if frames != 1 else ''})")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
