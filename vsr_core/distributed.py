"""Streaming upscales spread over many processes, GPUs and hosts, on Ray.

``python -m vsr_core stream IN [IN ...] OUT --workers N [--ray-address ADDR]`` calls :func:`run_distributed`.
The selected frames of each input are cut into **segments** of whole chunks (the chunks of the
single-process stream, :mod:`vsr_core.stream`). Each segment is one Ray task: it reads its frames (and the
context it needs) from the input file, upscales them chunk by chunk exactly as the single-process stream
does, and stores its output in a work folder beside the output file:

* ``seg00003.mkv``: the frames that segment alone computes, quantized as the final video will be and
  kept lossless (FFV1, 8- or 16-bit RGB);
* ``seg00003.safetensors``: the ``overlap`` frames it shares with each neighbouring segment, in float;
* ``seg00003.json``: written last, it marks the segment finished.

The driver writes the output file in frame order as soon as the next segment is finished, crossfading
the frames two segments share with the same crossfade the single-process stream uses between chunks
(:class:`vsr_core.stream.ChunkBlender`, flow-aligned or Hann), so it holds no more than a few frames.

What equals what:

* The learned / bicubic / Lanczos upscalers and the per-frame ×4 sampler: segments are cut at the
  single-process stream's own window/chunk borders and every window gets the same frames, so the output
  is **bit-identical** to ``python -m vsr_core stream`` without ``--workers`` (at the same torch thread
  count per process) whatever the number of workers.
* The diffusion methods carry sampling state from chunk to chunk (``ChunkCarry``, StableVSR's preceding
  frame); a segment border cannot, since both sides run at once. Inside a segment everything is as in
  one process; at a segment border the two sides start independently and meet in the crossfade, like two
  chunks without carried state. The output depends on the segment plan (``segment_frames``), never on
  the number of workers or their order: ``--workers 1`` and ``--workers 8`` give the same file.
  ``bench/distributed.py`` measures the seam this leaves against the single-process run.

Faults: a task whose worker process dies is retried by Ray (``max_retries``); finished segments stay on
disk, so the same command run again resumes from them (the work folder is keyed by everything that
decides the segments' content: input file, its size and date, method, model, settings, selection,
chunking); the output appears only when complete (written under a temporary name, then renamed, never
replacing a file unless asked); Ctrl-C cancels every task. The work folder is removed once the output is
in place.

On several hosts, every host must see the input files, the model and the work folder (beside the
output) at the same paths: a shared folder (NFS, SMB). The pack's code travels with the tasks (Ray
``py_modules``), so the hosts need only Python, torch and the pack's requirements.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .io import FrameSelection, VideoWriter, iter_frames, probe
from .io.video import (OUTPUT_FORMATS, iter_stored_frames, refuse_existing, selected_audio, selected_count,
                       write_file)
from .stream import (DIFFUSION_METHODS, UPSCALER_METHODS, ChunkBlender, PipelineSpec, _DiffusionRunner,
                     overlapping_chunks, plan_chunks, stream_chunking)

__all__ = ["StreamJob", "Segment", "RunStatus", "init_ray", "plan_segments", "run_segment", "run_distributed",
           "default_segment_frames", "work_folder", "window_spans"]

PART_VERSION = 1  # bump when the stored form of a segment changes: old work folders are then not reused


@dataclass
class StreamJob:
    """One input file to upscale into one output file (the arguments of :func:`vsr_core.stream.stream_video`,
    with the pipeline given as a :class:`PipelineSpec` that each worker builds for itself)."""

    src: str
    dst: str
    spec: PipelineSpec
    selection: FrameSelection = field(default_factory=FrameSelection)
    scale: int = 4
    chunk: int = 0
    overlap: int = -1
    blend: str = "flow"
    fmt: str = "mp4 (h264)"
    crf: int = 17
    pix_fmt: str | None = None
    keep_audio: bool = True
    size: tuple[int, int] | None = None

    @property
    def output(self) -> Path:
        """The final path (the format's extension, as :class:`VideoWriter` gives it)."""
        ext = OUTPUT_FORMATS[self.fmt][0]
        path = Path(self.dst)
        return path.with_suffix(ext) if ext and path.suffix.lower() != ext else path

    @property
    def high_bit(self) -> bool:
        return bool(self.pix_fmt and self.pix_fmt.endswith("10le"))


@dataclass
class Segment:
    """Frames ``first .. stop - 1`` of the selection, computed by one task. The first ``head`` of them are
    shared with the segment before, the last ``tail`` with the segment after (crossfaded by the driver).
    windows (upscalers): ``(first centre, count)`` of each context window, as the single-process stream
    cuts them."""

    index: int
    first: int
    stop: int
    head: int = 0
    tail: int = 0
    windows: tuple = ()

    @property
    def owned(self) -> int:
        """Frames this segment accounts for in the progress (the shared ones count for the one before)."""
        return self.stop - self.first - self.head


def window_spans(total: int, chunk: int, radius: int) -> list[tuple[int, int]]:
    """``(first centre, count)`` of every window :func:`vsr_core.upscale.stream_windows` cuts from a video of
    ``total`` frames read in chunks of ``chunk`` (found by running it on frame indices)."""
    from .upscale import stream_windows

    index = torch.arange(total, dtype=torch.float32).view(-1, 1, 1, 1)
    spans, done = [], 0
    for _, n in stream_windows((index[s:s + chunk] for s in range(0, total, chunk)), radius):
        spans.append((done, n))
        done += n
    return spans


def default_segment_frames(method: str) -> int:
    """Frames per segment when the user does not say: short for the exact methods (finer resumption and
    balance cost nothing), long for the diffusion methods (each border is a restart of the carried state)."""
    return 64 if method in UPSCALER_METHODS or method == "sd_x4" else 240


def plan_segments(method: str, total: int, chunk: int, overlap: int, radius: int = 0,
                  segment_frames: int = 0) -> list[Segment]:
    """Cut ``total`` frames into segments of whole chunks, about ``segment_frames`` new frames each.

    Upscalers: groups of the single-process stream's windows (``chunk`` frames read at a time, ``radius``
    frames of context), no shared frames. Diffusion methods: groups of :func:`plan_chunks` spans; two
    neighbours share the ``overlap`` frames of the chunk border between them.
    """
    segment_frames = segment_frames or default_segment_frames(method)
    if total < 1:
        raise ValueError("no frames to upscale")
    if method in UPSCALER_METHODS:
        spans = window_spans(total, chunk, radius)
        out, group = [], []
        for span in spans:
            group.append(span)
            if sum(n for _, n in group) >= segment_frames:
                out.append(group)
                group = []
        if group:
            out.append(group)
        return [Segment(i, g[0][0], g[-1][0] + g[-1][1], windows=tuple(g)) for i, g in enumerate(out)]
    spans = plan_chunks(total, chunk, overlap)
    per = max(1, math.ceil(segment_frames / max(chunk - overlap, 1)))
    groups = [spans[i:i + per] for i in range(0, len(spans), per)]
    if len(groups) > 1 and chunk < 2 * overlap:
        raise ValueError(f"a chunk of {chunk} frames with an overlap of {overlap} cannot be cut into segments: use "
                         f"a chunk of at least {2 * overlap} frames (--chunk) or a smaller --overlap")
    last = len(groups) - 1
    return [Segment(i, g[0][0], g[-1][1], head=overlap if i else 0, tail=overlap if i < last else 0)
            for i, g in enumerate(groups)]


# ----------------------------------------------------------------------------------------- a segment

def _read(job: StreamJob, lo: int, hi: int, chunk: int) -> Iterator[torch.Tensor]:
    """Selected frames ``lo .. hi - 1`` of the job's input, float ``[n, H, W, 3]`` chunks."""
    sel = job.selection
    sub = FrameSelection(skip_first=sel.skip_first + lo * sel.nth, nth=sel.nth, cap=hi - lo)
    src = job.src
    if not os.path.exists(src):
        raise FileNotFoundError(f"input {src} not found on host {socket.gethostname()}: every host that runs a "
                                "worker needs the input files at the same path (a shared folder)")
    return iter_frames(src, sub, chunk=chunk, size=job.size)


class _Frames:
    """A sliding buffer over a frame iterator whose first frame is video frame ``first``."""

    def __init__(self, chunks: Iterator[torch.Tensor], first: int) -> None:
        self.chunks, self.first = chunks, first
        self.buf: torch.Tensor | None = None

    def take(self, indices: list[int]) -> torch.Tensor:
        last = max(indices)
        while self.buf is None or self.first + self.buf.shape[0] <= last:
            nxt = next(self.chunks)
            self.buf = nxt if self.buf is None else torch.cat([self.buf, nxt])
        out = self.buf[torch.tensor([i - self.first for i in indices])]
        drop = min(indices) - self.first  # frames before this window are never needed again
        if drop > 0:
            self.buf, self.first = self.buf[drop:], self.first + drop
        return out


def part(folder: Path, index: int, ext: str) -> Path:
    """A stored part of segment ``index``: ``.mkv`` (its own frames), ``.safetensors`` (the shared ones),
    ``.json`` (the marker written last)."""
    return Path(folder) / f"seg{index:05d}{ext}"


class _SegmentOutput:
    """Where a task puts its segment: the frames it alone computes (lossless file), the shared ones
    (float), then the marker that says it is finished."""

    def __init__(self, folder: Path, seg: Segment, high_bit: bool) -> None:
        self.folder, self.seg = folder, seg
        self.writer = VideoWriter(part(folder, seg.index, ".mkv"), 24, "mkv (ffv1 lossless)",
                                  pix_fmt="gbrp16le" if high_bit else "bgr0", on_exists="replace")
        self.body = 0
        self.shared: dict[str, torch.Tensor] = {}

    def write(self, frames: torch.Tensor) -> None:
        if frames.shape[0]:
            self.writer.write(frames)
            self.body += frames.shape[0]

    def finish(self) -> None:
        from safetensors.torch import save_file

        if self.body:
            self.writer.close()
        else:
            self.writer.abort()
        if self.shared:
            write_file(part(self.folder, self.seg.index, ".safetensors"),
                       lambda tmp: save_file({k: v.contiguous() for k, v in self.shared.items()}, str(tmp)),
                       "replace")
        from .memory import peak_rss

        marker = {"body": self.body, "head": self.seg.head, "tail": self.seg.tail, "version": PART_VERSION,
                  "peak_rss": peak_rss(), "worker": f"{socket.gethostname()}:{os.getpid()}"}
        write_file(part(self.folder, self.seg.index, ".json"),
                   lambda tmp: tmp.write_text(json.dumps(marker)), "replace")

    def abort(self) -> None:
        self.writer.abort()


def run_segment(job: StreamJob, seg: Segment, folder: str | os.PathLike, total: int, chunk: int, overlap: int,
                device: str = "cpu", threads: int = 0, report: Callable[[int], None] | None = None) -> dict:
    """Compute one segment into ``folder`` (what a Ray task runs; also callable in-process).

    report(frames): called as the segment's own frames get done. Returns the marker it wrote.
    """
    if threads:
        torch.set_num_threads(int(threads))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(folder)
    out = _SegmentOutput(folder, seg, job.high_bit)
    try:
        if job.spec.method in UPSCALER_METHODS:
            _upscale_segment(job, seg, total, chunk, device, out, report)
        else:
            _diffuse_segment(job, seg, total, chunk, overlap, device, out, report)
        out.finish()
    except BaseException:
        out.abort()
        raise
    return json.loads(part(folder, seg.index, ".json").read_text())


def _upscale_segment(job, seg, total, chunk, device, out, report) -> None:
    from .upscale import make_upscaler, radius_of

    spec = job.spec
    fn = make_upscaler(spec.method, job.scale, device, weights=spec.weights, tile=spec.tile)
    r = radius_of(fn)
    lo, hi = max(0, seg.first - r), min(total, seg.stop + r)
    frames = _Frames(_read(job, lo, hi, chunk), lo)
    done = 0
    for c0, n in seg.windows:
        window = frames.take([min(max(i, 0), total - 1) for i in range(c0 - r, c0 + n + r)])
        out.write(fn(window))
        done += n
        if report is not None:
            report(done)


def _diffuse_segment(job, seg, total, chunk, overlap, device, out, report) -> None:
    pipe = job.spec.build(device)
    runner = _DiffusionRunner(pipe)  # fresh state: nothing is carried into a segment
    blender = ChunkBlender(job.blend, pipe.engine() if job.blend == "flow" else None)
    head = seg.head
    frames = _read(job, seg.first, seg.stop, min(chunk, 16))
    for k, (local, lr, _) in enumerate(overlapping_chunks(frames, chunk, overlap)):
        start = seg.first + local
        stop = start + lr.shape[0]
        last = stop >= total
        shared = overlap if k > 0 else 0
        hold = 0 if last else overlap
        owned_before = max(0, start + shared - seg.first - seg.head)

        def tick(fraction: float, base=owned_before, new=stop - hold - start - shared) -> None:
            if report is not None:
                report(min(seg.owned, base + int(fraction * max(new, 0))))

        result = runner(lr, start, shared, hold, last, tick).permute(0, 2, 3, 1)
        ready = blender.push(result, shared, hold, last)
        if head:  # the frames the segment before also computed: crossfaded by the driver
            out.shared["head"], ready = ready[:head].clone(), ready[head:]
            head = 0
        out.write(ready)
        if report is not None:
            report(min(seg.owned, stop - hold - seg.first - seg.head))
    if seg.tail:
        out.shared["tail"] = blender.held.clone()


# --------------------------------------------------------------------------------------------- plans

@dataclass
class _Plan:
    job: StreamJob
    total: int
    chunk: int
    overlap: int
    segments: list[Segment]
    folder: Path
    fps: float
    info: object = None
    done: dict = field(default_factory=dict)   # segment index -> marker
    next: int = 0                              # next segment to write into the output
    writer: VideoWriter | None = None
    blender: ChunkBlender | None = None
    written: int = 0
    result: Path | None = None


def work_folder(job: StreamJob, key: str) -> Path:
    """``.NAME.vsr-segments/KEY`` beside the output: one folder per job configuration."""
    out = job.output
    return out.parent / f".{out.name}.vsr-segments" / key


def _fingerprint(job: StreamJob, total: int, chunk: int, overlap: int, segments: list[Segment]) -> str:
    src = Path(job.src).resolve()
    st = src.stat()
    spec = asdict(job.spec)
    for k in ("model", "weights", "raft"):
        p = spec.get(k)
        if p and os.path.exists(p):
            spec[k + "_stat"] = (os.stat(p).st_size, os.stat(p).st_mtime_ns)
    what = {"src": str(src), "src_stat": (st.st_size, st.st_mtime_ns), "spec": spec, "selection": asdict(job.selection),
            "size": job.size, "scale": job.scale, "chunk": chunk, "overlap": overlap, "total": total,
            "blend": job.blend, "high_bit": job.high_bit, "version": PART_VERSION,
            "segments": [(s.first, s.stop, s.head, s.tail) for s in segments]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plan(job: StreamJob, segment_frames: int) -> _Plan:
    from .upscale import auto_chunk, make_upscaler, radius_of

    spec = job.spec
    spec.check()  # the model and the settings are refused before any work
    if spec.method in DIFFUSION_METHODS:
        if not os.path.exists(spec.model):
            raise FileNotFoundError(f"model not found: {spec.model}")
        if job.scale != 4:
            raise ValueError(f"{spec.method} upscales x4; scale={job.scale} is only for the upscalers")
    info = probe(job.src)
    total = selected_count(job.src, info, job.selection)
    h, w = job.size or (info.height, info.width)
    if spec.method in UPSCALER_METHODS:
        chunk = job.chunk or auto_chunk(h * job.scale, w * job.scale)
        overlap = 0
        radius = radius_of(make_upscaler(spec.method, job.scale, "cpu", weights=spec.weights))
    else:
        chunk, overlap = stream_chunking(spec.method, (h, w), job.chunk, job.overlap)
        radius = 0
    segments = plan_segments(spec.method, total, chunk, overlap, radius, segment_frames)
    folder = work_folder(job, _fingerprint(job, total, chunk, overlap, segments))
    return _Plan(job, total, chunk, overlap, segments, folder, info.fps / job.selection.nth, info)


def _finished(plan: _Plan) -> None:
    """Segments already on disk (a previous run of the same job); stale partial files are removed."""
    if not plan.folder.is_dir():
        return
    for p in plan.folder.iterdir():
        if p.name.startswith(".") and ".partial" in p.name:
            p.unlink(missing_ok=True)
    for seg in plan.segments:
        marker = part(plan.folder, seg.index, ".json")
        if marker.exists():
            try:
                plan.done[seg.index] = json.loads(marker.read_text())
            except ValueError:
                marker.unlink()


# ------------------------------------------------------------------------------------------ assembly

def _assemble(plan: _Plan, on_exists) -> None:
    """Write every finished segment that comes next in frame order into the output."""
    from safetensors.torch import load_file

    job = plan.job
    while plan.next in plan.done:
        seg = plan.segments[plan.next]
        if plan.writer is None:
            audio = selected_audio(job.src, plan.info, job.selection) if job.keep_audio else None
            plan.writer = VideoWriter(job.output, plan.fps, job.fmt, job.crf, job.pix_fmt, audio,
                                      on_exists=on_exists)
            engine = job.spec.engine() if job.blend == "flow" and plan.overlap else None
            plan.blender = ChunkBlender(job.blend if engine is not None else "hann", engine)
        shared = {}
        if seg.head or seg.tail:
            shared = load_file(str(part(plan.folder, seg.index, ".safetensors")))
        if seg.head:  # crossfade with the tail the segment before left in the blender
            plan.writer.write(plan.blender.push(shared["head"], seg.head, 0, True))
            plan.written += seg.head
        if plan.done[seg.index]["body"]:
            for arr in iter_stored_frames(part(plan.folder, seg.index, ".mkv")):
                plan.writer.write(arr)
                plan.written += arr.shape[0]
        if seg.tail:
            plan.blender.held = shared["tail"]
        plan.next += 1
    if plan.next == len(plan.segments) and plan.result is None:
        if plan.written != plan.total:
            raise RuntimeError(f"{job.src}: the segments hold {plan.written} of {plan.total} frames (internal "
                               "error; nothing was written)")
        plan.result = plan.writer.close()
        plan.writer = None
        shutil.rmtree(plan.folder.parent, ignore_errors=True)  # the job's whole .vsr-segments folder


# ------------------------------------------------------------------------------------------- driver

class _Progress:
    """A Ray actor the tasks report to: frames done per (job, segment), which worker ran it, how many times it
    started, and the task each worker runs now."""

    def __init__(self) -> None:
        self.frames: dict = {}
        self.worker: dict = {}
        self.attempts: dict = {}
        self.current: dict = {}

    def start(self, key, worker: str) -> None:
        self.worker[key] = worker
        self.current[worker] = key
        self.frames[key] = 0
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def set(self, key, frames: int) -> None:
        self.frames[key] = frames

    def snapshot(self) -> tuple[dict, dict, dict, dict]:
        return dict(self.frames), dict(self.worker), dict(self.attempts), dict(self.current)


def _task(job, seg, folder, total, chunk, overlap, device, threads, progress, key):
    """The body of a Ray task: one segment, reporting to the progress actor at most twice a second."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    progress.start.remote(key, worker)
    last = [0.0]

    def report(frames: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or frames >= seg.owned:
            last[0] = now
            progress.set.remote(key, frames)
    return run_segment(job, seg, folder, total, chunk, overlap, device, threads, report)


def init_ray(address: str | None = None, **opts) -> None:
    """Connect to the cluster at ``address`` (None: start a local one), shipping this package's code to the
    workers (Ray ``py_modules``) so that every host runs the driver's version of it. ``opts`` go to
    ``ray.init`` (e.g. ``num_cpus`` for a local cluster)."""
    import ray

    runtime_env = dict(opts.pop("runtime_env", None) or {})
    runtime_env["py_modules"] = [*runtime_env.get("py_modules", []), str(Path(__file__).resolve().parent)]
    settings = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    settings.update(opts)
    ray.init(address=address, runtime_env=runtime_env, **settings)


def run_distributed(jobs: list[StreamJob], workers: int = 0, address: str | None = None, segment_frames: int = 0,
                    device: str = "auto", threads: int = 0, retries: int = 3,
                    progress: Callable[["RunStatus"], None] | None = None, on_exists="error",
                    ray_init: dict | None = None, stats: dict | None = None) -> list[Path]:
    """Upscale every job's input into its output on a Ray cluster; returns the output paths.

    workers: tasks running at once (0 = one per GPU of the cluster, or its CPUs / ``threads``); address:
    a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``), None = a Ray already
    initialised in this process, else a local one started here. device: ``"auto"`` (a GPU per task when
    the cluster has GPUs), ``"cuda"`` or ``"cpu"``. threads: torch threads per CPU task (0 = the cluster's
    CPUs shared among the workers). retries: times a task is rerun when its worker dies.
    progress(status): a :class:`RunStatus` about twice a second (it may raise to stop everything).
    on_exists: when an output exists, see :class:`VideoWriter` (checked before any work).
    ray_init: options for the local cluster started here (:func:`init_ray`). When Ray is already initialised
    in this process, that connection is used (start it with :func:`init_ray` so the workers get the code).
    stats: a dict filled with ``segments``, ``resumed`` (found finished on disk) and ``worker_peak_rss``
    (bytes, the largest of the workers that computed a segment in this run).
    """
    import ray

    plans = [_plan(job, segment_frames) for job in jobs]
    outputs = [p.job.output for p in plans]
    if len(set(outputs)) != len(outputs):
        raise ValueError("two inputs would be written to the same output file; give them different names")
    if on_exists == "error":
        for out in outputs:
            refuse_existing(out)
    for plan in plans:
        _finished(plan)
    if stats is not None:
        stats.update(segments=sum(len(p.segments) for p in plans), resumed=sum(len(p.done) for p in plans))

    started_here = False
    if not ray.is_initialized():
        init_ray(address, **(ray_init or {}))
        started_here = address is None
    try:
        return _drive(ray, plans, workers, device, threads, retries, progress, on_exists, stats)
    finally:
        if started_here:
            ray.shutdown()


@dataclass
class RunStatus:
    """What ``progress`` is given: frames done over all jobs, frames/s per worker (``"host:pid"``), and
    for each segment running or retried (``(job, segment)``) its worker and how many times it started."""

    done: int
    total: int
    rates: dict
    running: dict
    attempts: dict


def _drive(ray, plans, workers, device, threads, retries, progress, on_exists, stats) -> list[Path]:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise RuntimeError("--device cuda was asked for but the Ray cluster has no GPU")
    if not workers:
        workers = gpus if use_gpu else max(1, cpus // threads) if threads else cpus
    threads = threads or max(1, cpus // workers)
    task = ray.remote(_task).options(num_cpus=1 if use_gpu else threads, num_gpus=1 if use_gpu else 0,
                                     max_retries=retries, retry_exceptions=False)
    meter = ray.remote(_Progress).options(num_cpus=0).remote()
    todo = [(j, seg) for j, plan in enumerate(plans) for seg in plan.segments if seg.index not in plan.done]
    total = sum(p.total for p in plans)
    running: dict = {}
    t0 = time.monotonic()
    try:
        for plan in plans:
            plan.folder.mkdir(parents=True, exist_ok=True)
            _assemble(plan, on_exists)
        while todo or running:
            while todo and len(running) < workers:
                j, seg = todo.pop(0)
                plan = plans[j]
                ref = task.remote(plan.job, seg, str(plan.folder), plan.total, plan.chunk, plan.overlap,
                                  "cuda" if use_gpu else "cpu", threads, meter, (j, seg.index))
                running[ref] = (j, seg)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                j, seg = running.pop(ref)
                try:
                    marker = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the task's own exception, as raised there
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                except ray.exceptions.RayError as e:
                    raise RuntimeError(f"segment {seg.index} of {plans[j].job.src} failed after {retries} retries "
                                       f"({type(e).__name__}): its worker kept dying (out of memory?)") from e
                plans[j].done[seg.index] = marker
                if stats is not None:
                    stats["worker_peak_rss"] = max(stats.get("worker_peak_rss") or 0, marker.get("peak_rss") or 0)
                _assemble(plans[j], on_exists)
            if progress is not None:
                frames, worker, tries, current = ray.get(meter.snapshot.remote())
                owned = lambda key: plans[key[0]].segments[key[1]].owned  # noqa: E731
                finished = lambda key: key[1] in plans[key[0]].done  # noqa: E731
                done = sum(owned((j, i)) if i in p.done else frames.get((j, i), 0)
                           for j, p in enumerate(plans) for i in range(len(p.segments)))
                per: dict = {}
                for key, f in frames.items():
                    per[worker[key]] = per.get(worker[key], 0) + (owned(key) if finished(key) else f)
                elapsed = max(time.monotonic() - t0, 1e-6)
                progress(RunStatus(min(done, total), total, {w: f / elapsed for w, f in sorted(per.items())},
                                   {k: w for w, k in current.items() if not finished(k)}, tries))
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        for plan in plans:
            if plan.writer is not None:
                plan.writer.abort()
                plan.writer = None
        raise
    return [p.result for p in plans]
