"""GPU memory: the VRAM estimate (checked against counted activations of the tiny networks), the
automatic tile, the out-of-memory retry (OOM injected on the CPU) and their wiring into the sampler
nodes (pre-run estimate on the node, "auto" tiles, retries, the final error, the timing record)."""
from __future__ import annotations

import importlib
import weakref

import pytest
import torch
from pack import comfy_folders, load_pack

from vsr_core import memory
from vsr_core.loaders.tiny import tiny_modules
from vsr_core.memory import (
    OutOfVRAMError,
    auto_tile,
    count_activation_peak,
    estimate_vram,
    free_vram,
    module_bytes,
    next_tile,
    run_with_oom_retry,
)
from vsr_core.models.bundle import VSRModel
from vsr_core.timings import TimingRecord, work_units

PACK = load_pack()
N = PACK.NODE_CLASS_MAPPINGS
adapter = importlib.import_module(f"{PACK.__name__}.nodes.comfy_adapter")
budget = importlib.import_module(f"{PACK.__name__}.nodes.budget")
GIB = memory.GIB


def oom(msg="CUDA out of memory. Tried to allocate 2.00 GiB"):
    return torch.OutOfMemoryError(msg)


@pytest.fixture(scope="module")
def svr():
    m = tiny_modules("stablevsr")
    return VSRModel("stablevsr", unet=m["unet"], vae=m["vae"], controlnet=m["controlnet"])


# ------------------------------------------------------------------------------ estimates

def test_estimate_counts_the_sub_models_on_the_device_in_their_run_dtype(svr):
    est = estimate_vram("stablevsr", (40, 48), model=svr)
    nets = (svr.unet, svr.controlnet, svr.vae)
    assert est.weights == sum(module_bytes(n) for n in nets) > 0
    assert est.resident == est.weights  # the tiny model lives on its (CPU) device already
    assert est.needed == est.total - est.resident
    only_unet = estimate_vram("stablevsr", (40, 48), model=svr, modules=("unet",))
    assert only_unet.weights == module_bytes(svr.unet)
    # a bundle whose weights rest elsewhere: nothing is resident
    away = VSRModel("stablevsr", unet=svr.unet, vae=svr.vae, controlnet=svr.controlnet,
                    device=torch.device("cuda"))
    assert estimate_vram("stablevsr", (40, 48), model=away).resident == 0
    # fp16 halves the floating weights
    assert module_bytes(svr.unet, torch.float16) * 2 == module_bytes(svr.unet)


def test_activations_scale_with_frames_cfg_pixels_and_tile():
    base = estimate_vram("upscale_a_video", (64, 64), frames=8)
    assert estimate_vram("upscale_a_video", (64, 64), frames=4).activations * 2 == pytest.approx(base.activations, 1e-6)
    assert estimate_vram("upscale_a_video", (64, 64), frames=8, cfg=True).activations == pytest.approx(
        2 * base.activations, 1e-6)
    tiled = estimate_vram("upscale_a_video", (64, 64), frames=8, tile=32)
    assert tiled.activations == pytest.approx(base.activations / 4, 1e-6) and tiled.tile == 32
    assert estimate_vram("upscale_a_video", (64, 64), frames=8, tile=128).activations == base.activations
    # the x4 per-frame sampler and SATeCo do not tile: a tile changes nothing
    x4 = estimate_vram("sd_x4", (64, 64))
    assert estimate_vram("sd_x4", (64, 64), tile=16).activations == x4.activations
    # the real x4 UNet in fp16 on a 128x128 latent with CFG: 16 x 256 x 128² x 2 x 2 bytes x margin
    assert x4.activations < estimate_vram("sd_x4", (128, 128), cfg=True).activations == int(
        16 * 256 * 128 * 128 * 2 * 2 * memory.ACTIVATION_MARGIN)
    with pytest.raises(ValueError, match="unknown method"):
        estimate_vram("seedvr", (8, 8))


def test_estimate_covers_the_counted_activations_of_the_tiny_networks(svr):
    """The formula reads each network's width; on the tiny networks (width 32) it must cover what one
    forward really holds (counted op by op) without overshooting wildly."""
    h, w = 24, 32
    unet, cn, vae = svr.unet, svr.controlnet, svr.vae
    x, c = torch.randn(1, 7, h, w), torch.randn(1, 77, 32)
    img, t = torch.randn(1, 3, 4 * h, 4 * w), torch.tensor([10])

    def stablevsr_step():
        d, mid = cn(x, t, encoder_hidden_states=c, controlnet_cond=img, return_dict=False)
        unet(x, t, c, down_block_additional_residuals=d, mid_block_additional_residual=mid)

    z = torch.randn(1, 4, h, w)
    with torch.no_grad():
        unet_peak = count_activation_peak(stablevsr_step, unet, cn, x, c, img)
        vae_peak = count_activation_peak(lambda: vae.decode(z), vae, z)
    est = estimate_vram("stablevsr", (h, w), model=svr, dtype=torch.float32, vae_dtype=torch.float32)
    assert unet_peak <= est.part("unet") <= 2 * unet_peak
    assert vae_peak <= est.part("vae_decode") <= 2 * vae_peak
    assert est.activations >= max(unet_peak, vae_peak)
    dec = estimate_vram("vae_decode", (h, w), model=svr, vae_dtype=torch.float32)
    assert dec.activations == est.part("vae_decode")


def test_estimate_covers_the_tiny_uav_and_mgld_unets():
    from vsr_core.loaders.mgld import tiny_mgld_configs
    from vsr_core.loaders.uav import tiny_uav_modules
    from vsr_core.models.mgld_unet import MGLDUNet, StructEncoder

    h, w = 16, 24
    uav = tiny_uav_modules()["unet"]
    x, lr, c = torch.randn(2, 4, 8, h, w), torch.randn(2, 3, 8, h, w), torch.randn(2, 77, 32)
    t, lab = torch.tensor([10, 10]), torch.tensor([20, 20])
    with torch.no_grad():
        peak = count_activation_peak(lambda: uav(x, t, lr, encoder_hidden_states=c, class_labels=lab), uav, x, lr, c)
    est = estimate_vram("upscale_a_video", (h, w), model=VSRModel("upscale_a_video", unet=uav, vae=None),
                        frames=8, cfg=True, dtype=torch.float32)
    assert peak <= est.activations == est.part("unet") <= 2 * peak

    cfg = tiny_mgld_configs()
    unet, struct = MGLDUNet.from_config(cfg["unet"]).eval(), StructEncoder.from_config(cfg["struct_encoder"]).eval()
    x, zl, c, t = torch.randn(5, 4, h, w), torch.randn(5, 4, h, w), torch.randn(1, 77, 32), torch.full((5,), 10)
    with torch.no_grad():
        peak = count_activation_peak(lambda: unet(x, t, c, struct(zl, t), num_frames=5), unet, struct, x, zl, c)
    model = VSRModel("mgld", unet=unet, vae=None, struct_encoder=struct, config={"vae_scale_factor": 8})
    est = estimate_vram("mgld", (h, w), model=model, dtype=torch.float32)
    assert peak <= est.part("unet") <= 2 * peak


# ------------------------------------------------------------------------------ auto tile

def test_auto_tile_is_the_largest_tile_that_fits():
    kw = dict(frames=8, cfg=True)
    whole = estimate_vram("upscale_a_video", (120, 160), **kw)
    assert auto_tile("upscale_a_video", (120, 160), free=whole.needed * 2, **kw) == 0
    budget_bytes = whole.needed / 3
    t = auto_tile("upscale_a_video", (120, 160), free=budget_bytes, headroom=1.0, **kw)
    assert t > 0 and t % 8 == 0
    assert estimate_vram("upscale_a_video", (120, 160), tile=t, **kw).needed <= budget_bytes
    assert estimate_vram("upscale_a_video", (120, 160), tile=t + 8, **kw).needed > budget_bytes
    # nothing fits: the floor (the run then reports the OOM); tiles never apply to sd_x4
    assert auto_tile("upscale_a_video", (120, 160), free=1, floor=24, **kw) == 24
    assert auto_tile("sd_x4", (120, 160), free=1) == 0
    # a frame no larger than the floor is never tiled
    assert auto_tile("upscale_a_video", (24, 30), free=1, floor=32) == 0


def test_on_the_cpu_only_a_short_ram_budget_tiles(monkeypatch):
    assert free_vram("cpu") == memory.available_ram()
    if not torch.cuda.is_available():
        assert free_vram("cuda") is None
    monkeypatch.setenv("VSR_RAM_BUDGET_MB", "100000")
    assert auto_tile("upscale_a_video", (120, 160), device="cpu", frames=8) == 0
    monkeypatch.setenv("VSR_RAM_BUDGET_MB", "600")
    t = auto_tile("upscale_a_video", (120, 160), device="cpu", frames=8)
    assert 32 <= t < 160


# ------------------------------------------------------------------------------ OOM retry

def test_next_tile_halves_down_to_the_floor():
    assert next_tile(0, (100, 130), 32) == 64  # whole frame: half the larger side, a multiple of 8
    assert next_tile(64, (100, 130), 32) == 32
    assert next_tile(40, (100, 130), 32) == 32  # half (16) is below the floor: the floor itself
    assert next_tile(32, (100, 130), 32) is None
    assert next_tile(512, (100, 130), 32) == 64  # a tile larger than the frame is the whole frame
    assert next_tile(0, (30, 20), 32) is None  # smaller than one tile: nothing to lower
    assert next_tile(0, None, 32) is None


def test_oom_retry_sequence_and_success():
    calls, retries = [], []

    def fn(tile):
        calls.append(tile)
        if tile == 0 or tile > 40:
            raise oom()
        return f"ok at {tile}"

    out = run_with_oom_retry(fn, 0, floor=32, latent_size=(100, 130),
                             on_retry=lambda old, new, line: retries.append((old, new, line)))
    assert out == "ok at 32" and calls == [0, 64, 32]
    assert retries == [(0, 64, "CUDA out of memory. Tried to allocate 2.00 GiB"), (64, 32, retries[1][2])]
    # a tile that fits is never retried
    calls.clear()
    assert run_with_oom_retry(fn, 40, latent_size=(100, 130)) == "ok at 40" and calls == [40]


def test_oom_retry_final_error_says_what_was_tried_and_what_to_lower():
    calls = []

    def fn(tile):
        calls.append(tile)
        raise oom("CUDA out of memory. Tried to allocate 9.00 GiB")

    est = lambda t: estimate_vram("upscale_a_video", (100, 130), tile=t)  # noqa: E731
    with pytest.raises(OutOfVRAMError) as info:
        run_with_oom_retry(fn, 0, floor=32, latent_size=(100, 130), what="the Upscale-A-Video sampler",
                           estimate=est, free=lambda: 3 * GIB)
    err = info.value
    assert isinstance(err, MemoryError) and err.tried == calls == [0, 64, 32]
    text = str(err)
    assert "the Upscale-A-Video sampler" in text and "tried: whole frame, 64, 32" in text
    assert "smallest is 32" in text and "free: 3.0 GiB" in text
    for advice in ("tile_size", "frames processed at once", "resolution", "fp16", "offload", "--lowvram"):
        assert advice in text, advice
    assert text.endswith("Last error: CUDA out of memory. Tried to allocate 9.00 GiB")
    # a node's own advice replaces the generic one; a run that cannot tile says so after one try
    with pytest.raises(OutOfVRAMError, match="does not tile.*Lower clip_length") as info:
        run_with_oom_retry(fn, 0, hint="Lower clip_length.")
    assert info.value.tried == [0]


def test_oom_retry_frees_the_failed_attempt_and_passes_other_errors():
    refs, kept = [], []

    def fn(tile):
        if refs:
            assert refs[-1]() is None, "the failed attempt's activations are still alive"
            return tile
        big = torch.zeros(1000)
        refs.append(weakref.ref(big))
        err = oom()
        kept.append(err)  # something (a log handler, a progress hook) keeps the exception: its frames must not
        raise err

    assert run_with_oom_retry(fn, 0, latent_size=(64, 64)) == 32

    calls = []

    def broken(tile):
        calls.append(tile)
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        run_with_oom_retry(broken, 0, latent_size=(64, 64))
    assert calls == [0]
    # other backends' OOM (MPS) is a RuntimeError with the words in it
    seen = []

    def mps(tile):
        seen.append(tile)
        if tile == 0:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")
        return tile

    assert run_with_oom_retry(mps, 0, latent_size=(64, 64)) == 32 and seen == [0, 32]


# ------------------------------------------------------------------------------ timing record

def test_timing_record_estimates_from_the_last_runs(tmp_path):
    rec = TimingRecord(tmp_path / "t.json")
    units = work_units(10, 20, (64, 64), cfg=True)
    assert units == pytest.approx(10 * 20 * 64 * 64 / 1e6 * 2)
    assert rec.estimate("cpu", "mgld", torch.float32, units) is None
    rec.update("cpu", "mgld", torch.float32, units, 30.0)
    assert rec.estimate("cpu", "mgld", torch.float32, 2 * units) == pytest.approx(60.0)
    rec.update("cpu", "mgld", torch.float32, units, 10.0)  # moving average
    assert rec.estimate("cpu", "mgld", torch.float32, units) == pytest.approx(20.0)
    assert rec.estimate("cpu", "mgld", torch.float16, units) is None  # per dtype
    again = TimingRecord(tmp_path / "t.json")  # persisted
    assert again.estimate("cpu", "mgld", torch.float32, units) == pytest.approx(20.0)
    (tmp_path / "bad.json").write_text("{not json")
    assert TimingRecord(tmp_path / "bad.json").estimate("cpu", "mgld", torch.float32, 1) is None


# ------------------------------------------------------------------------------ nodes

@pytest.fixture(scope="module")
def method_models(tmp_path_factory):
    from vsr_core.loaders.mgld import write_tiny_mgld
    from vsr_core.loaders.tiny import write_tiny_stablevsr
    from vsr_core.loaders.uav import write_tiny_uav

    root = tmp_path_factory.mktemp("vram_models")
    write_tiny_uav(root / "vsr" / "upscale_a_video" / "uav")
    write_tiny_mgld(root / "vsr" / "mgld" / "MGLD")
    write_tiny_stablevsr(root / "vsr" / "stablevsr" / "StableVSR")
    return root


@pytest.fixture
def nodes_env(method_models, monkeypatch):
    """Tiny models, a fresh in-memory timing record, and the node's progress texts recorded in order."""
    events = []
    monkeypatch.setattr(budget, "_record", TimingRecord(None))
    monkeypatch.setattr(adapter, "show_text", lambda node, text: events.append(("text", text)))

    class Bar:
        def __init__(self, total, node_id=None, **kw):
            pass

        def __call__(self, done, total=None):
            events.append(("step", done))

    monkeypatch.setattr(adapter, "Progress", Bar)
    with comfy_folders(models=method_models):
        yield events


def _clip(h, w, n=3):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, h, w, generator=g)
    return torch.cat([torch.roll(base, shifts=(0, k), dims=(2, 3)) for k in range(n)]).permute(0, 2, 3, 1).contiguous()


def test_uav_node_shows_the_estimate_first_and_retries_smaller_tiles(nodes_env, monkeypatch):
    import vsr_core.sampling.uav as uav

    events = nodes_env
    clip = _clip(24, 80, n=2)  # latent 24x80: one row of tiles, and room for two retries
    (model,) = N["VSR_LoadDiffusionModel"]().load("upscale_a_video/uav", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 120)
    real, tiles = uav.sample_uav, []

    def flaky(*args, tile=0, **kw):
        tiles.append(tile)
        if tile == 0 or tile > 32:
            raise oom()
        return real(*args, tile=tile, **kw)

    monkeypatch.setattr(uav, "sample_uav", flaky)
    out = N["VSR_UpscaleAVideoSampler"]().sample(model, lr, "a cat", "", guidance_scale=1.0, steps=1, window=2,
                                                 overlap=1, tile_size=0, unique_id="7")
    assert tiles == [0, 40, 32]
    (lat,) = out["result"]
    assert lat["samples"].shape == (2, 4, 24, 80) and torch.isfinite(lat["samples"]).all()
    text = out["ui"]["text"][0]
    assert text.startswith("est. peak RAM ≈") and "whole frame" in text and "first run on cpu" in text
    assert "retrying with tile 40" in text and "retrying with tile 32" in text and "· tile 32" in text
    # the estimate reached the node before the first sampling step
    first_step = next(i for i, e in enumerate(events) if e[0] == "step")
    assert events[0][0] == "text" and events[0][1].startswith("est. peak") and first_step > 0

    # the next run estimates its time from this one
    monkeypatch.setattr(uav, "sample_uav", real)
    again = N["VSR_UpscaleAVideoSampler"]().sample(model, lr, "a cat", "", guidance_scale=1.0, steps=1, window=2,
                                                   overlap=1, tile_size=32)
    assert "/frame on cpu" in again["ui"]["text"][0] and "first run" not in again["ui"]["text"][0]
    assert torch.equal(again["result"][0]["samples"], lat["samples"])  # tile 32 either way: same result


def test_uav_node_final_error_names_the_nodes_knobs(nodes_env, monkeypatch):
    import vsr_core.sampling.uav as uav

    clip = _clip(24, 80, n=2)
    (model,) = N["VSR_LoadDiffusionModel"]().load("upscale_a_video/uav", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 120)

    def never(*a, **kw):
        raise oom()

    monkeypatch.setattr(uav, "sample_uav", never)
    with pytest.raises(OutOfVRAMError, match=r"Upscale-A-Video sampler \(tried: whole frame, 40, 32;.*window") as info:
        N["VSR_UpscaleAVideoSampler"]().sample(model, lr, steps=1, window=2, overlap=1)
    assert info.value.tried == [0, 40, 32]


def test_auto_tile_reaches_the_mgld_and_stablevsr_samplers(nodes_env, monkeypatch):
    import vsr_core.sampling.mgld as mgld
    import vsr_core.sampling.stablevsr as stablevsr

    clip = _clip(24, 32, n=2)
    (model,) = N["VSR_LoadDiffusionModel"]().load("mgld/MGLD", "fp32")
    flow = N["VSR_FlowGuidance"]().estimate(clip)[0]
    seen = {}

    def spy(model, lr, flow, tile=None, tile_overlap=None, **kw):  # the sampler itself is tested elsewhere
        seen["tile"], seen["overlap"] = tile, tile_overlap
        return torch.zeros(lr.shape[0], 4, 24, 32)

    monkeypatch.setattr(mgld, "sample_mgld", spy)
    size = importlib.import_module(f"{PACK.__name__}.nodes.diffusion")._mgld_latent_size((24, 32), 512)
    assert size == (64, 88)
    # free memory for a 64 tile. The LR frames' VAE encode (whole frames, whatever the tile) would dominate
    # at this size: make it small, so that the tiled UNet part decides
    monkeypatch.setattr(memory, "VAE_ENCODE_UNITS", 0.01)
    free = int(estimate_vram("mgld", size, model=model, frames=2, tile=64).needed / 0.9) + 1
    assert estimate_vram("mgld", size, model=model, frames=2, tile=72).needed > 0.9 * free
    monkeypatch.setattr(memory, "free_vram", lambda device=None: free)
    want = auto_tile("mgld", size, model=model, frames=2, floor=16)
    assert want == 64
    out = N["VSR_MGLDSampler"]().sample(model, clip, flow, steps=1, segment=2, segment_overlap=1, tile_size=-1,
                                        tile_overlap=48)
    assert seen == {"tile": 64, "overlap": 32}  # a tile the user did not choose keeps < half of it shared
    assert f"tile {want} (auto)" in out["ui"]["text"][0]

    # plenty of memory: auto = whole frame (StableVSR's guidance decode)
    monkeypatch.setattr(memory, "free_vram", lambda device=None: 1 << 50)
    (svr,) = N["VSR_LoadDiffusionModel"]().load("stablevsr/StableVSR", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, svr, 0)
    up = N["VSR_VideoUpscaler"]().upscale(clip, 4, "bicubic")[0]
    sflow = N["VSR_FlowGuidance"]().estimate(up)[0]
    got = {}

    def spy_s(model, cond, *a, guidance_tile=None, **kw):
        got["tile"] = guidance_tile
        return torch.zeros(cond.num_frames, 4, *cond.latent_size)

    monkeypatch.setattr(stablevsr, "sample_stablevsr", spy_s)
    out = N["VSR_StableVSRSampler"]().sample(svr, lr, sflow, steps=1, guidance_tile=-1)
    assert got == {"tile": 0} and "whole frame (auto)" in out["ui"]["text"][0]


def test_decode_node_auto_tile_and_oom_retry(nodes_env, monkeypatch):
    import vsr_core.sampling.decode as decode

    events = nodes_env
    (model,) = N["VSR_LoadDiffusionModel"]().load("stablevsr/StableVSR", "fp32")
    z = torch.randn(1, 4, 24, 80)
    latent = {"samples": z}
    real, tiles = decode.decode_latents, []

    def flaky(vae, latents, scaling_factor, tile=0, **kw):
        tiles.append(tile)
        if tile == 0 or tile > 32:
            raise oom()
        return real(vae, latents, scaling_factor, tile=tile, **kw)

    monkeypatch.setattr(decode, "decode_latents", flaky)
    monkeypatch.setattr(memory, "free_vram", lambda device=None: 1 << 50)
    (frames,) = N["VSR_TemporalVAEDecode"]().decode(model, latent, mode="per-frame", tile_size=-1, unique_id="3")
    assert tiles == [0, 40, 32] and frames.shape == (1, 96, 320, 3)
    texts = [e[1] for e in events if e[0] == "text"]
    assert texts[0].startswith("est. peak RAM") and "whole frame (auto)" in texts[0]
    assert "retrying with tile 40" in texts[1]
