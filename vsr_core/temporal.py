"""Temporal chunking: overlapping windows with a per-step merge, and non-overlapping segments.

* Windows (Upscale-A-Video, §2.3 step 6b): the denoiser sees ``window`` frames at a time, windows
  start every ``window - overlap`` frames, and the per-frame predictions of overlapping windows are
  merged before CFG and the scheduler step. :class:`WindowMerger` offers the official running average
  (``"running"``), a plain average (``"uniform"``) and a raised-cosine cross-fade (``"hann"``).
* Segments (MGLD, §4.3 step 2; UAV's 3-frame VAE decode): non-overlapping chunks of ``size`` frames;
  MGLD pads the sequence by repeating its last frame up to a multiple of ``size``.

Frame indices are half-open ``(start, end)`` pairs. Merges and padding act along one tensor dim
(``dim``): 2 for ``[B, C, T, H, W]`` latents (UAV), 0 for ``[T, C, H, W]`` frames.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .tiling import hann_ramp

__all__ = [
    "WINDOW_MODES",
    "plan_windows",
    "unique_windows",
    "WindowMerger",
    "plan_segments",
    "pad_frames",
    "unpad_frames",
]

WINDOW_MODES = ("running", "uniform", "hann")

# Upscale-A-Video pipeline (`short_seq`, `overlap_seq`): 8-frame windows overlapping by 2.
UAV_WINDOW, UAV_OVERLAP = 8, 2


def _check_window(num_frames: int, window: int, overlap: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")


def plan_windows(num_frames: int, window: int = UAV_WINDOW, overlap: int = UAV_OVERLAP,
                 layout: str = "snap") -> list[tuple[int, int]]:
    """Temporal windows ``[(start, end), ...]`` in processing order.

    ``num_frames <= window`` gives one window ``(0, num_frames)``. Otherwise windows start every
    ``window - overlap`` frames and the last one is shifted back to ``(T - window, T)``.

    layout:
        ``"snap"``: each window once.
        ``"uav"``: the official Upscale-A-Video loop verbatim. It visits every start in
        ``range(0, T, stride)`` and shifts each too-short window back, so the last window can come
        several times in a row (T=14: (0,8), (6,14), (6,14)). With the running-average merge a repeat
        changes the weights (frames 6-7 get 0.25/0.75 instead of 0.5/0.5), so a faithful sampler
        must honour the repeats; :func:`unique_windows` lets it run the network once per window.
    """
    _check_window(num_frames, window, overlap)
    if num_frames <= window:
        return [(0, num_frames)]
    stride = window - overlap
    if layout == "uav":
        out = []
        for s in range(0, num_frames, stride):
            e = min(num_frames, s + window)
            out.append((e - window, e) if e - s < window else (s, e))
        return out
    if layout == "snap":
        n = 1 + math.ceil((num_frames - window) / stride)
        return [(k * stride, k * stride + window) for k in range(n - 1)] + [(num_frames - window, num_frames)]
    raise ValueError(f"window layout must be 'snap' or 'uav', got {layout!r}")


def unique_windows(windows: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Collapse consecutive repeats: ``[(start, end, repeats), ...]`` for ``WindowMerger.add(..., repeats)``."""
    out: list[list[int]] = []
    for s, e in windows:
        if out and out[-1][0] == s and out[-1][1] == e:
            out[-1][2] += 1
        else:
            out.append([s, e, 1])
    return [tuple(w) for w in out]


class WindowMerger:
    """Merges per-window predictions into one tensor of ``num_frames`` frames along ``dim``.

    modes:
        ``"running"``: the official UAV merge, in call order: a frame's first prediction is copied,
        each later one does ``acc = 0.5·acc + 0.5·new`` (so a frame covered 3 times gets 0.25/0.25/0.5).
        Bit-exact with the official loop when windows are added in the same order.
        ``"uniform"``: the mean of all predictions of a frame.
        ``"hann"``: weighted mean, each window fading in/out over ``overlap`` frames at ends that are
        not the sequence ends (raised cosine, a partition of unity for windows overlapping by exactly
        ``overlap``).

    ``add(pred, start, end, repeats=1)`` counts a window ``repeats`` times (the same as calling it
    again with the same prediction). ``result()`` raises if a frame was never covered.
    """

    def __init__(self, num_frames: int, mode: str = "running", overlap: int = 0, dim: int = 2) -> None:
        if mode not in WINDOW_MODES:
            raise ValueError(f"window merge mode must be one of {WINDOW_MODES}, got {mode!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames, self.mode, self.overlap, self.dim = num_frames, mode, overlap, dim
        self._acc: Tensor | None = None
        self._count = [0] * num_frames
        self._wsum: Tensor | None = None

    def _view_w(self, w: Tensor, ndim: int, dim: int) -> Tensor:
        shape = [1] * ndim
        shape[dim] = -1
        return w.view(shape)

    def add(self, pred: Tensor, start: int, end: int, repeats: int = 1) -> None:
        """Merge ``pred`` (``end - start`` frames along ``dim``) as the prediction for ``[start, end)``."""
        dim = self.dim % pred.dim()
        if not 0 <= start < end <= self.num_frames or pred.shape[dim] != end - start:
            raise ValueError(f"window [{start},{end}) with {pred.shape[dim]} frames along dim {dim} does not "
                             f"fit a {self.num_frames}-frame sequence")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if self._acc is None:
            shape = list(pred.shape)
            shape[dim] = self.num_frames
            acc_dtype = pred.dtype if self.mode == "running" else torch.promote_types(pred.dtype, torch.float32)
            self._acc = pred.new_zeros(shape, dtype=acc_dtype)
            self._wsum = torch.zeros(self.num_frames, dtype=torch.float64)
        elif list(pred.shape[:dim]) + list(pred.shape[dim + 1:]) != \
                list(self._acc.shape[:dim]) + list(self._acc.shape[dim + 1:]):
            raise ValueError(f"window prediction shape {tuple(pred.shape)} does not match {tuple(self._acc.shape)}")
        if self.mode == "running":
            self._add_running(pred, start, end, repeats, dim)
            return
        n = end - start
        if self.mode == "hann":
            w = hann_ramp(n, self.overlap, start > 0, end < self.num_frames, dtype=torch.float64)
        else:
            w = torch.ones(n, dtype=torch.float64)
        w = w * repeats
        acc = self._acc.narrow(dim, start, n)
        acc += pred.to(acc.dtype) * self._view_w(w.to(acc), pred.dim(), dim)
        self._wsum[start:end] += w
        for f in range(start, end):
            self._count[f] += repeats

    def _add_running(self, pred: Tensor, start: int, end: int, repeats: int, dim: int) -> None:
        for k, f in enumerate(range(start, end)):
            new = pred.narrow(dim, k, 1)
            dst = self._acc.narrow(dim, f, 1)
            reps = repeats
            if self._count[f] == 0:
                dst.copy_(new)
                reps -= 1
            for _ in range(reps):
                # Same expression and order as the official loop (bit-exact).
                dst.copy_(dst * 0.5 + new * 0.5)
            self._count[f] += repeats

    @property
    def coverage(self) -> list[int]:
        """How many predictions each frame has received (repeats included)."""
        return list(self._count)

    def result(self) -> Tensor:
        """The merged ``num_frames``-frame tensor (dtype of the first prediction)."""
        if self._acc is None or min(self._count) == 0:
            missing = [f for f, c in enumerate(self._count) if c == 0]
            raise RuntimeError(f"WindowMerger.result(): frames {missing} were not covered by any window")
        if self.mode == "running":
            return self._acc.clone()
        dim = self.dim % self._acc.dim()
        w = self._view_w(self._wsum.to(self._acc), self._acc.dim(), dim)
        return self._acc / w


def plan_segments(num_frames: int, size: int, pad: str = "last") -> list[tuple[int, int]]:
    """Non-overlapping segments of ``size`` frames covering ``num_frames`` frames.

    pad:
        ``"last"`` (MGLD): the sequence is padded up to a multiple of ``size`` (by repeating its last
        frame, see :func:`pad_frames`), so every segment is full and the last one may end past
        ``num_frames``. ``"none"``: the last segment is shorter (UAV's 3-frame decode: 3/3/3/1).
    """
    if num_frames < 1 or size < 1:
        raise ValueError(f"need num_frames >= 1 and size >= 1, got {num_frames}, {size}")
    if pad not in ("last", "none"):
        raise ValueError(f"segment pad must be 'last' or 'none', got {pad!r}")
    total = math.ceil(num_frames / size) * size if pad == "last" else num_frames
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def pad_frames(x: Tensor, num_frames: int, dim: int = 0, mode: str = "last") -> Tensor:
    """Pad ``x`` along ``dim`` to ``num_frames`` frames.

    ``"last"`` repeats the last frame (MGLD's "naive way to handle the boundary problem");
    ``"reflect"`` mirrors the tail without repeating the last frame (``..., a, b, c | b, a, ...``) and
    falls back to repetition when the sequence is too short to mirror.
    """
    dim = dim % x.dim()
    t = x.shape[dim]
    if num_frames < t:
        raise ValueError(f"cannot pad {t} frames down to {num_frames}")
    if num_frames == t:
        return x
    if mode == "last":
        idx = list(range(t)) + [t - 1] * (num_frames - t)
    elif mode == "reflect":
        period = 2 * (t - 1)
        idx = list(range(t))
        for k in range(t, num_frames):
            r = k % period if period else 0
            idx.append(r if r < t else period - r)
    else:
        raise ValueError(f"frame pad mode must be 'last' or 'reflect', got {mode!r}")
    return x.index_select(dim, torch.tensor(idx, device=x.device))


def unpad_frames(x: Tensor, num_frames: int, dim: int = 0) -> Tensor:
    """The first ``num_frames`` frames of ``x`` along ``dim`` (undo :func:`pad_frames`)."""
    dim = dim % x.dim()
    if num_frames > x.shape[dim]:
        raise ValueError(f"cannot unpad {x.shape[dim]} frames to {num_frames}")
    return x.narrow(dim, 0, num_frames)
