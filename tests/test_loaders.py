"""Loading the SD x4 upscaler and StableVSR from their official layouts (vsr_core.loaders.diffusion).

Tiny random-weight checkpoints of every accepted layout are written by ``vsr_core.loaders.tiny`` and must
load strictly into networks that compute what the written ones compute; the LDM single file must give
exactly the weights of the diffusers folder of the same seed; broken folders must fail with messages
naming the file, what was expected and where to get it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vsr_core.loaders.diffusion import (
    DiffusionWeightsError,
    detect_layout,
    diffusers_unet_to_ldm,
    diffusers_vae_to_ldm,
    ldm_unet_to_diffusers,
    ldm_vae_to_diffusers,
    load_diffusion_model,
    remap_vae_legacy_attention,
    resolve_dtype,
    shipped_config,
    split_ldm_checkpoint,
)
from vsr_core.loaders.tiny import (
    legacy_vae_attention,
    tiny_modules,
    tiny_single_file_configs,
    write_tiny_sd_x4,
    write_tiny_sd_x4_single_file,
    write_tiny_stablevsr,
)
from vsr_core.models.bundle import VSRModel

SEED = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    write_tiny_stablevsr(root / "stablevsr" / "StableVSR", seed=SEED)
    write_tiny_sd_x4(root / "sd_x4" / "x4-upscaler", seed=SEED)
    write_tiny_sd_x4_single_file(root / "sd_x4" / "x4-upscaler-ema.safetensors", seed=SEED)
    return root


@pytest.fixture(scope="module")
def written():
    """The networks the writers saved, built again in memory."""
    return {kind: tiny_modules(kind, SEED) for kind in ("stablevsr", "sd_x4")}


@pytest.fixture(scope="module")
def stablevsr(tiny_dir):
    return load_diffusion_model(tiny_dir / "stablevsr" / "StableVSR", keep_text_encoder=True)


@pytest.fixture(scope="module")
def x4_folder(tiny_dir):
    return load_diffusion_model(tiny_dir / "sd_x4" / "x4-upscaler", keep_text_encoder=True)


@pytest.fixture(scope="module")
def x4_single(tiny_dir):
    return load_diffusion_model(tiny_dir / "sd_x4" / "x4-upscaler-ema.safetensors", keep_text_encoder=True)


def _inputs(unet, seed=0, h=8, w=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, unet.config.in_channels, h, w, generator=g)
    ctx = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    return x, ctx


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


# ------------------------------------------------------------------------------------------ layouts
def test_detect_layout_of_each_official_layout(tiny_dir):
    assert detect_layout(tiny_dir / "stablevsr" / "StableVSR") == "stablevsr"
    assert detect_layout(tiny_dir / "sd_x4" / "x4-upscaler") == "sd_x4_diffusers"
    assert detect_layout(tiny_dir / "sd_x4" / "x4-upscaler-ema.safetensors") == "sd_x4_single_file"


def test_detect_layout_errors_say_what_is_accepted(tiny_dir, tmp_path):
    with pytest.raises(DiffusionWeightsError, match="not found.*claudiom4sir/StableVSR"):
        detect_layout(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusionWeightsError, match="no unet/ or controlnet/.*stable-diffusion-x4-upscaler"):
        detect_layout(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DiffusionWeightsError, match="not a weight file"):
        detect_layout(tmp_path / "notes.txt")
    # One component of a diffusers folder picked instead of the folder.
    unet_file = tiny_dir / "sd_x4" / "x4-upscaler" / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(DiffusionWeightsError, match="component of a diffusers folder"):
        detect_layout(unet_file)


# ------------------------------------------------------------------------------------- round trips
@torch.no_grad()
def test_stablevsr_folder_round_trip(stablevsr, written):
    written = written["stablevsr"]
    assert isinstance(stablevsr, VSRModel) and stablevsr.method == "stablevsr"
    for name in ("unet", "controlnet", "vae"):
        assert _same_state(getattr(stablevsr, name), written[name]), name
    # Zero-initialised layers (ControlNet's zero convs) were randomised, so a misplaced tensor would show.
    assert stablevsr.controlnet.controlnet_mid_block.weight.abs().sum() > 0
    x, ctx = _inputs(stablevsr.unet)
    t = torch.tensor([501])
    assert torch.equal(stablevsr.unet(x, t, ctx).sample, written["unet"](x, t, ctx).sample)
    cond = torch.rand(1, 3, 32, 48) * 2 - 1
    ours = stablevsr.controlnet(x, t, ctx, cond, return_dict=False)
    ref = written["controlnet"](x, t, ctx, cond, return_dict=False)
    assert all(torch.equal(a, b) for a, b in zip(ours[0], ref[0])) and torch.equal(ours[1], ref[1])
    z = torch.randn(1, 4, 8, 12)
    assert torch.equal(stablevsr.vae.decode(z).sample, written["vae"].decode(z).sample)


@torch.no_grad()
def test_x4_folder_round_trip_with_legacy_vae_names(tiny_dir, x4_folder, written):
    vae_file = tiny_dir / "sd_x4" / "x4-upscaler" / "vae" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(vae_file), "pt") as f:
        keys = list(f.keys())
    assert any(".attentions.0.query." in k for k in keys) and not any(".to_q." in k for k in keys)
    written = written["sd_x4"]
    assert _same_state(x4_folder.unet, written["unet"]) and _same_state(x4_folder.vae, written["vae"])
    x, ctx = _inputs(x4_folder.unet)
    t, labels = torch.tensor([999]), torch.tensor([20])
    assert torch.equal(x4_folder.unet(x, t, ctx, class_labels=labels).sample,
                       written["unet"](x, t, ctx, class_labels=labels).sample)
    z = torch.randn(1, 4, 8, 12)
    assert torch.equal(x4_folder.vae.decode(z).sample, written["vae"].decode(z).sample)


@torch.no_grad()
def test_single_file_equals_the_diffusers_folder_of_the_same_weights(x4_folder, x4_single):
    for name in ("unet", "vae", "text_encoder"):
        assert _same_state(getattr(x4_single, name), getattr(x4_folder, name)), name
    x, ctx = _inputs(x4_folder.unet, seed=1)
    t, labels = torch.tensor([250]), torch.tensor([100])
    assert torch.equal(x4_single.unet(x, t, ctx, class_labels=labels).sample,
                       x4_folder.unet(x, t, ctx, class_labels=labels).sample)
    # The empty prompt encodes identically although the single file has no vocabulary.
    ids_single, ids_folder = x4_single.tokenizer([""]), x4_folder.tokenizer([""])
    assert torch.equal(ids_single, ids_folder)
    # (last-bit tolerance only: the two text encoders were read by different file readers)
    torch.testing.assert_close(x4_single.text_encoder(ids_single), x4_folder.text_encoder(ids_folder),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no tokenizer"):
        x4_single.tokenizer(["a cat"])
    assert x4_folder.tokenizer(["a cat"]).shape == (1, 77)


def test_single_file_ckpt_and_tokenizer_beside_it(tiny_dir, tmp_path, x4_folder):
    ckpt = write_tiny_sd_x4_single_file(tmp_path / "x4-upscaler-ema.ckpt", seed=SEED)
    with pytest.raises(DiffusionWeightsError, match="shape mismatch"):  # tiny weights vs the real x4 configs
        load_diffusion_model(ckpt, text_encoder=False)
    shutil.copytree(tiny_dir / "sd_x4" / "x4-upscaler" / "tokenizer", tmp_path / "tokenizer")
    model = load_diffusion_model(ckpt, configs=tiny_single_file_configs(), keep_text_encoder=True)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_state(getattr(model, name), getattr(x4_folder, name)), name
    assert torch.equal(model.tokenizer(["a cat"]), x4_folder.tokenizer(["a cat"]))


def test_bin_weight_files_load_like_safetensors(tmp_path, stablevsr):
    folder = write_tiny_stablevsr(tmp_path / "StableVSR", seed=SEED, weights="bin", text=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    model = load_diffusion_model(folder, text_encoder=False)
    for name in ("unet", "controlnet", "vae"):
        assert _same_state(getattr(model, name), getattr(stablevsr, name)), name
    x4 = write_tiny_sd_x4(tmp_path / "x4", seed=SEED, weights="bin", text=False)
    assert load_diffusion_model(x4, text_encoder=False).vae is not None


# ------------------------------------------------------------------------------------ bundle config
def test_bundle_config_and_schedulers(stablevsr, x4_folder, x4_single):
    for m in (stablevsr, x4_folder, x4_single):
        assert m.config["vae_scale_factor"] == 4 and m.vae_scale_factor == 4
        assert m.config["scaling_factor"] == pytest.approx(0.08333) and m.scaling_factor == pytest.approx(0.08333)
        assert m.config["max_noise_level"] == 350
        assert (m.config["latent_channels"], m.config["lr_channels"]) == (4, 3)
        assert m.scheduler_config["prediction_type"] == "v_prediction"
        assert m.vae_dtype == torch.float32 and m.text_encoder is not None
    assert stablevsr.controlnet is not None and not stablevsr.config["uses_class_labels"]
    assert stablevsr.low_res_scheduler_config is None
    for m in (x4_folder, x4_single):
        assert m.method == "sd_x4" and m.controlnet is None and m.config["uses_class_labels"]
        assert m.low_res_scheduler_config["clip_sample"] is True
        assert m.low_res_scheduler_config["prediction_type"] == "epsilon"
    assert x4_single.source["configs"] == "embedded"


def test_method_selection(tiny_dir):
    per_frame = load_diffusion_model(tiny_dir / "stablevsr" / "StableVSR", method="sd_x4", text_encoder=False)
    assert per_frame.method == "sd_x4" and per_frame.controlnet is None
    assert per_frame.low_res_scheduler_config is None  # StableVSR's UNet takes no noise-level label
    with pytest.raises(DiffusionWeightsError, match="without StableVSR's ControlNet.*claudiom4sir/StableVSR"):
        load_diffusion_model(tiny_dir / "sd_x4" / "x4-upscaler", method="stablevsr")
    with pytest.raises(ValueError, match="method must be"):
        load_diffusion_model(tiny_dir / "sd_x4" / "x4-upscaler", method="uav")


# ------------------------------------------------------------------------------------------- dtypes
def test_resolve_dtype(monkeypatch):
    monkeypatch.setenv("VSR_CPU_BF16", "0")  # an AVX2 CPU: bf16 emulated, slow
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("VSR_CPU_BF16", "1")  # AVX512-BF16 / AMX: bf16 weights, twice as fast, half the memory
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("int8", "cpu")


@pytest.mark.parametrize("native", ["0", "1"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32", "auto"])
def test_dtype_option_and_the_vae_dtype(tiny_dir, monkeypatch, dtype, native):
    """The UNet, ControlNet and text encoder take the dtype; the VAE is fp32, or bf16 beside a bf16 UNet
    where bf16 is native; never fp16 (the x4 VAE overflows there)."""
    monkeypatch.setenv("VSR_CPU_BF16", native)
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                "auto": torch.bfloat16 if native == "1" else torch.float32}[dtype]
    m = load_diffusion_model(tiny_dir / "stablevsr" / "StableVSR", dtype=dtype, keep_text_encoder=True)
    assert m.dtype == expected
    for name in ("unet", "controlnet", "text_encoder"):
        assert {p.dtype for p in getattr(m, name).parameters()} == {expected}, name
    vae = torch.bfloat16 if expected == torch.bfloat16 and native == "1" else torch.float32
    assert {p.dtype for p in m.vae.parameters()} == {vae}
    assert m.dtype_for("vae") == vae and m.device == torch.device("cpu")


# ------------------------------------------------------------------------------------------- text side
def test_the_text_encoder_is_not_kept_and_encodes_before_the_unet_is_read(tiny_dir, stablevsr, monkeypatch):
    """By default the loader encodes the empty prompt, drops the encoder before it reads the UNet, and
    builds it again from its file only for a new prompt, for that one encode."""
    import gc
    import weakref

    from vsr_core.loaders import clip, diffusion
    from vsr_core.sampling.prompt import prompt_embeddings

    built, alive_at_unet = [], []
    real_load, real_component = clip.load_text_encoder, diffusion._load_component

    def load_text_encoder(*a, **k):
        enc = real_load(*a, **k)
        built.append(weakref.ref(enc))
        return enc

    def component(root, sub, *a, **k):
        gc.collect()
        alive_at_unet.extend(sub for r in built if r() is not None)
        return real_component(root, sub, *a, **k)

    monkeypatch.setattr(clip, "load_text_encoder", load_text_encoder)
    monkeypatch.setattr(diffusion, "_load_component", component)
    m = load_diffusion_model(tiny_dir / "stablevsr" / "StableVSR", dtype="fp32")
    assert m.text_encoder is None and m.text_reload is not None and len(built) == 1
    assert alive_at_unet == []  # encoded and freed before the UNet, VAE and ControlNet were read
    # the cached empty prompt is what the kept encoder computes, and needs no reload
    empty = prompt_embeddings(m, "")
    assert len(built) == 1
    torch.testing.assert_close(empty, prompt_embeddings(stablevsr, ""), rtol=0, atol=0)
    # a new prompt: one reload, one encode, nothing kept
    x4 = load_diffusion_model(tiny_dir / "sd_x4" / "x4-upscaler", dtype="fp32")
    built.clear()
    cat = prompt_embeddings(x4, "a cat")
    assert len(built) == 1 and x4.text_encoder is None
    gc.collect()
    assert built[0]() is None
    assert prompt_embeddings(x4, "a cat") is cat and len(built) == 1  # cached


def test_single_file_text_side_reloads_only_the_text_keys(tiny_dir, x4_folder, tmp_path, monkeypatch):
    from vsr_core.loaders import common
    from vsr_core.sampling.prompt import prompt_embeddings

    bare = load_diffusion_model(tiny_dir / "sd_x4" / "x4-upscaler-ema.safetensors", dtype="fp32")
    shutil.copy(tiny_dir / "sd_x4" / "x4-upscaler-ema.safetensors", tmp_path / "x4-upscaler-ema.safetensors")
    shutil.copytree(tiny_dir / "sd_x4" / "x4-upscaler" / "tokenizer", tmp_path / "tokenizer")
    m = load_diffusion_model(tmp_path / "x4-upscaler-ema.safetensors", dtype="fp32")  # a vocabulary beside it
    assert bare.text_encoder is None and m.text_encoder is None
    read = []
    real = common.read_safetensors
    monkeypatch.setattr(common, "read_safetensors",
                        lambda path, dtype=None, keep=None: read.append(keep) or real(path, dtype, keep))
    with torch.no_grad():
        want = x4_folder.text_encoder(x4_folder.tokenizer([""]))
    torch.testing.assert_close(prompt_embeddings(m, ""), want.float(), rtol=1e-6, atol=1e-6)
    assert read == []  # "" was encoded at load time
    with pytest.raises(ValueError, match="no tokenizer"):  # the bare single file has no vocabulary
        prompt_embeddings(bare, "a cat")
    assert read == []  # refused by the tokenizer before the encoder was read again
    with torch.no_grad():
        want = x4_folder.text_encoder(x4_folder.tokenizer(["a cat"]))
    torch.testing.assert_close(prompt_embeddings(m, "a cat"), want.float(), rtol=1e-6, atol=1e-6)
    assert len(read) == 1 and read[0] is not None and read[0]("cond_stage_model.model.ln_final.weight") \
        and not read[0]("model.diffusion_model.out.2.weight")


# ------------------------------------------------------------------------------------------- errors
def _copy(tiny_dir, tmp_path, which="sd_x4/x4-upscaler"):
    dst = tmp_path / which.split("/")[-1]
    shutil.copytree(tiny_dir / which, dst)
    return dst


def test_missing_weight_file_names_file_and_source(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(DiffusionWeightsError) as err:
        load_diffusion_model(folder)
    msg = str(err.value)
    assert str(folder / "vae" / "diffusion_pytorch_model.safetensors") in msg
    assert "stabilityai/stable-diffusion-x4-upscaler" in msg and "models/vsr/sd_x4/" in msg

    folder = _copy(tiny_dir, tmp_path, "stablevsr/StableVSR")
    shutil.rmtree(folder / "controlnet")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableVSRPipeline"}))
    with pytest.raises(DiffusionWeightsError) as err:
        load_diffusion_model(folder)
    assert str(folder / "controlnet") in str(err.value) and "models/vsr/stablevsr/" in str(err.value)


def test_missing_text_encoder_names_folder(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    (folder / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(DiffusionWeightsError, match=r"text_encoder.*stabilityai/stable-diffusion-x4-upscaler"):
        load_diffusion_model(folder)
    assert load_diffusion_model(folder, text_encoder=False).text_encoder is None


def test_wrong_key_names_the_file_and_the_key(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(file))
    sd["conv_in.kernel"] = sd.pop("conv_in.weight")
    save_file(sd, str(file))
    with pytest.raises(DiffusionWeightsError) as err:
        load_diffusion_model(folder)
    msg = str(err.value)
    assert str(file) in msg and "missing key(s): conv_in.weight" in msg and "unexpected key(s): conv_in.kernel" in msg
    assert "stabilityai/stable-diffusion-x4-upscaler" in msg


def test_wrong_shape_and_wrong_config_are_refused(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path, "stablevsr/StableVSR")
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 64
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DiffusionWeightsError, match=r"shape mismatch.*attn2\.to_k\.weight"):
        load_diffusion_model(folder, text_encoder=False)


def test_single_file_without_ldm_unet_keys_is_refused(tmp_path):
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}}, str(bad))
    with pytest.raises(DiffusionWeightsError, match=r"no 'model\.diffusion_model\.\*' keys.*x4-upscaler-ema"):
        load_diffusion_model(bad)
    (tmp_path / "broken.ckpt").write_bytes(b"not a pickle")
    with pytest.raises(DiffusionWeightsError, match=r"broken\.ckpt.*weights_only=True"):
        load_diffusion_model(tmp_path / "broken.ckpt")


# ------------------------------------------------------------------------------------- pure remaps
def test_remap_vae_legacy_attention():
    t = torch.zeros(2)
    old = {
        "decoder.mid_block.attentions.0.query.weight": t, "decoder.mid_block.attentions.0.key.bias": t,
        "decoder.mid_block.attentions.0.value.weight": t, "decoder.mid_block.attentions.0.proj_attn.bias": t,
        "decoder.mid_block.attentions.0.group_norm.weight": t, "decoder.conv_in.weight": t,
        "encoder.mid_block.attentions.0.to_q.weight": t,
    }
    new = remap_vae_legacy_attention(old)
    assert sorted(new) == sorted([
        "decoder.mid_block.attentions.0.to_q.weight", "decoder.mid_block.attentions.0.to_k.bias",
        "decoder.mid_block.attentions.0.to_v.weight", "decoder.mid_block.attentions.0.to_out.0.bias",
        "decoder.mid_block.attentions.0.group_norm.weight", "decoder.conv_in.weight",
        "encoder.mid_block.attentions.0.to_q.weight"])
    assert all(new[k] is t for k in new)
    assert remap_vae_legacy_attention(legacy_vae_attention(new)) == new


def _meta_state(cls_name: str, config: dict) -> dict:
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name).from_config(config).state_dict()


def test_ldm_remaps_on_the_real_x4_architecture():
    """The shipped x4 configs against the LDM names of x4-upscaler-ema (shapes only, on the meta device)."""
    ucfg, vcfg = shipped_config("sd_x4", "unet"), shipped_config("sd_x4", "vae")
    unet, vae = _meta_state("UNet2DConditionModel", ucfg), _meta_state("AutoencoderKL", vcfg)
    assert sum(v.numel() for v in unet.values()) == pytest.approx(473.4e6, rel=1e-3)
    ldm = diffusers_unet_to_ldm(unet, ucfg)
    assert len(ldm) == len(unet) == 687
    assert ldm["label_emb.weight"].shape == (1000, 1024)  # the noise-level embedding
    assert ldm["input_blocks.0.0.weight"].shape == (256, 7, 3, 3)
    assert ldm["input_blocks.10.0.skip_connection.weight"].shape == (1024, 512, 1, 1)
    assert ldm["input_blocks.9.0.op.weight"].shape == (512, 512, 3, 3)
    assert ldm["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape == (1024, 1024)
    assert ldm["output_blocks.2.2.conv.weight"].shape == (1024, 1024, 3, 3)
    assert ldm["output_blocks.8.2.conv.weight"].shape == (512, 512, 3, 3)
    assert ldm["output_blocks.11.0.out_layers.3.weight"].shape == (256, 256, 3, 3)
    assert "output_blocks.11.1.proj_in.weight" not in ldm and "out.2.weight" in ldm
    back = ldm_unet_to_diffusers(ldm, ucfg)
    assert back.keys() == unet.keys() and all(back[k] is unet[k] for k in unet)

    vldm = diffusers_vae_to_ldm(vae, vcfg)
    assert vldm["decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert vldm["decoder.up.0.block.2.conv2.weight"].shape == (128, 128, 3, 3)  # highest resolution
    assert vldm["decoder.up.2.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in vldm and "encoder.down.2.downsample.conv.weight" not in vldm
    assert vldm["encoder.down.1.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    vback = ldm_vae_to_diffusers(vldm, vcfg)
    assert vback.keys() == vae.keys() and all(vback[k].shape == vae[k].shape for k in vae)


def test_ldm_remaps_agree_with_diffusers_converters():
    """Our pure remaps give what diffusers' own (internal) single-file converters give."""
    sfu = pytest.importorskip("diffusers.loaders.single_file_utils", reason="diffusers single-file converters")
    ucfg, vcfg = shipped_config("sd_x4", "unet"), shipped_config("sd_x4", "vae")
    unet, vae = _meta_state("UNet2DConditionModel", ucfg), _meta_state("AutoencoderKL", vcfg)
    ldm_unet = {"model.diffusion_model." + k: v for k, v in diffusers_unet_to_ldm(unet, ucfg).items()}
    ldm_vae = {"first_stage_model." + k: v for k, v in diffusers_vae_to_ldm(vae, vcfg).items()}
    parts = split_ldm_checkpoint({**ldm_unet, **ldm_vae, "betas": torch.zeros(3)})
    ref_unet = sfu.convert_ldm_unet_checkpoint(ldm_unet, ucfg)
    ours_unet = ldm_unet_to_diffusers(parts["unet"], ucfg)
    assert ref_unet.keys() == ours_unet.keys() and all(ref_unet[k] is ours_unet[k] for k in ours_unet)
    ref_vae = sfu.convert_ldm_vae_checkpoint(ldm_vae, vcfg)
    ours_vae = ldm_vae_to_diffusers(parts["vae"], vcfg)
    assert ref_vae.keys() == ours_vae.keys()
    assert all(ref_vae[k].shape == ours_vae[k].shape for k in ours_vae)


def test_shipped_configs_build_the_published_sizes():
    sizes = {("sd_x4", "unet", "UNet2DConditionModel"): 473.4e6, ("stablevsr", "unet", "UNet2DConditionModel"): 472.4e6,
             ("stablevsr", "controlnet", "ControlNetModel"): 207.7e6, ("sd_x4", "vae", "AutoencoderKL"): 55.3e6,
             ("stablevsr", "vae", "AutoencoderKL"): 55.3e6}
    for (method, part, cls), n in sizes.items():
        sd = _meta_state(cls, shipped_config(method, part))
        assert sum(v.numel() for v in sd.values()) == pytest.approx(n, rel=1e-3), (method, part)
    assert shipped_config("stablevsr", "controlnet")["conditioning_embedding_out_channels"] == [64, 128, 256]
    assert shipped_config("stablevsr", "unet")["num_class_embeds"] is None
    assert shipped_config("sd_x4", "unet")["num_class_embeds"] == 1000


# --------------------------------------------------------------------------- reading without a file mapping

def test_read_safetensors_matches_the_reference_reader_and_refuses_a_cut_file(tmp_path):
    from vsr_core.loaders.common import read_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(3, 4, 3, 3, generator=g), "h": torch.randn(5, generator=g).half(),
               "b": torch.randn(2, 7, generator=g).bfloat16(), "i": torch.arange(6).reshape(2, 3),
               "m": torch.tensor([True, False]), "s": torch.tensor(2.5), "e": torch.zeros(0, 4)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"note": "kept out of the tensors"})
    ours, ref = read_safetensors(path), load_file(str(path))
    assert ours.keys() == ref.keys() == tensors.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape and torch.equal(ours[k], ref[k]), k
        assert ours[k].data_ptr() % 64 == 0 or ours[k].numel() == 0
    half = read_safetensors(path, torch.bfloat16)  # floating tensors converted as they are read, others kept
    assert {k: v.dtype for k, v in half.items()} == {"w": torch.bfloat16, "h": torch.bfloat16, "b": torch.bfloat16,
                                                    "i": torch.int64, "m": torch.bool, "s": torch.bfloat16,
                                                    "e": torch.bfloat16}
    assert torch.equal(half["w"], tensors["w"].bfloat16()) and torch.equal(half["i"], tensors["i"])
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(ValueError, match="truncated|bytes in the file"):
        read_safetensors(tmp_path / "cut.safetensors")


CONVERT_PEAK = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from torch import nn
from vsr_core.loaders.diffusion import read_weights
from vsr_core.speed import channels_last_
with torch.device("meta"):
    m = nn.Sequential(*[nn.Conv2d(256, 256, 3) for _ in range(12)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m.load_state_dict(read_weights({path!r}), assign=True)
channels_last_(m)
m.to(torch.bfloat16)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_converting_a_loaded_model_in_place_does_not_keep_the_file_resident(tmp_path):
    """Weights backed by a mapping of their file kept every page of it that was read resident while any
    one of them lived (a bias): a model converted to channels-last held the file's pages and the copies.
    Read into memory of their own, converting leaves one copy: peak growth stays near the file's size."""
    import subprocess
    import sys

    with torch.device("cpu"):
        m = torch.nn.Sequential(*[torch.nn.Conv2d(256, 256, 3) for _ in range(12)])
    path = tmp_path / "convs.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    size = path.stat().st_size  # 28 MB
    code = CONVERT_PEAK.format(repo=str(Path(__file__).resolve().parents[1]), path=str(path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    growth = int(done.stdout.strip().splitlines()[-1])
    assert growth < 1.5 * size, (growth, size)  # a mapped file: about 2x (its pages + the channels-last copy)
    # read straight into bf16: the fp32 weights are never all in memory (half the file, plus one tensor)
    code = READ_BF16_PEAK.format(repo=str(Path(__file__).resolve().parents[1]), path=str(path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) < 0.75 * size


READ_BF16_PEAK = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from vsr_core.loaders.diffusion import read_weights
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sd = read_weights({path!r}, dtype=torch.bfloat16)
assert all(v.dtype == torch.bfloat16 for v in sd.values())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
