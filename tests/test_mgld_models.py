"""MGLD model pieces and loading on tiny random weights: SPADE, the temporal layers, the tiny writer in
the official Lightning layout, strict loading errors, unsafe pickles, safetensors conversion."""
import json

import pytest
import torch

from vsr_core.loaders.mgld import (
    MGLDWeightsError,
    convert_to_safetensors,
    load_mgld_model,
    split_mgld_checkpoint,
    tiny_mgld_configs,
    video_vae_state_dict,
    write_tiny_mgld,
)
from vsr_core.loaders.safe_pickle import load_state_dict
from vsr_core.loaders.tiny import randomize_
from vsr_core.models.mgld_unet import SPADE, MGLDUNet, ResBlock, SpatialTemporalConv, StructEncoder


def test_spade_modulates_the_normalised_activation():
    torch.manual_seed(0)
    spade = SPADE(norm_nc=32, label_nc=8)
    x = torch.randn(2, 32, 6, 6) * 3 + 1
    seg = {"6": torch.randn(2, 8, 6, 6)}
    with torch.no_grad():
        for conv in (spade.mlp_gamma, spade.mlp_beta):
            conv.weight.zero_()
        spade.mlp_gamma.bias.fill_(0.5)
        spade.mlp_beta.bias.fill_(-2.0)
        out = spade(x, seg)
        ref = torch.nn.functional.group_norm(x, 32, spade.param_free_norm.weight, spade.param_free_norm.bias)
    torch.testing.assert_close(out, ref * 1.5 - 2.0)
    with pytest.raises(KeyError, match="width 6"):
        spade(x, {"12": seg["6"]})


def test_resblock_dual_depends_on_structure_features():
    block = randomize_(ResBlock(32, 64, 64, semb_channels=8), seed=1).eval()
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(1, 64)
    a, b = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        ya, yb = block(x, emb, {"8": a}), block(x, emb, {"8": b})
    assert ya.shape == (2, 64, 8, 8)
    assert (ya - yb).abs().max() > 1e-2
    with pytest.raises(ValueError, match="struct_cond"):
        block(x, emb)


def test_spatial_temporal_conv_mixes_frames_within_clips_only():
    stc = randomize_(SpatialTemporalConv(4, num_frames=3), seed=2)
    x = torch.randn(6, 4, 5, 5)  # two clips of three frames
    with torch.no_grad():
        y = stc(x)
        x2 = x.clone()
        x2[3:] += 1.0  # change only the second clip
        y2 = stc(x2)
    torch.testing.assert_close(y[:3], y2[:3])
    assert (y[3:] - y2[3:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not a whole number of 3-frame clips"):
        stc(torch.randn(4, 4, 5, 5))
    stc.by_frame = True  # the decoder's memory-lean form: the same equation one frame at a time
    with torch.no_grad():
        torch.testing.assert_close(stc(x), y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stc(x.contiguous(memory_format=torch.channels_last)), y, rtol=1e-5, atol=1e-6)


def test_video_vae_decodes_frame_by_frame_as_in_one_call():
    """Without autograd the CFW decoder runs its 2-D parts and temporal convs one frame at a time and the
    encoder stops at the features CFW needs (memory); the result is the one-call (autograd) result,
    also in channels-last, and the temporal convs still mix frames within a clip only."""
    from vsr_core.models.mgld_vae import MGLDVideoVAE

    vae = randomize_(MGLDVideoVAE.from_config(tiny_mgld_configs()["video_vae"]), 3).eval()
    x = torch.rand(10, 3, 32, 40) * 2 - 1  # two 5-frame segments
    z = torch.randn(10, 4, 4, 5)
    with torch.enable_grad():
        feats_ref = [f.detach() for f in vae.encode(x)[1]]
        ref = vae.decode(z, feats_ref).detach()
    with torch.no_grad():
        feats = vae.encode_features(x)
        out = vae.decode(z, feats)
        from vsr_core.speed import channels_last_

        channels_last_(vae)
        out_cl = vae.decode(z.contiguous(memory_format=torch.channels_last),
                            [f.contiguous(memory_format=torch.channels_last) for f in feats])
    for a, b in zip(feats, feats_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        z2 = z.clone()
        z2[7] += 1.0  # one frame of the second segment
        out2 = vae.decode(z2, feats)
    torch.testing.assert_close(out2[:5], out[:5], rtol=0, atol=1e-5)  # the other segment is untouched
    assert (out2[5:7] - out[5:7]).abs().max() > 1e-4  # its neighbours in the segment see it


def test_tiny_unet_frame_order_matters_and_shapes():
    cfg = tiny_mgld_configs()
    unet = randomize_(MGLDUNet.from_config(cfg["unet"]), 0).eval()
    enc = randomize_(StructEncoder.from_config(cfg["struct_encoder"]), 1).eval()
    x, lr, ctx, t = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8), torch.randn(1, 7, 32), torch.tensor([999])
    perm = torch.tensor([4, 3, 2, 1, 0])
    with torch.no_grad():
        feats = enc(lr, t)
        assert {k: tuple(v.shape) for k, v in feats.items()} == {
            "8": (5, 32, 8, 8), "4": (5, 32, 4, 4), "2": (5, 32, 2, 2), "1": (5, 32, 1, 1)}
        out = unet(x, t, ctx, feats)
        shuffled = unet(x[perm], t, ctx, {k: v[perm] for k, v in feats.items()})
    assert out.shape == (5, 4, 8, 8) and torch.isfinite(out).all()
    assert (shuffled[perm] - out).abs().max() > 1e-3  # the middle block's temporal layers see the segment


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mgld")
    return folder, write_tiny_mgld(folder, seed=0, weights="ckpt")


def test_tiny_writer_official_layout_and_round_trip(tiny):
    folder, paths = tiny
    assert paths["unet"].suffix == ".ckpt"
    raw = torch.load(paths["unet"], weights_only=True)
    assert set(raw) >= {"state_dict", "global_step"}
    parts = split_mgld_checkpoint(raw["state_dict"])
    assert all(parts[p] for p in ("unet", "struct_encoder", "vae", "text_encoder"))
    assert any(k.startswith("flownet_model.") for k in raw["state_dict"])  # present, ignored by the loader
    vae_raw = load_state_dict(paths["video_vae"])
    assert "loss.logvar" in vae_raw and "loss.logvar" not in video_vae_state_dict(vae_raw)

    model = load_mgld_model(paths["unet"], paths["video_vae"], dtype="fp32", configs=paths["configs"])
    assert model.method == "mgld" and model.source["unet"].endswith(".ckpt")
    for name, module, prefix in (("unet", model.unet, "model.diffusion_model."),
                                 ("struct", model.struct_encoder, "structcond_stage_model.")):
        for key, value in module.state_dict().items():
            assert torch.equal(value, raw["state_dict"][prefix + key]), (name, key)
    for key, value in model.video_vae.state_dict().items():
        assert torch.equal(value, vae_raw[key]), key
    from vsr_core.sampling.prompt import prompt_embeddings

    emb = prompt_embeddings(model, "")
    assert emb.shape == (1, 77, 32) and prompt_embeddings(model, "") is emb  # cached per bundle
    with pytest.raises(ValueError):
        model.tokenizer("a photo")  # no vocabulary: only the empty prompt

    again = write_tiny_mgld(folder / "again", seed=0, weights="safetensors")
    same = load_state_dict(again["unet"])
    assert set(same) == set(raw["state_dict"])
    assert all(torch.equal(same[k], raw["state_dict"][k]) for k in same)


@pytest.mark.parametrize("native", ["0", "1"])
def test_bf16_load_of_the_pickle_converts_every_tensor(tiny, monkeypatch, native):
    """dtype bf16 reads the pickle unmapped and converts each tensor (UNet, structure encoder, text side:
    bf16; VAEs: bf16 where bf16 is native, else fp32), the values being the file's rounded once."""
    from vsr_core.loaders import mgld
    from vsr_core.sampling.prompt import prompt_embeddings

    monkeypatch.setenv("VSR_CPU_BF16", native)
    _, paths = tiny
    maps = []
    real = mgld.load_state_dict
    monkeypatch.setattr(mgld, "load_state_dict", lambda path, mmap=True: maps.append(mmap) or real(path, mmap=mmap))
    model = load_mgld_model(paths["unet"], paths["video_vae"], dtype="bf16", configs=paths["configs"])
    vae = torch.bfloat16 if native == "1" else torch.float32
    assert maps == [False, native == "0"]  # the video VAE stays mapped when it is used as stored (fp32)
    raw = torch.load(paths["unet"], weights_only=True)["state_dict"]
    for module, prefix, dt in ((model.unet, "model.diffusion_model.", torch.bfloat16),
                               (model.struct_encoder, "structcond_stage_model.", torch.bfloat16)):
        for key, value in module.state_dict().items():
            assert value.dtype == dt and torch.equal(value, raw[prefix + key].to(dt)), key
    assert {p.dtype for p in model.vae.parameters()} == {vae} == {p.dtype for p in model.video_vae.parameters()}
    assert model.text_encoder is None and prompt_embeddings(model, "").shape == (1, 77, 32)


def test_safetensors_conversion_is_preferred(tiny, tmp_path):
    folder, paths = tiny
    ckpt = tmp_path / "mgldvsr_unet.ckpt"
    ckpt.write_bytes(paths["unet"].read_bytes())
    out = convert_to_safetensors(ckpt)
    assert out == tmp_path / "mgldvsr_unet.safetensors"
    converted, original = load_state_dict(out), load_state_dict(ckpt)
    assert set(converted) == set(original) and all(torch.equal(converted[k], original[k]) for k in original)
    model = load_mgld_model(ckpt, paths["video_vae"], configs=paths["configs"], text_encoder=False)
    assert model.source["unet"] == str(out) and model.text_encoder is None


def test_strict_load_names_file_keys_and_source(tiny, tmp_path):
    folder, paths = tiny
    raw = torch.load(paths["unet"], weights_only=True)
    sd = dict(raw["state_dict"])
    del sd["model.diffusion_model.middle_block.3.temporal_alpha"]
    sd["model.diffusion_model.middle_block.9.bogus"] = torch.zeros(1)
    broken = tmp_path / "broken.ckpt"
    torch.save({"state_dict": sd}, broken)
    with pytest.raises(MGLDWeightsError) as info:
        load_mgld_model(broken, paths["video_vae"], configs=paths["configs"])
    msg = str(info.value)
    assert "broken.ckpt" in msg and "middle_block.3.temporal_alpha" in msg and "middle_block.9.bogus" in msg
    assert "Iceclear/MGLD-VSR" in msg
    # the video VAE checkpoint given as the diffusion checkpoint: a clear message, not a KeyError
    with pytest.raises(MGLDWeightsError, match="no 'model.diffusion_model.\\*' keys"):
        load_mgld_model(paths["video_vae"], paths["video_vae"], configs=paths["configs"])
    with pytest.raises(MGLDWeightsError, match="file not found: .*absent.ckpt"):
        load_mgld_model(tmp_path / "absent.ckpt", paths["video_vae"])


class _Payload:
    def __reduce__(self):
        return (exec, ("import sys; sys._vsr_mgld_pwned = True",))


def test_malicious_checkpoint_is_refused(tiny, tmp_path):
    import sys

    folder, paths = tiny
    evil = tmp_path / "video_vae_cfw.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": _Payload()}, evil)
    with pytest.raises(MGLDWeightsError, match="refused to load .*video_vae_cfw.ckpt.*exec"):
        load_mgld_model(paths["unet"], evil, configs=paths["configs"], text_encoder=False)
    assert not hasattr(sys, "_vsr_mgld_pwned")


def test_shipped_configs_build_the_released_architecture():
    from vsr_core.loaders.mgld import shipped_mgld_configs

    cfg = shipped_mgld_configs()
    with torch.device("meta"):
        unet = MGLDUNet.from_config(cfg["unet"])
        enc = StructEncoder.from_config(cfg["struct_encoder"])
    keys = unet.state_dict()
    assert len(unet.input_blocks) == 12 and len(unet.output_blocks) == 12
    assert keys["middle_block.3.temporal_attn.to_q.weight"].shape == (1280, 1280)
    assert keys["input_blocks.1.0.spade.mlp_shared.0.weight"].shape == (128, 256, 3, 3)
    assert enc.state_dict()["fea_tran.3.out_layers.3.weight"].shape == (256, 256, 3, 3)
    n = sum(v.numel() for v in keys.values())
    assert 0.9e9 < n < 1.1e9, n  # spec §4.4: UNet ~0.9 B
    assert json.dumps(cfg["scheduler"])  # serialisable, for VSRModel.scheduler_config
