"""Speed paths on tiny random weights: every attention of every diffusion model goes through
``F.scaled_dot_product_attention``; the bf16-autocast path runs on a CPU and stays within
``speed.TOLERANCE_DB`` of fp32 for each sampler while the VAEs stay fp32; ``maybe_compile`` falls back
to eager cleanly; CFG runs uncond + cond as one batch; prompt embeddings are computed once."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from vsr_core.flow import VideoFlow
from vsr_core.models.bundle import VSRModel
from vsr_core.speed import (
    TOLERANCE_DB,
    SpeedOptions,
    agreement,
    apply_speed,
    compute_context,
    keep_fp32,
    maybe_compile,
    non_sdpa_attention,
    speed_options,
)

CONFIGS = Path(__file__).resolve().parents[1] / "vsr_core" / "configs"


# ------------------------------------------------------------------------------------------ attention

class _AttentionCalls(TorchFunctionMode):
    """Counts SDPA calls and the building blocks of a hand-written attention (softmax, bmm, baddbmm)."""

    MANUAL = {"softmax", "_softmax", "bmm", "baddbmm", "einsum"}

    def __init__(self):
        super().__init__()
        self.sdpa, self.manual = 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if func is F.scaled_dot_product_attention:
            self.sdpa += 1
        elif name in self.MANUAL:
            self.manual.append(name)
        return func(*args, **(kwargs or {}))


def _our_attention_types():
    from vsr_core.models import clip_text, mgld_unet, mgld_vae, satec, uav_unet

    return (Attention, clip_text.CLIPAttention, mgld_unet._SelfAttention, mgld_unet.AttentionBlock,
            mgld_vae.AttnBlock, uav_unet.TemporalAttention, satec.TFA)


FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def _audit(modules, run):
    """Run ``run()`` with SDPA/softmax counting and a call counter on every attention module."""
    types = _our_attention_types()
    ran = []
    handles = [m.register_forward_hook(lambda mod, *_: ran.append(type(mod).__name__))
               for module in modules for m in module.modules() if isinstance(m, types)]
    try:
        # and every SDPA call takes a fused kernel: with the math fallback off, SDPA raises "No available
        # kernel" for inputs the fused kernels refuse (3-D masks, strided q/k/v), which silently run the
        # math path otherwise (it builds the whole score matrix: 5x slower, gigabytes more at full size)
        with torch.no_grad(), _AttentionCalls() as calls, sdpa_kernel(FUSED):
            run()
    finally:
        for h in handles:
            h.remove()
    for module in modules:
        assert non_sdpa_attention(module) == []
    assert calls.manual == [], f"attention outside SDPA: {calls.manual}"
    assert ran, "no attention layer ran: the audit saw nothing"
    assert calls.sdpa >= len(ran), (calls.sdpa, len(ran))
    return ran


def _stablevsr_family(kind):
    from vsr_core.loaders.tiny import tiny_modules

    mods = tiny_modules(kind)
    unet, vae, cn = mods["unet"], mods["vae"], mods.get("controlnet")
    x, ctx = torch.randn(1, 7, 16, 16), torch.randn(1, 77, 32)
    labels = torch.tensor([20]) if unet.config.num_class_embeds else None

    def run():
        down = mid = None
        if cn is not None:
            down, mid = cn(x, 500, ctx, controlnet_cond=torch.randn(1, 3, 64, 64), return_dict=False)
        unet(x, 500, ctx, class_labels=labels, down_block_additional_residuals=down,
             mid_block_additional_residual=mid)
        vae.decode(vae.encode(torch.randn(1, 3, 32, 32)).latent_dist.mean)

    return [m for m in (unet, vae, cn) if m is not None], run


def _uav():
    from vsr_core.loaders.uav import tiny_uav_modules

    mods = tiny_uav_modules()
    unet, video, vae3d = mods["unet"], mods["vae_video"], mods["vae_3d"]

    def run():
        lr = torch.rand(1, 3, 3, 8, 8) * 2 - 1
        unet(torch.randn(1, 4, 3, 8, 8), 500, lr, encoder_hidden_states=torch.randn(1, 77, 32),
             class_labels=torch.tensor([120]))
        video.decode(torch.randn(1, 4, 3, 8, 8), lr, 1.0)
        vae3d.decode(torch.randn(1, 4, 3, 8, 8))

    return [unet, video, vae3d], run


def _mgld():
    from diffusers import AutoencoderKL

    from vsr_core.loaders.mgld import tiny_mgld_configs
    from vsr_core.loaders.tiny import randomize_
    from vsr_core.models.mgld_unet import MGLDUNet, StructEncoder
    from vsr_core.models.mgld_vae import MGLDVideoVAE

    cfg = tiny_mgld_configs()
    unet = randomize_(MGLDUNet.from_config(cfg["unet"]), 0).eval()
    struct = randomize_(StructEncoder.from_config(cfg["struct_encoder"]), 1).eval()
    vae = randomize_(AutoencoderKL.from_config(cfg["vae"]), 2).eval()
    video = randomize_(MGLDVideoVAE.from_config(cfg["video_vae"]), 3).eval()

    def run():
        t = torch.tensor([999])
        unet(torch.randn(5, 4, 8, 8), t, torch.randn(1, 7, 32), struct(torch.randn(5, 4, 8, 8), t))
        vae.decode(vae.encode(torch.randn(5, 3, 64, 64)).latent_dist.mean)
        x_up = torch.rand(5, 3, 64, 64) * 2 - 1
        video.decode(torch.randn(5, 4, 8, 8), video.encode_features(x_up), fusion_w=1.0)

    return [unet, struct, vae, video], run


def _satec():
    from vsr_core.loaders.satec import new_parts
    from vsr_core.loaders.tiny import _tiny_sd2_modules, randomize_
    from vsr_core.models.satec import SATeCoConfig
    from vsr_core.sampling.satec import attached

    mods = _tiny_sd2_modules(0)
    base = VSRModel("satec", mods["unet"], mods["vae"])
    tiny = dict(latent_guide_channels=16, pixel_guide_channels=8, sfa_hidden=16, tubelet=[3, 4, 4], max_inner=32,
                head_dim=16, refiner_channels=16)
    parts = new_parts(SATeCoConfig.from_dict({**SATeCoConfig().to_dict(), **tiny}), base)
    for i, m in enumerate(parts.modules().values()):
        randomize_(m, i)

    def run():
        z = torch.randn(6, 4, 8, 8)
        with attached(parts.unet, base.unet), parts.unet.guidance(torch.randn(6, 4, 8, 8), frames=3):
            base.unet(z, 400, encoder_hidden_states=torch.randn(6, 77, 32))
        with attached(parts.vae, base.vae), parts.vae.guidance(torch.rand(6, 3, 64, 64) * 2 - 1, frames=3):
            base.vae.decode(z)

    return [base.unet, base.vae, parts.unet, parts.vae], run


def _clip():
    from vsr_core.loaders.tiny import randomize_, tiny_text_config
    from vsr_core.models.clip_text import CLIPTextModel

    te = randomize_(CLIPTextModel(tiny_text_config())).eval()
    return [te], lambda: te(torch.randint(0, 100, (1, 77)))


@pytest.mark.parametrize("kind", ["stablevsr", "sd_x4", "uav", "mgld", "satec", "clip"])
def test_every_attention_goes_through_sdpa(kind):
    modules, run = {"stablevsr": lambda: _stablevsr_family("stablevsr"), "sd_x4": lambda: _stablevsr_family("sd_x4"),
                    "uav": _uav, "mgld": _mgld, "satec": _satec, "clip": _clip}[kind]()
    ran = _audit(modules, run)
    if kind == "satec":
        assert "TFA" in ran  # the adapters' tubelet attention really ran under the audit


def test_the_audit_catches_a_hand_written_attention():
    """The counting mode sees the classic ``softmax(q kᵀ) v`` (diffusers' pre-2.0 processor)."""
    from diffusers.models.attention_processor import AttnProcessor

    attn = Attention(32, heads=2, dim_head=16)
    attn.set_processor(AttnProcessor())
    assert non_sdpa_attention(attn) == [": AttnProcessor"]
    with torch.no_grad(), _AttentionCalls() as calls:
        attn(torch.randn(1, 16, 32))
    assert calls.sdpa == 0 and "softmax" in calls.manual


# --------------------------------------------------------------------------------- bf16 autocast

UAV_CFG = CONFIGS / "upscale_a_video"


def _stablevsr_run(model_fn):
    from vsr_core.loaders.tiny import tiny_modules
    from vsr_core.sampling.stablevsr import sample_stablevsr
    from vsr_core.sampling.x4 import LRConditioning

    mods = tiny_modules("stablevsr")
    sched = json.loads((CONFIGS / "stablevsr" / "scheduler.json").read_text())
    model = VSRModel("stablevsr", mods["unet"], mods["vae"], controlnet=mods["controlnet"], scheduler_config=sched,
                     config={"scaling_factor": 0.08333, "vae_scale_factor": 4})
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    flow = VideoFlow(torch.randn(2, 2, 32, 32, generator=g), torch.randn(2, 2, 32, 32, generator=g))
    emb = torch.randn(1, 77, 32, generator=g)
    return model_fn(model, lambda m: sample_stablevsr(m, LRConditioning(lr), flow, emb, steps=2, scheduler="ddpm",
                                                     seed=1))


def _uav_run(model_fn):
    """CFG off here: CFG s multiplies the two halves' independent rounding errors by about s·√2, and the
    tiny random UNet, whose cond and uncond outputs differ by half their size, then measures 25 dB at
    s = 6 (an fp32 run whose initial noise moved by half a bf16 ulp already measures 32 dB: these tiny
    nets are chaotic). The released UNet at CFG 6 measures 48.6 dB (bench/uav.py --speed bf16-autocast)."""
    from vsr_core.loaders.uav import tiny_uav_modules
    from vsr_core.sampling.uav import sample_uav
    from vsr_core.sampling.x4 import LRConditioning

    model = VSRModel("upscale_a_video", tiny_uav_modules()["unet"], nn.Identity(),
                     scheduler_config=json.loads((UAV_CFG / "scheduler.json").read_text()),
                     low_res_scheduler_config=json.loads((UAV_CFG / "low_res_scheduler.json").read_text()))
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    emb, neg = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    return model_fn(model, lambda m: sample_uav(m, LRConditioning(lr, 120), None, emb, neg, 1.0, steps=2, seed=1))


def _mgld_run(model_fn):
    from vsr_core.loaders.mgld import tiny_mgld_configs
    from vsr_core.loaders.tiny import randomize_
    from vsr_core.models.mgld_unet import MGLDUNet, StructEncoder
    from vsr_core.sampling.mgld import model_denoiser, sample_mgld_latents

    cfg = tiny_mgld_configs()
    model = VSRModel("mgld", randomize_(MGLDUNet.from_config(cfg["unet"]), 0).eval(), nn.Identity(),
                     struct_encoder=randomize_(StructEncoder.from_config(cfg["struct_encoder"]), 1).eval())
    g = torch.Generator().manual_seed(0)
    z_lr = torch.randn(5, 4, 8, 8, generator=g)
    fwd = torch.zeros(4, 2, 8, 8)
    fwd[:, 0] = 1.0  # content moving one latent pixel per frame: the motion guidance has work to do
    flow = VideoFlow(fwd, -fwd, frame_size=(8, 8), engine="exact")
    ctx = torch.randn(1, 7, 32, generator=g)

    def run(m):
        with m.on_device("unet", "struct_encoder"):
            return sample_mgld_latents(model_denoiser(m, ctx), z_lr, flow, steps=2, seed=1)

    return model_fn(model, run)


def _fp32_and(precision):
    def both(model, run):
        ref = run(model)
        opts = SpeedOptions(precision, channels_last=True)
        fast = apply_speed(model, opts)
        with compute_context("cpu", opts):
            out = run(fast)
        return ref, out

    return both


@pytest.mark.parametrize("precision", ["bf16-autocast", "fp16"])
@pytest.mark.parametrize("method", ["stablevsr", "uav", "mgld"])
def test_reduced_precision_sampling_runs_on_cpu_within_tolerance(method, precision):
    """bf16-autocast is the CPU path; fp16 weights (the CUDA path, VAEs fp32) run here too, slowly."""
    ref, out = {"stablevsr": _stablevsr_run, "uav": _uav_run, "mgld": _mgld_run}[method](_fp32_and(precision))
    assert out.dtype == torch.float32 and out.shape == ref.shape
    a = agreement(out, ref)
    assert a["finite"]
    assert a["max_abs"] > 0, "bit-identical to fp32: autocast never reached the network"
    assert a["psnr_db"] >= TOLERANCE_DB, a


def test_vae_stays_fp32_inside_the_autocast_region():
    from vsr_core.loaders.tiny import tiny_modules

    vae = tiny_modules("sd_x4")["vae"]
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref = vae.decode(z).sample
        with torch.autocast("cpu", torch.bfloat16):
            assert vae.decode(z).sample.dtype == torch.bfloat16  # what happens unprotected
        keep_fp32(vae)
        keep_fp32(vae)  # idempotent
        with compute_context("cpu", SpeedOptions("bf16-autocast")):
            out = vae.decode(z).sample
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_native_bf16_needs_the_instructions_and_a_probe_that_finds_it_faster(monkeypatch):
    """A CPU that reports AVX512-BF16 but runs bf16 slower than fp32 (a VM hiding AMX, measured: 1.3-2x
    fp32's time) gets fp32 from every "auto"; the probe runs once per process; the variable overrides."""
    from vsr_core import speed
    from vsr_core.loaders.diffusion import resolve_dtype

    monkeypatch.delenv("VSR_CPU_BF16", raising=False)
    real_best_time = speed._best_time
    for flags, t32, t16, want in ((True, 1.0, 1.8, False), (True, 1.0, 0.55, True), (False, 1.0, 0.5, False)):
        monkeypatch.setattr(speed, "bf16_flags_cpu", lambda flags=flags: flags)
        times = iter([t32, t16])  # fp32 is timed first
        monkeypatch.setattr(speed, "_best_time", lambda fn, times=times: next(times))
        speed._bf16_measured_faster.cache_clear()
        assert speed.native_bf16_cpu() is want, (flags, t32, t16)
        assert speed_options("auto", "cpu").precision == ("bf16-autocast" if want else "fp32")
        assert speed_options("auto", "cpu").vae_bf16 is want
        assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if want else torch.float32)
    monkeypatch.setattr(speed, "_best_time", lambda fn: pytest.fail("the probe ran twice in one process"))
    assert speed.native_bf16_cpu() is False  # the last answer, remembered (flags off: nothing timed)
    monkeypatch.setattr(speed, "bf16_flags_cpu", lambda: True)
    speed._bf16_measured_faster.cache_clear()
    monkeypatch.setenv("VSR_CPU_BF16", "1")
    assert speed.native_bf16_cpu() is True  # forced: no probe
    monkeypatch.setenv("VSR_CPU_BF16", "0")
    assert speed.native_bf16_cpu() is False
    # the real probe: both precisions timed, a ratio that means something
    monkeypatch.delenv("VSR_CPU_BF16")
    monkeypatch.setattr(speed, "_best_time", real_best_time)
    ratio = speed.bf16_time_ratio(lambda: torch.nn.functional.conv2d(torch.randn(1, 16, 32, 32), torch.randn(16, 16, 3, 3)))
    assert 0.05 < ratio < 50
    speed._bf16_measured_faster.cache_clear()
    assert isinstance(speed.native_bf16_cpu(), bool)
    speed._bf16_measured_faster.cache_clear()


def test_speed_options_presets_and_auto():
    assert speed_options("published") == SpeedOptions("fp32")
    assert speed_options("fp16", compile=True).compile
    cpu = speed_options("auto", "cpu")
    from vsr_core.speed import native_bf16_cpu

    assert cpu.precision == ("bf16-autocast" if native_bf16_cpu() else "fp32")
    assert speed_options("auto", "cuda").precision == "fp16"
    assert SpeedOptions("fp16").weight_dtype == torch.float16 and SpeedOptions("bf16-autocast").weight_dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        SpeedOptions("int8")
    with pytest.raises(ValueError, match="auto"):
        speed_options("fastest")
    model = VSRModel("stablevsr", nn.Conv2d(4, 4, 3), nn.Conv2d(4, 3, 1))
    fast = apply_speed(model, SpeedOptions("fp16", channels_last=True))
    assert fast.dtype == torch.float16 and fast.vae_dtype == torch.float32 and model.dtype == torch.float32
    assert fast.unet.weight.is_contiguous(memory_format=torch.channels_last)
    # weights stored in bf16 stay bf16 under bf16 autocast (no fp32 copy to compute what bf16 computes)
    stored = dataclasses.replace(model, dtype=torch.bfloat16)
    assert apply_speed(stored, SpeedOptions("bf16-autocast")).dtype == torch.bfloat16
    assert apply_speed(model, SpeedOptions("bf16-autocast")).dtype == torch.float32
    # frozen: under autocast a weight that requires grad keeps a bf16 copy for the whole region
    assert not any(p.requires_grad for m in (fast.unet, fast.vae) for p in m.parameters())
    # the text encoder computes in its load dtype whatever the options: every copy shares the embeddings
    assert fast._prompt_cache is model._prompt_cache
    assert apply_speed(model, SpeedOptions(channels_last=True))._prompt_cache is model._prompt_cache


# ------------------------------------------------------------------------------------------ compile

def _failing_backend(gm, inputs):
    raise RuntimeError("no C compiler in this test")


def test_maybe_compile_falls_back_to_eager_with_a_warning():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref = net(x)
        opts = SpeedOptions(compile=True, compile_backend=_failing_backend)
        assert maybe_compile(net, opts) is net
        assert maybe_compile(net, opts) is net  # cached: one wrapper, not two
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            out = net(x)
        assert torch.equal(out, ref)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # eager from now on: no second warning, no second compile
            assert torch.equal(net(x), ref)
        assert maybe_compile(net, SpeedOptions()) is net  # compile off: untouched
        # the model's own errors still surface (as the model raises them)
        bad = nn.Linear(4, 4)
        maybe_compile(bad, opts)
        with pytest.raises(RuntimeError, match="shapes"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bad(torch.randn(2, 5))


# ----------------------------------------------------------------------------- less repeated work

class _Counting(nn.Module):
    """Wraps a UNet, recording the batch of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    @property
    def config(self):
        return self.net.config

    def forward(self, sample, *args, **kwargs):
        self.batches.append(sample.shape[0])
        return self.net(sample, *args, **kwargs)


def test_x4_cfg_runs_uncond_and_cond_as_one_batch():
    from vsr_core.loaders.tiny import tiny_modules
    from vsr_core.sampling.x4 import LRConditioning, sample_per_frame

    mods = tiny_modules("sd_x4")
    unet = _Counting(mods["unet"])
    cfg = json.loads((CONFIGS / "sd_x4" / "scheduler.json").read_text())
    low = json.loads((CONFIGS / "sd_x4" / "low_res_scheduler.json").read_text())
    model = VSRModel("sd_x4", unet, mods["vae"], scheduler_config=cfg, low_res_scheduler_config=low)
    emb, neg = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    sample_per_frame(model, LRConditioning(torch.rand(2, 3, 8, 8) * 2 - 1, 20), emb, neg, 9.0, steps=3)
    assert unet.batches == [2] * 6  # one call per frame per step, uncond + cond together


def test_stablevsr_decodes_each_guidance_frame_once():
    """The Temporal Texture Guidance decodes the previous frame's x̂0 once per frame and step (the first
    frame of each pass has none): steps·(T−1) decodes, no more."""
    decodes = []

    def run(model, sample):
        decode = model.vae.decode
        model.vae.decode = lambda z, *a, **k: decodes.append(z.shape[0]) or decode(z, *a, **k)
        return sample(model)

    _stablevsr_run(run)
    assert decodes == [1] * (2 * (3 - 1))


def test_prompt_embeddings_are_encoded_once_per_prompt(monkeypatch):
    from vsr_core.loaders import clip
    from vsr_core.sampling.prompt import prompt_embeddings

    calls = []

    def encode(te, tok, prompts, device=None):
        calls.append(tuple(prompts))
        return torch.randn(1, 77, 8)

    monkeypatch.setattr(clip, "encode_prompt", encode)
    model = VSRModel("sd_x4", nn.Identity(), nn.Identity(), text_encoder=nn.Linear(2, 2), tokenizer=object())
    a = prompt_embeddings(model, "a cat")
    assert torch.equal(prompt_embeddings(model, "a cat"), a)
    prompt_embeddings(model, "")
    prompt_embeddings(apply_speed(model, SpeedOptions()), "a cat")  # a sped-up copy shares the cache
    assert calls == [("a cat",), ("",)]


def test_sampler_node_speed_widget_runs_the_option_set_within_tolerance():
    """The samplers' ``speed`` widget: "as loaded" is the plain run; bf16 autocast stays within the stated
    tolerance of it and really ran differently; an unknown option is refused."""
    import tempfile

    from pack import load_pack

    from vsr_core.loaders import load_method_model
    from vsr_core.loaders.tiny import write_tiny_sd_x4

    nodes = load_pack().NODE_CLASS_MAPPINGS
    with tempfile.TemporaryDirectory() as tmp:
        model = load_method_model("sd_x4", write_tiny_sd_x4(tmp + "/x4"), dtype="fp32")
    frames = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    (lr,) = nodes["VSR_LatentEncoderLR"]().encode(frames, model, 20)
    run = lambda speed: nodes["VSR_X4PerFrameSampler"]().sample(  # noqa: E731
        model, lr, guidance_scale=0, steps=2, speed=speed)["result"][0]["samples"]
    ref, fast = run("as loaded"), run("bf16-autocast")
    assert agreement(fast, ref)["psnr_db"] >= TOLERANCE_DB
    assert not torch.equal(fast, ref)
    # the option set did not stick to the shared networks' dtype (channels-last stays: summation order only)
    assert agreement(run("as loaded"), ref)["psnr_db"] > 90
    with pytest.raises(ValueError, match="speed options"):
        run("turbo")


# ------------------------------------------------------------------------------------------- VAEs

def test_vaes_compute_in_bf16_only_where_bf16_is_native(monkeypatch):
    """A reduced precision puts the VAEs in bf16 where the device computes bf16 natively, never in fp16;
    under bf16 autocast they join the autocast region for that run only, and hand back fp32."""
    from vsr_core import speed
    from vsr_core.loaders.tiny import tiny_modules

    for native in (True, False):
        monkeypatch.setattr(speed, "native_bf16_cpu", lambda: native)
        assert speed_options("auto", "cpu").vae_bf16 is native
        assert speed_options("fp16", "cpu").vae_bf16 is native and not speed_options("published").vae_bf16
    mods = tiny_modules("sd_x4")
    model = VSRModel("sd_x4", mods["unet"], mods["vae"])
    assert apply_speed(model, SpeedOptions("fp16", vae_bf16=False)).vae_dtype == torch.float32
    assert apply_speed(model, SpeedOptions("bf16", vae_bf16=True)).vae_dtype == torch.bfloat16
    assert apply_speed(model, SpeedOptions("fp16", vae_bf16=True)).vae_dtype == torch.bfloat16  # not fp16
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    vae = model.vae
    with torch.no_grad():
        ref = vae.decode(z).sample
        fast_model = apply_speed(model, SpeedOptions("bf16-autocast", vae_bf16=True))
        assert fast_model.vae_dtype == torch.float32  # weights stay fp32: autocast computes in bf16
        with compute_context("cpu", SpeedOptions("bf16-autocast")):
            fast = vae.decode(z).sample
            dist = vae.encode(torch.rand(1, 3, 32, 32)).latent_dist
        assert fast.dtype == torch.float32 and dist.mean.dtype == torch.float32
        assert not torch.equal(fast, ref) and agreement(fast, ref)["psnr_db"] >= TOLERANCE_DB
        apply_speed(model, SpeedOptions("bf16-autocast", vae_bf16=False))  # the next run's choice
        with compute_context("cpu", SpeedOptions("bf16-autocast")):
            assert torch.equal(vae.decode(z).sample, ref)


def test_decode_node_speed_widget(monkeypatch):
    """Temporal VAE Decode's ``speed``: as loaded decodes in fp32; bf16 autocast on a CPU with native bf16
    decodes in bf16 within the tolerance."""
    import tempfile

    from pack import load_pack

    from vsr_core import speed
    from vsr_core.loaders import load_method_model
    from vsr_core.loaders.tiny import write_tiny_sd_x4

    monkeypatch.setattr(speed, "native_bf16_cpu", lambda: True)
    node = load_pack().NODE_CLASS_MAPPINGS["VSR_TemporalVAEDecode"]()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_method_model("sd_x4", write_tiny_sd_x4(tmp + "/x4"), dtype="fp32")
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    ref = node.decode(model, latent, mode="per-frame", tile_size=0)[0]
    fast = node.decode(model, latent, mode="per-frame", tile_size=0, speed="bf16-autocast")[0]
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    assert not torch.equal(fast, ref) and agreement(fast, ref)["psnr_db"] >= TOLERANCE_DB
    # the option set did not stick (channels-last stays on the VAE: summation order only)
    assert agreement(node.decode(model, latent, mode="per-frame", tile_size=0)[0], ref)["psnr_db"] > 90
