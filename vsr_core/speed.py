"""Speed options for every sampler: precision, autocast, channels-last and ``torch.compile``.

    opts = speed_options("auto", device)          # or SpeedOptions("bf16-autocast"), SPEED_PRESETS["fp16"]
    model = apply_speed(model, opts)              # weight dtypes, memory format, compile, the VAEs' precision
    with compute_context(model.device, opts):
        latents = sample_uav(model, cond, flow, ...)

precision:

* ``"fp32"``: the published numerics.
* ``"fp16"`` / ``"bf16"``: UNet, ControlNet, structure encoder and text encoder weights in half precision.
  The VAEs in bf16 where the device computes bf16 natively (``vae_bf16``), else fp32: never fp16, the x4
  VAE overflows there (its config says ``force_upcast``), while bf16 has fp32's range.
* ``"bf16-autocast"``: fp32 weights; convolutions and matmuls in bf16 under ``torch.autocast``, norms,
  softmax and the sampler's arithmetic in fp32. The VAEs join the autocast region where bf16 is native
  (``vae_bf16``; StableVSR's per-step guidance decode was 60 % of its time in fp32), else run outside it.

``"auto"`` (``speed_options("auto", device)``): fp16 + channels-last on CUDA; on a CPU bf16-autocast only
where the CPU computes bf16 natively (AVX512-BF16 or AMX), else fp32 + channels-last. On an AVX2-only
CPU bf16 is emulated: on this project's 2-core AVX2 machine a 3x3 convolution measured 5-80x slower
than in fp32, a whole x4 UNet call 5.5x slower, the samplers 1.15-2.9x slower (bench/README.md).

Attention: every attention of the diffusion models goes through ``F.scaled_dot_product_attention``
(diffusers' ``AttnProcessor2_0`` and our own modules; ``tests/test_speed.py`` checks it), so half
precision and compile reach it without extra switches.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "SpeedOptions",
    "SPEED_PRESETS",
    "speed_options",
    "native_bf16_cpu",
    "bf16_flags_cpu",
    "bf16_forced",
    "bf16_fast",
    "bf16_autocast_pays_off",
    "bf16_time_ratio",
    "compute_context",
    "keep_fp32",
    "maybe_compile",
    "apply_speed",
    "channels_last_",
    "non_sdpa_attention",
    "TOLERANCE_DB",
    "agreement",
]

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-autocast")
_WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                  "bf16-autocast": torch.float32}
_AUTOCAST_DTYPES = {"bf16-autocast": torch.bfloat16}

TOLERANCE_DB = 30.0
"""How close a reduced-precision run's final latents must stay to the fp32 run's: PSNR over the fp32
latents' range (``agreement``). bf16 keeps 8 mantissa bits (0.4 % per rounding); 30 dB is an RMS error
of 3 % of the range, room for that rounding accumulated over the network and the steps, while a broken
path (an fp16 overflow, a wrong cast, a skipped branch) lands far below it. Measured with bf16-autocast
on the released architectures (random weights, 2 steps): StableVSR 62.9, Upscale-A-Video (CFG 6) 48.6,
MGLD 56.9, SATeCo 63.4 dB."""
# sub-models that follow the compute precision; the VAEs ("vae", "video_vae") always stay fp32
_COMPUTE_MODULES = ("unet", "controlnet", "struct_encoder")
_VAE_MODULES = ("vae", "video_vae")


@dataclass(frozen=True)
class SpeedOptions:
    """How a sampler run trades exactness for speed.

    precision: one of ``PRECISIONS`` (see the module doc). channels_last: UNet/ControlNet weights and
    activations in NHWC (oneDNN and tensor cores prefer it; numerically the same up to summation order).
    compile: ``torch.compile`` the UNet and ControlNet (``maybe_compile``); compile_mode / compile_backend
    are passed to it (None = torch's defaults: "inductor"). vae_bf16: the VAEs compute in bf16 too (under
    bf16-autocast they join the autocast region; with fp16/bf16 weights theirs are bf16), set by
    ``speed_options`` where bf16 is fast (``bf16_fast``). Never fp16: the VAEs overflow there, and bf16
    has fp32's range.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: object = None
    vae_bf16: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the UNet/ControlNet weights."""
        return _WEIGHT_DTYPES[self.precision]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, None when the precision does not autocast."""
        return _AUTOCAST_DTYPES.get(self.precision)

    def describe(self) -> str:
        parts = [self.precision] + (["channels-last"] if self.channels_last else []) + \
            (["compile"] if self.compile else []) + (["vae-bf16"] if self.vae_bf16 else [])
        return "+".join(parts)


SPEED_PRESETS = {
    "published": SpeedOptions("fp32"),
    "fp16": SpeedOptions("fp16", channels_last=True),
    "bf16": SpeedOptions("bf16", channels_last=True),
    "bf16-autocast": SpeedOptions("bf16-autocast", channels_last=True),
    "fp16-compile": SpeedOptions("fp16", channels_last=True, compile=True),
}
"""Named option sets; ``speed_options`` also accepts "auto" (chosen per device)."""


def bf16_flags_cpu() -> bool:
    """Whether this CPU reports bf16 instructions (AVX512-BF16 or AMX); without them oneDNN emulates bf16."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


@functools.lru_cache(maxsize=1)
def _bf16_measured_faster() -> bool:
    """A convolution and a matrix product timed in fp32 and under bf16 autocast (about 0.1 s, once per
    process): the flags alone mislead on a virtual machine that reports AVX512-BF16 but hides AMX (an
    Intel Xeon, family 6 model 207, measured here: every bf16 convolution and matmul took 1.3-2x fp32's
    time), while an AMD EPYC with AVX512-BF16 ran the pack's models in 0.54-0.70x."""
    conv = nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    lin, y = nn.Linear(512, 512), torch.randn(2048, 512)
    return bf16_time_ratio(lambda: (conv(x), lin(y))) <= 0.9


def bf16_forced() -> bool | None:
    """What the environment variable ``VSR_CPU_BF16`` decides without measuring: ``0`` -> False (every
    "auto" choice in fp32, the published numerics), ``1`` -> True (any CPU treated as native and fast);
    None when it is unset or anything else."""
    forced = os.environ.get("VSR_CPU_BF16", "").strip()
    return forced == "1" if forced in ("0", "1") else None


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively and faster than fp32: it reports AVX512-BF16 or AMX
    (``bf16_flags_cpu``) and a one-time probe finds bf16 autocast faster (``_bf16_measured_faster``).
    ``VSR_CPU_BF16`` overrides both (``bf16_forced``)."""
    forced = bf16_forced()
    if forced is not None:
        return forced
    return bf16_flags_cpu() and _bf16_measured_faster()


_BF16_PAYS_OFF: dict = {}


def _best_time(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bf16_time_ratio(fn) -> float:
    """bf16 autocast's time over fp32's for ``fn()`` on the CPU (best of 3 each, after one warm-up call of
    each: oneDNN builds its kernels on the first)."""
    def bf16():
        with torch.autocast("cpu", torch.bfloat16):
            fn()

    with torch.no_grad():
        fn(), bf16()
        t32 = _best_time(fn)
        return _best_time(bf16) / t32


def bf16_autocast_pays_off(key, make_fn, margin: float = 0.9) -> bool:
    """Whether ``fn()`` runs faster on this CPU under bf16 autocast than in fp32 (at most ``margin`` of
    fp32's time), measured once per ``key`` per process, and only on a CPU with native bf16; ``make_fn()``
    builds ``fn`` (with its inputs) only when a measurement is due.

    Native bf16 is not always faster for every network: the learned upscaler's narrow convolutions (32
    channels) took 0.56-0.70x fp32's time under bf16 on an AMD EPYC with AVX512-BF16, but a network's own
    probe is what tells. ``VSR_CPU_BF16=1`` answers yes without measuring, ``0`` (or a CPU without native
    bf16) no."""
    forced = bf16_forced()
    if forced is not None:
        return forced
    if not native_bf16_cpu():
        return False
    if key not in _BF16_PAYS_OFF:
        _BF16_PAYS_OFF[key] = bf16_time_ratio(make_fn()) <= margin
    return _BF16_PAYS_OFF[key]


def bf16_fast(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it (Ampere and later), or a CPU
    with AVX512-BF16/AMX (``native_bf16_cpu``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and native_bf16_cpu()


def speed_options(name: str | SpeedOptions, device: torch.device | str = "cpu", compile: bool | None = None) -> SpeedOptions:
    """``SpeedOptions`` for a preset name, "auto" (fastest measured choice for ``device``) or a precision
    name; ``compile`` overrides the preset's compile flag. A reduced precision also puts the VAEs in bf16
    where ``device`` computes bf16 natively (``vae_bf16``); a ``SpeedOptions`` is taken as it is."""
    if isinstance(name, SpeedOptions):
        return name if compile is None else dataclasses.replace(name, compile=bool(compile))
    if name == "auto":
        if torch.device(device).type == "cuda":
            opts = SpeedOptions("fp16", channels_last=True)
        else:
            opts = SpeedOptions("bf16-autocast" if native_bf16_cpu() else "fp32", channels_last=True)
    elif name in SPEED_PRESETS:
        opts = SPEED_PRESETS[name]
    elif name in PRECISIONS:
        opts = SpeedOptions(name)
    else:
        raise ValueError(f"speed options must be 'auto', one of {sorted(SPEED_PRESETS)} or {PRECISIONS}, got {name!r}")
    opts = dataclasses.replace(opts, vae_bf16=opts.precision != "fp32" and bf16_fast(device))
    return opts if compile is None else dataclasses.replace(opts, compile=bool(compile))


@contextlib.contextmanager
def compute_context(device: torch.device | str, options: SpeedOptions):
    """Enter ``torch.autocast(device.type, dtype)`` when ``options`` autocast; otherwise do nothing.
    Wrap the sampler call in it (modules marked with ``keep_fp32`` step out of it)."""
    dtype = options.autocast_dtype
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def _fp32_out(out):
    """``out`` of a VAE call with its bf16 tensors in fp32 (a tensor, a tuple of them, diffusers' ``.sample``
    or ``.latent_dist``): what leaves a VAE that computed in bf16 is what its callers get from an fp32 one."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype == torch.bfloat16 else out
    if isinstance(out, (tuple, list)):
        return type(out)(_fp32_out(o) for o in out)
    for name in ("sample", "latent_dist"):
        inner = getattr(out, name, None)
        if isinstance(inner, torch.Tensor):
            setattr(out, name, _fp32_out(inner))
        elif inner is not None:  # DiagonalGaussianDistribution: its tensors
            for attr, value in vars(inner).items():
                if isinstance(value, torch.Tensor):
                    setattr(inner, attr, _fp32_out(value))
    return out


def _outside_autocast(module: nn.Module, fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        param = next(module.parameters(), None)
        device_type = param.device.type if param is not None else "cpu"
        if getattr(module, "_vsr_autocast_ok", False) and torch.is_autocast_enabled(device_type):
            return _fp32_out(fn(*args, **kwargs))  # this run lets it compute in bf16 (``vae_bf16``)
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return run


def keep_fp32(module: nn.Module | None) -> nn.Module | None:
    """Make ``module`` (a VAE) run outside any autocast region: its ``forward``, ``encode`` and ``decode``
    disable autocast while they run, so it computes in its weights' dtype (fp32), unless the run's options
    let it compute in bf16 (``apply_speed`` with ``vae_bf16``; its outputs still come back fp32).
    Idempotent; returns it. The wrappers are instance attributes bound to ``module``: mark a deep copy
    again, do not copy a marked module (the same holds for ``maybe_compile``)."""
    if module is None or getattr(module, "_vsr_keep_fp32", False):
        return module
    for name in ("forward", "encode", "decode", "encode_features"):
        fn = getattr(module, name, None)
        if callable(fn):
            setattr(module, name, _outside_autocast(module, fn))
    module._vsr_keep_fp32 = True
    return module


def maybe_compile(module: nn.Module | None, options: SpeedOptions) -> nn.Module | None:
    """``module`` compiled in place with ``torch.compile`` when ``options.compile`` (once per module and
    option set: a second call is a no-op). The module object, its parameters and config stay as they are.

    Compilation happens at the first call; if it fails there (no C compiler, an unsupported op, a backend
    error) the module warns once and runs eagerly from then on, so a run never fails because of compile.
    """
    if module is None or not options.compile:
        return module
    key = (options.compile_mode, options.compile_backend)
    if getattr(module, "_vsr_compile_key", None) == key:
        return module
    kwargs = {"mode": options.compile_mode}
    if options.compile_backend is not None:
        kwargs["backend"] = options.compile_backend
    eager = module.forward
    # The bound forward, not nn.Module.compile: torch 2.13's dynamo skips the nn.Module._call_impl frame
    # that Module.compile wraps, so nothing was ever compiled that way.
    try:
        compiled = torch.compile(eager, **kwargs)
    except Exception as exc:  # torch.compile unavailable on this platform/Python
        warnings.warn(f"torch.compile unavailable for {type(module).__name__} ({_first_line(exc)}); running eagerly",
                      RuntimeWarning, stacklevel=2)
        module._vsr_compile_key = key
        return module

    @functools.wraps(eager)
    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            # The first call compiles. Run eagerly: if that raises too, the error was the model's own
            # and propagates; otherwise compile was at fault and the module stays eager.
            out = eager(*args, **kwargs)
            warnings.warn(f"torch.compile failed for {type(module).__name__} ({_first_line(exc)}); "
                          "running eagerly", RuntimeWarning, stacklevel=2)
            module.forward = eager
            return out

    module.forward = forward
    module._vsr_compile_key = key
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def channels_last_(module: nn.Module) -> nn.Module:
    """Store the 2-D convolution weights of ``module`` channels-last (NHWC), in place; their outputs follow.
    Only ``Conv2d``: ``Module.to(memory_format=...)`` refuses the video UNets' 5-D ``Conv3d`` weights."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.Module.to(m, memory_format=torch.channels_last)  # nn.Module.to: diffusers' .to warns
    return module


def apply_speed(model, options: SpeedOptions):
    """A copy of the bundle ``model`` (a ``VSRModel``) set up for ``options``: compute dtype
    ``options.weight_dtype`` (VAEs fp32), channels-last and compiled UNet/ControlNet/structure encoder,
    VAEs and text encoder marked to run outside autocast (the text encoder runs once per prompt: nothing
    to gain, and its cached embeddings should not depend on the speed options) unless ``vae_bf16`` lets
    the VAEs compute in bf16, and every network's weights frozen (``requires_grad_(False)``, as the
    loaders leave them: autocast keeps a bf16 copy of a weight that requires grad for its whole region).

    The networks are shared with ``model`` and changed in place (memory format, compile, the autocast
    exemption), all of which leave fp32 results as they were (channels-last up to summation order); the
    dtype is the copy's (weights are cast when a sampler moves them to the device). The prompt cache is
    shared: the text encoder computes in the dtype it was loaded in, whatever the options.
    """
    for name in _COMPUTE_MODULES + _VAE_MODULES + ("text_encoder",):
        module = getattr(model, name, None)
        if module is not None:  # inference: under autocast a weight that requires grad is cast once and its
            module.requires_grad_(False)  # bf16 copy kept for the whole region, 2 bytes more per parameter
    keep_fp32(getattr(model, "text_encoder", None))
    vae_autocast = options.vae_bf16 and options.autocast_dtype == torch.bfloat16
    for name in _VAE_MODULES:
        vae = keep_fp32(getattr(model, name, None))
        if vae is not None:
            vae._vsr_autocast_ok = vae_autocast  # set for every run: an earlier run's choice does not linger
            if options.channels_last:
                channels_last_(vae)
    for name in _COMPUTE_MODULES:
        module = getattr(model, name, None)
        if module is None:
            continue
        if options.channels_last:
            channels_last_(module)
        maybe_compile(module, options)
    dtype = options.weight_dtype
    if options.autocast_dtype is not None and model.dtype == options.autocast_dtype:
        dtype = model.dtype  # stored in the autocast dtype already: computing in it needs no fp32 copy
    vae_dtype = torch.bfloat16 if options.vae_bf16 and options.autocast_dtype is None else torch.float32
    if options.channels_last:
        from .memory import trim_heap

        trim_heap()  # the NCHW weights the copies replaced
    return dataclasses.replace(model, dtype=dtype, vae_dtype=vae_dtype, _prompt_cache=model._prompt_cache)


def agreement(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """How far ``output`` is from ``reference`` (e.g. bf16 vs fp32 latents): ``max_abs`` difference and
    ``psnr_db`` over the reference's value range (inf when identical); ``finite``: output has no NaN/inf.
    ``psnr_db >= TOLERANCE_DB`` is the bar for the speed options."""
    out, ref = output.detach().double().cpu(), reference.detach().double().cpu()
    if out.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(out.shape)} vs {tuple(ref.shape)}")
    finite = bool(torch.isfinite(out).all())
    diff = (out - ref).abs()
    mse = float(diff.pow(2).mean()) if finite else float("inf")
    span = float(ref.max() - ref.min()) or 1.0
    psnr = float("inf") if mse == 0 else (10 * torch.log10(torch.tensor(span ** 2 / mse)).item() if finite
                                          else float("-inf"))
    return {"max_abs": float(diff.max()) if finite else float("inf"), "psnr_db": psnr, "finite": finite}


def non_sdpa_attention(module: nn.Module) -> list[str]:
    """Names of the diffusers ``Attention`` layers in ``module`` whose processor does not run
    ``F.scaled_dot_product_attention`` (diffusers names those processors ``*2_0``). Empty = all SDPA."""
    from diffusers.models.attention_processor import Attention

    return [f"{name}: {type(m.processor).__name__}" for name, m in module.named_modules()
            if isinstance(m, Attention) and "2_0" not in type(m.processor).__name__]
