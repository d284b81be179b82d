"""Upscale-A-Video models against the official implementation's recorded tensors (../shared/parity/uav).

The tiny UNet and both VAEs load strictly from the recorded official weights, and reproduce the
official forward passes (``unet_io`` cases a/b, ``vae_io`` for both w_lr and the per-frame VAE).
Reached on CPU fp32: UNet max |diff| ~7e-6 (outputs ~2.6), VAEs ~5e-6.
"""
from __future__ import annotations

import json

import pytest
import torch

from vsr_core.loaders.diffusion import DiffusionWeightsError, build_strict, remap_vae_legacy_attention
from vsr_core.loaders.uav import drop_rotary_freqs
from vsr_core.models.uav_unet import UNetVideoModel
from vsr_core.models.uav_vae import AutoencoderKLVideo

ATOL = 5e-5


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def uav(parity_dir):
    return parity_dir / "uav"


@pytest.fixture(scope="module")
def unet(uav):
    config = json.loads((uav / "tiny_unet_config.json").read_text())
    sd = drop_rotary_freqs(_load(uav / "tiny_weights.safetensors"))
    return build_strict(UNetVideoModel, config, sd, "tiny UAV UNet", uav / "tiny_weights.safetensors")


def _vae(uav, kind):
    config = json.loads((uav / f"tiny_vae_{kind}_config.json").read_text())
    sd = remap_vae_legacy_attention(_load(uav / f"tiny_vae_{kind}_weights.safetensors"))
    return build_strict(AutoencoderKLVideo, config, sd, f"tiny vae_{kind}", uav)


def test_official_unet_file_loads_strictly_and_freqs_are_the_only_dropped_keys(uav, unet):
    raw = _load(uav / "tiny_weights.safetensors")
    dropped = set(raw) - set(unet.state_dict())
    n_temporal_attn = sum(k.endswith("attn_temporal.to_q.weight") for k in raw)
    assert all(k.endswith("rotary_emb.freqs") for k in dropped)
    assert len(dropped) == n_temporal_attn + 1  # one per temporal attention + temporal_rotary_emb
    assert set(unet.state_dict()) <= set(raw)
    # a key too many or too few is reported, not ignored
    with pytest.raises(DiffusionWeightsError, match="mid_temp_block.shift_conv.weight"):
        sd = drop_rotary_freqs(raw)
        del sd["mid_temp_block.shift_conv.weight"]
        build_strict(UNetVideoModel, json.loads((uav / "tiny_unet_config.json").read_text()), sd, "UNet", "f")


@pytest.mark.parametrize("case", ["a", "b"])
def test_unet_io_matches_official(uav, unet, case):
    io = _load(uav / "unet_io.safetensors")
    with torch.no_grad():
        out = unet(io[f"{case}.sample"], io[f"{case}.timestep"], io[f"{case}.low_res"],
                   io[f"{case}.encoder_hidden_states"], io[f"{case}.class_labels"])
    ref = io[f"{case}.out"]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < ATOL


def test_vae_video_matches_official_for_both_lr_weights(uav):
    io = _load(uav / "vae_io.safetensors")
    vae = _vae(uav, "video")
    with torch.no_grad():
        for w, key in ((1.0, "out_wlr1"), (0.5, "out_wlr0.5")):
            out = vae.decode(io["z"], io["img_lr"], w_lr=w)
            assert out.shape == (1, 3, 3, 64, 64)
            assert (out - io[f"vae_video.{key}"]).abs().max().item() < ATOL
    # the LR weight changes the image: the conditioning path is live
    assert (io["vae_video.out_wlr1"] - io["vae_video.out_wlr0.5"]).abs().max() > 1e-2


def test_vae_3d_matches_official(uav):
    io = _load(uav / "vae_io.safetensors")
    vae = _vae(uav, "3d")
    with torch.no_grad():
        out = vae.decode(io["z"], io["img_lr"])
        out_without_lr = vae.decode(io["z"])
    assert (out - io["vae_3d.out"]).abs().max().item() < ATOL
    assert torch.equal(out, out_without_lr)  # vae_3d ignores the LR frames
