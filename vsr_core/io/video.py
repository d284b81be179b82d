"""Streaming video reading and writing with PyAV (the library ComfyUI itself uses for video).

Reading decodes frame by frame and keeps only the selected frames, so memory is bounded by what is
returned (or by one chunk when iterating), never by the length of the file. Writing goes to a
temporary file beside the target that is moved into place on success, so an interrupted or failed
run never leaves a half-written file under the final name, and (unless asked to replace it) an existing
file is never overwritten, not even one that appeared while the video was being written.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..memory import ensure_fits, frames_nbytes
from .frames import FrameSelection, to_float_frames, to_uint

try:  # PyAV is a ComfyUI core requirement; keep import failures readable anyway.
    import av
except ImportError:  # pragma: no cover - exercised only on broken installs
    av = None

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".gif", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


class VideoReadError(RuntimeError):
    """A video could not be read; the message says which file and why."""


def _require_av():
    if av is None:
        raise ImportError("PyAV is required for video I/O: run `pip install av` (ComfyUI already ships it).")


@dataclass
class VideoInfo:
    """What a loader knows about a source video and about the frames it returned.

    ``VSR_VIDEO_INFO`` between nodes: enough to re-open and re-read the same frames (streaming nodes).
    """

    path: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    codec: str = ""
    pix_fmt: str = ""
    bit_depth: int = 8
    has_alpha: bool = False
    has_audio: bool = False
    variable_frame_rate: bool = False
    # filled by a load: the selection used and what it produced
    selection: dict = field(default_factory=dict)
    loaded_frames: int = 0
    loaded_fps: float = 0.0
    loaded_size: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str | os.PathLike):
    _require_av()
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path}")
    if os.path.isdir(path):
        raise VideoReadError(f"{path} is a folder, not a video file")
    try:
        container = av.open(path)
    except av.error.EOFError as e:
        raise VideoReadError(f"{path} contains no video frames (the file ends right after its header)") from e
    except Exception as e:  # av.error.InvalidDataError and friends
        raise VideoReadError(f"cannot open {path} as a video ({type(e).__name__}: {e}). "
                             "The file is damaged or not a video; re-export it or pick another file.") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream (is it an audio or image file?)")
    return container


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's metadata without decoding it (frame count estimated from the duration if absent)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        fps = _frame_rate(stream)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        num_frames = stream.frames or (round(duration * fps) if fps else 0)
        fmt = ctx.format
        bit_depth = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
        pix = fmt.name if fmt is not None else ""
        has_alpha = fmt is not None and any(c.is_alpha for c in fmt.components)
        vfr = bool(stream.average_rate and stream.base_rate and stream.average_rate != stream.base_rate)
        return VideoInfo(path=str(path), width=ctx.width, height=ctx.height, fps=fps, num_frames=int(num_frames),
                         duration=duration, codec=ctx.name, pix_fmt=pix, bit_depth=bit_depth, has_alpha=has_alpha,
                         has_audio=bool(container.streams.audio), variable_frame_rate=vfr)


def _to_array(frame, high_bit: bool) -> np.ndarray:
    # rgb48 keeps 10/12/16-bit sources exact; 8-bit sources stay uint8 (4x less memory while loading).
    return frame.to_ndarray(format="rgb48le" if high_bit else "rgb24")


def iter_stored_frames(path: str | os.PathLike, chunk: int = 16) -> Iterator[np.ndarray]:
    """Yield a video's frames as stored, ``[n, H, W, 3]`` uint8 (uint16 for sources above 8 bits), no
    conversion to float: a lossless file reads back exactly the integers it was written from."""
    high_bit = probe(path).bit_depth > 8
    buf: list[np.ndarray] = []
    with _open(path) as container:
        for frame in container.decode(container.streams.video[0]):
            buf.append(_to_array(frame, high_bit))
            if len(buf) >= chunk:
                yield np.stack(buf)
                buf = []
    if buf:
        yield np.stack(buf)


def _resize(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (arr.shape[0], arr.shape[1]) == tuple(size):
        return arr
    import cv2

    h, w = size
    interp = cv2.INTER_AREA if h * w < arr.shape[0] * arr.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(arr, (w, h), interpolation=interp)


def target_size(width: int, height: int, mode: str = "none", custom_width: int = 0, custom_height: int = 0,
                multiple: int = 8) -> tuple[int, int] | None:
    """The ``(H, W)`` a load resizes to, or None to keep the source size.

    ``mode``: "none"; "multiple_of_8" (nearest multiple of ``multiple``, at least one); "custom"
    (``custom_width`` x ``custom_height``; a 0 keeps the aspect ratio from the other side; both then
    rounded to ``multiple``).
    """
    if mode == "none":
        return None

    def snap(v: float) -> int:
        return max(multiple, int(v / multiple + 0.5) * multiple)  # half rounds up

    if mode == "multiple_of_8":
        h, w = snap(height), snap(width)
    elif mode == "custom":
        if custom_width <= 0 and custom_height <= 0:
            return None
        if custom_width <= 0:
            custom_width = width * custom_height / height
        if custom_height <= 0:
            custom_height = height * custom_width / width
        h, w = snap(custom_height), snap(custom_width)
    else:
        raise ValueError(f"unknown resize mode {mode!r}: use 'none', 'multiple_of_8' or 'custom'")
    return None if (h, w) == (height, width) else (h, w)


def iter_frames(path: str | os.PathLike, selection: FrameSelection = FrameSelection(), chunk: int = 16,
                size: tuple[int, int] | None = None, info: VideoInfo | None = None) -> Iterator[torch.Tensor]:
    """Yield the selected frames as float32 ``[n, H, W, 3]`` chunks in [0, 1] (n <= ``chunk``).

    Decoding stops as soon as the cap is reached; frames that are skipped are never converted.
    """
    info = info or probe(path)
    high_bit = info.bit_depth > 8
    last = selection.last_needed()
    buf: list[np.ndarray] = []
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if last is not None and index > last:
                    break
                if not selection.wants(index):
                    continue
                buf.append(_resize(_to_array(frame, high_bit), size))
                if len(buf) >= chunk:
                    yield to_float_frames(np.stack(buf))
                    buf = []
        except av.error.FFmpegError as e:
            raise VideoReadError(f"{path}: decoding failed after frame {index} ({e}). The file is damaged; "
                                 "set frame_load_cap below that frame or re-encode the video.") from e
    if buf:
        yield to_float_frames(np.stack(buf))


def _plan_load(path, selection: FrameSelection, resize: tuple[int, int] | None):
    info = probe(path)
    expected = selection.count(info.num_frames)
    h, w = resize or (info.height, info.width)
    return info, expected, h, w


def load_video(path: str | os.PathLike, selection: FrameSelection = FrameSelection(),
               size: tuple[int, int] | None = None, progress=None) -> tuple[torch.Tensor, VideoInfo]:
    """Load the selected frames of a video as one ComfyUI IMAGE ``[T, H, W, 3]`` float32 tensor.

    Refuses up front (InsufficientMemoryError) when the requested frames would not fit in free RAM,
    and checks again while loading in case the container under-reported its frame count.
    ``progress``: optional callable ``(done, total)``; it may raise to interrupt.
    """
    info, expected, h, w = _plan_load(path, selection, size)
    hint = ("Load fewer frames (frame_load_cap / select_every_nth), a smaller size, or use the streaming "
            "CLI `python -m vsr_core upscale`, which processes the video in chunks.")
    ensure_fits(frames_nbytes(expected, h, w), f"Loading {expected} frames of {w}x{h}", hint)
    chunks: list[torch.Tensor] = []
    done = 0
    for part in iter_frames(path, selection, chunk=8, size=size, info=info):
        chunks.append(part)
        done += part.shape[0]
        if done > expected:  # the header under-counted: keep the guard honest
            ensure_fits(frames_nbytes(done + part.shape[0], h, w), f"Loading {done}+ frames of {w}x{h}", hint)
        if progress is not None:
            progress(done, max(expected, done))
    if not chunks:
        if info.num_frames == 0:
            raise VideoReadError(f"{path} contains no video frames")
        raise VideoReadError(f"no frames selected from {path}: it has {info.num_frames} frames and "
                             f"skip_first_frames={selection.skip_first}; lower skip_first_frames")
    frames = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    info.selection = asdict(selection)
    info.loaded_frames = frames.shape[0]
    info.loaded_fps = info.fps / selection.nth
    info.loaded_size = (frames.shape[1], frames.shape[2])
    return frames, info


def load_audio(path: str | os.PathLike, start: float = 0.0, duration: float | None = None) -> dict | None:
    """Decode the first audio stream between ``start`` and ``start + duration`` seconds.

    Returns ComfyUI's AUDIO ``{"waveform": [1, C, S] float32, "sample_rate": int}``, or None when the
    file has no audio.
    """
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        parts: list[np.ndarray] = []
        first_time: float | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None:
                    first_time = float(frame.time or 0.0)
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray())
            for out in resampler.resample(None):
                parts.append(out.to_ndarray())
        except av.error.FFmpegError:
            pass  # keep what decoded: a damaged audio tail should not cost the user the video
    if not parts:
        return None
    wave = np.concatenate(parts, axis=1).astype(np.float32)
    offset = int(round((start - (first_time or 0.0)) * rate))
    begin = max(0, offset)
    end = wave.shape[1] if duration is None else max(begin, offset + int(round(duration * rate)))
    wave = wave[:, begin:end]
    if offset < 0:  # audio starts after the requested time: pad with silence so A/V stay aligned
        wave = np.pad(wave, ((0, 0), (-offset, 0)))
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wave))[None], "sample_rate": int(rate)}


def selected_count(path: str | os.PathLike, info: VideoInfo, selection: FrameSelection) -> int:
    """Frames ``selection`` takes from the video ``path`` that ``info`` describes; ValueError when none."""
    total = selection.count(info.num_frames)
    if total == 0:
        raise ValueError(f"no frames selected from {path} ({info.num_frames} frames, skip={selection.skip_first})")
    return total


def selected_audio(path: str | os.PathLike, info: VideoInfo, selection: FrameSelection) -> dict | None:
    """The audio under the frames ``selection`` takes (from the first, as long as they last at their frame rate);
    None when the file has no audio."""
    if not info.has_audio:
        return None
    fps = info.fps / selection.nth
    start = selection.skip_first / info.fps if info.fps else 0.0
    return load_audio(path, start=start, duration=selection.count(info.num_frames) / fps if fps else None)


# --------------------------------------------------------------------------------------------- writing

OUTPUT_FORMATS = {
    # name: (container extension, codec, default pixel format)
    "mp4 (h264)": (".mp4", "libx264", "yuv420p"),
    "mp4 (h265)": (".mp4", "libx265", "yuv420p"),
    "mkv (ffv1 lossless)": (".mkv", "ffv1", "bgr0"),
    "png sequence": ("", "png", "rgb24"),
}
PIXEL_FORMATS = ("yuv420p", "yuv444p", "yuv420p10le")
FFV1_PIXEL_FORMATS = ("bgr0", "gbrp16le")  # 8-bit and 16-bit RGB, both lossless


def format_for_path(path: str | os.PathLike) -> str:
    """The output format a file name asks for: .mkv -> lossless FFV1, no extension -> PNG sequence, else H.264."""
    suffix = Path(path).suffix.lower()
    return {".mkv": "mkv (ffv1 lossless)", "": "png sequence"}.get(suffix, "mp4 (h264)")


def _fps_fraction(fps: float) -> Fraction:
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frac = Fraction(fps).limit_denominator(1001)  # NTSC rates (24000/1001...) come back exact
    if abs(float(frac) - fps) > 1e-4:
        frac = Fraction(fps).limit_denominator(100000)
    return frac


EXISTS_POLICIES = ("error", "replace")


class OutputExistsError(FileExistsError):
    """The output name is taken and replacing it was not asked for; the message says what to do."""


def refuse_existing(path: str | os.PathLike) -> None:
    """Raise ``OutputExistsError`` when ``path`` exists: the check an ``on_exists="error"`` write makes before
    any work, so that a refusal never comes after it."""
    if os.path.lexists(path):
        raise OutputExistsError(f"{path} already exists: nothing was written. Choose another name, or ask to "
                                "replace it.")


def _partial_file(path: Path) -> Path:
    """A new, unique temporary file beside ``path`` (two writers to one name never share it)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def _free_sibling(path: Path) -> Path:
    """``clip.1.mp4``, ``clip.2.mp4``, ...: the first name beside ``path`` that is not taken."""
    for i in range(1, 100_000):
        cand = path.with_name(f"{path.stem}.{i}{path.suffix}")
        if not os.path.lexists(cand):
            return cand
    raise OutputExistsError(f"no free name beside {path}")


def claim(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` (a file or a folder) to ``path`` only if ``path`` does not exist, atomically:
    a file is hard-linked (which fails on an existing name) and then unlinked; a folder claims the name with
    ``mkdir`` (which also fails on an existing name) and is renamed onto that empty folder. Raises
    ``FileExistsError`` (and leaves ``tmp`` as it was) when the name is taken."""
    if tmp.is_dir():
        path.mkdir()  # FileExistsError when taken
        try:
            os.replace(tmp, path)
        except OSError:  # platforms that cannot rename onto an (empty) folder
            path.rmdir()
            os.rename(tmp, path)
        return
    try:
        os.link(tmp, path)  # FileExistsError when taken
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename (a narrow race remains)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def replace(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` onto ``path``, replacing what is there; the old file (or folder) stays intact
    until the new one is complete and in place."""
    if tmp.is_dir() or path.is_dir():
        old = None
        if os.path.lexists(path):
            old = path.with_name(f".{path.name}.replaced-{os.getpid()}-{id(tmp):x}")
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        return
    os.replace(tmp, path)


def write_file(path: str | os.PathLike, write, on_exists: str = "error") -> Path:
    """Write a single file atomically: ``write(tmp)`` fills a temporary file beside ``path``, which is then moved
    into place, replacing what is there (``"replace"``: the old file stays intact until then) or only while
    the name is free (``"error"``: ``FileExistsError`` otherwise). Nothing partial is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_file(path)
    try:
        write(tmp)
        (replace if on_exists == "replace" else claim)(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class VideoWriter:
    """Stream frames into a video (or PNG sequence) that appears under ``path`` only when complete.

    Usage::

        with VideoWriter(path, fps, fmt="mp4 (h264)", crf=19, audio=audio) as w:
            for chunk in chunks:
                w.write(chunk)        # [n, H, W, 3] float in [0, 1] (tensor or array) or uint8/uint16

    On an exception inside the ``with`` block the partial output is deleted and nothing is renamed.

    on_exists: what happens when ``path`` is taken. ``"error"`` (default): refused at once when it exists
    already (nothing is written); when it appears while writing, the finished output goes to a free name
    beside it (``clip.1.mp4``, in ``kept_as``) and ``OutputExistsError`` says so. ``"replace"``: replaced
    atomically at the end (the old file stays intact until then). A function ``(taken path) -> new path``:
    called until a free name is found (an output prefix's next counter).
    H.264/H.265 need even sizes with chroma subsampling: odd frames are padded by one replicated
    row/column (``padded`` says so afterwards).
    """

    def __init__(self, path: str | os.PathLike, fps: float, fmt: str = "mp4 (h264)", crf: int = 19,
                 pix_fmt: str | None = None, audio: dict | None = None, metadata: dict | None = None,
                 on_exists="error"):
        _require_av()
        if not (callable(on_exists) or on_exists in EXISTS_POLICIES):
            raise ValueError(f"on_exists must be one of {EXISTS_POLICIES} or a function, got {on_exists!r}")
        self.on_exists = on_exists
        self.kept_as: Path | None = None  # set when the finished output had to go under another name
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; choose one of {list(OUTPUT_FORMATS)}")
        ext, self.codec, default_pix = OUTPUT_FORMATS[fmt]
        self.fmt = fmt
        self.path = Path(path)
        if ext and self.path.suffix.lower() != ext:
            self.path = self.path.with_suffix(ext)
        self.fps = _fps_fraction(float(fps))
        self.crf = int(crf)
        self.pix_fmt = pix_fmt if (pix_fmt and self.codec in ("libx264", "libx265")) else default_pix
        if self.codec == "ffv1" and pix_fmt in FFV1_PIXEL_FORMATS:  # 16-bit RGB: a lossless master of 10-bit work
            self.pix_fmt = pix_fmt
        if self.pix_fmt not in PIXEL_FORMATS + FFV1_PIXEL_FORMATS + ("rgb24",):
            raise ValueError(f"unknown pixel format {pix_fmt!r}; choose one of {PIXEL_FORMATS}")
        self.audio = audio
        self.metadata = metadata or {}
        self.frames_written = 0
        self.padded = False
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        if on_exists == "error":
            refuse_existing(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if ext:
            self._tmp = _partial_file(self.path)
        else:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
            self._tmp.chmod(0o755)

    # -- helpers
    @property
    def _high_bit(self) -> bool:
        return self.pix_fmt.endswith(("10le", "16le"))

    def _open_stream(self, h: int, w: int):
        self._size = (h, w)
        if self.codec == "png":
            return
        options = {"movflags": "+faststart+use_metadata_tags"} if self.path.suffix == ".mp4" else {}
        self._container = av.open(str(self._tmp), mode="w", options=options)
        for k, v in self.metadata.items():
            self._container.metadata[k] = v if isinstance(v, str) else json.dumps(v)
        stream = self._container.add_stream(self.codec, rate=self.fps)
        subsampled = self.pix_fmt.startswith("yuv420")
        if subsampled and (h % 2 or w % 2):
            self.padded = True
        stream.width, stream.height = w + (w % 2 if subsampled else 0), h + (h % 2 if subsampled else 0)
        stream.pix_fmt = self.pix_fmt
        if self.codec in ("libx264", "libx265"):
            stream.options = {"crf": str(self.crf)}
            if self.codec == "libx265":
                stream.options["x265-params"] = "log-level=error"
                stream.codec_tag = "hvc1"  # plays in browsers/QuickTime
        self._stream = stream
        # every stream must exist before the first packet is muxed; audio is encoded at close()
        self._audio_stream = None
        if self.audio is not None and self.audio.get("waveform") is not None:
            wave = self.audio["waveform"]
            channels = wave.shape[-2]
            astream = self._container.add_stream("aac" if self.path.suffix == ".mp4" else "flac",
                                                 rate=int(self.audio["sample_rate"]))
            astream.layout = "mono" if channels == 1 else "stereo"
            self._audio_stream = astream

    def write(self, frames) -> None:
        """Append ``[n, H, W, 3]`` (or one ``[H, W, 3]``) frames."""
        arr = frames
        if isinstance(arr, torch.Tensor) and arr.ndim == 3 or isinstance(arr, np.ndarray) and arr.ndim == 3:
            arr = arr[None]
        arr = to_uint(arr, 16 if self._high_bit else 8)
        if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"expected frames [n, H, W, 3], got shape {tuple(arr.shape)}")
        arr = arr[..., :3]
        if self._size is None:
            self._open_stream(arr.shape[1], arr.shape[2])
        elif tuple(arr.shape[1:3]) != self._size:
            raise ValueError(f"frame size changed mid-video: {self._size} then {tuple(arr.shape[1:3])}")
        for img in arr:
            self._write_one(np.ascontiguousarray(img))

    def _write_one(self, img: np.ndarray) -> None:
        self.frames_written += 1
        if self.codec == "png":
            import cv2

            cv2.imwrite(str(self._tmp / f"frame_{self.frames_written:06d}.png"), img[..., ::-1])
            return
        if self.padded:
            ph, pw = self._stream.height - img.shape[0], self._stream.width - img.shape[1]
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(img, format="rgb48le" if img.dtype == np.uint16 else "rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def _write_audio(self) -> None:
        wave = self.audio["waveform"]
        wave = wave[0] if wave.ndim == 3 else wave
        wave = wave.detach().to("cpu", torch.float32).numpy()
        stream = self._audio_stream
        rate = int(self.audio["sample_rate"])
        # keep the audio no longer than the video, so players do not show a frozen last frame
        max_samples = int(round(self.frames_written / float(self.fps) * rate))
        wave = np.ascontiguousarray(wave[:2, :max_samples])
        step = 1024
        for s in range(0, wave.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, s:s + step]), format="fltp",
                                               layout=stream.layout.name)
            frame.sample_rate = rate
            frame.pts = s
            for packet in stream.encode(frame):
                self._container.mux(packet)
        for packet in stream.encode(None):
            self._container.mux(packet)

    def close(self) -> Path:
        """Finish the file and move it into place; returns the final path."""
        if self.frames_written == 0:
            self.abort()
            raise ValueError("no frames were written: refusing to create an empty video")
        try:
            if self.codec != "png":
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                # audio goes last: it is trimmed to the final video length
                if self._audio_stream is not None:
                    self._write_audio()
                self._container.close()
                self._container = None
        except BaseException:
            self.abort()
            raise
        self._commit()
        return self.path

    def _commit(self) -> None:
        """Move the finished output into place following ``on_exists`` (never losing it)."""
        if self.on_exists == "replace":
            replace(self._tmp, self.path)
            return
        for _ in range(10_000):
            try:
                claim(self._tmp, self.path)
                return
            except FileExistsError:
                pass
            if callable(self.on_exists):  # e.g. the next free counter of an output prefix
                self.path = Path(self.on_exists(self.path))
                continue
            # "error": the name was taken while the video was being written; keep the work under a free name
            wanted, self.path = self.path, _free_sibling(self.path)
            claim(self._tmp, self.path)
            self.kept_as = self.path
            raise OutputExistsError(f"{wanted} appeared while the video was being written and was left as it was; "
                                    f"the result was saved as {self.path}")
        raise OutputExistsError(f"could not find a free name for {self.path}")

    def abort(self) -> None:
        """Drop the partial output (safe to call more than once)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def save_video(frames, path: str | os.PathLike, fps: float, fmt: str = "mp4 (h264)", crf: int = 19,
               pix_fmt: str | None = None, audio: dict | None = None, metadata: dict | None = None,
               chunk: int = 16, progress=None, on_exists="error") -> Path:
    """Write a whole frame batch ``[T, H, W, 3]`` atomically; returns the final path. ``on_exists``: what
    to do when the name is taken, see :class:`VideoWriter`."""
    total = frames.shape[0]
    with VideoWriter(path, fps, fmt, crf, pix_fmt, audio, metadata, on_exists=on_exists) as writer:
        for s in range(0, total, chunk):
            writer.write(frames[s:s + chunk])
            if progress is not None:
                progress(min(s + chunk, total), total)
    return writer.path
