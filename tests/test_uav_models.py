"""Upscale-A-Video models and loader on tiny random weights (no shared data needed).

The video UNet reduces to diffusers' UNet2DConditionModel when its temporal layers are the identity,
its temporal layers do mix frames otherwise, the tiny writer round-trips through the strict loader,
and bad folders/inputs fail with messages that say what is wrong and where to get the files.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from vsr_core.loaders.diffusion import DiffusionWeightsError
from vsr_core.loaders.uav import (
    TINY_UAV_UNET,
    add_rotary_freqs,
    drop_rotary_freqs,
    load_uav_model,
    tiny_uav_modules,
    write_tiny_uav,
)
from vsr_core.models.uav_unet import temporal_parameter_names, zero_temporal_


@pytest.fixture(scope="module")
def mods():
    return tiny_uav_modules(seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_uav(tmp_path_factory.mktemp("uav") / "upscale_a_video", seed=3)


def _inputs(b=1, t=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, t, h, w, generator=g), torch.rand(b, 3, t, h, w, generator=g) * 2 - 1,
            torch.randn(b, 7, 32, generator=g))


def _spatial_unet(video_unet):
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in TINY_UAV_UNET.items()
           if k not in ("_class_name", "down_temporal_idx", "mid_temporal", "up_temporal_idx",
                        "temporal_module_config", "max_noise_level")}
    cfg["down_block_types"] = [s.replace("3D", "2D") for s in cfg["down_block_types"]]
    cfg["up_block_types"] = [s.replace("3D", "2D") for s in cfg["up_block_types"]]
    unet2d = UNet2DConditionModel.from_config(cfg).eval()
    temporal = set(temporal_parameter_names(video_unet))
    spatial = {k: v for k, v in video_unet.state_dict().items() if k not in temporal}
    unet2d.load_state_dict(spatial, strict=True)  # the spatial names ARE diffusers' names
    return unet2d


def test_identity_temporal_layers_give_the_2d_unet_frame_by_frame(mods):
    import copy

    # float64: random tiny weights amplify fp32 rounding (summation order differs) up to ~1e-2
    video = zero_temporal_(copy.deepcopy(mods["unet"])).double()
    unet2d = _spatial_unet(video).double()
    x, lr, ctx = (a.double() for a in _inputs(b=2, t=1))
    with torch.no_grad():
        out = video(x, 250, lr, ctx, torch.tensor([20, 300]))
        ref = unet2d(torch.cat([x, lr], 1)[:, :, 0], 250, ctx, class_labels=torch.tensor([20, 300])).sample
        assert (out[:, :, 0] - ref).abs().max() < 1e-9
        # a clip of one repeated frame: every frame equals the 2-D result (the resnets' GroupNorm pools
        # statistics over the clip, as the official model does, so only identical frames reduce exactly)
        clip = video(x.expand(-1, -1, 3, -1, -1), 250, lr.expand(-1, -1, 3, -1, -1), ctx, torch.tensor([20, 300]))
        assert (clip - ref[:, :, None]).abs().max() < 1e-7


def test_temporal_layers_mix_frames(mods):
    unet = mods["unet"]
    x, lr, ctx = _inputs(t=4)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    with torch.no_grad():
        a, b = unet(x, 500, lr, ctx, 120), unet(x2, 500, lr, ctx, 120)
    assert a.shape == x.shape
    assert (a[:, :, 3] - b[:, :, 3]).abs().max() > 1e-3  # frame 0 reaches frame 3
    assert torch.isfinite(a).all()


def test_official_zero_init(mods):
    from vsr_core.models.uav_unet import UNetVideoModel

    fresh = UNetVideoModel.from_config(TINY_UAV_UNET)
    sd = fresh.state_dict()
    zero = [k for k in sd if ("attn_temporal.to_out.0.weight" in k or "shift_conv" in k)]
    assert zero and all(sd[k].abs().max() == 0 for k in zero)
    assert sd["down_blocks.1.attentions.0.resblock_temporal.conv2.weight"].abs().max() > 0  # no zero init there


def test_noise_level_and_layout_checked(mods):
    x, lr, ctx = _inputs(t=2)
    with pytest.raises(ValueError, match="noise level"):
        mods["unet"](x, 10, lr, ctx, 351)
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        mods["unet"](x[:, :, 0], 10, lr[:, :, 0], ctx, 10)
    with pytest.raises(ValueError, match="LR frames"):
        mods["vae_video"].decode(torch.randn(1, 4, 2, 8, 8))


def test_rotary_freqs_round_trip_and_reject_wrong_values(mods):
    sd = mods["unet"].state_dict()
    full = add_rotary_freqs(sd)
    assert "temporal_rotary_emb.freqs" in full and len(full) > len(sd)
    assert drop_rotary_freqs(full).keys() == sd.keys()
    full["temporal_rotary_emb.freqs"] = full["temporal_rotary_emb.freqs"] * 2
    with pytest.raises(DiffusionWeightsError, match="rotary"):
        drop_rotary_freqs(full)


def test_tiny_writer_round_trips_through_loader(folder, mods):
    assert (folder / "unet" / "unet_video.bin").is_file() and (folder / "vae" / "vae_video.bin").is_file()
    model = load_uav_model(folder, dtype="fp32", vae="video")
    assert model.method == "upscale_a_video" and model.config["vae_kind"] == "video"
    assert set(model.config["vaes"]) == {"video", "3d"} and model.vae is model.config["vaes"]["video"]
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.low_res_scheduler_config["_class_name"] == "DDPMScheduler"
    assert model.config["max_noise_level"] == 350 and model.scaling_factor == pytest.approx(0.08333)
    for name, ref in (("unet", mods["unet"]), ("vae_video", mods["vae_video"]), ("vae_3d", mods["vae_3d"])):
        got = model.unet if name == "unet" else model.config["vaes"][name[4:]]
        for k, v in ref.state_dict().items():
            assert torch.equal(got.state_dict()[k], v), (name, k)
    z = torch.randn(1, 4, 3, 8, 8)
    lr = torch.rand(1, 3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        img = model.vae.decode(z, lr)
    assert img.shape == (1, 3, 3, 32, 32) and torch.isfinite(img).all()
    ids = model.tokenizer("a cat")
    # the published prompts were encoded at load time; the encoder is rebuilt only for another prompt
    from vsr_core.sampling.prompt import prompt_embeddings
    from vsr_core.sampling.uav import UAV_A_PROMPT, UAV_N_PROMPT

    assert model.text_encoder is None and model.text_reload is not None and ids is not None
    assert {k[1] for k in model._prompt_cache} == {UAV_A_PROMPT, UAV_N_PROMPT, ""}
    kept = load_uav_model(folder, dtype="fp32", vae="video", keep_text_encoder=True)
    for p in (UAV_A_PROMPT, "a cat"):
        assert torch.equal(prompt_embeddings(model, p), prompt_embeddings(kept, p)), p


@pytest.mark.parametrize("native", ["0", "1"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_load_reads_the_weights_in_it(folder, mods, dtype, native, monkeypatch):
    """The UNet file is read straight into the dtype (its rotary tables too, checked in that dtype); the
    VAEs are bf16 beside a bf16 UNet where bf16 is native, else fp32 (never fp16)."""
    import os

    monkeypatch.setenv("VSR_CPU_BF16", native)
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = load_uav_model(folder, dtype=dtype, vae="video")
    assert {p.dtype for p in model.unet.parameters()} == {want}
    for k, v in mods["unet"].state_dict().items():
        assert torch.equal(model.unet.state_dict()[k], v.to(want)), k
    vae = torch.bfloat16 if want == torch.bfloat16 and os.environ.get("VSR_CPU_BF16") == "1" else torch.float32
    assert model.vae_dtype == vae and {p.dtype for p in model.vae.parameters()} == {vae}


def test_vae_3d_choice_and_missing_other_vae(folder, tmp_path):
    copy = tmp_path / "uav"
    shutil.copytree(folder, copy)
    (copy / "vae" / "vae_video.bin").unlink()
    model = load_uav_model(copy, vae="3d", text_encoder=False)
    assert model.config["vae_kind"] == "3d" and set(model.config["vaes"]) == {"3d"}
    assert not model.vae.is_conditioned and model.text_encoder is None
    with pytest.raises(DiffusionWeightsError, match=r"vae_video\.bin.*drive\.google\.com"):
        load_uav_model(copy, vae="video", text_encoder=False)


def test_missing_and_mismatching_files_are_named(folder, tmp_path):
    copy = tmp_path / "uav"
    shutil.copytree(folder, copy)
    (copy / "unet" / "unet_video.bin").unlink()
    with pytest.raises(DiffusionWeightsError, match=r"video UNet.*unet_video\.bin.*drive\.google\.com"):
        load_uav_model(copy, text_encoder=False)
    # a 2-D x4 UNet file where the video UNet belongs: the temporal keys are reported missing
    sd = {k: v for k, v in torch.load(folder / "unet" / "unet_video.bin", weights_only=True).items()
          if "temp" not in k}
    torch.save(sd, copy / "unet" / "unet_video.bin")
    with pytest.raises(DiffusionWeightsError, match="missing key"):
        load_uav_model(copy, text_encoder=False)
    with pytest.raises(DiffusionWeightsError, match="not a folder"):
        load_uav_model(tmp_path / "nowhere")


def test_text_keys_and_values_projected_once_per_clip_match_diffusers_on_the_repeated_context():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from vsr_core.models.uav_unet import clip_cross_attention

    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=24, heads=2, dim_head=16, bias=False).eval()
    x, ctx, frames = torch.randn(2 * 3, 10, 32), torch.randn(2, 7, 24), 3
    calls = []
    attn.to_k.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        ours = clip_cross_attention(attn, x, ctx, frames)
        assert calls == [2]  # keys projected for the 2 clips, not the 6 frames
        ref = attn(x, encoder_hidden_states=ctx.repeat_interleave(frames, dim=0))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        # the clips stay apart: frames of clip 1 see clip 1's context only
        solo = clip_cross_attention(attn, x[3:], ctx[1:], frames)
        torch.testing.assert_close(ours[3:], solo, rtol=1e-5, atol=1e-6)
        # another processor (a user's, or a patched one) gets diffusers' own call on the repeated context
        attn.set_processor(AttnProcessor())
        calls.clear()
        torch.testing.assert_close(clip_cross_attention(attn, x, ctx, frames), ref, rtol=1e-5, atol=1e-6)
        assert calls == [6]
        square = Attention(32, heads=2, dim_head=16, bias=False).eval()  # no context: diffusers' self-attention
        torch.testing.assert_close(clip_cross_attention(square, x, None, frames), square(x))
        with pytest.raises(ValueError, match="frame batches"):
            clip_cross_attention(attn, x[:5], ctx, frames)


def test_feed_forward_by_rows_equals_all_rows_at_once():
    from vsr_core.models.uav_unet import by_rows

    torch.manual_seed(0)
    ff = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 12), torch.nn.GELU())
    x = torch.randn(5, 7, 8)  # 35 tokens
    seen = []
    with torch.no_grad():
        out = by_rows(lambda r: (seen.append(r.shape[0]), ff(r))[1], x, rows=16)
        torch.testing.assert_close(out, ff(x))
    assert out.shape == (5, 7, 12) and seen == [16, 16, 3]
