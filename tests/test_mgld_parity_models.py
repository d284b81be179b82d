"""MGLD networks against the official implementation's recorded tensors (../shared/parity/mgld): the
tiny checkpoints load strictly from their Lightning-style keys, and one forward of the structure encoder,
the UNet and the CFW video VAE reproduces the recording to ~1e-5."""
import json

import pytest
import torch
from safetensors.torch import load_file

from vsr_core.loaders.mgld import configs_from_official, load_mgld_model

ATOL = 5e-5  # fp32 forward passes through ~30 layers; observed max diffs 4e-6 .. 8e-6


@pytest.fixture(scope="module")
def mgld_dir(parity_dir):
    return parity_dir / "mgld"


@pytest.fixture(scope="module")
def model(mgld_dir):
    cfg = configs_from_official(json.loads((mgld_dir / "tiny_config.json").read_text()),
                                json.loads((mgld_dir / "tiny_video_vae_config.json").read_text()))
    return load_mgld_model(mgld_dir / "tiny_weights.safetensors", mgld_dir / "tiny_video_vae_weights.safetensors",
                           dtype="fp32", configs=cfg)


def _close(out, ref, what):
    diff = (out - ref).abs().max().item()
    assert out.shape == ref.shape, what
    assert diff < ATOL, f"{what}: max |diff| {diff:.2e} (scale {ref.abs().max().item():.2f})"
    return diff


def test_strict_load_covers_every_recorded_key(model, mgld_dir):
    sd = load_file(str(mgld_dir / "tiny_weights.safetensors"))
    n_unet = sum(k.startswith("model.diffusion_model.") for k in sd)
    n_struct = sum(k.startswith("structcond_stage_model.") for k in sd)
    assert len(model.unet.state_dict()) == n_unet
    assert len(model.struct_encoder.state_dict()) == n_struct
    assert sum(p.numel() for p in model.unet.parameters()) == 4545607  # manifest.json params.unet
    assert sum(p.numel() for p in model.struct_encoder.parameters()) == 591776
    assert sum(p.numel() for p in model.vae.parameters()) == 1250759  # first stage
    assert model.method == "mgld" and model.text_encoder is None
    mid = model.unet.middle_block
    assert [type(m).__name__ for m in mid] == ["ResBlock", "SpatialTemporalConv", "Transformer2DModel",
                                              "TemporalAttention", "ResBlock", "SpatialTemporalConv"]
    for i in (1, 3, 5):  # the recorded random temporal_alpha, not a default
        torch.testing.assert_close(mid[i].temporal_alpha.detach(), sd[f"model.diffusion_model.middle_block.{i}.temporal_alpha"])


def test_unet_io(model, mgld_dir):
    io = load_file(str(mgld_dir / "unet_io.safetensors"))
    with torch.no_grad():
        feats = model.struct_encoder(io["struct_in_lr_latent"], io["timestep"])
        assert sorted(feats, key=int) == ["2", "4", "8", "16"]
        for width, f in feats.items():
            _close(f, io[f"struct_cond.{width}"], f"struct_cond.{width}")
        out = model.unet(io["x"], io["timestep"], io["context"], feats)
    _close(out, io["unet.out"], "unet.out")
    _close(out, io["apply_model.out"], "apply_model.out")


def test_video_vae_io(model, mgld_dir):
    io = load_file(str(mgld_dir / "video_vae_io.safetensors"))
    vae = model.video_vae
    with torch.no_grad():
        _, enc_fea = vae.encode(io["im_lq"])
        _close(enc_fea[0], io["enc_fea0"], "enc_fea0")
        _close(enc_fea[1], io["enc_fea1"], "enc_fea1")
        z = io["z_in(samples/scale_factor)"]
        out1 = vae.decode(z, enc_fea, fusion_w=1.0)
        out05 = vae.decode(z, enc_fea, fusion_w=0.5)
    _close(out1, io["out(fusion_w=1.0)"], "out(fusion_w=1.0)")
    _close(out05, io["out(fusion_w=0.5)"], "out(fusion_w=0.5)")
    assert (out1 - out05).abs().max() > 1e-2  # dec_w is not a no-op
