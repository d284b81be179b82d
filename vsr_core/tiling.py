"""Spatial tiling: plan tiles over an image or latent, run a function per tile, reassemble.

A :class:`Tile` carries three nested rectangles, all ``(y0, y1, x0, x1)`` half-open in the coordinates
of the tiled (input) grid:

* ``region``: what the tile function sees (the window plus a ``context`` margin, clipped to the image);
* ``window``: the grid tile, the area a blending merge spreads its weights over;
* ``core``: the area the tile owns; the cores of a plan partition the image, which is what ``"hard"``
  merging pastes (Upscale-A-Video style: context is computed, then cropped away).

Two layouts:

* :func:`plan_tiles` ("snap"): tiles of size ``tile`` every ``tile - overlap``, the last row/column
  shifted back so that it ends on the border. This is the placement of MGLD's latent canvas
  (``p_mean_variance_canvas``, 64/32) and of its pixel macro-tiles (``ImageSpliterTh``, 960/750).
  Unlike both official codes it also accepts an image smaller than one tile (one tile, the image).
* :func:`plan_tiles_uav`: Upscale-A-Video's LR pixel tiling (``inference_upscale_a_video.py``): cores
  of ``tile`` px on a fixed grid, a remainder of at most ``context`` px folded into the previous
  core, ``context`` px of context each side, hard paste.

Merging (:class:`TileMerger`) divides the weighted sum by the sum of weights, so any positive weights
reassemble an untouched input exactly (up to float rounding), whatever the plan.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Tile",
    "TILE_MODES",
    "plan_tiles",
    "plan_tiles_uav",
    "hann_ramp",
    "tile_weights",
    "TileMerger",
    "tiled_apply",
    "in_slices",
]

TILE_MODES = ("hard", "uniform", "gaussian", "hann")

# MGLD `_gaussian_weights` (ddpm.py, LatentDiffusionVSRTextWT): variance of the tile weight profile,
# relative to the squared tile side (so sigma = 0.1 * tile).
MGLD_GAUSSIAN_VAR = 0.01

Box = tuple[int, int, int, int]


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    try:
        if isinstance(v, Sequence) or isinstance(v, torch.Size):
            if len(v) != 2:
                raise TypeError
            return operator.index(v[0]), operator.index(v[1])
        i = operator.index(v)
        return i, i
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None


@dataclass(frozen=True)
class Tile:
    """One tile of a plan. Boxes are ``(y0, y1, x0, x1)``, half-open, in input-grid pixels.

    ``region`` ⊇ ``window`` ⊇ ``core``. ``fade`` says, per side (top, bottom, left, right), whether the
    window has a neighbour there (a blending ramp fades toward that side; image borders keep full
    weight). ``overlap`` is the planned overlap ``(oy, ox)`` between neighbouring windows.
    """

    region: Box
    window: Box
    core: Box
    index: tuple[int, int]
    grid: tuple[int, int]
    overlap: tuple[int, int] = (0, 0)
    fade: tuple[bool, bool, bool, bool] = (False, False, False, False)

    @staticmethod
    def _slices(box: Box) -> tuple[slice, slice]:
        return slice(box[0], box[1]), slice(box[2], box[3])

    def slices(self, which: str = "region") -> tuple[slice, slice]:
        """(row slice, column slice) of ``region``/``window``/``core`` in the full input grid."""
        return self._slices(getattr(self, which))

    def relative(self, which: str, scale: int = 1) -> tuple[slice, slice]:
        """Slices of ``window`` or ``core`` inside the tile function's output (its region, × ``scale``)."""
        y0, y1, x0, x1 = getattr(self, which)
        ry, rx = self.region[0], self.region[2]
        return slice((y0 - ry) * scale, (y1 - ry) * scale), slice((x0 - rx) * scale, (x1 - rx) * scale)

    def crop(self, x: Tensor, which: str = "region") -> Tensor:
        """``x[..., rows, cols]`` for the chosen box (``x`` is ``[..., H, W]`` at input resolution)."""
        ys, xs = self.slices(which)
        return x[..., ys, xs]

    @property
    def region_hw(self) -> tuple[int, int]:
        return self.region[1] - self.region[0], self.region[3] - self.region[2]


def _axis_snap(size: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    n = 1 + math.ceil((size - tile) / stride)
    starts = [k * stride for k in range(n - 1)]
    # Snapped to the border; rounded down so that every start stays on the `multiple` grid (the last
    # tile then grows by < multiple instead of leaving the grid).
    last = (size - tile) // multiple * multiple
    if starts and starts[-1] >= last:
        starts.pop()
    starts.append(last)
    return [(s, s + tile) for s in starts[:-1]] + [(last, size)]


def _axis_cores(windows: list[tuple[int, int]], multiple: int) -> list[tuple[int, int]]:
    # Seams at the middle of each overlap, on the `multiple` grid.
    cuts = [windows[0][0]]
    for (_, e0), (s1, _) in zip(windows[:-1], windows[1:]):
        cuts.append(max(s1, (s1 + e0) // 2 // multiple * multiple))
    cuts.append(windows[-1][1])
    return list(zip(cuts[:-1], cuts[1:]))


def _assemble(size_hw, rows, cols, row_cores, col_cores, context, overlap) -> list[Tile]:
    h, w = size_hw
    cy, cx = context
    tiles = []
    for i, ((wy0, wy1), (ky0, ky1)) in enumerate(zip(rows, row_cores)):
        for j, ((wx0, wx1), (kx0, kx1)) in enumerate(zip(cols, col_cores)):
            region = (max(wy0 - cy, 0), min(wy1 + cy, h), max(wx0 - cx, 0), min(wx1 + cx, w))
            fade = (i > 0, i < len(rows) - 1, j > 0, j < len(cols) - 1)
            tiles.append(Tile(region, (wy0, wy1, wx0, wx1), (ky0, ky1, kx0, kx1), (i, j),
                              (len(rows), len(cols)), overlap, fade))
    return tiles


def plan_tiles(
    size_hw: Sequence[int],
    tile: int | Sequence[int],
    overlap: int | Sequence[int] = 0,
    multiple: int = 1,
    *,
    context: int | Sequence[int] = 0,
) -> list[Tile]:
    """Plan overlapping tiles over an ``H×W`` grid, last row/column snapped to the border.

    Args:
        size_hw: ``(H, W)`` of the grid being tiled.
        tile: tile side, int or ``(th, tw)``; along an axis no longer than ``tile`` there is one tile
            spanning the axis (so an image smaller than one tile gives a single, smaller tile).
        overlap: overlap between neighbouring windows, ``0 <= overlap < tile``.
        multiple: every tile start (and every interior tile end) lies on this grid, so the same plan
            divided by ``multiple`` is a plan on a downscaled grid (e.g. pixels vs ``/8`` latents).
            ``tile`` and ``tile - overlap`` must be multiples of it. The snapped last tile starts at
            ``(size - tile)`` rounded down to the grid, so it can be up to ``multiple - 1`` larger.
        context: extra margin added around each window for the tile function (clipped to the image);
            merges crop it away again.

    Returns:
        Tiles in row-major order. Windows never leave the image; cores partition it.
    """
    h, w = _pair(tuple(size_hw), "size_hw")
    th, tw = _pair(tile, "tile")
    oy, ox = _pair(overlap, "overlap")
    cy, cx = _pair(context, "context")
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty grid {h}x{w}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    for t, o, axis in ((th, oy, "height"), (tw, ox, "width")):
        if t < 1 or not 0 <= o < t:
            raise ValueError(f"need tile >= 1 and 0 <= overlap < tile along {axis}, got tile={t}, overlap={o}")
        if t % multiple or (t - o) % multiple:
            raise ValueError(f"tile ({t}) and tile - overlap ({t - o}) must be multiples of {multiple} along {axis}")
    if cy < 0 or cx < 0:
        raise ValueError(f"context must be >= 0, got {context!r}")
    rows, cols = _axis_snap(h, th, oy, multiple), _axis_snap(w, tw, ox, multiple)
    return _assemble((h, w), rows, cols, _axis_cores(rows, multiple), _axis_cores(cols, multiple),
                     (cy, cx), (oy, ox))


def _axis_uav(size: int, tile: int, context: int) -> list[tuple[int, int]]:
    n = math.ceil(size / tile)
    # Official rule: fold the last, short core into its neighbour when that neighbour's context
    # already reaches the border. The official code also does this for n == 1 (and then plans zero
    # tiles for sides <= context); one tile is kept here.
    merge = n > 1 and (n - 1) * tile + context >= size
    if merge:
        n -= 1
    cores = [(k * tile, min((k + 1) * tile, size)) for k in range(n)]
    cores[-1] = (cores[-1][0], size)
    return cores


def plan_tiles_uav(size_hw: Sequence[int], tile: int = 256, context: int = 64) -> list[Tile]:
    """Upscale-A-Video's LR pixel tiling (§2.3 step 3): ``tile`` px cores, ``context`` px margins.

    Cores start every ``tile`` px; a remainder the previous tile's context already covers
    (``(n-1)·tile + context >= size``) is folded into the last core. Windows equal cores (no
    blending overlap): merge with ``mode="hard"``.
    """
    h, w = _pair(tuple(size_hw), "size_hw")
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty grid {h}x{w}")
    if tile < 1 or context < 0:
        raise ValueError(f"need tile >= 1 and context >= 0, got tile={tile}, context={context}")
    rows, cols = _axis_uav(h, tile, context), _axis_uav(w, tile, context)
    return _assemble((h, w), rows, cols, rows, cols, (context, context), (0, 0))


def hann_ramp(length: int, overlap: int, fade_start: bool = True, fade_end: bool = True,
              *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """1-D weights: 1 inside, a raised-cosine ramp over ``overlap`` samples at each faded end.

    Ramp samples are ``sin²(π/2 · (i + ½) / overlap)``, strictly positive, and a ramp and its mirror
    sum to 1, so two neighbours overlapping by exactly ``overlap`` cross-fade to a partition of unity.
    A ramp longer than half the length is shortened to fit.
    """
    # Built in float64 on the CPU (tiny), then moved: MPS has no float64.
    w = torch.ones(length, dtype=torch.float64)
    ov = min(int(overlap), length // 2 if fade_start and fade_end else length)
    if ov > 0:
        i = torch.arange(ov, dtype=torch.float64)
        ramp = torch.sin(0.5 * math.pi * (i + 0.5) / ov) ** 2
        if fade_start:
            w[:ov] = ramp
        if fade_end:
            w[length - ov:] = w[length - ov:] * ramp.flip(0)
    return w.to(device=device, dtype=dtype)


def _mgld_gaussian(th: int, tw: int) -> Tensor:
    # MGLD `_gaussian_weights`: x centred at (W-1)/2 but y at H/2 (an off-by-half-pixel asymmetry of
    # the official code, kept for parity), distance normalised by the side, var 0.01, float64.
    x = torch.arange(tw, dtype=torch.float64)
    y = torch.arange(th, dtype=torch.float64)
    norm = math.sqrt(2 * math.pi * MGLD_GAUSSIAN_VAR)
    wx = torch.exp(-((x - (tw - 1) / 2) ** 2) / (tw * tw) / (2 * MGLD_GAUSSIAN_VAR)) / norm
    wy = torch.exp(-((y - th / 2) ** 2) / (th * th) / (2 * MGLD_GAUSSIAN_VAR)) / norm
    return torch.outer(wy, wx)


def tile_weights(
    tile_hw: Sequence[int],
    mode: str,
    overlap: int | Sequence[int] = 0,
    fade: Sequence[bool] = (True, True, True, True),
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Blend weights ``[th, tw]`` for one window.

    Modes: ``"uniform"`` and ``"hard"`` (ones; ``"hard"`` merges paste cores instead of weighting);
    ``"gaussian"``: MGLD's official tile weights (``_gaussian_weights``, var 0.01 relative to the side;
    ``overlap``/``fade`` are ignored, as in the official code); ``"hann"``: raised-cosine ramps over
    ``overlap`` px on the sides flagged in ``fade`` (top, bottom, left, right), flat elsewhere.
    """
    th, tw = _pair(tuple(tile_hw), "tile_hw")
    if mode in ("uniform", "hard"):
        return torch.ones(th, tw, dtype=dtype, device=device)
    if mode == "gaussian":
        return _mgld_gaussian(th, tw).to(device=device, dtype=dtype)
    if mode == "hann":
        oy, ox = _pair(overlap, "overlap")
        top, bottom, left, right = fade
        wy = hann_ramp(th, oy, top, bottom, dtype=torch.float64)
        wx = hann_ramp(tw, ox, left, right, dtype=torch.float64)
        return torch.outer(wy, wx).to(device=device, dtype=dtype)
    raise ValueError(f"tile mode must be one of {TILE_MODES}, got {mode!r}")


class TileMerger:
    """Accumulates per-tile outputs into one ``out_shape`` tensor ``[..., H·scale, W·scale]``.

    ``add(tile, out)`` takes the tile function's output for ``tile.region`` at ``scale`` × resolution
    (``[..., rh·scale, rw·scale]``). ``"hard"`` pastes the tile's core; the other modes add
    ``weights · window`` and ``result()`` divides by the summed weights. Sums are kept in at least
    float32 (Gaussian corner weights underflow in float16); ``result()`` returns ``dtype``.

    Float sums depend on the order of ``add`` calls. MGLD's canvas visits tiles column by column
    (x outer, y inner); to replay it, add ``sorted(tiles, key=lambda t: t.index[::-1])``.
    """

    def __init__(self, out_shape: Sequence[int], mode: str = "gaussian", scale: int = 1, *,
                 device=None, dtype: torch.dtype = torch.float32) -> None:
        if mode not in TILE_MODES:
            raise ValueError(f"tile mode must be one of {TILE_MODES}, got {mode!r}")
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        self.mode, self.scale, self.dtype = mode, scale, dtype
        self.out_shape = tuple(int(s) for s in out_shape)
        acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self._acc = torch.zeros(self.out_shape, dtype=acc_dtype, device=device)
        # Weights are shared by all leading dims: keep the sum 2-D.
        self._wsum = torch.zeros(self.out_shape[-2:], dtype=acc_dtype, device=device)
        self._cache: dict = {}

    def _weights(self, tile: Tile, hw: tuple[int, int]) -> Tensor:
        key = (hw, tile.fade, tile.overlap)
        if key not in self._cache:
            ov = (tile.overlap[0] * self.scale, tile.overlap[1] * self.scale)
            # MGLD multiplies float32 predictions by float64 weights and adds into float32 sums; keep
            # that arithmetic where float64 exists (not on MPS).
            wdtype = torch.float32 if self._acc.device.type == "mps" else torch.float64
            self._cache[key] = tile_weights(hw, self.mode, ov, tile.fade, dtype=wdtype,
                                            device=self._acc.device)
        return self._cache[key]

    def add(self, tile: Tile, out: Tensor) -> None:
        """Merge ``out`` (``[..., rh·scale, rw·scale]``, the tile function's output) into the canvas."""
        s = self.scale
        rh, rw = tile.region_hw
        if tuple(out.shape[-2:]) != (rh * s, rw * s) or tuple(out.shape[:-2]) != self.out_shape[:-2]:
            raise ValueError(f"tile output has shape {tuple(out.shape)}, expected "
                             f"{self.out_shape[:-2] + (rh * s, rw * s)} (region {rh}x{rw}, scale {s})")
        which = "core" if self.mode == "hard" else "window"
        y0, y1, x0, x1 = getattr(tile, which)
        dst = (..., slice(y0 * s, y1 * s), slice(x0 * s, x1 * s))
        src = out[(..., *tile.relative(which, s))].to(self._acc.dtype)
        if self.mode == "hard":
            self._acc[dst] = src
            self._wsum[dst[1:]] = 1
            return
        w = self._weights(tile, tuple(src.shape[-2:]))
        self._acc[dst] += src * w
        self._wsum[dst[1:]] += w

    def result(self) -> Tensor:
        """The merged tensor; raises if some pixel was never covered."""
        if not bool((self._wsum > 0).all()):
            raise RuntimeError("TileMerger.result(): some output pixels were not covered by any tile")
        out = self._acc if self.mode == "hard" else self._acc / self._wsum
        return out.to(self.dtype)


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int | Sequence[int],
    overlap: int | Sequence[int] = 0,
    *,
    scale: int = 1,
    mode: str = "gaussian",
    context: int | Sequence[int] = 0,
    multiple: int = 1,
    tiles: list[Tile] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Run ``fn`` tile by tile over the last two dims of ``x`` and merge the outputs.

    Args:
        fn: maps a crop ``[..., rh, rw]`` to ``[..., rh·scale, rw·scale]`` (leading dims may change,
            e.g. channels, but must be the same for every tile).
        x: ``[..., H, W]`` (``[N,C,H,W]`` images/latents, or ``[B,C,T,H,W]`` videos).
        tile, overlap, multiple, context: see :func:`plan_tiles`; ignored when ``tiles`` is given
            (e.g. ``plan_tiles_uav(...)``).
        scale: output/input resolution ratio (4 for a ×4 upscaler fed LR tiles).
        mode: ``"hard" | "uniform" | "gaussian" | "hann"`` (see :func:`tile_weights`).
        progress: called as ``progress(done, total)`` after each tile.

    Returns:
        ``[..., H·scale, W·scale]`` in the dtype of the first tile output.
    """
    if x.dim() < 2:
        raise ValueError(f"tiled_apply expects [..., H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if tiles is None:
        tiles = plan_tiles((h, w), tile, overlap, multiple, context=context)
    merger = None
    for k, t in enumerate(tiles):
        out = fn(t.crop(x))
        if merger is None:
            merger = TileMerger((*out.shape[:-2], h * scale, w * scale), mode, scale,
                                device=out.device, dtype=out.dtype)
        merger.add(t, out)
        if progress is not None:
            progress(k + 1, len(tiles))
    return merger.result()


def in_slices(fn: Callable[..., Tensor], *xs: Tensor, size: int = 1) -> Tensor:
    """``fn(*xs)`` for an ``fn`` that treats each index of dim 0 on its own, computed ``size`` indices at a
    time into one output (channels-last kept): only one slice's intermediate tensors are alive at once,
    and they stay in cache. The result is the one-call result."""
    n = xs[0].shape[0]
    if n <= size:
        return fn(*xs)
    first = fn(*(x[:size] for x in xs))
    channels_last = first.dim() == 4 and not first.is_contiguous() and first.is_contiguous(
        memory_format=torch.channels_last)
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=first.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    out[:size] = first
    del first
    for s in range(size, n, size):
        out[s:s + size] = fn(*(x[s:s + size] for x in xs))
    return out
