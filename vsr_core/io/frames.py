"""Frame selection arithmetic and tensor layout conversions.

ComfyUI's IMAGE is ``[T, H, W, 3]`` float32 in [0, 1] on the CPU; networks want ``[T, 3, H, W]``.
The selection options follow VideoHelperSuite's meaning so that users moving from VHS get the frames
they expect: skip first, then take every n-th, then cap the count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FrameSelection:
    """Which source frames a load returns: ``skip_first``, then every ``nth``, at most ``cap`` (0 = all)."""

    skip_first: int = 0
    nth: int = 1
    cap: int = 0

    def __post_init__(self):
        if self.skip_first < 0:
            raise ValueError(f"skip_first_frames must be >= 0, got {self.skip_first}")
        if self.nth < 1:
            raise ValueError(f"select_every_nth must be >= 1, got {self.nth}")
        if self.cap < 0:
            raise ValueError(f"frame_load_cap must be >= 0 (0 = no cap), got {self.cap}")

    def wants(self, index: int) -> bool:
        """Whether source frame ``index`` is selected (ignoring the cap)."""
        return index >= self.skip_first and (index - self.skip_first) % self.nth == 0

    def count(self, total: int) -> int:
        """Number of frames selected from a source of ``total`` frames."""
        if total <= self.skip_first:
            return 0
        n = (total - self.skip_first + self.nth - 1) // self.nth
        return min(n, self.cap) if self.cap else n

    def indices(self, total: int) -> range:
        """Source indices selected from a source of ``total`` frames."""
        n = self.count(total)
        return range(self.skip_first, self.skip_first + n * self.nth, self.nth)

    def last_needed(self, total: int | None = None) -> int | None:
        """Index of the last source frame to decode, or None when it depends on the unknown length."""
        if self.cap:
            return self.skip_first + (self.cap - 1) * self.nth
        return None if total is None else total - 1


def to_float_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8/uint16 ``[T, H, W, C]`` array -> float32 tensor in [0, 1]."""
    scale = 65535.0 if frames.dtype == np.uint16 else 255.0
    return torch.from_numpy(frames.astype(np.float32) / np.float32(scale))


def to_uint(frames: torch.Tensor | np.ndarray, bits: int = 8) -> np.ndarray:
    """float ``[..., C]`` in [0, 1] (tensor or array) -> rounded uint8 (bits=8) or uint16 array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().to("cpu", torch.float32).numpy()
    if frames.dtype in (np.uint8, np.uint16):
        return frames
    peak = 255.0 if bits <= 8 else 65535.0
    out = np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0) * peak + 0.5
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


def image_to_nchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[T, H, W, C]`` -> ``[T, C, H, W]``."""
    if images.ndim != 4:
        raise ValueError(f"expected frames [T, H, W, C], got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2)


def nchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """``[T, C, H, W]`` -> ComfyUI IMAGE ``[T, H, W, C]`` float32 on the CPU (contiguous)."""
    return x.permute(0, 2, 3, 1).to("cpu", torch.float32).contiguous()


def check_image(images, name: str = "images") -> torch.Tensor:
    """Validate a ComfyUI IMAGE batch and return it; raise a ValueError a user can act on."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected an IMAGE tensor [frames, height, width, channels], got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected IMAGE [frames, height, width, 3], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: the frame batch is empty (0 frames)")
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return images
