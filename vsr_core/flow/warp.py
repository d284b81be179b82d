"""Backward warping of images and latents by a dense flow, with each method's sampling convention.

``warp(dst, flow_src_to_dst)`` samples ``dst`` at ``p + flow(p)`` for every pixel ``p`` of the output
grid, so it brings ``dst`` onto ``src``'s grid (see ``flow_protocol``: ``src(p) ~ dst(p + flow(p))``).

The three official codebases all turn pixel positions into ``grid_sample`` coordinates by dividing by
``size - 1``; they differ in the ``align_corners`` flag handed to ``grid_sample``:

* Upscale-A-Video (``Propagation``, ``fbConsistencyCheck``) and MGLD (BasicSR ``flow_warp``,
  ``forward_backward_consistency_check``): ``align_corners=True``, which makes the ``size - 1``
  division exact, zeros padding.
* StableVSR (``util/flow_utils.flow_warp``): ``align_corners=False`` with the same ``size - 1``
  division. The sample for output pixel ``x`` then lands at ``(x + u) * W / (W - 1) - 0.5`` instead of
  ``x + u``: a stretch about the image centre that shifts border content by up to half a pixel. The
  ``"stablevsr"`` convention reproduces this on purpose (``normalize="size_minus_one"``); the
  ``"exact"`` normalisation addresses pixel centres correctly for either ``align_corners`` value.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["WarpConvention", "WARP_CONVENTIONS", "warp", "flow_to_grid", "resize_flow"]

_MODES = ("bilinear", "nearest", "bicubic")
_PADDINGS = ("zeros", "border", "reflection")
_NORMALIZE = ("exact", "size_minus_one")


@dataclass(frozen=True)
class WarpConvention:
    """How a flow is turned into a ``grid_sample`` call.

    mode: ``"bilinear" | "nearest" | "bicubic"``; padding_mode: ``"zeros" | "border" | "reflection"``;
    align_corners: the flag handed to ``grid_sample``; normalize: ``"exact"`` (pixel ``x + u`` is
    sampled whatever ``align_corners`` is) or ``"size_minus_one"`` (always divide by ``size - 1``, as
    every official code does; identical to ``"exact"`` when ``align_corners`` is True).
    """

    mode: str = "bilinear"
    padding_mode: str = "zeros"
    align_corners: bool = True
    normalize: str = "exact"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"warp mode must be one of {_MODES}, got {self.mode!r}")
        if self.padding_mode not in _PADDINGS:
            raise ValueError(f"warp padding_mode must be one of {_PADDINGS}, got {self.padding_mode!r}")
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"warp normalize must be one of {_NORMALIZE}, got {self.normalize!r}")


# UAV propagation warps with mode="nearest" and checks consistency with bilinear; callers pick the
# mode, the preset fixes the geometry.
WARP_CONVENTIONS: dict[str, WarpConvention] = {
    "uav": WarpConvention("bilinear", "zeros", True, "size_minus_one"),
    "mgld": WarpConvention("bilinear", "zeros", True, "size_minus_one"),
    "stablevsr": WarpConvention("bilinear", "zeros", False, "size_minus_one"),
}


def _resolve(
    convention: str | WarpConvention | None,
    mode: str | None,
    padding_mode: str | None,
    align_corners: bool | None,
    normalize: str | None,
) -> WarpConvention:
    if convention is None:
        base = WarpConvention()
    elif isinstance(convention, WarpConvention):
        base = convention
    elif convention in WARP_CONVENTIONS:
        base = WARP_CONVENTIONS[convention]
    else:
        raise ValueError(f"unknown warp convention {convention!r}; known: {sorted(WARP_CONVENTIONS)}")
    overrides = {
        k: v
        for k, v in dict(
            mode=mode, padding_mode=padding_mode, align_corners=align_corners, normalize=normalize
        ).items()
        if v is not None
    }
    return replace(base, **overrides) if overrides else base


def _check_flow(flow: Tensor, name: str = "flow") -> None:
    if not isinstance(flow, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(flow).__name__}")
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2, H, W] (channel 0 = dx, 1 = dy), got {tuple(flow.shape)}")
    if not flow.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {flow.dtype}")


def flow_to_grid(flow: Tensor, align_corners: bool = True, normalize: str = "exact") -> Tensor:
    """Turn a pixel flow into ``grid_sample`` coordinates.

    flow: ``[N, 2, H, W]`` pixels (dx, dy). Returns ``[N, H, W, 2]`` in grid_sample's [-1, 1] frame,
    float32 (the grid is built in float32 whatever the flow dtype, so half-precision latents are not
    misaddressed). The arithmetic order follows the official codes so that nearest-mode sampling rounds
    the same way they do.
    """
    _check_flow(flow)
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    _, _, h, w = flow.shape
    flow = flow.float()
    ys = torch.arange(h, device=flow.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=torch.float32).view(1, 1, w)
    vx = xs + flow[:, 0]
    vy = ys + flow[:, 1]
    if normalize == "size_minus_one" or align_corners:
        gx = 2.0 * vx / max(w - 1, 1) - 1.0
        gy = 2.0 * vy / max(h - 1, 1) - 1.0
    else:
        # align_corners=False puts -1/+1 on the outer pixel edges: pixel centre x sits at (2x+1)/W - 1.
        gx = (2.0 * vx + 1.0) / w - 1.0
        gy = (2.0 * vy + 1.0) / h - 1.0
    return torch.stack((gx, gy), dim=-1)


def warp(
    x: Tensor,
    flow: Tensor,
    mode: str | None = None,
    padding_mode: str | None = None,
    align_corners: bool | None = None,
    convention: str | WarpConvention | None = None,
    normalize: str | None = None,
) -> Tensor:
    """Backward-warp ``x`` by ``flow``: ``out(p) = x(p + flow(p))``.

    x: ``[N, C, H, W]`` (images or latents, any C, any float dtype, any device).
    flow: ``[N, 2, H, W]`` (or ``[1, 2, H, W]``, broadcast over N) in pixels of this grid, channel 0 =
    dx, channel 1 = dy. With ``flow = flow_src_to_dst`` and ``x = dst`` the result lies on ``src``'s grid.
    convention: ``None`` (bilinear, zeros, align_corners=True), ``"uav"``, ``"mgld"``, ``"stablevsr"`` or a
    ``WarpConvention``; ``mode``/``padding_mode``/``align_corners``/``normalize`` given explicitly
    override the preset (e.g. ``warp(x, f, mode="nearest", convention="uav")`` is UAV's propagation warp).
    Returns ``[N, C, H, W]`` in x's dtype and device. Samples outside the frame follow ``padding_mode``.
    """
    conv = _resolve(convention, mode, padding_mode, align_corners, normalize)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C, H, W], got {tuple(x.shape)}")
    _check_flow(flow)
    if tuple(flow.shape[-2:]) != tuple(x.shape[-2:]):
        raise ValueError(
            f"flow grid {tuple(flow.shape[-2:])} differs from x grid {tuple(x.shape[-2:])}; "
            "resize the flow with resize_flow() first"
        )
    n = x.shape[0]
    if flow.shape[0] != n:
        if flow.shape[0] != 1:
            raise ValueError(f"flow batch {flow.shape[0]} does not match x batch {n} (and is not 1)")
        flow = flow.expand(n, -1, -1, -1)
    grid = flow_to_grid(flow.to(x.device), conv.align_corners, conv.normalize)
    # grid_sample needs x and grid in one dtype; a [-1, 1] grid in fp16 is off by ~0.5 px on a 1920-px
    # frame and in bf16 by several, so low-precision inputs are sampled in float32 and cast back.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.grid_sample(
        work, grid.to(work.dtype), mode=conv.mode, padding_mode=conv.padding_mode,
        align_corners=conv.align_corners,
    )
    return out.to(x.dtype)


_RESIZE_MODES = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")
_RESIZE_SCALES = ("per_axis", "width")


def resize_flow(
    flow: Tensor,
    size: tuple[int, int],
    mode: str = "bilinear",
    align_corners: bool = False,
    scale: str = "per_axis",
) -> Tensor:
    """Resample a flow field to another grid and rescale its vectors to that grid's pixels.

    flow: ``[N, 2, H, W]`` pixels; size: ``(h, w)`` of the target grid. Returns ``[N, 2, h, w]`` float32.
    mode: interpolation of the field (``F.interpolate``); align_corners is used by bilinear/bicubic only.
    scale: ``"per_axis"`` multiplies dx by ``w/W`` and dy by ``h/H`` (MGLD ``resize_flow``); ``"width"``
    multiplies both by ``w/W`` (Upscale-A-Video ``Propagation``; equal to per_axis when the aspect ratio
    is kept).
    Official presets: MGLD ``mode="bilinear", align_corners=False``; UAV ``mode="area", scale="width"``.
    """
    _check_flow(flow)
    if mode not in _RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {_RESIZE_MODES}, got {mode!r}")
    if scale not in _RESIZE_SCALES:
        raise ValueError(f"resize scale must be one of {_RESIZE_SCALES}, got {scale!r}")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (h, w), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {(h, w)}")
    flow = flow.float()
    _, _, fh, fw = flow.shape
    rx = w / fw
    ry = rx if scale == "width" else h / fh
    if (h, w) == (fh, fw):
        resized = flow
    else:
        kwargs = {"align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
        resized = F.interpolate(flow, size=(h, w), mode=mode, **kwargs)
    # MGLD scales before interpolating, UAV after; resampling is linear so the order only moves the last ulp.
    return torch.stack((resized[:, 0] * rx, resized[:, 1] * ry), dim=1)
