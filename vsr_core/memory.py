"""Memory accounting: how much RAM and VRAM is free, what a sampler run will need, and what to do when
it does not fit.

Host RAM: checked before loading frames so that a long video fails fast with a clear message instead
of the operating system killing ComfyUI half way through (users' #2 complaint about video packs).
GPU memory: ``estimate_vram`` predicts a sampler run's peak, ``auto_tile`` picks the largest latent
tile that fits, and ``run_with_oom_retry`` retries with smaller tiles when the GPU runs out anyway.
torch is imported only by the functions that need it.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

GIB = 1024**3
MIB = 1024**2


class InsufficientMemoryError(MemoryError):
    """Raised up front when a request would not fit in the memory that is available."""


def available_ram() -> int | None:
    """Bytes of RAM the OS could give us now (MemAvailable on Linux), or None when unknown.

    ``VSR_RAM_BUDGET_MB`` overrides the measurement (useful on shared machines and in tests).
    """
    override = os.environ.get("VSR_RAM_BUDGET_MB")
    if override:
        return int(float(override) * MIB)
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    if sys.platform == "win32":
        import ctypes

        class _MemStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = _MemStatus()
        status.dwLength = ctypes.sizeof(_MemStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
        return None
    try:  # macOS and other POSIX systems
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def frames_nbytes(num_frames: int, height: int, width: int, channels: int = 3, bytes_per_value: int = 4) -> int:
    """Bytes of a ``[T, H, W, C]`` frame batch (float32 by default, ComfyUI's IMAGE)."""
    return num_frames * height * width * channels * bytes_per_value


def peak_rss() -> int | None:
    """Peak resident set size of this process in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def trim_heap() -> None:
    """Return the C heap's free memory to the operating system (glibc's ``malloc_trim``; a no-op on other
    C libraries and systems).

    Tensors below glibc's mmap threshold (which grows up to 32 MB as large blocks are freed) live on the
    heap, and freeing them does not shrink the process: after a loader reads, converts and drops weights
    (a text encoder encoded and dropped, fp32 tensors converted to bf16, NCHW copies made channels-last),
    several hundred MB of freed heap stay resident, and the run's activations, allocated as fresh
    mappings, come on top. Measured on StableVSR in bf16: 0.2-0.35 GiB after the load, as much again after
    ``speed.apply_speed``'s channels-last copies. Called where a load or conversion ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    except OSError:
        pass


def ensure_fits(nbytes: int, what: str, hint: str, headroom: float = 0.9) -> None:
    """Raise InsufficientMemoryError when ``nbytes`` exceeds ``headroom`` x the available RAM."""
    free = available_ram()
    if free is None or nbytes <= headroom * free:
        return
    raise InsufficientMemoryError(
        f"{what} needs about {nbytes / GIB:.2f} GiB of RAM but only {free / GIB:.2f} GiB is free. {hint}"
    )


# ------------------------------------------------------------------------------ GPU memory

# Peak activation memory of one network call, in elements per latent pixel, per frame in the batch, per
# channel of the network's first level (UNet: conv_in's width c0, 256 for the x4 family, 320 for SD 2.x
# and MGLD; VAE decoder: its top width, 128; VAE pixels are output pixels). Counted, not guessed: one
# no-grad forward of each real architecture (shipped configs, random weights) at two latent sizes, with
# a TorchDispatchMode that adds up the storages created during the call and drops them when they die,
# so the number is the peak of live activations (weights and inputs excluded). Run on the CPU with
# torch 2.13, whose SDPA flash kernel, like CUDA's flash / memory-efficient kernels, never holds the
# attention matrix; every count but MGLD's (below) was linear in pixels and batch to three digits.
# Measured -> used:
UNET_UNITS = {
    "sd_x4": 16.0,  # 15.3: x4 UNet
    "stablevsr": 22.0,  # 21.6: x4 UNet + Temporal Conditioning Module (its residuals stay alive)
    "upscale_a_video": 18.0,  # 16.2-17.5: 3D UNet, 8-frame windows (temporal layers)
    "mgld": 30.0,  # 29.4-31.2 up to 32x32 latents: UNet + structure encoder (SPADE features stay alive)
    "satec": 33.0,  # 26.0: SD 2.x UNet; +25 % for SFA/TFA, which were not counted
}
# MGLD's structure encoder used to call SDPA with 3-D transposed q/k/v, which sent it to the math kernel
# (2 x heads x px² elements of scores and softmax per frame: 108 units at 64² latents, hence the tiles);
# it now takes the fused kernels like every other attention (tests/test_speed.py), so the UNet's linear
# count covers it.
VAE_DECODE_UNITS = 7.5  # x4 and SD VAE decoders, per output pixel (UAV's video VAE 7.1, MGLD's CFW 8.75)
VAE_ENCODE_UNITS = 6.0  # x4 and SD VAE encoders, per input pixel
# What a counted peak leaves out: allocator rounding and fragmentation, cuDNN workspaces, small buffers.
ACTIVATION_MARGIN = 1.25
OVERHEAD_BYTES = 256 * MIB

METHOD_FRAMES = {"sd_x4": 1, "stablevsr": 1, "upscale_a_video": 8, "mgld": 5, "satec": 6, "vae_decode": 1}
"""Frames one network call sees by default: the x4 family per frame, UAV's 8-frame windows, MGLD's
5-frame segments, SATeCo's 6-frame clips, the per-frame VAE decode 1."""
METHOD_MODULES = {
    "sd_x4": ("unet",), "stablevsr": ("unet", "controlnet", "vae"), "upscale_a_video": ("unet",),
    "mgld": ("unet", "struct_encoder", "vae"), "satec": ("unet", "vae"), "vae_decode": ("vae",),
}
"""Sub-models on the device at once during the run (StableVSR decodes its guidance with the VAE every
step; MGLD encodes the LR frames with its VAE inside the UNet's block)."""
TILED = ("upscale_a_video", "mgld", "stablevsr", "vae_decode")
"""Methods whose ``tile`` bounds the peak (StableVSR: the guidance decode's tile; the UNet is whole)."""
_DEFAULT_WIDTH = {"sd_x4": 256, "stablevsr": 256, "upscale_a_video": 256, "mgld": 320, "satec": 320}
_DEFAULT_SCALE = {"sd_x4": 4, "stablevsr": 4, "upscale_a_video": 4, "mgld": 8, "satec": 8, "vae_decode": 4}


@dataclass(frozen=True)
class VRAMEstimate:
    """Predicted device memory of one sampler run, in bytes.

    weights: the sub-models on the device at once (in their run dtype); resident: the part of those
    already on the device (needs no new room); activations: the peak working memory of the largest
    network call, margin included; tile: the latent tile it was computed for (0 = whole frame);
    parts: the activation peak of each phase, margin included (("unet", n), ("vae_encode", n), ...):
    ``activations`` is their maximum (plus StableVSR's decoded guidance frame).
    """

    weights: int
    activations: int
    resident: int = 0
    tile: int = 0
    parts: tuple = ()

    def part(self, name: str) -> int:
        return dict(self.parts)[name]

    @property
    def total(self) -> int:
        return self.weights + self.activations + OVERHEAD_BYTES

    @property
    def needed(self) -> int:
        """Bytes that must still be free: the total minus the weights already on the device."""
        return self.total - self.resident

    def describe(self) -> str:
        """"≈3.4 GiB (weights 1.9 GiB + activations 1.2 GiB)"."""
        return (f"≈{format_bytes(self.total)} (weights {format_bytes(self.weights)} + activations "
                f"{format_bytes(self.activations)})")


def format_bytes(n: float) -> str:
    """"3.4 GiB", "212 MiB"."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def module_bytes(module, dtype=None) -> int:
    """Bytes of ``module``'s parameters and buffers (shared tensors once), floating ones counted in
    ``dtype`` when given (what ``on_device`` casts them to)."""
    if module is None:
        return 0
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        size = dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size()
        total += t.numel() * size
    return total


def _first_width(net, default: int) -> int:
    """c0: the first level's width (diffusers ``block_out_channels[0]``, LDM ``model_channels``, else
    the first convolution's output channels)."""
    if net is None:
        return default
    cfg = getattr(net, "config", None)
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    blocks = get("block_out_channels", None) if cfg is not None else None
    if blocks:
        return int(blocks[0])
    if cfg is not None and get("model_channels", None):
        return int(get("model_channels"))
    if getattr(net, "model_channels", None):
        return int(net.model_channels)
    for m in net.modules():
        if hasattr(m, "out_channels") and hasattr(m, "kernel_size"):
            return int(m.out_channels)
    return default


def _vae_width(vae, default: int = 128) -> int:
    """The decoder's top width (the channels its output convolution reads)."""
    conv = getattr(getattr(vae, "decoder", None), "conv_out", None)
    if conv is not None and hasattr(conv, "in_channels"):
        return int(conv.in_channels)
    return _first_width(vae, default)


def _itemsize(dtype, default: int) -> int:
    return int(dtype.itemsize) if dtype is not None else default


def estimate_vram(method: str, latent_size: Sequence[int], *, model: Any = None, frames: int | None = None,
                  cfg: bool = False, tile: int = 0, tile_batch: int = 1, dtype: Any = None, vae_dtype: Any = None,
                  modules: Sequence[str] | None = None, device: Any = None) -> VRAMEstimate:
    """Peak device memory of a ``method`` run on latents of ``latent_size`` ``(h, w)``.

    method: "sd_x4", "stablevsr", "upscale_a_video", "mgld", "satec", or "vae_decode" (the per-frame
    VAE decode). model: the ``VSRModel`` (its sub-models' widths and sizes, dtypes, VAE factor, device);
    without one the real architectures' widths are assumed and weights count 0. frames: frames per
    network call (default ``METHOD_FRAMES``: UAV's window, MGLD's segment, ...); cfg: classifier-free
    guidance doubles the batch. tile: the method's latent tile (UAV/MGLD UNet tiles; StableVSR's
    guidance-decode tile; the decode's tile; 0 = whole frame; ignored by sd_x4 and satec, which do
    not tile). tile_batch: MGLD tiles per call. dtype / vae_dtype: compute dtypes (default the
    model's, else fp16 / fp32). modules: sub-models on the device (default ``METHOD_MODULES``).
    device: where "resident" weights are looked for (default the model's device).
    """
    if method not in METHOD_FRAMES:
        raise ValueError(f"unknown method {method!r}: expected one of {sorted(METHOD_FRAMES)}")
    h, w = (int(v) for v in latent_size)
    tile = int(tile or 0)
    th, tw = (min(tile, h), min(tile, w)) if tile > 0 and method in TILED else (h, w)
    f = max(int(frames or METHOD_FRAMES[method]), 1)
    batch = f * (2 if cfg and method not in ("vae_decode",) else 1)
    dtype = dtype if dtype is not None else getattr(model, "dtype", None)
    vae_dtype = vae_dtype if vae_dtype is not None else getattr(model, "vae_dtype", None)
    nb, vb = _itemsize(dtype, 2), _itemsize(vae_dtype, 4)
    scale = int(getattr(model, "vae_scale_factor", 0) or _DEFAULT_SCALE[method])
    cv = _vae_width(getattr(model, "vae", None))
    c0 = _first_width(getattr(model, "unet", None), _DEFAULT_WIDTH.get(method, 256))
    names = METHOD_MODULES[method] if modules is None else tuple(modules)

    def unet(hh, ww, b):
        return UNET_UNITS[method] * c0 * hh * ww * b * nb

    def decode(hh, ww, b):
        return VAE_DECODE_UNITS * cv * (hh * scale) * (ww * scale) * b * vb

    def encode(hh, ww, b):
        return VAE_ENCODE_UNITS * cv * (hh * scale) * (ww * scale) * b * vb

    extra = 0
    if method == "vae_decode":
        parts = {"vae_decode": decode(th, tw, f)}
    elif method == "sd_x4":
        parts = {"unet": unet(h, w, batch)}
    elif method == "stablevsr":
        parts = {"unet": unet(h, w, batch)}
        if "vae" in names:  # temporal conditioning: the previous frame's guidance is decoded (tiled) at x4
            # and warped; the decoded frame, its warp and the flow grid (float32) stay alive next to it
            parts["vae_decode"] = decode(th, tw, 1)
            extra = 8 * (h * scale) * (w * scale) * 4
    elif method == "upscale_a_video":
        parts = {"unet": unet(th, tw, batch)}
    elif method == "mgld":
        # the LR frames are VAE-encoded whole, 5 at a time, before the (tiled) denoising
        parts = {"unet": unet(th, tw, batch * max(int(tile_batch), 1)), "vae_encode": encode(h, w, min(f, 5))}
    else:  # satec: whole frames, the clip's upscaled frames encoded at once
        parts = {"unet": unet(h, w, batch), "vae_encode": encode(h, w, f)}
    parts = {k: int(v * ACTIVATION_MARGIN) for k, v in parts.items()}
    act = max(parts.values()) + extra

    weights = resident = 0
    if model is not None:
        dev = device if device is not None else getattr(model, "device", None)
        nets = [(n, getattr(model, n, None)) for n in names]
        if method == "satec" and getattr(model, "satec", None) is not None:
            nets += [(n, getattr(model.satec, n, None)) for n in ("unet", "vae")]
        seen = set()
        for n, net in nets:
            if net is None or id(net) in seen or not hasattr(net, "parameters"):
                continue
            seen.add(id(net))
            dt = model.dtype_for(n) if hasattr(model, "dtype_for") else None
            size = module_bytes(net, dt)
            weights += size
            p = next(net.parameters(), None)
            if p is not None and dev is not None and _same_device(p.device, dev):
                resident += size
    return VRAMEstimate(weights=weights, activations=int(act), resident=resident,
                        tile=tile if method in TILED else 0, parts=tuple(parts.items()))


def _same_device(a, b) -> bool:
    import torch

    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def free_vram(device: Any = None) -> int | None:
    """Bytes a new allocation on ``device`` can get now, or None when unknown.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused (it hands that
    out first), as ComfyUI counts it. MPS: the recommended working-set size minus what is allocated.
    CPU: the available RAM (``available_ram``). ``VSR_VRAM_BUDGET_MB`` overrides a GPU measurement.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        return available_ram()
    override = os.environ.get("VSR_VRAM_BUDGET_MB")
    if override:
        return int(float(override) * MIB)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):
            return None
    mod = getattr(torch, device.type, None)
    if mod is not None and hasattr(mod, "mem_get_info"):
        try:
            return int(mod.mem_get_info(device)[0])
        except RuntimeError:
            return None
    return None


def auto_tile(method: str, latent_size: Sequence[int], *, model: Any = None, free: int | None = None,
              device: Any = None, floor: int = 32, headroom: float = 0.9, **estimate_kw) -> int:
    """The latent tile for ``method`` on ``latent_size``: 0 (whole frame) when the whole frame fits in
    ``headroom`` x ``free`` bytes (default: ``free_vram`` of the model's device; on the CPU that is the
    available RAM, so the CPU tiles only when RAM is short), else the largest multiple of 8, down to
    ``floor``, whose ``estimate_vram`` fits; ``floor`` when none does (the run may then still run out:
    ``run_with_oom_retry`` reports it). Methods that do not tile (sd_x4, satec) get 0.
    """
    if method not in TILED:
        return 0
    if free is None:
        free = free_vram(device if device is not None else getattr(model, "device", None))
    if free is None:
        return 0
    budget = headroom * free
    kw = dict(model=model, device=device, **estimate_kw)
    if estimate_vram(method, latent_size, tile=0, **kw).needed <= budget:
        return 0
    top = (max(int(v) for v in latent_size) - 1) // 8 * 8
    if top < floor:
        return 0  # smaller than the smallest tile: tiling cannot help
    for t in range(top, floor - 1, -8):
        if estimate_vram(method, latent_size, tile=t, **kw).needed <= budget:
            return t
    return floor


def count_activation_peak(fn: Callable[[], Any], *existing: Any) -> int:
    """Peak bytes of the tensors ``fn()`` creates and holds at once (its activations), counted op by
    op: the tool ``UNET_UNITS`` / ``VAE_*_UNITS`` were measured with, usable on any device (``meta``
    included, though its attention materialises the score matrix that real kernels avoid).

    existing: modules (their parameters and buffers) and tensors that exist before the call, so that
    views of them (``weight.t()``) are not counted as new memory. Storages are tracked by identity and
    dropped when the last tensor using them dies; op-internal workspaces are not seen.
    """
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def tensors(obj):
        if isinstance(obj, torch.nn.Module):
            return list(obj.parameters()) + list(obj.buffers())
        return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ignore = {t.untyped_storage()._cdata for obj in existing for t in tensors(obj)}
            self.live: dict = {}
            self.now = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            inputs = {t.untyped_storage()._cdata for t in tensors((args, kwargs))}
            out = func(*args, **(kwargs or {}))
            for t in tensors(out):
                s = t.untyped_storage()
                key = s._cdata
                if key in self.ignore or key in self.live or key in inputs:  # old, or a view of an input
                    continue
                self.live[key] = (StorageWeakRef(s), s.nbytes())
                self.now += s.nbytes()
            self.peak = max(self.peak, self.now)
            for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
                self.now -= self.live.pop(key)[1]
            return out

    with Counter() as counter:
        fn()
    return counter.peak


# ----------------------------------------------------------------------------- OOM recovery

class OutOfVRAMError(InsufficientMemoryError):
    """The device ran out of memory even at the smallest tile tried. ``tried``: the tiles (0 = whole
    frame) in order; the message says what to lower."""

    def __init__(self, message: str, tried: Sequence[int] = ()):
        super().__init__(message)
        self.tried = list(tried)


DEFAULT_OOM_HINT = ("Lower tile_size, the frames processed at once (window / segment / frames_per_chunk), or the "
                    "resolution; load the model with dtype fp16 and offload 'offload to CPU'; close other models "
                    "(or start ComfyUI with --lowvram).")


def is_oom(exc: BaseException) -> bool:
    """True for a device out-of-memory error: ``torch.OutOfMemoryError`` (CUDA), or the RuntimeError
    that MPS and other backends raise with "out of memory" in the message."""
    import torch

    if isinstance(exc, OutOfVRAMError):
        return False
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def empty_device_cache() -> None:
    """Give the caching allocator's free blocks back (CUDA, MPS) so a retry starts from a clean pool."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and hasattr(mps, "empty_cache") and torch.backends.mps.is_available():
        mps.empty_cache()


def next_tile(tile: int, latent_size: Sequence[int] | None, floor: int = 32) -> int | None:
    """The tile to retry with after running out of memory at ``tile`` (0 = whole frame): half the
    tile (the whole frame: half its larger latent side), rounded down to a multiple of 8 and at least
    ``floor``; None when ``tile`` is already the floor (or the frame is no larger than it)."""
    side = max(int(v) for v in latent_size) if latent_size is not None else None
    if tile <= 0 or (side is not None and tile >= side):
        if side is None:
            return None
        tile = side
    nxt = max(tile // 2 // 8 * 8, floor)
    return nxt if nxt < tile else None


def run_with_oom_retry(fn: Callable[[int], Any], tile: int, *, floor: int = 32,
                       latent_size: Sequence[int] | None = None, what: str = "the sampler", hint: str | None = None,
                       on_retry: Callable[[int, int, str], None] | None = None,
                       estimate: Callable[[int], VRAMEstimate] | None = None, free: Callable[[], int | None] = None):
    """``fn(tile)``; when it runs out of device memory, retry with ``next_tile`` until it succeeds or
    the tile is at ``floor``, then raise ``OutOfVRAMError`` naming what was tried and what to lower.

    Before each retry the failed attempt's frames drop their locals (``traceback.clear_frames``, as
    ``sampling.loop.call_releasing``) and the allocator cache is emptied, so the retry does not run
    next to the failed attempt's activations. on_retry(old_tile, new_tile, error_line) is called before
    each retry (logging, a progress message). estimate(tile) / free(): optional, for the final message.
    Any other exception propagates untouched; the result is ``fn``'s.
    """
    tried: list[int] = []
    while True:
        tried.append(tile)
        try:
            return fn(tile)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if not is_oom(exc):
                raise
            traceback.clear_frames(exc.__traceback__)
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        empty_device_cache()  # outside the except block: the exception and its frames are gone now
        new = next_tile(tile, latent_size, floor)
        if new is None:
            break
        if on_retry is not None:
            on_retry(tile, new, line)
        tile = new
    steps = ", ".join("whole frame" if t <= 0 else str(t) for t in tried)
    need = ""
    if estimate is not None:
        est = estimate(tried[-1])
        have = free() if free is not None else None
        need = f" Estimated need at the last tile: {est.describe()}" + (
            f", free: {format_bytes(have)}." if have is not None else ".")
    limit = (f"the smallest is {floor} latent px" if tried[-1] == floor else
             "no smaller tile applies" if len(tried) > 1 or latent_size is not None else "this run does not tile")
    raise OutOfVRAMError(
        f"Out of GPU memory in {what} (tried: {steps}; {limit}).{need} {hint or DEFAULT_OOM_HINT} "
        f"Last error: {line}", tried)
