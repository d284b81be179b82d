"""Video upscalers that need no diffusion weights, and the streaming file-to-file upscale.

This is SATeCo's first stage ("video upscaler") and the quick path for users without diffusion
weights. Classical kernels now; the learned mode plugs in through ``make_upscaler``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .io import FrameSelection, VideoWriter, iter_frames, load_audio, probe
from .io.frames import check_image

UPSCALE_METHODS = ("bicubic", "lanczos")

# An upscaler maps float frames [n, H, W, 3] in [0, 1] (CPU) to [n, sH, sW, 3] in [0, 1] (CPU).
Upscaler = Callable[[torch.Tensor], torch.Tensor]


def bicubic(frames: torch.Tensor, scale: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Bicubic (a = -0.75, half-pixel centres) x``scale`` of ``[n, H, W, 3]`` frames, clamped to [0, 1]."""
    x = frames.to(device, torch.float32).permute(0, 3, 1, 2)
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return y.clamp_(0, 1).permute(0, 2, 3, 1).to("cpu").contiguous()


def lanczos(frames: torch.Tensor, scale: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Lanczos-4 (8x8 taps, OpenCV) x``scale`` of ``[n, H, W, 3]`` frames, clamped to [0, 1]."""
    import cv2

    arr = frames.to("cpu", torch.float32).numpy()
    h, w = arr.shape[1] * scale, arr.shape[2] * scale
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LANCZOS4) for f in arr])
    return torch.from_numpy(out).clamp_(0, 1)


def make_upscaler(method: str, scale: int, device: str | torch.device = "cpu") -> Upscaler:
    """The upscaler called ``method`` at ``scale`` (2 or 4), as a function of a frame chunk."""
    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, got {scale}")
    if method == "bicubic":
        return lambda x: bicubic(x, scale, device)
    if method == "lanczos":
        return lambda x: lanczos(x, scale, device)
    raise ValueError(f"unknown upscale method {method!r}; choose one of {UPSCALE_METHODS}")


def upscale_frames(frames: torch.Tensor, scale: int = 4, method: str = "bicubic", chunk: int = 8,
                   device: str | torch.device = "cpu", progress=None) -> torch.Tensor:
    """Upscale a ComfyUI IMAGE ``[T, H, W, 3]`` in chunks of frames into a preallocated output.

    ``progress``: optional callable ``(done, total)``; it may raise to interrupt between chunks.
    """
    frames = check_image(frames)
    fn = make_upscaler(method, scale, device)
    T, H, W, _ = frames.shape
    out = torch.empty(T, H * scale, W * scale, 3, dtype=torch.float32)
    for s in range(0, T, chunk):
        out[s:s + chunk] = fn(frames[s:s + chunk])
        if progress is not None:
            progress(min(s + chunk, T), T)
    return out


def auto_chunk(out_h: int, out_w: int, budget_bytes: int = 512 * 1024**2) -> int:
    """Frames per chunk so that one chunk of float32 output stays within ``budget_bytes`` (1..64)."""
    per_frame = out_h * out_w * 3 * 4
    return int(max(1, min(64, budget_bytes // max(per_frame, 1))))


def side_by_side(left: torch.Tensor, right: torch.Tensor, labels: tuple[str, str] = ("bicubic", "result"),
                 gap: int = 4) -> np.ndarray:
    """One uint8 RGB image: ``left | right`` (each ``[H, W, 3]`` float) with a gap and small labels."""
    import cv2

    a = (left.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    b = (right.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    sep = np.full((a.shape[0], gap, 3), 255, np.uint8)
    img = np.ascontiguousarray(np.concatenate([a, sep, b], axis=1))
    for text, x0 in zip(labels, (0, a.shape[1] + gap)):
        for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(img, text, (x0 + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thick, cv2.LINE_AA)
    return img


def upscale_file(src: str | os.PathLike, dst: str | os.PathLike, scale: int = 4, method: str = "bicubic",
                 selection: FrameSelection = FrameSelection(), chunk: int = 0, fmt: str = "mp4 (h264)",
                 crf: int = 17, pix_fmt: str | None = None, device: str | torch.device = "cpu",
                 compare_png: str | os.PathLike | None = None, compare_index: int | None = None,
                 keep_audio: bool = True, progress=None) -> Path:
    """Upscale a video file to another, streaming: memory is bounded by one chunk, not by the length.

    Audio (aligned with the selected frames) is carried over. ``compare_png``: also write a
    ``bicubic | result`` comparison of one frame (the middle one by default). ``progress``: optional
    callable ``(done, total)``. Returns the output path; nothing appears there unless the run completes.
    """
    info = probe(src)
    total = selection.count(info.num_frames)
    if total == 0:
        raise ValueError(f"no frames selected from {src} ({info.num_frames} frames, skip={selection.skip_first})")
    fn = make_upscaler(method, scale, device)
    chunk = chunk or auto_chunk(info.height * scale, info.width * scale)
    fps = info.fps / selection.nth
    audio = None
    if keep_audio and info.has_audio:
        start = selection.skip_first / info.fps if info.fps else 0.0
        audio = load_audio(src, start=start, duration=total / fps if fps else None)
    compare_index = total // 2 if compare_index is None else compare_index
    done = 0
    with VideoWriter(dst, fps, fmt, crf, pix_fmt, audio) as writer:
        for part in iter_frames(src, selection, chunk=chunk, info=info):
            up = fn(part)
            writer.write(up)
            if compare_png is not None and done <= compare_index < done + part.shape[0]:
                i = compare_index - done
                _write_png(compare_png, side_by_side(bicubic(part[i:i + 1], scale)[0], up[i], ("bicubic", method)))
            done += part.shape[0]
            if progress is not None:
                progress(done, max(total, done))
    return writer.path


def _write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write a PNG atomically (temporary name, then rename)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    if not cv2.imwrite(str(tmp), rgb[..., ::-1]):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)
