"""Host-memory accounting: how much RAM is free, and refusing work that would not fit.

Used before loading frames so that a long video fails fast with a clear message instead of the
operating system killing ComfyUI half way through (users' #2 complaint about video packs).
"""
from __future__ import annotations

import os
import sys

GIB = 1024**3
MIB = 1024**2


class InsufficientMemoryError(MemoryError):
    """Raised up front when a request would not fit in the memory that is available."""


def available_ram() -> int | None:
    """Bytes of RAM the OS could give us now (MemAvailable on Linux), or None when unknown.

    ``VSR_RAM_BUDGET_MB`` overrides the measurement (useful on shared machines and in tests).
    """
    override = os.environ.get("VSR_RAM_BUDGET_MB")
    if override:
        return int(float(override) * MIB)
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    if sys.platform == "win32":
        import ctypes

        class _MemStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = _MemStatus()
        status.dwLength = ctypes.sizeof(_MemStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
        return None
    try:  # macOS and other POSIX systems
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def frames_nbytes(num_frames: int, height: int, width: int, channels: int = 3, bytes_per_value: int = 4) -> int:
    """Bytes of a ``[T, H, W, C]`` frame batch (float32 by default, ComfyUI's IMAGE)."""
    return num_frames * height * width * channels * bytes_per_value


def peak_rss() -> int | None:
    """Peak resident set size of this process in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def ensure_fits(nbytes: int, what: str, hint: str, headroom: float = 0.9) -> None:
    """Raise InsufficientMemoryError when ``nbytes`` exceeds ``headroom`` x the available RAM."""
    free = available_ram()
    if free is None or nbytes <= headroom * free:
        return
    raise InsufficientMemoryError(
        f"{what} needs about {nbytes / GIB:.2f} GiB of RAM but only {free / GIB:.2f} GiB is free. {hint}"
    )
