"""Video quality metrics against a ground truth: PSNR, SSIM (RGB or Y) and temporal consistency.

Conventions follow the VSR literature (BasicSR's ``calculate_psnr`` / ``calculate_ssim``): frames
``[T, H, W, 3]`` in [0, 1], compared at 8-bit precision (rounded to 1/255) when ``quantize``; ``crop``
border pixels dropped; Y is ITU-R BT.601 luma of 8-bit RGB in [16, 235] (MATLAB ``rgb2ycbcr``); SSIM is
Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, averaged over
channels. Temporal consistency:

* **warping error** (``warp_error``): the mean absolute difference between frame ``t`` of a result and its
  frame ``t+1`` warped back with the *ground truth's* flow, over pixels the flow's occlusion check
  keeps (x255, so 8-bit levels). Flicker and temporally unstable detail raise it; the ground truth's own
  figure is the floor a perfect result would reach.
* **tOF** (``tof``): the mean end-point difference between the flow of the result and the flow of the
  ground truth (StableVSR's ``eval.py`` reports it x10).

Any flow engine of :mod:`vsr_core.flow` (DIS without weights, RAFT) can be passed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rgb_to_y", "psnr", "ssim", "warp_error", "tof", "video_metrics", "format_metrics"]


def _nchw(x: Tensor, name: str) -> Tensor:
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be frames [T, H, W, 3], got shape {tuple(x.shape)}")
    return x.float().permute(0, 3, 1, 2)


def _check_same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"the two clips differ in shape: {tuple(a.shape)} vs {tuple(b.shape)} (compare a result "
                         "with a reference of the same size and frame count)")


def _prepare(a: Tensor, b: Tensor, y_channel: bool, crop: int, quantize: bool) -> tuple[Tensor, Tensor]:
    _check_same_shape(a, b)
    x, y = _nchw(a, "result"), _nchw(b, "reference")
    if quantize:
        x, y = (x.clamp(0, 1) * 255).round() / 255, (y.clamp(0, 1) * 255).round() / 255
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if crop:
        if min(x.shape[-2:]) <= 2 * crop:
            raise ValueError(f"frames of {tuple(x.shape[-2:])} are too small for a {crop}-pixel border crop")
        x, y = x[..., crop:-crop, crop:-crop], y[..., crop:-crop, crop:-crop]
    return x, y


def rgb_to_y(x: Tensor) -> Tensor:
    """``[N, 3, H, W]`` RGB in [0, 1] -> ``[N, 1, H, W]`` BT.601 Y in [16/255, 235/255]."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
    return (x * w).sum(1, keepdim=True) + 16 / 255


def psnr(result: Tensor, reference: Tensor, *, y_channel: bool = False, crop: int = 0,
         quantize: bool = True) -> Tensor:
    """Per-frame PSNR in dB ``[T]`` (inf where the frames are identical)."""
    x, y = _prepare(result, reference, y_channel, crop, quantize)
    mse = ((x - y) ** 2).flatten(1).mean(1).double()
    return (10 * torch.log10(1.0 / mse)).float()


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float64, device=device) - size // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g


def ssim(result: Tensor, reference: Tensor, *, y_channel: bool = False, crop: int = 0,
         quantize: bool = True) -> Tensor:
    """Per-frame SSIM ``[T]`` (mean over channels of the valid-window SSIM map)."""
    x, y = _prepare(result, reference, y_channel, crop, quantize)
    x, y = x.double() * 255, y.double() * 255
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_window(device=x.device)
    c = x.shape[1]
    kh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kv, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1).float()


def _reference_flow(reference: Tensor, engine, flow=None):
    from .flow import estimate_video_flow

    return flow if flow is not None else estimate_video_flow(reference, engine)


def warp_error(result: Tensor, reference: Tensor, engine=None, *, flow=None) -> Tensor:
    """Per-pair warping error ``[T-1]`` of ``result`` with the flow of ``reference`` (8-bit levels).

    ``flow``: a :class:`~vsr_core.flow.VideoFlow` of the reference (computed with ``engine`` if None).
    """
    from .flow.warp import resize_flow, warp

    _check_same_shape(result, reference)
    if result.shape[0] < 2:
        raise ValueError("temporal metrics need at least 2 frames")
    vf = _reference_flow(reference, engine, flow)
    x = _nchw(result, "result")
    h, w = x.shape[-2:]
    fw = vf.forward  # [T-1, 2, h, w]: where each pixel of frame t lands in frame t+1
    occ = vf.occ_forward if vf.occ_forward is not None else torch.zeros_like(fw[:, :1])
    if (h, w) != tuple(fw.shape[-2:]):
        fw = resize_flow(fw, (h, w))
        occ = F.interpolate(occ.float(), size=(h, w), mode="nearest")
    nxt = warp(x[1:], fw.to(x), convention="stablevsr")  # frame t+1 sampled at p + flow_fw(p): aligned to t
    keep = 1.0 - occ.to(x)
    diff = (nxt - x[:-1]).abs().mean(1, keepdim=True) * keep
    return (diff.flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1.0) * 255).float()


def tof(result: Tensor, reference: Tensor, engine, *, flow=None) -> Tensor:
    """Per-pair tOF ``[T-1]``: mean end-point distance between the result's and the reference's forward flow.

    ``flow``: the reference's :class:`~vsr_core.flow.VideoFlow` from the same ``engine``, if already computed.
    """
    from .flow import estimate_video_flow

    _check_same_shape(result, reference)
    fr = estimate_video_flow(result, engine).forward
    fg = _reference_flow(reference, engine, flow).forward
    return (fr - fg).norm(dim=1).flatten(1).mean(1).float()


def video_metrics(result: Tensor, reference: Tensor, engine=None, *, crop: int = 0, temporal: bool = True,
                  flow=None) -> dict[str, float]:
    """Clip means: PSNR/SSIM (RGB and Y) and, with an ``engine`` (or ``flow``), warping error and tOF."""
    out = {
        "psnr": psnr(result, reference, crop=crop).mean().item(),
        "psnr_y": psnr(result, reference, y_channel=True, crop=crop).mean().item(),
        "ssim": ssim(result, reference, crop=crop).mean().item(),
        "ssim_y": ssim(result, reference, y_channel=True, crop=crop).mean().item(),
    }
    if temporal and result.shape[0] > 1 and (engine is not None or flow is not None):
        vf = _reference_flow(reference, engine, flow)
        out["warp_error"] = warp_error(result, reference, flow=vf).mean().item()
        out["warp_error_reference"] = warp_error(reference, reference, flow=vf).mean().item()
        if engine is not None:
            # the reference's flow is reused only when it came from this engine (a given flow may not)
            out["tof"] = tof(result, reference, engine, flow=vf if flow is None else None).mean().item()
    return out


def format_metrics(m: dict[str, float]) -> str:
    names = {"psnr": "PSNR RGB (dB)", "psnr_y": "PSNR Y (dB)", "ssim": "SSIM RGB", "ssim_y": "SSIM Y",
             "warp_error": "warping error (x255)", "warp_error_reference": "warping error of the reference",
             "tof": "tOF (px)"}
    return "\n".join(f"{names.get(k, k)}: {v:.4f}" for k, v in m.items())
