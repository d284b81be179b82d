"""``VideoFlow``: the bidirectional flows of one clip, on one grid, with optional occlusion masks.

Naming used by every consumer (see ``flow_protocol``): for frames ``0..T-1``

* ``forward[i]  = flow(frame i   -> frame i+1)`` on frame i's grid, so ``warp(frame[i+1], forward[i])``
  lands on frame i;
* ``backward[i] = flow(frame i+1 -> frame i)`` on frame i+1's grid, so ``warp(frame[i], backward[i])``
  lands on frame i+1.

How each method's own names map onto these (facts from the official code):

* Upscale-A-Video ``RAFT_bi``: ``flows_forward[i] = RAFT(f_i, f_{i+1})`` -> ``forward[i]``;
  ``flows_backward[i] = RAFT(f_{i+1}, f_i)`` -> ``backward[i]``. Layout there is ``(B, 2, T-1, H, W)``.
* MGLD ``compute_flow``: ``flows_backward[i] = RAFT(f_i, f_{i+1})`` -> ``forward[i]`` ("for backward
  propagation"); ``flows_forward[i] = RAFT(f_{i+1}, f_i)`` -> ``backward[i]``. Layout ``(B, T-1, 2, H, W)``.
* StableVSR ``compute_flows``: ``forward_flows[i-1] = RAFT(cur=i, prev=i-1)`` -> ``backward[i-1]``;
  ``backward_flows`` (before the pipeline reverses the list) ``[i-1] = RAFT(prev, cur)`` -> ``forward[i-1]``.
  Layout ``(B, H, W, 2)`` per pair.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .occlusion import occlusion_masks
from .warp import resize_flow

__all__ = ["VideoFlow"]


def _check_size(size, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {(h, w)}")
    return h, w


@dataclass
class VideoFlow:
    """Bidirectional flows of a T-frame clip.

    forward, backward: ``[T-1, 2, h, w]`` float32 pixels of the ``(h, w)`` grid (dx, dy), see module doc.
    occ_forward, occ_backward: optional ``[T-1, 1, h, w]`` float32 masks, 1 = occluded (occ_forward[i] on
    frame i's grid, occ_backward[i] on frame i+1's).
    frame_size: ``(H, W)`` of the frames the flows describe (the clip as given, before any
    ``compute_size`` downscale); defaults to the grid. It does not change when the flows are resized,
    so ``grid_size``/``frame_size`` is always the scale between flow pixels and frame pixels.
    engine: name of the engine that produced them (for display and cache keys).
    T = 1 is allowed (zero pairs). Shapes are checked on construction.
    """

    forward: Tensor
    backward: Tensor
    occ_forward: Tensor | None = None
    occ_backward: Tensor | None = None
    frame_size: tuple[int, int] | None = None
    engine: str = "unknown"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("forward", "backward"):
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"VideoFlow.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4 or t.shape[1] != 2:
                raise ValueError(f"VideoFlow.{name} must be [T-1, 2, h, w], got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"VideoFlow.{name} must be floating point, got {t.dtype}")
        if self.forward.shape != self.backward.shape:
            raise ValueError(
                f"VideoFlow.forward {tuple(self.forward.shape)} and backward {tuple(self.backward.shape)} differ"
            )
        if self.forward.device != self.backward.device:
            raise ValueError("VideoFlow.forward and backward are on different devices")
        if (self.occ_forward is None) != (self.occ_backward is None):
            raise ValueError("VideoFlow needs both occlusion masks or neither")
        want = (self.forward.shape[0], 1, *self.forward.shape[-2:])
        for name in ("occ_forward", "occ_backward"):
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"VideoFlow.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() == 3 and tuple(t.shape) == (want[0], *want[2:]):
                t = t.unsqueeze(1)  # MGLD's (T-1, h, w) masks
                setattr(self, name, t)
            if tuple(t.shape) != want:
                raise ValueError(f"VideoFlow.{name} must be {list(want)} to match the flows, got {tuple(t.shape)}")
        self.frame_size = self.grid_size if self.frame_size is None else _check_size(self.frame_size, "frame_size")
        self.engine = str(self.engine)

    # ---- shape facts -------------------------------------------------------------------------------
    @property
    def num_pairs(self) -> int:
        """T - 1."""
        return int(self.forward.shape[0])

    @property
    def num_frames(self) -> int:
        """T, the number of frames of the clip."""
        return self.num_pairs + 1

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the grid the flow vectors are measured in."""
        return int(self.forward.shape[-2]), int(self.forward.shape[-1])

    @property
    def has_occlusion(self) -> bool:
        return self.occ_forward is not None

    @property
    def device(self) -> torch.device:
        return self.forward.device

    # ---- transforms --------------------------------------------------------------------------------
    def to(self, device=None, dtype: torch.dtype | None = None) -> "VideoFlow":
        """A copy with every tensor moved to ``device`` (and flows cast to ``dtype``; masks stay float32)."""
        def mv(t, d):
            return None if t is None else t.to(device=device, dtype=d)
        return VideoFlow(
            mv(self.forward, dtype), mv(self.backward, dtype), mv(self.occ_forward, None),
            mv(self.occ_backward, None), self.frame_size, self.engine, dict(self.meta),
        )

    def resized(
        self,
        size: tuple[int, int],
        mode: str = "bilinear",
        align_corners: bool = False,
        scale: str = "per_axis",
        mask_threshold: float = 0.5,
    ) -> "VideoFlow":
        """The same flows on another grid ``size=(h, w)``: vectors scaled per axis (see ``resize_flow``).

        Masks: area-averaged when the grid shrinks in both axes, nearest otherwise, then a coarse pixel
        is occluded when its occluded fraction is ``>= mask_threshold`` (1.0 = only fully occluded
        pixels; a small value keeps every pixel that touches an occlusion).
        The defaults are MGLD's latent resize; UAV's is ``mode="area", scale="width"``.
        """
        h, w = _check_size(size, "size")
        if not 0.0 < mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1], got {mask_threshold}")
        if (h, w) == self.grid_size:
            return VideoFlow(self.forward, self.backward, self.occ_forward, self.occ_backward,
                             self.frame_size, self.engine, dict(self.meta))
        fwd = resize_flow(self.forward, (h, w), mode, align_corners, scale) if self.num_pairs else \
            self.forward.new_zeros((0, 2, h, w))
        bwd = resize_flow(self.backward, (h, w), mode, align_corners, scale) if self.num_pairs else \
            self.backward.new_zeros((0, 2, h, w))
        occ_f = occ_b = None
        if self.has_occlusion:
            occ_f, occ_b = (self._resize_mask(m, (h, w), mask_threshold) for m in (self.occ_forward, self.occ_backward))
        return VideoFlow(fwd, bwd, occ_f, occ_b, self.frame_size, self.engine, dict(self.meta))

    def with_occlusion(self, form: str = "mgld", alpha: float | None = None, beta: float | None = None) -> "VideoFlow":
        """A copy with occlusion masks (re)computed on this grid by ``occlusion_masks`` (MGLD computes
        them after resizing the flows to the latent grid; this is that step)."""
        occ_f, occ_b = occlusion_masks(self.forward, self.backward, form=form, alpha=alpha, beta=beta)
        meta = dict(self.meta, occlusion_form=form)
        return VideoFlow(self.forward, self.backward, occ_f, occ_b, self.frame_size, self.engine, meta)

    def _resize_mask(self, m: Tensor, size: tuple[int, int], threshold: float) -> Tensor:
        if m.shape[0] == 0:
            return m.new_zeros((0, 1, *size))
        gh, gw = self.grid_size
        if size[0] <= gh and size[1] <= gw:
            r = F.interpolate(m.float(), size=size, mode="area")
        else:
            r = F.interpolate(m.float(), size=size, mode="nearest-exact")
        return (r >= threshold - 1e-6).to(torch.float32)

    def frames(self, start: int, stop: int) -> "VideoFlow":
        """The flows of the sub-clip of frames ``[start, stop)`` (e.g. MGLD's 5-frame segments)."""
        t = self.num_frames
        if not (0 <= start < stop <= t):
            raise ValueError(f"frame range [{start}, {stop}) is outside a clip of {t} frames")
        sl = slice(start, stop - 1)
        return VideoFlow(
            self.forward[sl], self.backward[sl],
            None if self.occ_forward is None else self.occ_forward[sl],
            None if self.occ_backward is None else self.occ_backward[sl],
            self.frame_size, self.engine, dict(self.meta),
        )

    def crop(self, top: int, left: int, height: int, width: int) -> "VideoFlow":
        """The flows of a spatial window of the grid (grid pixels; vectors are unchanged).

        frame_size becomes the matching window of the frames, so the flow/frame scale is kept.
        """
        gh, gw = self.grid_size
        if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= gh and left + width <= gw):
            raise ValueError(f"crop ({top}, {left}, {height}, {width}) is outside the {gh}x{gw} flow grid")
        sy, sx = self.frame_size[0] / gh, self.frame_size[1] / gw
        cut = (slice(None), slice(None), slice(top, top + height), slice(left, left + width))
        return VideoFlow(
            self.forward[cut], self.backward[cut],
            None if self.occ_forward is None else self.occ_forward[cut],
            None if self.occ_backward is None else self.occ_backward[cut],
            (max(1, round(height * sy)), max(1, round(width * sx))), self.engine, dict(self.meta),
        )

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to a ``.safetensors`` file (tensors on the CPU, engine and frame size in the metadata)."""
        from safetensors.torch import save_file

        tensors = {"forward": self.forward, "backward": self.backward}
        if self.has_occlusion:
            tensors |= {"occ_forward": self.occ_forward, "occ_backward": self.occ_backward}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        meta = {"engine": self.engine, "frame_size": json.dumps(list(self.frame_size)),
                "meta": json.dumps(self.meta, default=str), "format": "vsr_core.VideoFlow/1"}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "VideoFlow":
        """Read a file written by ``save``."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            if md.get("format") != "vsr_core.VideoFlow/1":
                raise ValueError(f"{path} is not a VideoFlow file (format {md.get('format')!r})")
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(t["forward"], t["backward"], t.get("occ_forward"), t.get("occ_backward"),
                   tuple(json.loads(md["frame_size"])), md.get("engine", "unknown"),
                   json.loads(md.get("meta", "{}")))

    def __repr__(self) -> str:
        h, w = self.grid_size
        occ = ", occlusion" if self.has_occlusion else ""
        return (f"VideoFlow(T={self.num_frames}, grid={h}x{w}, frames={self.frame_size[0]}x{self.frame_size[1]}, "
                f"engine={self.engine!r}{occ}, device={self.device})")
