"""Video upscalers that need no diffusion weights, and the streaming file-to-file upscale.

This is SATeCo's first stage ("video upscaler") and the quick path for users without diffusion
weights: the pack's own learned multi-frame upscaler (``learned``, weights embedded), classical kernels
(``bicubic``, ``lanczos``), or any single-image model the user has (ESRGAN, SPAN, ... through
:func:`image_model_upscaler`).

An upscaler is a callable from a window of frames to the upscaled centre frames, with a ``radius``
attribute: the frames of context it needs each side (0 for per-frame upscalers). :func:`stream_windows`
cuts any stream of chunks into such windows, so a long video upscaled chunk by chunk equals the same
video upscaled in one pass.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .io import FrameSelection, VideoWriter, iter_frames, probe
from .io.frames import check_image
from .io.video import refuse_existing, selected_audio, selected_count, write_file

UPSCALE_METHODS = ("learned", "bicubic", "lanczos")

# An upscaler maps float frames [n + 2r, H, W, 3] in [0, 1] (CPU) to [n, sH, sW, 3] in [0, 1] (CPU), where
# r = getattr(upscaler, "radius", 0) frames of context come before and after the n frames it upscales.
Upscaler = Callable[[torch.Tensor], torch.Tensor]


def radius_of(fn: Upscaler) -> int:
    return int(getattr(fn, "radius", 0))


def stream_windows(chunks: Iterable[torch.Tensor], radius: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Cut a stream of frame chunks ``[n, H, W, 3]`` into ``(window, n_centres)`` for an upscaler of ``radius``.

    Each window holds ``radius`` frames of context, its centres, and ``radius`` more frames; at the start
    and end of the stream the first/last frame is repeated. Output is delayed by at most ``radius``
    frames (the look-ahead), so memory stays at one chunk plus ``2 * radius`` frames.
    """
    left = pending = None
    for chunk in chunks:
        if chunk.shape[0] == 0:
            continue
        if left is None:
            left = chunk[:1].expand(radius, *chunk.shape[1:])
            pending = chunk[:0]
        pending = torch.cat([pending, chunk])
        n = pending.shape[0] - radius
        if n > 0:
            yield torch.cat([left, pending]), n
            seen = torch.cat([left, pending[:n]])
            left = seen[seen.shape[0] - radius:]
            pending = pending[n:]
    if pending is not None and pending.shape[0]:
        yield torch.cat([left, pending, pending[-1:].expand(radius, *pending.shape[1:])]), pending.shape[0]


def bicubic(frames: torch.Tensor, scale: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Bicubic (a = -0.75, half-pixel centres) x``scale`` of ``[n, H, W, 3]`` frames, clamped to [0, 1]."""
    x = frames.to(device, torch.float32).permute(0, 3, 1, 2)
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return y.clamp_(0, 1).permute(0, 2, 3, 1).to("cpu").contiguous()


def lanczos(frames: torch.Tensor, scale: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Lanczos-4 (8x8 taps, OpenCV) x``scale`` of ``[n, H, W, 3]`` frames, clamped to [0, 1]."""
    import cv2

    arr = frames.to("cpu", torch.float32).numpy()
    h, w = arr.shape[1] * scale, arr.shape[2] * scale
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LANCZOS4) for f in arr])
    return torch.from_numpy(out).clamp_(0, 1)


LEARNED_PRECISIONS = ("auto", "fp32", "bf16")


class LearnedUpscaler:
    """The learned video upscaler as an :data:`Upscaler` (windows of ``2r`` context frames + centres).

    ``precision``: ``"fp32"``; ``"bf16"`` (the network under bf16 autocast, the bicubic base and the sum in
    fp32); ``"auto"``: bf16 on a CPU that computes it natively (AVX512-BF16/AMX, see
    :func:`vsr_core.speed.native_bf16_cpu`) where a one-time probe of one residual block finds it faster
    (:func:`vsr_core.speed.bf16_autocast_pays_off`; ``VSR_CPU_BF16=0`` keeps fp32, ``1`` skips the probe),
    fp32 elsewhere. bf16 scored as fp32 on the held-out clips up to stage 8, but with the stage-20 weights
    it loses 0.04 dB at x4 and raises the warping error 1.50 -> 1.58; it takes 0.56-0.70x fp32's time on an
    AMD EPYC with AVX512-BF16, 1.2x on an Intel Xeon without AMX and 0.8x on one with AMX (README.md, Speed).

    The network sees one centre frame's window per call (the flows of the whole chunk are computed first).
    Its activations are per-window anyway (every layer maps each window on its own, so the result is the
    same), and a whole chunk's at once ran to several hundred MB per tensor at 320x180: larger than the C
    heap keeps for reuse, so each was mapped afresh and faulted in page by page. One at a time (24 frames
    320x180 -> x4 in chunks of 8, fp32, 2-core Intel Xeon VM) took the peak RSS from 1.43-1.55 GB to
    0.89-0.92 GB and the time from 0.48-0.60 to 0.39-0.41 s/frame. Over a chunk's centres the attention
    keeps its keys, values and scores in the same buffers (``reusing_buffers``) instead of ~140 MB of fresh
    ones per centre: page faults fell from ~53k to ~15k per frame, the time from 0.47-0.55 to 0.42-0.44
    s/frame (36 frames, same machine) and the peak RSS by ~50 MB.
    """

    def __init__(self, model, scale: int, device: str | torch.device = "cpu", tile: int = 0, precision: str = "auto"):
        if scale not in model.scales:
            raise ValueError(f"the learned upscaler has no x{scale} (it has {list(model.scales)})")
        if precision not in LEARNED_PRECISIONS:
            raise ValueError(f"precision must be one of {LEARNED_PRECISIONS}, got {precision!r}")
        self.model, self.scale, self.device, self.tile = model, scale, torch.device(device), tile
        self.radius = model.radius
        if self.device.type == "cpu":  # oneDNN convolutions are ~1.5x faster in channels-last on a CPU
            model.to(memory_format=torch.channels_last)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cpu" and _bf16_pays_off(model) else "fp32"
        self.precision = precision
        self.autocast = torch.bfloat16 if precision == "bf16" else None

    @torch.no_grad()
    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        from .tiling import tiled_apply

        model = self.model.to(self.device)
        dtype = next(model.parameters()).dtype
        x = window.to(self.device, dtype).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else x
        h, w = x.shape[-2:]
        windows = model.align_windows(x.unsqueeze(0))[0]  # flows on whole frames, before any tiling
        m, k = windows.shape[:2]
        out = torch.empty(m, h * self.scale, w * self.scale, 3)
        with model.attn.reusing_buffers():
            for i in range(m):  # one centre at a time (see the class docstring)
                one = windows[i:i + 1]
                if self.tile and max(h, w) > self.tile:
                    y = tiled_apply(lambda t: model.upscale_windows(t.unflatten(1, (k, -1)), self.scale, self.autocast),
                                    one.flatten(1, 2), self.tile, 0, scale=self.scale, mode="hard",
                                    context=model.receptive_radius)
                else:
                    y = model.upscale_windows(one, self.scale, self.autocast)
                out[i] = y[0].clamp_(0, 1).permute(1, 2, 0)
        return out


def _bf16_pays_off(model) -> bool:
    """Whether bf16 autocast speeds the learned upscaler up on this CPU: timed on its first residual block
    (the trunk is most of its work) at a 160x90 tile, once per width per process."""
    from .speed import bf16_autocast_pays_off

    c = model.config.channels

    def make_fn():
        example = torch.randn(1, c, 90, 160).contiguous(memory_format=torch.channels_last)
        block = model.body[0] if len(model.body) else model.body_out
        return lambda: block(example)

    return bf16_autocast_pays_off(("learned-upscaler", c), make_fn)


def load_learned(weights: str | os.PathLike | None = None):
    """The learned upscaler model (``weights`` or the pack's embedded file), cached per path."""
    from .loaders.video_upscaler import DEFAULT_WEIGHTS, load_video_upscaler

    key = str(Path(weights) if weights is not None else DEFAULT_WEIGHTS)
    if key not in _LEARNED_CACHE:
        _LEARNED_CACHE.clear()
        _LEARNED_CACHE[key] = load_video_upscaler(key)
    return _LEARNED_CACHE[key]


_LEARNED_CACHE: dict = {}


def image_model_upscaler(model: Callable[[torch.Tensor], torch.Tensor], model_scale: int, scale: int,
                         device: str | torch.device = "cpu", tile: int = 512, overlap: int = 32) -> Upscaler:
    """A single-image model (``[n, 3, h, w]`` -> ``[n, 3, h*model_scale, ...]``, e.g. a spandrel ESRGAN/SPAN
    descriptor) applied per frame in blended tiles, then resized to ``scale`` if the model's own differs.

    On a CUDA out-of-memory error the tile side is halved and the frame retried (down to 64 px).
    """
    from .tiling import tiled_apply

    device = torch.device(device)

    def run(frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2)
        side = tile
        while True:
            try:
                with torch.no_grad():
                    y = tiled_apply(lambda t: model(t.to(device)).float(), x, side, min(overlap, side // 4),
                                    scale=model_scale, mode="hann")
                break
            except torch.OutOfMemoryError:
                if side <= 64:
                    raise
                side //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if model_scale != scale:
            size = (frames.shape[1] * scale, frames.shape[2] * scale)
            mode = "area" if model_scale > scale else "bicubic"
            y = F.interpolate(y, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
        return y.clamp_(0, 1).permute(0, 2, 3, 1).to("cpu", torch.float32).contiguous()
    return run


def make_upscaler(method: str, scale: int, device: str | torch.device = "cpu",
                  weights: str | os.PathLike | None = None, tile: int = 0, precision: str = "auto") -> Upscaler:
    """The upscaler called ``method`` at ``scale`` (2 or 4), as a function of a frame window.

    ``weights``: a learned-upscaler file (default: the embedded one); ``tile``: LR tile side for the
    learned model (0 = whole frames), which bounds its memory and does not change the result; ``precision``:
    the learned model's (:class:`LearnedUpscaler`).
    """
    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, got {scale}")
    if method == "learned":
        return LearnedUpscaler(load_learned(weights), scale, device, tile, precision)
    if method == "bicubic":
        return lambda x: bicubic(x, scale, device)
    if method == "lanczos":
        return lambda x: lanczos(x, scale, device)
    raise ValueError(f"unknown upscale method {method!r}; choose one of {UPSCALE_METHODS}")


def upscale_frames(frames: torch.Tensor, scale: int = 4, method: str | Upscaler = "bicubic", chunk: int = 8,
                   device: str | torch.device = "cpu", progress=None, **kwargs) -> torch.Tensor:
    """Upscale a ComfyUI IMAGE ``[T, H, W, 3]`` in chunks of frames into a preallocated output.

    ``method``: a name for :func:`make_upscaler` (``kwargs`` go to it) or an :data:`Upscaler`.
    ``progress``: optional callable ``(done, total)``; it may raise to interrupt between chunks.
    """
    frames = check_image(frames)
    fn = make_upscaler(method, scale, device, **kwargs) if isinstance(method, str) else method
    T, H, W, _ = frames.shape
    out = torch.empty(T, H * scale, W * scale, 3, dtype=torch.float32)
    done = 0
    chunks = (frames[s:s + chunk] for s in range(0, T, chunk))
    for window, n in stream_windows(chunks, radius_of(fn)):
        out[done:done + n] = fn(window)
        done += n
        if progress is not None:
            progress(done, T)
    return out


def auto_chunk(out_h: int, out_w: int, budget_bytes: int = 512 * 1024**2) -> int:
    """Frames per chunk so that one chunk of float32 output stays within ``budget_bytes`` (1..64)."""
    per_frame = out_h * out_w * 3 * 4
    return int(max(1, min(64, budget_bytes // max(per_frame, 1))))


def side_by_side(left: torch.Tensor, right: torch.Tensor, labels: tuple[str, str] = ("bicubic", "result"),
                 gap: int = 4) -> np.ndarray:
    """One uint8 RGB image: ``left | right`` (each ``[H, W, 3]`` float) with a gap and small labels."""
    import cv2

    a = (left.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    b = (right.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    sep = np.full((a.shape[0], gap, 3), 255, np.uint8)
    img = np.ascontiguousarray(np.concatenate([a, sep, b], axis=1))
    for text, x0 in zip(labels, (0, a.shape[1] + gap)):
        for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(img, text, (x0 + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thick, cv2.LINE_AA)
    return img


def upscale_file(src: str | os.PathLike, dst: str | os.PathLike, scale: int = 4, method: str = "learned",
                 selection: FrameSelection = FrameSelection(), chunk: int = 0, fmt: str = "mp4 (h264)",
                 crf: int = 17, pix_fmt: str | None = None, device: str | torch.device = "cpu",
                 compare_png: str | os.PathLike | None = None, compare_index: int | None = None,
                 keep_audio: bool = True, progress=None, weights: str | os.PathLike | None = None,
                 tile: int = 0, size: tuple[int, int] | None = None, metadata: dict | None = None,
                 on_exists="error") -> Path:
    """Upscale a video file to another, streaming: memory is bounded by one chunk, not by the length.

    Audio (aligned with the selected frames) is carried over. ``compare_png``: also write a
    ``bicubic | result`` comparison of one frame (the middle one by default). ``progress``: optional
    callable ``(done, total)``. size: ``(H, W)`` to resize the input to first (None = source size);
    metadata: container tags. on_exists: when ``dst`` (or ``compare_png``) is taken, see :class:`VideoWriter`.
    Returns the output path; nothing appears there (nor the comparison) unless the run completes.
    """
    if compare_png is not None and on_exists == "error":
        refuse_existing(compare_png)
    info = probe(src)
    total = selected_count(src, info, selection)
    fn = make_upscaler(method, scale, device, weights=weights, tile=tile)  # the classical kernels ignore both
    in_h, in_w = size or (info.height, info.width)
    chunk = chunk or auto_chunk(in_h * scale, in_w * scale)
    fps = info.fps / selection.nth
    audio = selected_audio(src, info, selection) if keep_audio else None
    compare_index = total // 2 if compare_index is None else compare_index
    done, compare = 0, None
    with VideoWriter(dst, fps, fmt, crf, pix_fmt, audio, metadata, on_exists=on_exists) as writer:
        r = radius_of(fn)
        for window, n in stream_windows(iter_frames(src, selection, chunk=chunk, size=size, info=info), r):
            up = fn(window)
            writer.write(up)
            if compare_png is not None and done <= compare_index < done + n:
                i = r + compare_index - done
                compare = side_by_side(bicubic(window[i:i + 1], scale)[0], up[i - r], ("bicubic", method))
            done += n
            if progress is not None:
                progress(done, max(total, done))
    if compare is not None:  # written with the video, not before it: an interrupted run replaces neither
        _write_png(compare_png, compare, on_exists)
    return writer.path


def _write_png(path: str | os.PathLike, rgb: np.ndarray, on_exists="error") -> None:
    """Write a PNG atomically, replacing an existing file only when ``on_exists == "replace"``
    (else ``FileExistsError``)."""
    import cv2

    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), rgb[..., ::-1]):
            raise OSError(f"could not write {path}")
    write_file(path, write, "replace" if on_exists == "replace" else "error")
