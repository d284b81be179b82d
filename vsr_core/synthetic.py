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


def _view_matrix(image_hw: tuple[int, int], out_hw: tuple[int, int], p) -> np.ndarray:
    """3x3 map from an output pixel of the view with camera ``p`` = (dx, dy, zoom, angle) to the source
    pixel it shows (pixel centres at integer coordinates, as OpenCV's warps have them)."""
    import cv2

    (H, W), (h, w) = image_hw, out_hw
    dx, dy, zoom, angle = (float(v) for v in p)
    # rotate/scale about the output centre, then move to the view centre
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0 / zoom)
    m[0, 2] += (W - w) / 2.0 + dx
    m[1, 2] += (H - h) / 2.0 + dy
    return np.vstack([m, [0.0, 0.0, 1.0]])


def render_views(image: np.ndarray, out_hw: tuple[int, int], params: np.ndarray) -> np.ndarray:
    """Render ``[T, h, w, 3]`` uint8 views of ``image`` (HxWx3 uint8 RGB) along a camera path.

    The view is centred on the image centre; zoom > 1 magnifies. Views never upsample the source by
    more than the zoom asks for, so at zoom <= 1 the frames hold real detail of the photograph.
    """
    import cv2

    h, w = out_hw
    frames = [cv2.warpAffine(image, _view_matrix(image.shape[:2], out_hw, p)[:2], (w, h),
                             flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
              for p in params]
    return np.stack(frames)


def view_flow(image_hw: tuple[int, int], out_hw: tuple[int, int], src, dst, scale: int = 1) -> np.ndarray:
    """The exact optical flow ``[2, h/scale, w/scale]`` (x, y) from the view with camera ``src`` to the one
    with camera ``dst`` (rows of :func:`camera_path`, views of an ``image_hw`` image as
    :func:`render_views` makes them at ``out_hw``): where each pixel's scene point is in the other view.
    ``scale`` > 1: on the grid of their bicubic x1/scale (pixel centres at ``(i + 0.5) * scale - 0.5``), in
    low-resolution pixels: the truth an optical flow on the low-resolution frames should find."""
    h, w = out_hw[0] // scale, out_hw[1] // scale
    a = np.linalg.inv(_view_matrix(image_hw, out_hw, dst)) @ _view_matrix(image_hw, out_hw, src)
    x, y = np.meshgrid((np.arange(w) + 0.5) * scale - 0.5, (np.arange(h) + 0.5) * scale - 0.5)
    fx = a[0, 0] * x + a[0, 1] * y + a[0, 2] - x  # affine views: no perspective row
    fy = a[1, 0] * x + a[1, 1] * y + a[1, 2] - y
    return np.stack([fx, fy]) / scale


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


def structures_image(seed: int, height: int = 768, width: int = 1024, supersample: int = 4) -> np.ndarray:
    """A deterministic drawing of man-made structure ``[H, W, 3]`` uint8: lattices and trusses of thin
    lines, rows of parallel lines, rectangles, polygons, circles and printed text over a smooth
    background, at random angles, widths (about 0.6-5 pixels) and colours.

    Drawn ``supersample`` times larger with anti-aliased strokes and reduced by area averaging, so edges
    are as a lens and sensor would record them (sharp, no staircase), then blurred by up to 0.5 pixel.
    Training data for thin straight detail, which the photographs carried by the wheels have little of;
    made here, so no licence applies.
    """
    import cv2

    rng = np.random.default_rng([7, seed])
    ss = supersample
    big_h, big_w = height * ss, width * ss
    base = smooth_texture(height // 8, width // 8, seed=seed, octaves=3).astype(np.float32)
    base = base * rng.uniform(0.2, 0.8) + rng.uniform(0, 255 * 0.5, size=3)
    canvas = cv2.resize(np.clip(base, 0, 255).astype(np.uint8), (big_w, big_h), interpolation=cv2.INTER_CUBIC)

    def colour():
        return tuple(int(c) for c in rng.integers(0, 256, size=3))

    def width_px(lo=0.6, hi=5.0):
        return max(1, int(round(rng.uniform(lo, hi) * ss)))

    def point():
        return np.array([rng.uniform(-0.1, 1.1) * big_w, rng.uniform(-0.1, 1.1) * big_h])

    def line(a, b, c, t):
        cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), c, t, cv2.LINE_AA)

    for _ in range(int(rng.integers(90, 180))):
        kind = rng.choice(["line", "truss", "rows", "rect", "poly", "circle", "text"],
                          p=[0.2, 0.15, 0.15, 0.15, 0.1, 0.1, 0.15])
        c, ang = colour(), rng.uniform(0, math.pi)
        d = np.array([math.cos(ang), math.sin(ang)])
        n = np.array([-d[1], d[0]])
        if kind == "line":
            line(point(), point(), c, width_px())
        elif kind == "truss":  # a launch tower's or crane's frame: two rails and zig-zag braces
            a, length = point(), rng.uniform(0.2, 0.9) * max(big_w, big_h)
            gap, t = rng.uniform(6, 40) * ss, width_px(0.6, 3.0)
            line(a, a + d * length, c, t)
            line(a + n * gap, a + n * gap + d * length, c, t)
            step = gap * rng.uniform(0.6, 1.5)
            for k in range(int(length / step)):
                p0 = a + d * step * k + (n * gap if k % 2 else 0)
                p1 = a + d * step * (k + 1) + (0 if k % 2 else n * gap)
                line(p0, p1, c, t)
        elif kind == "rows":  # railings, blinds, cables
            a, length = point(), rng.uniform(0.1, 0.6) * max(big_w, big_h)
            gap, t = rng.uniform(2.5, 15) * ss, width_px(0.6, 2.5)
            for k in range(int(rng.integers(3, 16))):
                line(a + n * gap * k, a + n * gap * k + d * length, c, t)
        elif kind in ("rect", "poly"):
            centre, size = point(), rng.uniform(6, 120, size=2) * ss
            if kind == "rect":
                corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size / 2
            else:
                k = int(rng.integers(3, 7))
                angles = np.sort(rng.uniform(0, 2 * math.pi, size=k))
                corners = np.stack([np.cos(angles), np.sin(angles)], 1) * size
            pts = (centre + corners @ np.array([d, n])).astype(np.int32)
            if rng.random() < 0.5:
                cv2.fillPoly(canvas, [pts], c, cv2.LINE_AA)
            else:
                cv2.polylines(canvas, [pts], True, c, width_px(), cv2.LINE_AA)
        elif kind == "circle":
            axes = tuple(int(v) for v in rng.uniform(4, 120, size=2) * ss)
            cv2.ellipse(canvas, tuple(int(v) for v in point()), axes, math.degrees(ang), 0, 360, c,
                        -1 if rng.random() < 0.4 else width_px(), cv2.LINE_AA)
        else:
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 -./"
            text = "".join(rng.choice(list(letters), size=int(rng.integers(3, 14))))
            font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
                                   cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_TRIPLEX]))
            size = rng.uniform(0.25, 1.6) * ss
            cv2.putText(canvas, text, tuple(int(v) for v in point()), font, size, c,
                        max(1, int(round(size * rng.uniform(0.8, 2.5)))), cv2.LINE_AA)
    out = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
    sigma = rng.uniform(0.0, 0.5)
    if sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    return out
