"""Clips with known ground truth: a virtual camera moving over a still photograph.

Each frame is an affine view (pan, zoom, small rotation) of the source image, rendered at high
resolution (the ground truth) and degraded to low resolution with a bicubic x``scale`` downscale.
The demo clip shipped with the pack and the test clips are made this way, so every pixel of the
high-resolution truth is known.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def camera_path(num_frames: int, motion: str = "mixed", amplitude: float = 1.0, seed: int = 0) -> np.ndarray:
    """Per-frame camera parameters ``[T, 4]``: (dx, dy) pan in source pixels, zoom factor, rotation (deg).

    ``motion``: "pan", "zoom", "rotate" or "mixed" (all three, smooth random phases).
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, num_frames)
    phase = rng.uniform(0, 2 * math.pi, size=4)
    params = np.zeros((num_frames, 4))
    params[:, 2] = 1.0
    if motion in ("pan", "mixed"):
        params[:, 0] = amplitude * 40 * np.sin(2 * math.pi * 0.5 * t + phase[0])
        params[:, 1] = amplitude * 20 * np.sin(2 * math.pi * 0.4 * t + phase[1])
    if motion in ("zoom", "mixed"):
        params[:, 2] = 1.0 + amplitude * 0.08 * np.sin(2 * math.pi * 0.5 * t + phase[2])
    if motion in ("rotate", "mixed"):
        params[:, 3] = amplitude * 3.0 * np.sin(2 * math.pi * 0.5 * t + phase[3])
    if motion not in ("pan", "zoom", "rotate", "mixed"):
        raise ValueError(f"unknown motion {motion!r}: use pan, zoom, rotate or mixed")
    return params


def render_views(image: np.ndarray, out_hw: tuple[int, int], params: np.ndarray) -> np.ndarray:
    """Render ``[T, h, w, 3]`` uint8 views of ``image`` (HxWx3 uint8 RGB) along a camera path.

    The view is centred on the image centre; zoom > 1 magnifies. Views never upsample the source by
    more than the zoom asks for, so at zoom <= 1 the frames hold real detail of the photograph.
    """
    import cv2

    H, W = image.shape[:2]
    h, w = out_hw
    frames = []
    for dx, dy, zoom, angle in params:
        # output pixel -> source pixel: rotate/scale about the output centre, then move to the view centre
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0 / float(zoom))
        m[0, 2] += (W - w) / 2.0 + dx
        m[1, 2] += (H - h) / 2.0 + dy
        frames.append(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REFLECT101))
    return np.stack(frames)


def bicubic_downscale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """x1/``scale`` antialiased bicubic downscale of ``[T, H, W, 3]`` floats (the BI degradation)."""
    x = frames.permute(0, 3, 1, 2)
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    y = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return y.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def make_clip(image: np.ndarray, num_frames: int = 24, hr_hw: tuple[int, int] = (256, 256), scale: int = 4,
              motion: str = "mixed", amplitude: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(hr, lr) float ``[T, H, W, 3]`` clips: HR views of ``image`` and their bicubic x1/``scale``."""
    if hr_hw[0] % scale or hr_hw[1] % scale:
        raise ValueError(f"hr size {hr_hw} must be divisible by the scale {scale}")
    views = render_views(image, hr_hw, camera_path(num_frames, motion, amplitude, seed))
    hr = torch.from_numpy(views).float() / 255.0
    return hr, bicubic_downscale(hr, scale)


def smooth_texture(height: int, width: int, seed: int = 0, octaves: int = 4) -> np.ndarray:
    """A deterministic colourful multi-scale noise image ``[H, W, 3]`` uint8 (trackable texture for tests)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, 3, height, width)
    for o in range(octaves):
        cells = 2 ** (o + 2)
        noise = torch.rand(1, 3, cells, cells, generator=g)
        out += F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False) / 2 ** o
    out = (out - out.amin()) / (out.amax() - out.amin())
    return (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
