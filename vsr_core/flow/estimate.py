"""Bidirectional flows for a whole clip, computed a few pairs at a time with any flow engine.

Memory stays bounded by ``chunk`` pairs on the compute device plus the flows themselves on the CPU: the
clip is never converted, resized or moved as a whole, so a long ComfyUI ``IMAGE`` batch is read one
window of ``chunk + 1`` frames at a time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .occlusion import OCCLUSION_FORMS, occlusion_masks
from .types import VideoFlow

__all__ = ["estimate_video_flow", "FlowEngine"]


class FlowEngine(Protocol):
    """Anything with ``name`` and ``__call__(src, dst) -> flow_src_to_dst`` (see ``flow_protocol``)."""

    name: str

    def __call__(self, src: Tensor, dst: Tensor) -> Tensor: ...


class _Frames:
    """Random access to frames ``[T, H, W, 3]`` / ``[T, 3, H, W]`` / a sequence of per-frame tensors,
    yielding ``[k, 3, H, W]`` float32 windows in [0, 1]."""

    def __init__(self, frames, layout: str) -> None:
        if layout not in ("auto", "thwc", "tchw"):
            raise ValueError(f"layout must be 'auto', 'thwc' or 'tchw', got {layout!r}")
        if isinstance(frames, Tensor):
            if frames.dim() != 4:
                raise ValueError(
                    f"frames must be [T, H, W, 3] (ComfyUI IMAGE) or [T, 3, H, W], got {tuple(frames.shape)}"
                )
            self.seq = None
            self.data = frames
            shape = tuple(frames.shape[1:])
        elif isinstance(frames, Sequence) and len(frames) > 0 and all(isinstance(f, Tensor) for f in frames):
            shapes = {tuple(f.shape) for f in frames}
            if len(shapes) != 1 or len(next(iter(shapes))) != 3:
                raise ValueError(f"a frame sequence needs equal-shaped 3-D tensors, got shapes {sorted(shapes)[:3]}")
            self.seq = frames
            self.data = None
            shape = next(iter(shapes))
        else:
            raise TypeError("frames must be a 4-D tensor or a non-empty sequence of 3-D frame tensors")
        if layout == "auto":
            hwc, chw = shape[-1] == 3, shape[0] == 3
            if hwc and chw:
                raise ValueError(f"frame shape {shape} is ambiguous; pass layout='thwc' or 'tchw'")
            if not (hwc or chw):
                raise ValueError(f"frames must have 3 colour channels first or last, got frame shape {shape}")
            layout = "thwc" if hwc else "tchw"
        elif (layout == "thwc" and shape[-1] != 3) or (layout == "tchw" and shape[0] != 3):
            raise ValueError(f"frame shape {shape} does not match layout {layout!r}")
        self.layout = layout
        self.size = (shape[0], shape[1]) if layout == "thwc" else (shape[1], shape[2])
        self.length = len(frames)

    def window(self, start: int, stop: int, device) -> Tensor:
        part = self.data[start:stop] if self.seq is None else torch.stack(list(self.seq[start:stop]))
        part = part.to(device)
        if self.layout == "thwc":
            part = part.permute(0, 3, 1, 2)
        if part.dtype == torch.uint8:
            return part.float() / 255.0
        return part.float()


def _resize_frames(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    # Antialiasing on downscale keeps fine texture from aliasing into false motion.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink).clamp_(0.0, 1.0)


@torch.no_grad()
def estimate_video_flow(
    frames,
    engine: FlowEngine,
    chunk: int = 8,
    compute_size: tuple[int, int] | None = None,
    with_occlusion: bool = True,
    occlusion_form: str = "mgld",
    progress: Callable[[int, int], None] | None = None,
    device=None,
    layout: str = "auto",
) -> VideoFlow:
    """Forward and backward flows of every neighbouring pair of a clip.

    frames: ``[T, H, W, 3]`` float in [0, 1] (ComfyUI IMAGE), ``[T, 3, H, W]``, or a sequence of T frame
    tensors of one of those layouts (``layout`` resolves a 3-pixel-wide ambiguity; uint8 is scaled by 1/255).
    engine: any flow engine (``name``, ``engine(src, dst)``; see ``flow_protocol``).
    chunk: pairs per engine call; each call gets at most ``chunk`` pairs, once per direction.
    compute_size: ``(h, w)`` to estimate at (frames are resized, antialiased when shrinking); the flows
    then live on that grid and ``VideoFlow.frame_size`` keeps ``(H, W)``. None = full size.
    with_occlusion / occlusion_form: also compute occlusion masks (1 = occluded), ``"mgld"`` or ``"uav"``.
    progress: optional ``callable(n_pairs_done, n_pairs_total)`` called after each chunk; an exception it
    raises stops the estimation (ComfyUI interrupt).
    device: where frames are sent for the engine; default ``engine.device`` if it has one, else the frames'.
    Returns a ``VideoFlow`` on the CPU with ``forward``/``backward`` ``[T-1, 2, h, w]`` float32.
    """
    src = _Frames(frames, layout)
    if not callable(engine):
        raise TypeError(f"engine must be callable(src, dst) -> flow, got {type(engine).__name__}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunk = int(chunk)
    if occlusion_form not in OCCLUSION_FORMS:
        raise ValueError(f"occlusion_form must be one of {OCCLUSION_FORMS}, got {occlusion_form!r}")
    if compute_size is None:
        grid = src.size
    else:
        try:
            grid = tuple(int(v) for v in compute_size)
        except (TypeError, ValueError):
            raise ValueError(f"compute_size must be (h, w), got {compute_size!r}") from None
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"compute_size must be two positive ints (h, w), got {compute_size!r}")
    if device is None:
        device = getattr(engine, "device", None)
        if device is None:
            device = src.data.device if src.seq is None else src.seq[0].device
    device = torch.device(device)

    n_pairs = src.length - 1
    h, w = grid
    fwd = torch.empty((n_pairs, 2, h, w), dtype=torch.float32)
    bwd = torch.empty_like(fwd)
    occ_f = torch.empty((n_pairs, 1, h, w), dtype=torch.float32) if with_occlusion else None
    occ_b = torch.empty_like(occ_f) if with_occlusion else None
    name = str(getattr(engine, "name", type(engine).__name__))

    carry = None  # last frame of the previous window, already converted and resized
    for s in range(0, n_pairs, chunk):
        e = min(s + chunk, n_pairs)
        if carry is None:
            win = _resize_frames(src.window(s, e + 1, device), grid)
        else:
            win = torch.cat([carry, _resize_frames(src.window(s + 1, e + 1, device), grid)])
        carry = win[-1:]
        a, b = win[:-1], win[1:]
        f = engine(a, b)
        bk = engine(b, a)
        for what, t in (("forward", f), ("backward", bk)):
            if not isinstance(t, Tensor) or tuple(t.shape) != (e - s, 2, h, w):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"flow engine {name!r} returned {got} for the {what} flows; expected {(e - s, 2, h, w)}")
        if with_occlusion:
            of, ob = occlusion_masks(f.float(), bk.float().to(f.device), form=occlusion_form)
            occ_f[s:e] = of.cpu()
            occ_b[s:e] = ob.cpu()
        fwd[s:e] = f.float().cpu()
        bwd[s:e] = bk.float().cpu()
        del win, a, b, f, bk
        if progress is not None:
            progress(e, n_pairs)

    meta = {"compute_size": list(grid), "chunk": chunk}
    if with_occlusion:
        meta["occlusion_form"] = occlusion_form
    return VideoFlow(fwd, bwd, occ_f, occ_b, frame_size=src.size, engine=name, meta=meta)
