"""Our CLIP text encoder and tokenizer against transformers (test-only reference) on tiny random files,
the OpenCLIP single-file remap, the empty-prompt tokenizer and the loader's errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vsr_core.loaders.clip import (
    CLIPTokenizer,
    CLIPWeightsError,
    EmptyPromptTokenizer,
    encode_prompt,
    hf_text_encoder_keys,
    hf_to_open_clip,
    load_text_encoder,
    load_tokenizer,
    open_clip_to_hf,
    shipped_text_encoder_config,
    shipped_tokenizer_config,
    text_encoder_from_state_dict,
    tiny_open_clip_state_dict,
    write_tiny_clip,
)
from vsr_core.models.clip_text import CLIPTextConfig, CLIPTextModel

TOL = 1e-5

PROMPTS = [
    "",
    " ",
    "a cat",
    "A Photo OF a CAT!",
    "wow!! !!!",  # "!" is the x4 upscaler's pad token: HF cuts it out as a special token
    "it's the dog's toy, isn't it? we'll see; they're here IT'S",
    "'''s ''re don't 'tis o'clock",
    "price: $3.50 (2024-01-31) #1 50% x_y-z__",
    "  multiple   spaces\tand\nnewlines  ",
    "café naïve résumé Ünïcödé, decomposed cafe\u0301",
    "日本語のテキスト",
    "emoji 🐱🚀 mixed",
    "numbers ² ½ ٣ ⅷ",
    "ſ ß İstanbul ΟΔΥΣΣΕΥΣ yΣ",  # per-character lowercase: no final-sigma rule
    "a\u00a0b\u3000c x\x1cy a\u0085b\u200bc\u2028d",
    "\u0915\u093f devanagari",
    "hello<|endoftext|>world <|startoftext|>x",
    "A <|ENDOFTEXT|> b",
    "a long prompt, " * 40,  # > 75 tokens: truncated to bos + 75 + eos
]


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is the test-only reference for CLIP parity")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    te, tok = write_tiny_clip(root / "text_encoder", root / "tokenizer", seed=0)
    return te, tok


def _hf_keys_like(model_keys, our_sd):
    """Our state dict renamed to the key style of the installed transformers (v5 drops text_model.)."""
    if any(k.startswith("text_model.") for k in model_keys):
        return dict(our_sd)
    return {k[len("text_model."):]: v for k, v in our_sd.items()}


# ------------------------------------------------------------------------------------------ encoder
@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_encoder_matches_transformers(tmp_path, act):
    transformers = _transformers()
    te, tok = write_tiny_clip(tmp_path / "te", tmp_path / "tok", seed=3, hidden_act=act)
    ours = load_text_encoder(te)
    ref = transformers.CLIPTextModel.from_pretrained(str(te)).eval()

    # Strict both ways: our weights into transformers' module and back.
    ref_sd = ref.state_dict()
    ref.load_state_dict(_hf_keys_like(ref_sd, ours.state_dict()), strict=True)
    back = CLIPTextModel(ours.config)
    back.load_state_dict(hf_text_encoder_keys(ref_sd), strict=True)

    ids = CLIPTokenizer.from_folder(tok)(["a cat on the table", "", "wow " * 40])
    with torch.no_grad():
        last, hidden = ours(ids, output_hidden_states=True)
        out = ref(ids, output_hidden_states=True)
        assert last.shape == (3, 77, 32)
        assert (last - out.last_hidden_state).abs().max() < TOL
        assert len(hidden) == len(out.hidden_states) == 3
        for a, b in zip(hidden, out.hidden_states):
            assert (a - b).abs().max() < TOL
        assert (back(ids) - last).abs().max() == 0
        # A padding mask (1 = token) combined with the causal mask, as transformers applies it.
        mask = torch.zeros_like(ids)
        mask[:, :5] = 1
        assert (ours(ids, attention_mask=mask) - ref(ids, attention_mask=mask).last_hidden_state).abs().max() < TOL


def test_encoder_is_causal_and_uses_positions(tiny):
    te, _ = tiny
    model = load_text_encoder(te)
    ids = torch.randint(0, model.config.vocab_size, (1, 77), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 40] = (ids[0, 40] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
        # Tokens before position 40 cannot see it; from 40 on they do.
        assert (a[:, :40] - b[:, :40]).abs().max() == 0
        assert (a[:, 40:] - b[:, 40:]).abs().max() > 1e-3
        same = torch.full((1, 10), 7)
        out = model(same)
        assert (out[0, 1] - out[0, 2]).abs().max() > 1e-3  # identical tokens differ by position
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model(torch.zeros(1, 78, dtype=torch.long))


def test_loads_older_and_newer_hf_key_styles(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    te, _ = tiny
    sd = load_file(str(te / "model.safetensors"))
    cfg = json.loads((te / "config.json").read_text())
    reference = text_encoder_from_state_dict(sd, cfg)
    ids = torch.arange(20).unsqueeze(0)

    older = dict(sd, **{"text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0)})
    newer = {k[len("text_model."):]: v for k, v in sd.items()}  # transformers 5.x save_pretrained
    for variant in (older, newer):
        folder = tmp_path / f"v{len(variant)}_{next(iter(variant))[:4]}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        save_file(variant, str(folder / "model.safetensors"))
        with torch.no_grad():
            assert torch.equal(load_text_encoder(folder)(ids), reference(ids))
    assert set(hf_text_encoder_keys(newer)) == set(sd)
    assert "text_model.embeddings.position_ids" not in hf_text_encoder_keys(older)


def test_pytorch_bin_and_dtype(tiny, tmp_path):
    from safetensors.torch import load_file

    te, _ = tiny
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((te / "config.json").read_text())
    torch.save(load_file(str(te / "model.safetensors")), folder / "pytorch_model.bin")
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        ref = load_text_encoder(te)(ids)
        assert torch.equal(load_text_encoder(folder)(ids), ref)
        half = load_text_encoder(te, dtype=torch.bfloat16)
        assert half.dtype == torch.bfloat16
        out = half(ids)
        assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 0.1


def test_shipped_x4_config_is_the_openclip_vit_h_text_tower():
    cfg = shipped_text_encoder_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        1024, 23, 16, 4096)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.hidden_act) == (49408, 77, "gelu")
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 335e6 < n < 345e6  # the x4 text_encoder/model.safetensors is ~1.36 GB in fp32
    # A config.json without a key means what it meant to transformers (its defaults), not the x4 values.
    bare = CLIPTextConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4})
    assert (bare.hidden_act, bare.num_hidden_layers, bare.intermediate_size) == ("quick_gelu", 12, 2048)
    tok = shipped_tokenizer_config()
    assert (tok["bos_token_id"], tok["eos_token_id"], tok["pad_token_id"], tok["model_max_length"]) == (
        49406, 49407, 0, 77)


def test_key_names_equal_transformers_at_full_size():
    transformers = _transformers()
    cfg = shipped_text_encoder_config()
    hf_cfg = transformers.CLIPTextConfig(**{k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items()
                                            if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        ref = transformers.CLIPTextModel(hf_cfg)
        ours = CLIPTextModel(cfg)
    ref_shapes = {k: v.shape for k, v in hf_text_encoder_keys(ref.state_dict()).items()}
    assert ref_shapes == {k: v.shape for k, v in ours.state_dict().items()}


# ---------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_matches_transformers(tiny):
    transformers = _transformers()
    _, tok = tiny
    ours = CLIPTokenizer.from_folder(tok)
    ref = transformers.CLIPTokenizer.from_pretrained(str(tok))
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.pad_token_id == 0  # x4-style folder: special_tokens_map's pad "!" wins over tokenizer_config
    ids = ours(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == torch.long
    expected = ref(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    for prompt, a, b in zip(PROMPTS, ids, expected):
        assert a.tolist() == b.tolist(), prompt
    longest = ours(PROMPTS[:5], padding="longest")
    assert longest.tolist() == ref(PROMPTS[:5], padding="longest", return_tensors="pt").input_ids.tolist()


def test_tokenizer_layout_and_truncation(tiny):
    _, tok = tiny
    t = CLIPTokenizer.from_folder(tok)
    ids = t(["a cat", "a long prompt, " * 40])
    assert ids[0, 0] == t.bos_token_id and t.eos_token_id in ids[0].tolist()
    n = ids[0].tolist().index(t.eos_token_id)
    assert (ids[0, n + 1:] == t.pad_token_id).all()
    assert ids[1, -1] == t.eos_token_id and t.pad_token_id not in ids[1].tolist()
    assert t("A  CAT").tolist() == t("a cat").tolist()  # lowercase, whitespace collapsed
    with pytest.raises(ValueError, match="max_length"):
        t("a long prompt, " * 40, truncation=False)
    with pytest.raises(ValueError, match="empty list"):
        t([])


def test_tokenizer_folder_errors(tmp_path, tiny):
    _, tok = tiny
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "vocab.json").write_text((tok / "vocab.json").read_text())
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        CLIPTokenizer.from_folder(bad)
    (bad / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(CLIPWeightsError, match="malformed"):
        CLIPTokenizer.from_folder(bad)


def test_empty_prompt_tokenizer(tiny, tmp_path):
    _, tok = tiny
    full = CLIPTokenizer.from_folder(tok)
    empty = EmptyPromptTokenizer(full.bos_token_id, full.eos_token_id, full.pad_token_id, 77)
    assert torch.equal(empty(["", "  "]), full(["", "  "]))
    default = EmptyPromptTokenizer.from_config()
    ids = default("")
    assert ids.shape == (1, 77)
    assert ids[0, :3].tolist() == [49406, 49407, 0] and (ids[0, 2:] == 0).all()
    with pytest.raises(ValueError, match="no tokenizer"):
        default("a photo")
    assert isinstance(load_tokenizer(tok), CLIPTokenizer)
    assert isinstance(load_tokenizer(tmp_path), EmptyPromptTokenizer)
    assert isinstance(load_tokenizer(None), EmptyPromptTokenizer)


def test_encode_prompt(tiny):
    te, tok = tiny
    model, t = load_text_encoder(te), CLIPTokenizer.from_folder(tok)
    emb = encode_prompt(model, t, ["a cat", ""], dtype=torch.float16)
    assert emb.shape == (2, 77, 32) and emb.dtype == torch.float16
    with torch.no_grad():
        assert (emb.float() - model(t(["a cat", ""]))).abs().max() < 1e-2
    assert not torch.allclose(emb[0], emb[1])
    single = encode_prompt(model, t, "a cat")
    assert single.shape == (1, 77, 32) and single.dtype == torch.float32
    with pytest.raises(ValueError, match="vocabulary"):  # x4 special ids (49406) with a 610-token encoder
        encode_prompt(model, EmptyPromptTokenizer.from_config(), [""])


# -------------------------------------------------------------------------------- OpenCLIP single file
def _open_clip_reference(sd, ids, width, heads, layers_used, prefix="cond_stage_model.model."):
    """OpenCLIP's text tower the way it computes, from the packed LDM keys: nn.MultiheadAttention with
    in_proj weights, pre-LN residual blocks, exact GELU, the first ``layers_used`` blocks, ln_final."""
    p = {k[len(prefix):]: v for k, v in sd.items()}
    x = p["token_embedding.weight"][ids] + p["positional_embedding"][: ids.shape[1]]
    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(layers_used):
        b = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": p[b + "attn.in_proj_weight"],
                              "in_proj_bias": p[b + "attn.in_proj_bias"],
                              "out_proj.weight": p[b + "attn.out_proj.weight"],
                              "out_proj.bias": p[b + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), p[b + "ln_1.weight"], p[b + "ln_1.bias"])
        x = x + attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = F.layer_norm(x, (width,), p[b + "ln_2.weight"], p[b + "ln_2.bias"])
        h = F.gelu(F.linear(h, p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])
    return F.layer_norm(x, (width,), p["ln_final.weight"], p["ln_final.bias"])


def _tiny_open_clip_config(layers=2):
    return CLIPTextConfig(vocab_size=610, hidden_size=32, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, hidden_act="gelu")


def test_open_clip_to_hf_keys():
    sd = tiny_open_clip_state_dict(seed=1, layers=3)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)  # the rest of an LDM checkpoint
    sd["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    out = open_clip_to_hf(sd, num_layers=2)
    with torch.device("meta"):
        expected = set(CLIPTextModel(_tiny_open_clip_config(2)).state_dict())
    assert set(out) == expected
    w = sd["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(out["text_model.encoder.layers.1.self_attn.k_proj.weight"], w[32:64])
    assert set(open_clip_to_hf(sd, num_layers=None)) > expected  # None keeps the third block
    # The inverse re-packs q/k/v; a round trip returns the tensors (minus the ignored/dropped ones).
    kept = {k: v for k, v in sd.items() if k.startswith("cond_stage_model.model.")
            and "resblocks.2." not in k and not k.endswith(("text_projection", "logit_scale"))}
    back = hf_to_open_clip(out)
    assert set(back) == set(kept) and all(torch.equal(back[k], kept[k]) for k in kept)
    assert open_clip_to_hf({"model.diffusion_model.x": torch.zeros(1)}) == {}


def test_open_clip_conversion_reproduces_penultimate_openclip():
    sd = tiny_open_clip_state_dict(seed=2, layers=3)
    model = text_encoder_from_state_dict(sd, _tiny_open_clip_config(2))
    ids = torch.randint(0, 610, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        ref = _open_clip_reference(sd, ids, width=32, heads=4, layers_used=2)
    assert (ours - ref).abs().max() < TOL


def test_open_clip_conversion_matches_transformers_and_diffusers():
    transformers = _transformers()
    sd = tiny_open_clip_state_dict(seed=4, layers=3)
    converted = open_clip_to_hf(sd, num_layers=2)
    cfg = _tiny_open_clip_config(2)
    ours = text_encoder_from_state_dict(converted, cfg)
    hf_cfg = transformers.CLIPTextConfig(**{k: v for k, v in cfg.to_dict().items()
                                            if k not in ("architectures", "model_type")})
    ref = transformers.CLIPTextModel(hf_cfg).eval()
    ref.load_state_dict(_hf_keys_like(ref.state_dict(), converted), strict=True)
    ids = torch.randint(0, 610, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).last_hidden_state).abs().max() < TOL

    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    theirs = convert_open_clip_checkpoint(ref, sd)
    for key, value in converted.items():
        assert torch.equal(theirs[key], value), key


def test_load_text_encoder_from_ldm_single_file(tmp_path):
    from safetensors.torch import save_file

    sd = tiny_open_clip_state_dict(seed=5, layers=3)
    unet = {"model.diffusion_model.out.2.weight": torch.randn(4, 4)}
    cfg = _tiny_open_clip_config(2)
    ids = torch.randint(0, 610, (1, 77), generator=torch.Generator().manual_seed(2))
    ref = _open_clip_reference(sd, ids, 32, 4, 2)
    save_file({**sd, **unet}, str(tmp_path / "x4.safetensors"))
    torch.save({"state_dict": {**sd, **unet}}, tmp_path / "x4.ckpt")
    for name in ("x4.safetensors", "x4.ckpt"):
        model = load_text_encoder(tmp_path / name, config=cfg)
        with torch.no_grad():
            assert (model(ids) - ref).abs().max() < TOL


# ------------------------------------------------------------------------------------------- errors
def test_errors_name_the_file_and_keys(tiny, tmp_path):
    te, _ = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(empty)
    (empty / "config.json").write_text((te / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors.*stable-diffusion-x4-upscaler"):
        load_text_encoder(empty)

    from safetensors.torch import save_file

    vae_like = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(vae_like))
    with pytest.raises(CLIPWeightsError, match=r"vae\.safetensors.*missing key.*unexpected key.*decoder\.conv_in"):
        load_text_encoder(vae_like)

    with pytest.raises(CLIPWeightsError, match="shape mismatch"):
        load_text_encoder(te, config=dict(json.loads((te / "config.json").read_text()), hidden_size=64,
                                          intermediate_size=128))

    garbage = tmp_path / "pytorch_model.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CLIPWeightsError, match="pytorch_model.bin"):
        load_text_encoder(garbage)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_text_encoder(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="swish")
