"""The x4-family nodes end to end on tiny random-weight models in the official layouts."""
from __future__ import annotations

import importlib

import pytest
import torch
from pack import comfy_folders, load_pack

from vsr_core.loaders.tiny import write_tiny_sd_x4, write_tiny_sd_x4_single_file, write_tiny_stablevsr

PACK = load_pack()
N = PACK.NODE_CLASS_MAPPINGS
adapter = importlib.import_module(f"{PACK.__name__}.nodes.comfy_adapter")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_stablevsr(root / "vsr" / "stablevsr" / "StableVSR")
    write_tiny_sd_x4(root / "vsr" / "sd_x4" / "x4-folder")
    write_tiny_sd_x4_single_file(root / "vsr" / "sd_x4" / "x4-upscaler-ema.safetensors")
    return root


@pytest.fixture
def use_models(models):
    with comfy_folders(models=models):
        yield models


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 20, 28, generator=g)
    frames = [torch.roll(base, shifts=(0, k), dims=(2, 3)) for k in range(3)]
    return torch.cat(frames).permute(0, 2, 3, 1).contiguous()  # [3, 20, 28, 3]


def _result(out):
    """A sampler node's outputs: V1 ``{"ui": {"text": [estimate]}, "result": (...)}``."""
    assert isinstance(out, dict) and out["ui"]["text"][0].startswith("est. peak "), out
    return out["result"]


def _stablevsr(clip, steps=2, **kw):
    (model,) = N["VSR_LoadDiffusionModel"]().load("stablevsr/StableVSR", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 0)
    (up,) = N["VSR_VideoUpscaler"]().upscale(clip, 4, "bicubic")
    flow = N["VSR_FlowGuidance"]().estimate(up)[0]
    (latent,) = _result(N["VSR_StableVSRSampler"]().sample(model, lr, flow, steps=steps, **kw))
    return model, lr, flow, latent


def test_model_choices_list_every_layout(use_models):
    choices = N["VSR_LoadDiffusionModel"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["stablevsr/StableVSR", "sd_x4/x4-folder", "sd_x4/x4-upscaler-ema.safetensors"]


def test_stablevsr_graph_end_to_end(use_models, clip):
    model, lr, flow, latent = _stablevsr(clip)
    assert model.method == "stablevsr" and model.controlnet is not None
    assert lr["samples"].shape == (3, 4, 20, 28) and lr["vsr_lr"].noise_level is None  # StableVSR: clean LR
    assert latent["samples"].shape == (3, 4, 20, 28) and torch.isfinite(latent["samples"]).all()
    (frames,) = N["VSR_TemporalVAEDecode"]().decode(model, latent)
    assert frames.shape == (3, 80, 112, 3) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    # same seed -> identical; another seed -> different; keep_on_cpu changes nothing
    again = _stablevsr(clip, keep_on_cpu=False)[3]
    assert torch.equal(latent["samples"], again["samples"])
    other = _stablevsr(clip, seed=7)[3]
    assert not torch.equal(latent["samples"], other["samples"])
    # the temporal conditioning changes the result (the ControlNet is really used)
    plain = _stablevsr(clip, temporal_conditioning=False)[3]
    assert (plain["samples"] - latent["samples"]).abs().max() > 1e-4


def test_tiled_decode_matches_shape_and_range(use_models, clip):
    model, _, _, latent = _stablevsr(clip, steps=1)
    (tiled,) = N["VSR_TemporalVAEDecode"]().decode(model, latent, frames_per_chunk=2, tile_size=16, tile_overlap=4)
    assert tiled.shape == (3, 80, 112, 3) and 0 <= tiled.min() and tiled.max() <= 1


@pytest.mark.parametrize("choice", ["sd_x4/x4-folder", "sd_x4/x4-upscaler-ema.safetensors"])
def test_per_frame_baseline(use_models, clip, choice):
    (model,) = N["VSR_LoadDiffusionModel"]().load(choice, "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 30)
    assert lr["vsr_lr"].noise_level == 30
    prompt = "a photo of a cat" if choice.endswith("folder") else ""  # the single file has no vocabulary
    (latent,) = _result(N["VSR_X4PerFrameSampler"]().sample(model, lr, prompt, "", guidance_scale=4.0, steps=2))
    assert latent["samples"].shape == (3, 4, 20, 28) and torch.isfinite(latent["samples"]).all()
    (frames,) = N["VSR_TemporalVAEDecode"]().decode(model, latent)
    assert frames.shape == (3, 80, 112, 3)


def test_clear_errors(use_models, clip):
    with pytest.raises(FileNotFoundError, match="models/vsr/stablevsr"):
        N["VSR_LoadDiffusionModel"]().load("stablevsr/Missing", "fp32")
    (x4,) = N["VSR_LoadDiffusionModel"]().load("sd_x4/x4-folder", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, x4, 20)
    with pytest.raises(ValueError, match="no ControlNet"):
        N["VSR_StableVSRSampler"]().sample(x4, lr, None, steps=1)
    (svr,) = N["VSR_LoadDiffusionModel"]().load("stablevsr/StableVSR", "fp32")
    with pytest.raises(ValueError, match="LR Latent Encoder"):
        N["VSR_StableVSRSampler"]().sample(svr, {"samples": torch.zeros(3, 4, 20, 28)}, None, steps=1)
    (up,) = N["VSR_VideoUpscaler"]().upscale(clip[:2], 4, "bicubic")
    flow2 = N["VSR_FlowGuidance"]().estimate(up)[0]
    (lr3,) = N["VSR_LatentEncoderLR"]().encode(clip, svr, 0)
    with pytest.raises(ValueError, match="same clip"):
        N["VSR_StableVSRSampler"]().sample(svr, lr3, flow2, steps=1)
    with pytest.raises(ValueError, match="no tokenizer|vocabulary"):
        (single,) = N["VSR_LoadDiffusionModel"]().load("sd_x4/x4-upscaler-ema.safetensors", "fp32")
        N["VSR_X4PerFrameSampler"]().sample(single, lr, "a cat", "", steps=1)


def test_cancel_stops_within_one_frame_step(use_models, clip, monkeypatch):
    (model,) = N["VSR_LoadDiffusionModel"]().load("stablevsr/StableVSR", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 0)
    flow = N["VSR_FlowGuidance"]().estimate(N["VSR_VideoUpscaler"]().upscale(clip, 4, "bicubic")[0])[0]
    calls = []

    class Stop(Exception):
        pass

    def fake_progress(total, uid=None, **display):
        def tick(done, total_=None):
            calls.append(done)
            if done >= 2:
                raise Stop()
        return tick

    monkeypatch.setattr(adapter, "Progress", fake_progress)
    with pytest.raises(Stop):
        N["VSR_StableVSRSampler"]().sample(model, lr, flow, steps=5)
    assert calls == [1, 2]  # the 2nd frame of step 1 out of 15 frame-steps


@pytest.fixture(scope="module")
def method_models(tmp_path_factory):
    from vsr_core.loaders.mgld import write_tiny_mgld
    from vsr_core.loaders.uav import write_tiny_uav

    root = tmp_path_factory.mktemp("methods")
    write_tiny_uav(root / "vsr" / "upscale_a_video" / "uav")
    write_tiny_mgld(root / "vsr" / "mgld" / "MGLD")
    return root


@pytest.fixture
def use_method_models(method_models):
    with comfy_folders(models=method_models):
        yield method_models


def test_uav_sampler_node(use_method_models, clip):
    choices = N["VSR_LoadDiffusionModel"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["upscale_a_video/uav", "mgld/MGLD"]
    (model,) = N["VSR_LoadDiffusionModel"]().load("upscale_a_video/uav", "fp32")
    (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 120)
    flow = N["VSR_FlowGuidance"]().estimate(clip, occlusion="uav")[0]
    sampler = N["VSR_UpscaleAVideoSampler"]()
    (lat,) = _result(sampler.sample(model, lr, "a cat", "blur", guidance_scale=6.0, steps=2, propagation_steps="1",
                                    window=2, overlap=1, flow=flow))
    assert lat["samples"].shape == (3, 4, 20, 28) and torch.isfinite(lat["samples"]).all()
    (frames,) = N["VSR_TemporalVAEDecode"]().decode(model, lat, color_fix="wavelet")
    assert frames.shape == (3, 80, 112, 3) and 0 <= frames.min() and frames.max() <= 1
    (again,) = _result(sampler.sample(model, lr, "a cat", "blur", guidance_scale=6.0, steps=2,
                                      propagation_steps="1", window=2, overlap=1, flow=flow))
    assert torch.equal(lat["samples"], again["samples"])
    (last,) = _result(sampler.sample(model, lr, "a cat", "blur", guidance_scale=6.0, steps=2, propagation_steps="-1",
                                     window=2, overlap=1, flow=flow))
    assert torch.equal(last["samples"], lat["samples"])  # -1 counts from the end: the last of 2 steps is 1
    with pytest.raises(ValueError, match="no flow is connected"):
        sampler.sample(model, lr, steps=2, propagation_steps="1")
    with pytest.raises(ValueError, match="outside 0..1"):
        sampler.sample(model, lr, steps=2, propagation_steps="5", flow=flow)
    with pytest.raises(ValueError, match="separated by commas"):
        sampler.sample(model, lr, steps=2, propagation_steps="a,b", flow=flow)


def test_uav_propagation_steps_are_checked_at_queue_time():
    """ComfyUI calls VALIDATE_INPUTS with the widget values before any node runs; a linked input arrives as
    None, an unconnected optional one not at all."""
    from vsr_core.sampling.propagation import resolve_propagation_steps

    check = N["VSR_UpscaleAVideoSampler"].VALIDATE_INPUTS
    msg = check(steps=20, propagation_steps="24,26,28", flow=None)
    assert msg.startswith("propagation_steps 24, 26, 28 are outside 0..19") and "instead: -6,-4,-2" in msg
    assert check(steps=30, propagation_steps="24,26,28", flow=None) is True  # saved workflows run unchanged
    for steps, indices in ((20, [14, 16, 18]), (30, [24, 26, 28])):
        assert check(steps=steps, propagation_steps="-6,-4,-2", flow=None) is True
        assert resolve_propagation_steps("-6,-4,-2", steps) == indices
    assert check(steps=2, propagation_steps="-1", flow=None) is True
    assert check(steps=30, propagation_steps="") is True and check() is True
    assert "no flow is connected" in check(steps=30, propagation_steps="-1")
    assert "separated by commas" in check(steps=None, propagation_steps="24;x", flow=None)
    assert check(steps=None, propagation_steps="99", flow=None) is True  # steps linked: checked at run time
    assert check(steps=30, propagation_steps=None) is True  # propagation_steps linked
    assert "1..1000" in check(steps=0, propagation_steps="") and "1..1000" in check(steps=1001)


def test_mgld_sampler_node(use_method_models, clip):
    (model,) = N["VSR_LoadDiffusionModel"]().load("mgld/MGLD", "fp32")
    assert model.method == "mgld" and model.video_vae is not None and model.struct_encoder is not None
    flow = N["VSR_FlowGuidance"]().estimate(clip)[0]
    sampler = N["VSR_MGLDSampler"]()
    with pytest.raises(ValueError, match="smaller than segment"):
        sampler.sample(model, clip, flow, steps=1, segment=2, segment_overlap=2)
    (lat,) = _result(sampler.sample(model, clip, flow, steps=2, segment=2, segment_overlap=1, min_side=0))
    assert lat["samples"].shape[0] == 3 and torch.isfinite(lat["samples"]).all()
    (frames,) = N["VSR_TemporalVAEDecode"]().decode(model, lat, vae_weight=0.5, color_fix="adain")
    assert frames.shape == (3, 80, 112, 3) and 0 <= frames.min() and frames.max() <= 1
    (auto,) = N["VSR_TemporalVAEDecode"]().decode(model, lat, vae_weight=0.5)  # MGLD publishes AdaIN
    (plain,) = N["VSR_TemporalVAEDecode"]().decode(model, lat, vae_weight=0.5, color_fix="none")
    assert torch.equal(auto, frames) and not torch.equal(plain, frames)
    (uav,) = N["VSR_LoadDiffusionModel"]().load("upscale_a_video/uav", "fp32")
    with pytest.raises(ValueError, match="needs an MGLD model"):
        sampler.sample(uav, clip, flow, steps=1)
    with pytest.raises(ValueError, match="same clip"):
        sampler.sample(model, clip[:2], flow, steps=1)
