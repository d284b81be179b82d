"""Small video files with known content, written with PyAV directly (independent of our writer).

Frame i of an "indexed" clip is a flat colour encoding i, so a test can tell exactly which source
frames a load returned.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def level(i: int) -> int:
    """The grey level that marks frame ``i`` (distinct for i < 50 after lossy coding)."""
    return (i * 5) % 250


def indexed_frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """``[n, h, w, 3]`` uint8: frame i is flat grey ``level(i)`` with a small gradient in channel 0."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = level(i)
    return frames


def frame_index(frame) -> int:
    """Recover the index of a frame made by ``indexed_frames`` (float [H, W, 3] in 0..1 or uint8)."""
    v = float(np.asarray(frame, dtype=np.float32).mean())
    if v <= 1.0 + 1e-6 and np.asarray(frame).dtype != np.uint8:
        v *= 255.0
    return int(round(v / 5.0))


def write_video(path: Path, frames: np.ndarray, fps=24, codec="libx264", pix_fmt="yuv420p", in_format="rgb24",
                audio: tuple[int, int, float] | None = None, pts: list[int] | None = None, time_base=None,
                options: dict | None = None) -> Path:
    """Write ``frames`` ([n, h, w, c] array in ``in_format``) with PyAV.

    ``audio``: (sample_rate, channels, seconds) of a sine tone to add. ``pts``: explicit presentation
    times (in ``time_base``) for variable frame rate files.
    """
    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = pix_fmt
        if options:
            s.options = options
        if time_base is not None:
            s.time_base = time_base
        a = None
        if audio is not None:
            rate, ch, _ = audio
            a = c.add_stream("aac" if path.suffix == ".mp4" else "flac", rate=rate)
            a.layout = "mono" if ch == 1 else "stereo"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=in_format)
            if pts is not None:
                vf.pts = pts[i]
                vf.time_base = time_base
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        if a is not None:
            rate, ch, seconds = audio
            t = np.arange(int(rate * seconds)) / rate
            wave = np.stack([np.sin(2 * np.pi * 440 * (k + 1) * t) * 0.3 for k in range(ch)]).astype(np.float32)
            for s0 in range(0, wave.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, s0:s0 + 1024]), format="fltp",
                                                layout=a.layout.name)
                af.sample_rate = rate
                af.pts = s0
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path
