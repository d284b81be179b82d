"""Streaming video super-resolution: a video file in, a video file out, one chunk of frames at a time.

Host memory is bounded by one chunk (its LR frames, flows, latents and outputs) plus the few frames
carried between chunks, whatever the length of the video; the CLI (``python -m vsr_core stream``) and
the ``VSR_StreamUpscaleVideo`` node both call :func:`stream_video`.

Chunks overlap by ``overlap`` frames, which both neighbours compute. Three things keep the borders
invisible:

* **Carried state** (diffusion methods). The previous chunk records, at every sampling step, the x̂0
  of its last ``overlap + 1`` frames (:class:`ChunkCarry`). In the next chunk the overlap frames' x̂0
  is pulled toward those records at the same step, with a weight that fades out across the overlap,
  so both chunks converge on nearly the same content there; Upscale-A-Video's latent propagation then
  carries the anchored latents forward into the new frames. StableVSR's first frame additionally gets
  its Temporal Conditioning Module guidance from the previous chunk's frame before it (the recorded
  x̂0 warped by the flow between them), exactly as inside a chunk (``stablevsr.PrecedingFrame``).
  Noise is drawn per *video* frame index, so a frame starts from the same noise in both chunks.
* **Output crossfade** over the overlap, weights ``sin²`` rising across it (:func:`crossfade_weights`).
  ``blend="flow"``: a flow-aligned crossfade (a morph): the flow between the two versions of each
  overlap frame is estimated, each version is warped part of the way toward the other in proportion
  to its weight before they are mixed, so details the two chunks placed slightly differently slide
  into place instead of showing twice (pixels failing the forward-backward check fall back to the
  plain crossfade). ``blend="hann"``: the plain crossfade.
* **Cached flows**: the flows of the frame pairs two chunks share are computed once.

The learned/bicubic/lanczos upscalers need none of this: their chunks are cut into exact context
windows (``upscale.stream_windows``), so a streamed video equals the one-pass result. The per-frame
x4 sampler treats frames independently and gets the same per-frame noise in any chunking, so its
default overlap is 0 and the result does not depend on the chunk size either.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .io import FrameSelection, VideoWriter, iter_frames, probe
from .io.video import selected_audio, selected_count
from .sampling.mechanisms import Mechanism, Propagation

__all__ = ["STREAM_METHODS", "BLEND_MODES", "METHOD_SETTINGS", "method_settings", "StreamPipeline", "PipelineSpec", "ChunkCarry",
           "frame_noise",
           "plan_chunks", "overlapping_chunks", "raft_convention", "crossfade_weights", "ChunkBlender", "stream_video",
           "default_overlap", "auto_chunk_frames", "stream_chunking"]

UPSCALER_METHODS = ("learned", "bicubic", "lanczos")
DIFFUSION_METHODS = ("sd_x4", "stablevsr", "upscale_a_video", "mgld")
STREAM_METHODS = UPSCALER_METHODS + DIFFUSION_METHODS
BLEND_MODES = ("flow", "hann")

# Each method's published settings (what a key left out means); the pipeline accepts these keys only.
METHOD_SETTINGS: dict[str, dict] = {
    "sd_x4": dict(prompt="", negative_prompt="", guidance_scale=9.0, steps=50, scheduler="ddim", seed=0,
                  noise_level=20, color_fix="none", decode_tile=128),
    "stablevsr": dict(steps=50, scheduler="ddpm", seed=42, bidirectional=True, guidance_tile=0, color_fix="none",
                      decode_tile=128, flow_scale=1.0),
    "upscale_a_video": dict(prompt=None, negative_prompt=None, guidance_scale=6.0, steps=30, seed=10,
                            noise_level=120, propagation_steps=(), window=8, overlap=2, merge="running", tile=0,
                            tile_overlap=16, tile_merge="hann", w_lr=1.0, color_fix="none"),
    "mgld": dict(steps=50, seed=42, guidance_scale=-10.0, segment=5, segment_mode="overlap", segment_overlap=2,
                 tile=64, tile_overlap=32, min_side=512, dec_w=1.0, color_fix="adain"),
}


def method_settings(method: str, settings: dict) -> dict:
    """``settings`` completed with the method's published values and checked (unknown keys, UAV's
    propagation steps resolved: -1 = the last step), before any frame is read."""
    if method not in DIFFUSION_METHODS:
        if settings:
            raise ValueError(f"the {method} upscaler takes no sampler settings, got {sorted(settings)}")
        return {}
    known = METHOD_SETTINGS[method]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"unknown {method} setting(s) {unknown}; known: {sorted(known)}")
    out = {**known, **{k: v for k, v in settings.items() if v is not None}}
    if "propagation_steps" in known:
        from .sampling.propagation import resolve_propagation_steps

        out["propagation_steps"] = resolve_propagation_steps(out["propagation_steps"], out["steps"])
    return out


@dataclass
class StreamPipeline:
    """What to run on each chunk.

    method: one of ``STREAM_METHODS``. model: the ``VSRModel`` of a diffusion method (its ``method``
    must match). flow_engine: any flow engine (``engine(src, dst)``), default DIS "medium"; used for
    the method's flows and for the flow-aligned crossfade. settings: the method's sampler/decoder
    settings, any subset of ``METHOD_SETTINGS[method]`` (the rest are the published values).
    weights / tile: the learned upscaler's weights file (None = embedded) and LR tile side.
    speed: ``"as loaded"`` (the model's own dtype) or a ``vsr_core.speed`` option set ("auto", "fp16",
    "bf16", "bf16-autocast", "fp16-compile", "fp32") for the diffusion networks.
    """

    method: str
    model: object = None
    flow_engine: object = None
    settings: dict = field(default_factory=dict)
    weights: str | os.PathLike | None = None
    tile: int = 0
    speed: str = "as loaded"

    def __post_init__(self) -> None:
        if self.method not in STREAM_METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {STREAM_METHODS}")
        if self.method in DIFFUSION_METHODS:
            if self.model is None:
                raise ValueError(f"method {self.method!r} needs its model: load it with 'Load Diffusion VSR "
                                 "Model (VSR)' (CLI: --model PATH)")
            if getattr(self.model, "method", None) != self.method:
                raise ValueError(f"method {self.method!r} was asked for but the model is a "
                                 f"{getattr(self.model, 'method', type(self.model).__name__)} model")
        self.settings = method_settings(self.method, self.settings)

    @property
    def diffusion(self) -> bool:
        return self.method in DIFFUSION_METHODS

    def engine(self):
        if self.flow_engine is None:
            from .flow import DISEngine

            self.flow_engine = DISEngine("medium")
        return self.flow_engine


@dataclass(frozen=True)
class PipelineSpec:
    """A :class:`StreamPipeline` described by file paths and settings only (what the CLI's options say),
    so that it can be sent to another process or host and built there (``build``), loading the model
    from ``model`` once per process.

    model: the diffusion method's folder/file; dtype: its load dtype; raft: a RAFT weights file used
    for the flows instead of DIS at ``dis_preset``. The other fields are :class:`StreamPipeline`'s.
    """

    method: str = "learned"
    model: str | None = None
    dtype: str = "auto"
    settings: tuple = ()  # sorted (key, value) pairs: hashable, so a process caches one built pipeline per spec
    weights: str | None = None
    tile: int = 0
    speed: str = "as loaded"
    dis_preset: str = "medium"
    raft: str | None = None

    @classmethod
    def make(cls, method: str, settings: dict | None = None, model=None, weights=None, raft=None,
             **kw) -> "PipelineSpec":
        """From the CLI's values: paths may be ``Path``s, settings a dict (lists become tuples)."""
        items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (settings or {}).items()))
        text = lambda v: None if v is None else str(v)  # noqa: E731
        return cls(method=method, settings=items, model=text(model), weights=text(weights), raft=text(raft), **kw)

    def engine(self, device: str | torch.device = "cpu"):
        """The flow engine: RAFT from ``raft`` (in the method's own calling convention) or DIS."""
        if self.raft:
            from .flow.raft import RAFTEngine
            from .loaders.raft import load_raft

            return RAFTEngine.for_method(load_raft(self.raft), raft_convention(self.method), device=device)
        from .flow import DISEngine

        return DISEngine(self.dis_preset)

    def check(self) -> None:
        """Refuse, before any work, what ``build`` would: a diffusion method without its model, unknown settings."""
        if self.method in DIFFUSION_METHODS and not self.model:
            raise ValueError(f"method {self.method!r} needs its model (CLI: --model PATH)")
        method_settings(self.method, dict(self.settings))

    def build(self, device: str | torch.device = "cpu") -> StreamPipeline:
        """Load the model (if any) onto ``device`` and return the pipeline; one cached per process."""
        key = (self, str(device))
        if key not in _BUILT:
            self.check()
            model = None
            if self.method in DIFFUSION_METHODS:
                if not os.path.exists(self.model):
                    import socket

                    raise FileNotFoundError(f"model {self.model} not found on host {socket.gethostname()}: every "
                                            "host that runs a worker needs it at the same path (a shared folder)")
                from .loaders import load_method_model

                model = load_method_model(self.method, self.model, dtype=self.dtype, device=device)
            _BUILT.clear()  # one model per process: a worker never holds two
            _BUILT[key] = StreamPipeline(self.method, model, self.engine(device), dict(self.settings),
                                         weights=self.weights, tile=self.tile, speed=self.speed)
        return _BUILT[key]


_BUILT: dict = {}


def raft_convention(method: str) -> str:
    """How the method's official code calls RAFT (``RAFTEngine.for_method`` preset); StableVSR's for the
    others."""
    return {"mgld": "mgld", "upscale_a_video": "uav"}.get(method, "stablevsr")


def default_overlap(method: str) -> int:
    """Frames shared by neighbouring chunks when the user does not say: none where the result does not
    depend on the chunking (upscalers, per-frame x4), else 4."""
    return 0 if method in UPSCALER_METHODS or method == "sd_x4" else 4


def auto_chunk_frames(method: str, lr_size: tuple[int, int], budget_bytes: int | None = None) -> int:
    """Frames per chunk (8..64) so that one chunk's host-side tensors fit in ``budget_bytes`` (default:
    a quarter of the free RAM, at most 4 GiB): x4 outputs, bicubic x4 frames for the flow, LR, latents."""
    from .memory import GIB, available_ram

    if budget_bytes is None:
        free = available_ram() or 8 * GIB
        budget_bytes = min(free // 4, 4 * GIB)
    h, w = lr_size
    per_frame = h * w * 3 * 4 * (16 * 3 + 2)  # output + (StableVSR) bicubic x4 + LR, float32
    return int(max(8, min(64, budget_bytes // max(per_frame, 1))))


def stream_chunking(method: str, lr_size: tuple[int, int], chunk: int = 0, overlap: int = -1) -> tuple[int, int]:
    """``(chunk, overlap)`` of a diffusion method's stream: 0 / -1 = :func:`auto_chunk_frames` /
    :func:`default_overlap`; refused unless a chunk has at least 2 frames and more than the overlap."""
    chunk = chunk or auto_chunk_frames(method, lr_size)
    overlap = default_overlap(method) if overlap < 0 else int(overlap)
    if chunk < 2 or not 0 <= overlap < chunk:
        raise ValueError(f"need a chunk of at least 2 frames and 0 <= chunk_overlap < chunk; got chunk={chunk}, "
                         f"overlap={overlap}")
    return chunk, overlap


# ------------------------------------------------------------------------------------------ chunking

def plan_chunks(total: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``0..total``: chunks of ``chunk`` frames, each starting
    ``chunk - overlap`` after the previous one; the last one ends at ``total`` (it may be shorter)."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    spans, s = [], 0
    while True:
        e = min(s + chunk, total)
        spans.append((s, e))
        if e >= total:
            return spans
        s = e - overlap


def overlapping_chunks(chunks: Iterable[Tensor], chunk: int, overlap: int) -> Iterator[tuple[int, Tensor, bool]]:
    """Re-cut a stream of frame chunks ``[n, H, W, 3]`` into ``(start, frames, is_last)`` chunks of
    ``chunk`` frames overlapping by ``overlap`` (the spans of :func:`plan_chunks`), holding at most
    ``chunk + 1`` frames plus one incoming chunk."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    buf: Tensor | None = None
    start = 0
    for c in chunks:
        if c.shape[0] == 0:
            continue
        buf = c if buf is None else torch.cat([buf, c])
        while buf.shape[0] > chunk:  # more frames follow this chunk: it is not the last
            yield start, buf[:chunk], False
            buf = buf[chunk - overlap:]
            start += chunk - overlap
    if buf is not None and buf.shape[0]:  # holds at least overlap + 1 frames when it is not the first
        yield start, buf, True


def frame_noise(seed: int, index: int, shape: tuple, stream: int = 0) -> Tensor:
    """N(0, I) noise ``shape`` for video frame ``index`` (CPU float32), a function of (seed, index,
    stream) only, so a frame gets the same noise in whichever chunk computes it."""
    key = (int(seed) * 0x9E3779B97F4A7C15 + (int(index) + 1) * 0xBF58476D1CE4E5B9 + int(stream) * 0x94D049BB133111EB)
    gen = torch.Generator("cpu").manual_seed(key % (2**63 - 1))
    return torch.randn(tuple(shape), generator=gen)


class ChunkCarry(Mechanism):
    """The chunk carry, a temporal mechanism (``on_x0`` hook) carrying sampling state from one chunk to the next:
    ``x̂0_j ← w_j·x̂0_j + (1 − w_j)·x̂0'_j`` for the overlap frames j, x̂0' the previous chunk's record at the
    same step (this pack's streaming; the anchoring of Upscale-A-Video's propagation across windows).

    incoming: ``{step: [k, C, h, w]}``, the previous chunk's x̂0 of this chunk's first ``k`` frames
    (the overlap); weights: ``[k]``, how much of this chunk's own x̂0 is kept there (rising across the
    overlap). keep: how many last frames' x̂0 to record per step for the next chunk (``recorded``).
    """

    def __init__(self, incoming: dict | None = None, weights: Tensor | None = None, keep: int = 0) -> None:
        self.incoming = incoming or {}
        self.weights = weights
        self.keep = int(keep)
        self.recorded: dict[int, Tensor] = {}

    name = "Chunk Carry"

    def hooks(self, site) -> list:
        return [self]

    def on_x0(self, x0: Tensor, x_t: Tensor, i: int, schedule=None) -> Tensor:
        prev = self.incoming.get(i)
        if prev is not None:
            k = prev.shape[0]
            w = self.weights.to(x0.device, x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
            x0 = x0.clone()
            x0[:k] = w * x0[:k] + (1 - w) * prev.to(x0.device, x0.dtype)
        if self.keep:
            self.recorded[i] = x0[x0.shape[0] - self.keep:].detach().to("cpu", torch.float32, copy=True)
        return x0


def crossfade_weights(overlap: int) -> Tensor:
    """``[overlap]`` weights of the *new* chunk across an overlap: ``sin²(π/2 · (j + ½) / overlap)``,
    rising from near 0 to near 1 (the previous chunk gets ``1 - w``)."""
    j = torch.arange(overlap, dtype=torch.float64)
    return (torch.sin(0.5 * math.pi * (j + 0.5) / max(overlap, 1)) ** 2).float()


# ---------------------------------------------------------------------------------------- blending

def _morph(a: Tensor, b: Tensor, w: float, engine, max_side: int = 1024) -> Tensor:
    """Flow-aligned crossfade of two versions ``a``, ``b`` ``[H, W, 3]`` of one frame: with F the flow
    from b to a (``b(x) ≈ a(x + F(x))``), ``(1-w)·a(x + w·F) + w·b(x - (1-w)·F)``; where the
    forward-backward check fails, the plain ``(1-w)·a + w·b``."""
    from .flow import warp
    from .flow.occlusion import occlusion_masks

    H, W = a.shape[:2]
    x = torch.stack([a, b]).permute(0, 3, 1, 2).float()
    s = min(1.0, max_side / max(H, W))
    small = F.interpolate(x, scale_factor=s, mode="area") if s < 1 else x
    fb = engine(small[1:], small[:1]).float().cpu()  # b -> a
    fa = engine(small[:1], small[1:]).float().cpu()  # a -> b
    occ_a, occ_b = occlusion_masks(fa, fb, form="mgld")
    if s < 1:
        fb = F.interpolate(fb, size=(H, W), mode="bilinear", align_corners=False) / s
        occ_b = F.interpolate(occ_b.float(), size=(H, W), mode="nearest")
    plain = (1 - w) * x[:1] + w * x[1:]
    moved = (1 - w) * warp(x[:1], w * fb, padding_mode="border") + w * warp(x[1:], -(1 - w) * fb,
                                                                               padding_mode="border")
    keep = 1 - occ_b.clamp(0, 1)
    out = keep * moved + (1 - keep) * plain
    return out[0].permute(1, 2, 0).clamp(0, 1)


class ChunkBlender:
    """Crossfades the overlap between consecutive chunks' outputs and releases finished frames.

    ``push(out, shared, last)``: ``out`` ``[n, H, W, 3]`` are a chunk's outputs, of which the first
    ``shared`` repeat the frames held back from the previous chunk; returns the frames ready to write
    (everything except the ``hold`` frames the next chunk will recompute, or all of them when ``last``).
    """

    def __init__(self, mode: str = "hann", engine=None) -> None:
        if mode not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {mode!r}")
        if mode == "flow" and engine is None:
            raise ValueError("the flow-aligned crossfade needs a flow engine")
        self.mode, self.engine = mode, engine
        self.held: Tensor | None = None

    def push(self, out: Tensor, shared: int, hold: int, last: bool) -> Tensor:
        if shared:
            if self.held is None or self.held.shape[0] != shared:
                raise RuntimeError(f"chunk shares {shared} frames but {0 if self.held is None else self.held.shape[0]} "
                                   "were held back")
            w = crossfade_weights(shared)
            mixed = []
            for j in range(shared):
                a, b = self.held[j], out[j]
                if self.mode == "flow":
                    mixed.append(_morph(a, b, float(w[j]), self.engine))
                else:
                    mixed.append(((1 - w[j]) * a + w[j] * b).clamp(0, 1))
            out = torch.cat([torch.stack(mixed), out[shared:]])
        if last or hold == 0:
            self.held = None
            return out
        self.held = out[out.shape[0] - hold:].clone()
        return out[:out.shape[0] - hold]


# -------------------------------------------------------------------------------------- flow cache

class _FlowCache:
    """Flows of consecutive chunks, each computed once: keeps the last chunk's pairs by video index."""

    def __init__(self, engine, occlusion_form: str = "mgld") -> None:
        self.engine, self.form = engine, occlusion_form
        self.first = 0  # video index of the first frame of ``self.flow``
        self.flow = None

    def flows(self, frames: Tensor, first: int):
        """``VideoFlow`` of ``frames`` ``[n, H, W, 3]`` whose first frame is video frame ``first``."""
        from .flow import VideoFlow, estimate_video_flow

        n = frames.shape[0]
        known = None
        if self.flow is not None:
            lo, hi = first - self.first, self.first + self.flow.num_frames - first  # reusable pairs: [lo, lo+hi-1)
            if 0 <= lo and hi >= 2:
                known = self.flow.frames(lo, lo + min(hi, n))
        done = 0 if known is None else known.num_frames - 1
        if done < n - 1:
            new = estimate_video_flow(frames[done:], self.engine, occlusion_form=self.form)
            if known is None or done == 0:
                flow = new
            else:
                cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
                flow = VideoFlow(cat(known.forward, new.forward), cat(known.backward, new.backward),
                                 cat(known.occ_forward, new.occ_forward), cat(known.occ_backward, new.occ_backward),
                                 new.frame_size, new.engine)
        else:
            flow = known
        self.flow, self.first = flow, first
        return flow


# -------------------------------------------------------------------------------------- runners

def _bicubic4(frames: Tensor, scale: int) -> Tensor:
    x = frames.permute(0, 3, 1, 2)
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)


class _DiffusionRunner:
    """Runs one method on a chunk: LR frames ``[n, H, W, 3]`` -> outputs ``[n, sH, sW, 3]`` (CPU float32)."""

    def __init__(self, pipe: StreamPipeline) -> None:
        from .speed import apply_speed, speed_options

        self.pipe = pipe
        self.model = pipe.model
        self.speed = None
        if pipe.speed != "as loaded":
            self.speed = speed_options(pipe.speed, self.model.device)
            self.model = apply_speed(self.model, self.speed)
        self.s = pipe.settings
        self.embeds = None
        self.flows = _FlowCache(pipe.engine(), "mgld")
        self.carry: dict[int, Tensor] = {}  # step -> x̂0 of the previous chunk's last (overlap + 1) frames
        self.before: Tensor | None = None   # LR frame just before the current chunk (video index start - 1)

    def _prompt(self):
        from .sampling.prompt import prompt_embeddings

        if self.embeds is None:
            s, m = self.s, self.model
            if m.method == "upscale_a_video":
                from .sampling.uav import UAV_A_PROMPT, UAV_N_PROMPT

                pos = UAV_A_PROMPT if s["prompt"] is None else s["prompt"]
                neg = UAV_N_PROMPT if s["negative_prompt"] is None else s["negative_prompt"]
            else:
                pos, neg = s.get("prompt", ""), s.get("negative_prompt", "")
            use_cfg = s.get("guidance_scale", 0) > 1 and m.method != "stablevsr"
            self.embeds = (prompt_embeddings(m, pos), prompt_embeddings(m, neg) if use_cfg else None)
        return self.embeds

    def __call__(self, lr: Tensor, start: int, shared: int, hold: int, last: bool,
                 tick: Callable[[float], None]) -> Tensor:
        """Outputs ``[n, 3, sH, sW]`` of a chunk whose first ``shared`` frames were in the previous chunk
        and whose last ``hold`` frames will be in the next one."""
        method = self.model.method
        keep = 0 if last or method == "sd_x4" else hold + 1  # the overlap, and the frame before it
        incoming = None
        if shared and self.carry:
            incoming = {i: x[x.shape[0] - shared:] for i, x in self.carry.items()}
        hook = ChunkCarry(incoming, crossfade_weights(shared) if shared else None, keep)
        cb = lambda done, total, x0=None: tick(done / max(total, 1))  # noqa: E731
        from .speed import compute_context

        if self.speed is None:
            out = getattr(self, f"_run_{method}")(lr, start, hook, cb)
        else:
            with compute_context(self.model.device, self.speed):
                out = getattr(self, f"_run_{method}")(lr, start, hook, cb)
        self.carry = hook.recorded
        self.before = None if last else lr[lr.shape[0] - hold - 1:lr.shape[0] - hold].clone()
        return out

    # -- one function per method
    def _seeded(self, start: int, n: int, shape: tuple, stream: int) -> Tensor:
        return torch.stack([frame_noise(self.s["seed"], start + j, shape, stream) for j in range(n)])

    def _decode(self, z: Tensor, cond) -> Tensor:
        from .color import color_fix
        from .sampling.decode import decode_latents

        with self.model.on_device("vae") as (vae,):
            x = decode_latents(vae, z, self.model.scaling_factor, tile=self.s["decode_tile"], overlap=16)
        if self.s["color_fix"] != "none":
            x = color_fix(x, (cond.lr.float() + 1) / 2, self.s["color_fix"])
        return x

    def _run_sd_x4(self, lr, start, hook, cb):
        from .sampling.x4 import lr_conditioning, sample_per_frame

        s = self.s
        cond = lr_conditioning(self.model, lr, s["noise_level"])
        n, (h, w) = cond.num_frames, cond.latent_size
        cond.noise = self._seeded(start, n, (3, h, w), 1)
        pos, neg = self._prompt()
        latents = self._seeded(start, n, (4, h, w), 0)
        noise = lambda i, k, shape: frame_noise(s["seed"], start + k, shape, 100 + i)  # noqa: E731
        z = sample_per_frame(self.model, cond, pos, neg, s["guidance_scale"], s["steps"], s["scheduler"],
                             s["seed"], latents=latents, noise=noise, callback=cb)  # frames are independent: no carry
        return self._decode(z, cond)

    def _run_stablevsr(self, lr, start, hook, cb):
        from .sampling.stablevsr import PrecedingFrame, sample_stablevsr
        from .sampling.x4 import lr_conditioning

        s = self.s
        cond = lr_conditioning(self.model, lr, None)
        n, (h, w) = cond.num_frames, cond.latent_size
        with_before = start > 0 and self.before is not None
        clip = torch.cat([self.before, lr]) if with_before else lr
        # StableVSR estimates flow on the bicubic x4 frames (flow_scale < 1: on a smaller grid, faster)
        up = _bicubic4(clip, self.model.vae_scale_factor)
        if s["flow_scale"] < 1:
            size = (max(8, round(up.shape[1] * s["flow_scale"])), max(8, round(up.shape[2] * s["flow_scale"])))
            up = F.interpolate(up.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)
        flow = self.flows.flows(up, start - 1 if with_before else start) if clip.shape[0] > 1 else None
        preceding = None
        if with_before and self.carry:
            preceding = PrecedingFrame({i: x[:1] for i, x in self.carry.items()}, flow.backward[:1])
        if flow is not None and with_before:
            flow = flow.frames(1, flow.num_frames)
        pos, _ = self._prompt()
        latents = self._seeded(start, n, (4, h, w), 0)
        noise = lambda i, k, shape: frame_noise(s["seed"], start + k, shape, 100 + i)  # noqa: E731
        z = sample_stablevsr(self.model, cond, flow, pos, s["steps"], s["scheduler"], s["seed"],
                             bidirectional=s["bidirectional"], keep_on_cpu=True, guidance_tile=s["guidance_tile"],
                             noise=noise, callback=cb, latents=latents, temporal=[hook], preceding=preceding,
                             tcm=n > 1 or preceding is not None)
        return self._decode(z, cond)

    def _run_upscale_a_video(self, lr, start, hook, cb):
        from .sampling.uav import decode_uav, sample_uav
        from .sampling.x4 import lr_conditioning

        s = self.s
        cond = lr_conditioning(self.model, lr, s["noise_level"])
        n, (h, w) = cond.num_frames, cond.latent_size
        cond.noise = self._seeded(start, n, (3, h, w), 1)
        temporal = [hook]
        prop = s["propagation_steps"]  # loop indices, resolved by StreamPipeline
        if prop and n > 1:  # after the anchoring, so the carried latents propagate into the new frames
            temporal.append(Propagation(self.flows.flows(lr, start), prop))
        pos, neg = self._prompt()
        z = sample_uav(self.model, cond, None, pos, neg, s["guidance_scale"], s["steps"], s["seed"],
                       window=s["window"], overlap=min(s["overlap"], s["window"] - 1), merge=s["merge"],
                       tile=s["tile"], tile_overlap=s["tile_overlap"], tile_merge=s["tile_merge"],
                       latents=self._seeded(start, n, (4, h, w), 0), callback=cb, temporal=temporal)
        return decode_uav(self.model, z, cond, w_lr=s["w_lr"], color=s["color_fix"])

    def _run_mgld(self, lr, start, hook, cb):
        from .sampling.mgld import decode_mgld, prepare_mgld_input, sample_mgld

        s = self.s
        x = lr.permute(0, 3, 1, 2).contiguous()
        n = x.shape[0]
        flow = self.flows.flows(lr, start) if n > 1 else None
        hp, wp = prepare_mgld_input(x[:1], 4, s["min_side"]).x_up.shape[-2:]
        z = sample_mgld(self.model, x, flow, steps=s["steps"], seed=s["seed"], guidance_scale=s["guidance_scale"],
                        segment=s["segment"], segment_mode=s["segment_mode"], tile=s["tile"],
                        tile_overlap=s["tile_overlap"], callback=cb, segment_overlap=min(s["segment_overlap"],
                                                                                           s["segment"] - 1),
                        min_side=s["min_side"], x_T_noise=self._seeded(start, n, (4, hp // 8, wp // 8), 0))
        return decode_mgld(self.model, z, x, dec_w=s["dec_w"], color_fix=s["color_fix"], min_side=s["min_side"])


# -------------------------------------------------------------------------------------- the job

def stream_video(src: str | os.PathLike, dst: str | os.PathLike, pipeline: StreamPipeline,
                 selection: FrameSelection = FrameSelection(), scale: int = 4, chunk: int = 0, overlap: int = -1,
                 blend: str = "flow", fmt: str = "mp4 (h264)", crf: int = 17, pix_fmt: str | None = None,
                 keep_audio: bool = True, device: str | torch.device = "cpu", metadata: dict | None = None,
                 size: tuple[int, int] | None = None, progress: Callable[[int, int], None] | None = None,
                 on_exists="error") -> Path:
    """Upscale the selected frames of ``src`` into ``dst`` chunk by chunk with ``pipeline``.

    on_exists: when ``dst`` is taken, see :class:`vsr_core.io.video.VideoWriter` (never replaced by default).

    chunk: frames per chunk (0 = :func:`auto_chunk_frames`); overlap: frames shared by neighbouring
    chunks (-1 = :func:`default_overlap`); blend: ``"flow"`` (flow-aligned crossfade) or ``"hann"``.
    scale: 2 or 4 for the upscalers (the diffusion methods are x4). Audio of the selected span is
    carried over. size: ``(H, W)`` to resize the input frames to (as the loader's resize did), None =
    source size. progress(done, total) in frames, also called inside a chunk; it may raise to stop.
    Returns the output path; nothing appears there unless the whole video was written.
    """
    if pipeline.method in UPSCALER_METHODS:
        from .upscale import upscale_file

        return upscale_file(src, dst, scale=scale, method=pipeline.method, selection=selection, chunk=chunk,
                            fmt=fmt, crf=crf, pix_fmt=pix_fmt, device=device, keep_audio=keep_audio,
                            progress=progress, weights=pipeline.weights, tile=pipeline.tile, size=size,
                            metadata=metadata, on_exists=on_exists)
    if scale != 4:
        raise ValueError(f"{pipeline.method} upscales x4; scale={scale} is only for the upscalers")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    info = probe(src)
    total = selected_count(src, info, selection)
    chunk, overlap = stream_chunking(pipeline.method, size or (info.height, info.width), chunk, overlap)
    fps = info.fps / selection.nth
    audio = selected_audio(src, info, selection) if keep_audio else None
    runner = _DiffusionRunner(pipeline)
    blender = ChunkBlender(blend, pipeline.engine() if blend == "flow" else None)
    written = 0
    with VideoWriter(dst, fps, fmt, crf, pix_fmt, audio, metadata, on_exists=on_exists) as writer:
        frames = iter_frames(src, selection, chunk=min(chunk, 16), size=size, info=info)
        for k, (start, lr, last) in enumerate(overlapping_chunks(frames, chunk, overlap)):
            stop = start + lr.shape[0]
            shared = overlap if k > 0 else 0
            hold = 0 if last else overlap

            def tick(fraction: float, base=written, new=stop - hold - written) -> None:
                if progress is not None:
                    progress(min(base + int(fraction * new), total - 1), total)

            out = runner(lr, start, shared, hold, last, tick).permute(0, 2, 3, 1)
            ready = blender.push(out, shared, hold, last)
            writer.write(ready)
            written += ready.shape[0]
            if progress is not None:
                progress(written, total)
            del out, ready, lr
        if written != total:
            raise RuntimeError(f"streaming wrote {written} of {total} frames (internal error; nothing was kept)")
    return writer.path
