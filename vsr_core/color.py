"""Colour correction of a super-resolved output against its (bicubic-upscaled) low-resolution input.

Diffusion upscalers drift in colour; the official UAV and MGLD scripts optionally pull the output's
colours back to the input's with one of StableSR's two fixes (UAV ``models_video/color_correction.py``
and MGLD ``scripts/wavelet_color_fix.py`` hold the same functions), which this module re-implements:

* AdaIN: per image and channel, the output's mean/std are replaced by the reference's.
* Wavelet: a 5-level à-trous decomposition (3×3 binomial kernel, replicate padding, dilations
  1, 2, 4, 8, 16); the output keeps its high-frequency bands and takes the reference's residual
  low band.

plus a LAB mean/std match (Reinhard-style transfer in CIE L*a*b*, D65, sRGB gamma), which moves
lightness and chroma separately.

Layout: ``[..., 3, H, W]`` (``[N,3,H,W]`` frames; any leading dims are treated as a batch of images),
values in [0, 1]. ComfyUI ``IMAGE`` tensors (``[N,H,W,3]``) are converted by the node adapter. The
official code works on [-1, 1] tensors; AdaIN's variance epsilon is applied in that range here too, so
results match the official ones mapped to [0, 1] (the wavelet fix is linear and range-independent).
Outputs are clamped to [0, 1] unless ``clamp=False``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLOR_FIX_MODES",
    "adain_color_fix",
    "wavelet_color_fix",
    "lab_color_fix",
    "color_fix",
    "wavelet_decomposition",
    "rgb_to_lab",
    "lab_to_rgb",
]

COLOR_FIX_MODES = ("none", "adain", "wavelet", "lab")

# StableSR `calc_mean_std`: epsilon added to the variance, on [-1, 1] images.
ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5

# sRGB primaries, D65 white (IEC 61966-2-1), and the CIE 1976 L*a*b* constants.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_LAB_DELTA = 6.0 / 29.0


def _f(x: Tensor) -> Tensor:
    """At least float32 (float16/bfloat16 frames are computed in float32, float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _hi(x: Tensor) -> Tensor:
    """float64 for the LAB maths, except on MPS (no float64 there)."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


def _as_batch(x: Tensor, name: str) -> Tensor:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name} must be [..., 3, H, W] (channels first, RGB), got shape {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-3:])


def _match_source(target: Tensor, source: Tensor) -> Tensor:
    """Bicubic-resize the reference to the target's size when needed (the official reference is the
    LR input upsampled by ``F.interpolate(..., mode='bicubic')``; overshoot is not clamped)."""
    if source.shape[:-2] != target.shape[:-2]:
        raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} differ "
                         "in more than the spatial size")
    if source.shape[-2:] == target.shape[-2:]:
        return source
    b = _as_batch(source, "source")
    up = F.interpolate(_f(b), size=tuple(target.shape[-2:]), mode="bicubic", align_corners=False)
    return up.to(source.dtype).reshape(*source.shape[:-2], *target.shape[-2:])


def _finish(out: Tensor, like: Tensor, clamp: bool) -> Tensor:
    out = out.reshape(like.shape).to(like.dtype)
    return out.clamp(0.0, 1.0) if clamp else out


def _mean_std(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    flat = x.flatten(2)
    # torch.var defaults to the unbiased estimator, as StableSR's calc_mean_std uses.
    return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]


def adain_color_fix(target: Tensor, source: Tensor, *, clamp: bool = True) -> Tensor:
    """AdaIN colour fix: give each target image/channel the source's mean and std.

    target: ``[..., 3, H, W]`` in [0, 1] (the upscaled output); source: the reference, same shape or
    same leading dims at another size (then bicubic-resized to the target). Statistics are taken per
    image and channel over H×W, in [-1, 1] as in the official code.
    """
    src = _f(_as_batch(_match_source(target, source), "source")) * 2 - 1
    tgt = _f(_as_batch(target, "target")) * 2 - 1
    s_mean, s_std = _mean_std(src, ADAIN_EPS)
    t_mean, t_std = _mean_std(tgt, ADAIN_EPS)
    out = (tgt - t_mean) / t_std * s_std + s_mean
    return _finish((out + 1) * 0.5, target, clamp)


def _wavelet_blur(x: Tensor, radius: int) -> Tensor:
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = torch.outer(k1, k1)[None, None].repeat(x.shape[1], 1, 1, 1)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=radius)


def wavelet_decomposition(x: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """À-trous decomposition of ``[N, C, H, W]``: ``(high, low)`` with ``high + low == x``.

    Level ``i`` blurs with the 3×3 binomial kernel dilated by ``2**i`` (replicate padding); ``high`` is
    the sum of the per-level details, accumulated in the official order.
    """
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = _wavelet_blur(low, 2 ** i)
        high += low - blurred
        low = blurred
    return high, low


def wavelet_color_fix(target: Tensor, source: Tensor, *, levels: int = WAVELET_LEVELS,
                      clamp: bool = True) -> Tensor:
    """Wavelet colour fix: the target's high-frequency bands plus the source's low band.

    Shapes and ranges as :func:`adain_color_fix`. Colour casts and low-frequency shading come from
    the source; detail (edges, texture) stays the target's.
    """
    src = _f(_as_batch(_match_source(target, source), "source"))
    tgt = _f(_as_batch(target, "target"))
    high, _ = wavelet_decomposition(tgt, levels)
    _, low = wavelet_decomposition(src, levels)
    return _finish(high + low, target, clamp)


def _srgb_to_linear(c: Tensor) -> Tensor:
    a = c.abs()
    lin = torch.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4)
    return lin.copysign(c)


def _linear_to_srgb(c: Tensor) -> Tensor:
    a = c.abs()
    srgb = torch.where(a <= 0.0031308, a * 12.92, 1.055 * a ** (1 / 2.4) - 0.055)
    return srgb.copysign(c)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB ``[..., 3, H, W]`` in [0, 1] -> CIE L*a*b* (D65): L in [0, 100], a/b roughly [-128, 127].

    Computed in float64 and returned in the input dtype (float32 round trips to ~1e-6).
    """
    _as_batch(rgb, "rgb")
    x = _srgb_to_linear(_hi(rgb))
    m = torch.tensor(_RGB_TO_XYZ, dtype=x.dtype, device=rgb.device)
    white = torch.tensor(_D65_WHITE, dtype=x.dtype, device=rgb.device)
    xyz = torch.einsum("ij,...jhw->...ihw", m, x) / white[:, None, None]
    d = _LAB_DELTA
    f = torch.where(xyz > d ** 3, xyz.clamp_min(d ** 3) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    lab = torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)
    return lab.to(rgb.dtype)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_lab` (not clamped: out-of-gamut colours leave [0, 1])."""
    _as_batch(lab, "lab")
    L, a, b = _hi(lab).unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack((fy + a / 500, fy, fy - b / 200), dim=-3)
    d = _LAB_DELTA
    xyz = torch.where(f > d, f ** 3, 3 * d * d * (f - 4 / 29))
    white = torch.tensor(_D65_WHITE, dtype=L.dtype, device=lab.device)
    # Inverted on the CPU in float64: exact enough for a 1e-6 round trip, and works on any device.
    m_inv = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(L)
    lin = torch.einsum("ij,...jhw->...ihw", m_inv, xyz * white[:, None, None])
    return _linear_to_srgb(lin).to(lab.dtype)


def lab_color_fix(target: Tensor, source: Tensor, *, clamp: bool = True, eps: float = 1e-6) -> Tensor:
    """LAB colour fix: per image, match the mean and std of L*, a*, b* of the target to the source.

    Shapes and ranges as :func:`adain_color_fix`. Unlike RGB AdaIN this corrects lightness and
    chroma independently, so a colour cast is removed without changing contrast in the other axes.
    """
    src = rgb_to_lab(_hi(_as_batch(_match_source(target, source), "source")))
    tgt = rgb_to_lab(_hi(_as_batch(target, "target")))
    s_mean, s_std = src.flatten(2).mean(2), src.flatten(2).std(2, correction=0)
    t_mean, t_std = tgt.flatten(2).mean(2), tgt.flatten(2).std(2, correction=0)
    gain = (s_std / (t_std + eps))[..., None, None]
    out = (tgt - t_mean[..., None, None]) * gain + s_mean[..., None, None]
    return _finish(lab_to_rgb(out), target, clamp)


def color_fix(target: Tensor, source: Tensor, mode: str = "adain", *, clamp: bool = True) -> Tensor:
    """Dispatch: ``mode`` in ``"none" | "adain" | "wavelet" | "lab"`` (see the functions above).

    ``"none"`` returns the target (clamped to [0, 1] when ``clamp``).
    """
    if mode == "none":
        _as_batch(target, "target")
        return target.clamp(0.0, 1.0) if clamp else target
    if mode == "adain":
        return adain_color_fix(target, source, clamp=clamp)
    if mode == "wavelet":
        return wavelet_color_fix(target, source, clamp=clamp)
    if mode == "lab":
        return lab_color_fix(target, source, clamp=clamp)
    raise ValueError(f"colour fix mode must be one of {COLOR_FIX_MODES}, got {mode!r}")
