"""Colour-wheel rendering of flow fields for previews (hue = direction, saturation = magnitude).

The wheel is the Middlebury one (Baker et al., "A Database and Evaluation Methodology for Optical
Flow", IJCV 2011): 55 hues in six linear ramps red-yellow-green-cyan-blue-magenta-red of lengths
15, 6, 4, 11, 13, 6, so readers of flow papers recognise the colours.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .warp import _check_flow

__all__ = ["flow_to_rgb", "color_wheel"]

# (length of the ramp, channel that ramps, direction) from each primary/secondary to the next.
_RAMPS = ((15, 1, +1), (6, 0, -1), (4, 2, +1), (11, 1, -1), (13, 0, +1), (6, 2, -1))


def color_wheel() -> Tensor:
    """The 55 x 3 Middlebury hue wheel, float32 in [0, 1], starting at red and turning through yellow."""
    rows = []
    rgb = [1.0, 0.0, 0.0]
    for length, ch, sign in _RAMPS:
        for i in range(length):
            c = list(rgb)
            c[ch] = i / length if sign > 0 else 1.0 - i / length
            rows.append(c)
        rgb[ch] = 1.0 if sign > 0 else 0.0
    return torch.tensor(rows, dtype=torch.float32)


def flow_to_rgb(flow: Tensor, max_magnitude: float | None = None, per_frame: bool = False) -> Tensor:
    """Render flows as colours.

    flow: ``[N, 2, H, W]`` pixels (dx, dy). Returns ``[N, H, W, 3]`` float32 in [0, 1] (ComfyUI IMAGE
    layout) on the flow's device. Direction sets the hue, magnitude the saturation: zero motion is white,
    ``max_magnitude`` (default: the largest magnitude in the batch, or in each frame if ``per_frame``) is
    fully saturated; longer vectors are darkened. Non-finite vectors render black.
    """
    _check_flow(flow)
    f = flow.detach().float()
    finite = torch.isfinite(f).all(dim=1)
    f = torch.where(finite.unsqueeze(1), f, torch.zeros_like(f))
    u, v = f[:, 0], f[:, 1]
    mag = torch.sqrt(u * u + v * v)
    if max_magnitude is not None:
        if not max_magnitude > 0:
            raise ValueError(f"max_magnitude must be > 0, got {max_magnitude}")
        norm = torch.full((f.shape[0], 1, 1), float(max_magnitude), device=f.device)
    elif per_frame:
        norm = mag.flatten(1).amax(dim=1).view(-1, 1, 1) if mag.numel() else mag.new_ones((f.shape[0], 1, 1))
    else:
        norm = (mag.max() if mag.numel() else mag.new_tensor(1.0)).view(1, 1, 1)
    rad = mag / norm.clamp_min(1e-8)

    wheel = color_wheel().to(f.device)
    n_cols = wheel.shape[0]
    # Middlebury orientation: rightward motion is red, leftward cyan, downward (+y) yellow, upward violet.
    angle = torch.atan2(-v, -u) / math.pi
    pos = (angle + 1.0) / 2.0 * (n_cols - 1)
    k0 = pos.floor().long().clamp_(0, n_cols - 1)
    k1 = (k0 + 1) % n_cols
    t = (pos - k0.float()).unsqueeze(-1)
    col = (1.0 - t) * wheel[k0] + t * wheel[k1]
    r = rad.unsqueeze(-1)
    out = torch.where(r <= 1.0, 1.0 - r * (1.0 - col), col * 0.75)
    out = torch.where(finite.unsqueeze(-1), out, torch.zeros_like(out))
    return out.clamp_(0.0, 1.0)
