"""Small browser previews: the frames a load would select, and side-by-side comparison stills.

``selection_preview`` encodes exactly the frames a ``FrameSelection`` picks (skip, every n-th, cap),
downscaled so the longer side fits the node and played at the loaded fps (source fps / n), as an
H.264 mp4 every browser plays. Previews are cached by source file (path, size, mtime) and selection,
so moving a widget back and forth re-encodes nothing.

``compare_stills`` writes evenly spaced frame pairs (A = the input, resized to the output's size, B =
the output) as JPEGs for the compare slider.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .frames import FrameSelection, to_uint
from .video import VideoWriter, iter_frames, probe

PREVIEW_MAX_SIDE = 480
PREVIEW_MAX_FRAMES = 240
CACHE_ENTRIES = 32


def preview_size(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int] | None:
    """(h, w) that fits ``max_side`` with the aspect ratio kept and even sides (None: keep the source)."""
    s = min(1.0, max_side / max(width, height))
    if s == 1.0 and width % 2 == 0 and height % 2 == 0:
        return None
    return max(2, int(round(height * s / 2)) * 2), max(2, int(round(width * s / 2)) * 2)


def selection_preview(src: str | os.PathLike, selection: FrameSelection, cache_dir: str | os.PathLike,
                      max_side: int = PREVIEW_MAX_SIDE, max_frames: int = PREVIEW_MAX_FRAMES) -> tuple[Path, dict]:
    """(mp4 path, info) previewing the frames ``selection`` takes from ``src``.

    ``info``: source file name, width/height/fps/frames, ``selected`` (what the load returns), ``shown`` (frames in
    the preview: the first ``max_frames`` of the selection), ``fps`` of the preview, ``first``/``last``
    source indices shown. Raises ``VideoReadError`` / ``ValueError`` with the reason on bad input.
    """
    src = Path(src)
    st = src.stat()
    key = json.dumps([str(src.resolve()), st.st_size, st.st_mtime_ns, selection.skip_first, selection.nth,
                      selection.cap, max_side, max_frames])
    cache = Path(cache_dir)
    name = hashlib.sha1(key.encode()).hexdigest()[:20]
    target, meta = cache / f"{name}.mp4", cache / f"{name}.json"
    if target.is_file() and meta.is_file():
        os.utime(target)  # most recently used
        return target, json.loads(meta.read_text())
    info = probe(src)
    selected = selection.count(info.num_frames)
    if selected == 0:
        raise ValueError(f"no frames selected: the video has {info.num_frames} frames and skip_first_frames="
                         f"{selection.skip_first}")
    shown_sel = FrameSelection(selection.skip_first, selection.nth, min(selection.cap or max_frames, max_frames))
    fps = info.fps / selection.nth if info.fps else 24.0
    cache.mkdir(parents=True, exist_ok=True)
    shown = 0
    with VideoWriter(target, fps, fmt="mp4 (h264)", crf=26, pix_fmt="yuv420p", on_exists="replace") as w:
        for part in iter_frames(src, shown_sel, chunk=16, size=preview_size(info.width, info.height, max_side),
                                info=info):
            w.write(part)
            shown += part.shape[0]
    out = {"name": src.name, "width": info.width, "height": info.height, "source_fps": info.fps, "source_frames": info.num_frames,
           "selected": selected, "shown": shown, "fps": fps, "first": selection.skip_first,
           "last": selection.skip_first + (shown - 1) * selection.nth}
    tmp = meta.with_suffix(".json.partial")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, meta)
    _trim_cache(cache)
    return target, out


def _trim_cache(cache: Path, keep: int = CACHE_ENTRIES) -> None:
    videos = sorted(cache.glob("*.mp4"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in videos[keep:]:
        for p in (old, old.with_suffix(".json")):
            p.unlink(missing_ok=True)


def compare_stills(a: torch.Tensor, b: torch.Tensor, folder: str | os.PathLike, prefix: str, count: int = 8,
                   max_side: int = 1024) -> list[dict]:
    """Write ``count`` evenly spaced frame pairs as JPEGs; returns [{"index", "a", "b"}] file names.

    ``a`` and ``b`` are IMAGE batches ``[T, H, W, 3]``; ``a`` may have another size (the LR input: it is
    resized bicubically to ``b``'s size, which is what "input vs output" means on screen) and another
    frame count (pairs follow ``b``'s frames, clamped to ``a``'s). Both are downscaled so the longer side
    is at most ``max_side``.
    """
    import cv2

    if a.ndim != 4 or b.ndim != 4 or a.shape[-1] < 3 or b.shape[-1] < 3:
        raise ValueError(f"compare wants two IMAGE batches [T, H, W, 3], got {tuple(a.shape)} and {tuple(b.shape)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    T, H, W = b.shape[:3]
    n = max(1, min(count, T))
    idx = sorted({int(round(i)) for i in np.linspace(0, T - 1, n)})
    size = preview_size(W, H, max_side) or (H, W)
    out = []
    for i in idx:
        pair = {"index": i}
        for key, img in (("a", a[min(i, a.shape[0] - 1)]), ("b", b[i])):
            x = img[..., :3].permute(2, 0, 1)[None].float()
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bicubic" if x.shape[-1] < size[1] else "area",
                                  **({"align_corners": False} if x.shape[-1] < size[1] else {}))
            arr = to_uint(x[0].permute(1, 2, 0).clamp(0, 1))
            name = f"{prefix}_{i:05d}_{key}.jpg"
            if not cv2.imwrite(str(folder / name), np.ascontiguousarray(arr[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, 92]):
                raise OSError(f"could not write {folder / name}")
            pair[key] = name
        out.append(pair)
    return out
