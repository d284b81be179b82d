"""Tiny random-weight checkpoints in every layout ``load_diffusion_model`` accepts.

They run the same code paths as the real models in about a second on a CPU, for tests, CI and smoke
runs: the StableVSR diffusers folder, the x4 upscaler diffusers folder (its VAE with the old diffusers
attention names, as the real one has) and the x4 single file with LDM keys. Every parameter is drawn
from one seeded generator (zero-initialised layers such as ControlNet's zero convs included), so a
tensor loaded into the wrong place changes the outputs.

The architectures are the real ones shrunk: block widths 32/64, one or two layers per block, cross-
attention width 32 (= the tiny CLIP's hidden size), ``num_class_embeds`` 1000 on the x4 UNet.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .diffusion import (
    LDM_PREFIXES,
    diffusers_unet_to_ldm,
    diffusers_vae_to_ldm,
    shipped_config,
)

__all__ = [
    "TINY_STABLEVSR_UNET",
    "TINY_STABLEVSR_CONTROLNET",
    "TINY_X4_UNET",
    "TINY_VAE",
    "randomize_",
    "tiny_modules",
    "legacy_vae_attention",
    "write_tiny_stablevsr",
    "write_tiny_sd_x4",
    "write_tiny_sd_x4_single_file",
    "tiny_single_file_configs",
    "tiny_text_config",
    "tiny_open_clip",
    "TINY_SD2_UNET",
    "TINY_SD2_VAE",
    "write_tiny_sd2_single_file",
    "write_tiny_sd2",
]

_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

# The x4 UNet structure (7 input channels, text attention only in the first three levels, 8-heads
# convention of attention_head_dim) at width 32/64; the same sizes as the parity vectors' tiny UNet.
TINY_STABLEVSR_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 16,
    "in_channels": 7,
    "out_channels": 4,
    "down_block_types": _DOWN,
    "up_block_types": _UP,
    "only_cross_attention": [True, True, True, False],
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": [2, 2, 1, 1],
    "cross_attention_dim": 32,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "num_class_embeds": None,
}
TINY_STABLEVSR_CONTROLNET = {
    "_class_name": "ControlNetModel",
    "in_channels": 7,
    "conditioning_channels": 3,
    "down_block_types": _DOWN,
    "only_cross_attention": [True, True, True, False],
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": [2, 2, 1, 1],
    "cross_attention_dim": 32,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "num_class_embeds": None,
    "conditioning_embedding_out_channels": [16, 32, 32],
}
# Two layers per block like the real x4 UNet, so the LDM block numbering is exercised as it is there.
TINY_X4_UNET = {**TINY_STABLEVSR_UNET, "layers_per_block": 2, "num_class_embeds": 1000}
TINY_VAE = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.08333,
    "force_upcast": True,
}


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Refill every parameter from ``torch.Generator(seed)`` in ``named_parameters()`` order: tensors of
    2+ dims N(0,1)/sqrt(fan_in), 1-D weights 1 + 0.1 N(0,1), other 1-D tensors 0.1 N(0,1) (the rule the
    parity vectors were made with). Overwrites zero-inits so no branch is a no-op. Returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                noise.mul_(p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                noise.mul_(0.1).add_(1)
            else:
                noise.mul_(0.1)
            p.data = noise.to(p.dtype)
    return module


def _build(cls_name: str, config: Mapping, seed: int) -> nn.Module:
    import diffusers

    cls = getattr(diffusers, cls_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(dict(config))
    return randomize_(model, seed).eval()


def tiny_modules(kind: str, seed: int = 0) -> dict[str, nn.Module]:
    """The tiny diffusers networks a writer saves: ``kind`` "stablevsr" -> unet, controlnet, vae;
    "sd_x4" -> unet, vae. The same ``(kind, seed)`` always gives the same weights."""
    if kind == "stablevsr":
        return {"unet": _build("UNet2DConditionModel", TINY_STABLEVSR_UNET, seed),
                "controlnet": _build("ControlNetModel", TINY_STABLEVSR_CONTROLNET, seed + 1),
                "vae": _build("AutoencoderKL", TINY_VAE, seed + 2)}
    if kind == "sd_x4":
        return {"unet": _build("UNet2DConditionModel", TINY_X4_UNET, seed),
                "vae": _build("AutoencoderKL", TINY_VAE, seed + 2)}
    raise ValueError(f"kind must be 'stablevsr' or 'sd_x4', got {kind!r}")


def legacy_vae_attention(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Current diffusers VAE attention names -> the pre-0.14 ones (``to_q`` -> ``query``, ``to_k`` -> ``key``,
    ``to_v`` -> ``value``, ``to_out.0`` -> ``proj_attn``), as the x4 upscaler's HF VAE file stores them."""
    names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for key, value in sd.items():
        if ".attentions." in key:
            for new, old in names.items():
                key = key.replace(new, old)
        out[key] = value
    return out


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _save(sd: Mapping[str, Tensor], path: Path, metadata: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dict(sd), str(path), metadata=metadata)
    else:
        torch.save(dict(sd), str(path))


def _write_json(path: Path, data: Mapping) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_component(folder: Path, module: nn.Module, sd: Mapping[str, Tensor], weights: str) -> None:
    config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
    _write_json(folder / "config.json", {"_class_name": type(module).__name__, **config})
    suffix = "safetensors" if weights == "safetensors" else "bin"
    _save(sd, folder / f"diffusion_pytorch_model.{suffix}")


def _check_weights(weights: str) -> None:
    if weights not in ("safetensors", "bin"):
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")


# The tiny text tower: OpenCLIP layout with one block more than the HF model keeps (the real file has 24,
# the x4 encoder uses 23), MLP 4 x width as in OpenCLIP, the vocabulary size of write_tiny_clip's tokenizer.
_TINY_TEXT = dict(width=32, layers=3, heads=4, vocab_size=610)


def tiny_text_config() -> dict:
    """HF ``config.json`` of the tiny text encoder that both tiny x4 layouts carry."""
    from ..models.clip_text import CLIPTextConfig

    w = _TINY_TEXT["width"]
    config = CLIPTextConfig(vocab_size=_TINY_TEXT["vocab_size"], hidden_size=w, intermediate_size=4 * w,
                            num_hidden_layers=_TINY_TEXT["layers"] - 1, num_attention_heads=_TINY_TEXT["heads"],
                            max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5)
    return config.to_dict()


def tiny_open_clip(seed: int = 0) -> dict[str, Tensor]:
    """The tiny text tower in LDM single-file naming (``cond_stage_model.model.*``)."""
    from .clip import tiny_open_clip_state_dict

    sizes = {k: v for k, v in _TINY_TEXT.items() if k != "heads"}  # OpenCLIP stores no head count
    return tiny_open_clip_state_dict(seed=seed, **sizes, prefix=LDM_PREFIXES["text_encoder"])


def _write_text_side(folder: Path, seed: int) -> None:
    """tokenizer/ (a small byte-level BPE vocabulary) and text_encoder/ (HF config.json +
    model.safetensors) converted from the same tiny OpenCLIP weights the single file carries, so every
    tiny layout of one seed encodes prompts identically."""
    from .clip import open_clip_to_hf, write_tiny_clip

    te_dir = folder / "text_encoder"
    write_tiny_clip(te_dir, folder / "tokenizer", seed=seed)
    config = tiny_text_config()
    hf = open_clip_to_hf(tiny_open_clip(seed), num_layers=config["num_hidden_layers"],
                         prefix=LDM_PREFIXES["text_encoder"])
    for old in te_dir.iterdir():
        old.unlink()
    _write_json(te_dir / "config.json", config)
    _save({k: v.contiguous() for k, v in hf.items()}, te_dir / "model.safetensors")


def write_tiny_stablevsr(folder: str | Path, seed: int = 0, weights: str = "safetensors",
                         text: bool = True) -> Path:
    """Write a tiny StableVSR diffusers folder: unet/, controlnet/, vae/ (config.json + weights as
    ``diffusion_pytorch_model.safetensors``, or ``.bin`` with ``weights="bin"``), text_encoder/,
    tokenizer/ (unless ``text=False``), scheduler/ and model_index.json. Returns the folder."""
    _check_weights(weights)
    folder = Path(folder)
    for name, module in tiny_modules("stablevsr", seed).items():
        _write_component(folder / name, module, _state(module), weights)
    if text:
        _write_text_side(folder, seed)
    _write_json(folder / "scheduler" / "scheduler_config.json", _public(shipped_config("stablevsr", "scheduler")))
    _write_json(folder / "model_index.json", {
        "_class_name": "StableVSRPipeline",
        "controlnet": ["diffusers", "ControlNetModel"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    })
    return folder


def write_tiny_sd_x4(folder: str | Path, seed: int = 0, weights: str = "safetensors",
                     legacy_vae_names: bool = True, text: bool = True) -> Path:
    """Write a tiny x4 upscaler diffusers folder: unet/ (with the noise-level class embedding), vae/ (with
    the old ``query/key/value/proj_attn`` names unless ``legacy_vae_names=False``), text_encoder/,
    tokenizer/, scheduler/, low_res_scheduler/, model_index.json. Returns the folder.

    The UNet, VAE and text encoder weights equal those of ``write_tiny_sd_x4_single_file(seed=seed)``.
    """
    _check_weights(weights)
    folder = Path(folder)
    mods = tiny_modules("sd_x4", seed)
    _write_component(folder / "unet", mods["unet"], _state(mods["unet"]), weights)
    vae_sd = _state(mods["vae"])
    _write_component(folder / "vae", mods["vae"], legacy_vae_attention(vae_sd) if legacy_vae_names else vae_sd,
                     weights)
    if text:
        _write_text_side(folder, seed)
    _write_json(folder / "scheduler" / "scheduler_config.json", _public(shipped_config("sd_x4", "scheduler")))
    _write_json(folder / "low_res_scheduler" / "scheduler_config.json",
                _public(shipped_config("sd_x4", "low_res_scheduler")))
    _write_json(folder / "model_index.json", {
        "_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 350,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"], "low_res_scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    })
    return folder


def write_tiny_sd_x4_single_file(path: str | Path, seed: int = 0, embed_configs: bool = True) -> Path:
    """Write a tiny x4 upscaler single-file checkpoint with LDM keys (``model.diffusion_model.*``,
    ``first_stage_model.*``, ``cond_stage_model.model.*``, plus the schedule buffers an LDM checkpoint
    also holds). ``.safetensors`` embeds the tiny architecture configs in its metadata (``"vsr_configs"``)
    unless ``embed_configs=False``; a ``.ckpt`` is a ``{"state_dict": ...}`` pickle and needs
    ``load_diffusion_model(..., configs=tiny_single_file_configs())``. Returns the path.

    Its UNet, VAE and text encoder equal those ``write_tiny_sd_x4(seed=seed)`` writes."""
    path = Path(path)
    sd = _ldm_single_file(tiny_modules("sd_x4", seed), seed)
    # Buffers of the LDM diffusion wrapper and its noise-augmentation module: no network reads them.
    betas = torch.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd["betas"] = betas.float()
    sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    sd["low_scale_model.alphas_cumprod"] = sd["alphas_cumprod"].clone()
    if path.suffix == ".safetensors":
        meta = {"vsr_configs": json.dumps(tiny_single_file_configs())} if embed_configs else None
        _save(sd, path, metadata=meta)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": sd}, str(path))
    return path


def _ldm_single_file(mods: Mapping[str, nn.Module], seed: int) -> dict[str, Tensor]:
    """A tiny UNet + VAE (+ the tiny OpenCLIP text tower of ``seed``) in LDM single-file naming."""
    sd: dict[str, Tensor] = {}
    for k, v in diffusers_unet_to_ldm(_state(mods["unet"]), dict(mods["unet"].config)).items():
        sd[LDM_PREFIXES["unet"] + k] = v.contiguous()
    for k, v in diffusers_vae_to_ldm(_state(mods["vae"]), dict(mods["vae"].config)).items():
        sd[LDM_PREFIXES["vae"] + k] = v.contiguous()
    sd.update({k: v.contiguous() for k, v in tiny_open_clip(seed).items()})
    return sd


def tiny_single_file_configs() -> dict[str, dict]:
    """The architecture configs of ``write_tiny_sd_x4_single_file`` (``unet``, ``vae``, ``text_encoder``)
    and the special ids of its tokenizer (``tokenizer``: write_tiny_clip's vocabulary ends with
    <|startoftext|>, <|endoftext|>; it pads with "!" = 0 like the x4 one)."""
    n = _TINY_TEXT["vocab_size"]
    return {"unet": copy.deepcopy(TINY_X4_UNET), "vae": copy.deepcopy(TINY_VAE), "text_encoder": tiny_text_config(),
            "tokenizer": {"bos_token_id": n - 2, "eos_token_id": n - 1, "pad_token_id": 0, "model_max_length": 77}}


def _public(config: Mapping) -> dict:
    return {k: v for k, v in config.items() if k != "_source"}


# SD 2.x structure (text attention in the first levels, linear projections, 4-channel latent, a VAE with
# an x8 latent grid) at width 32/64; cross-attention width = the tiny CLIP's.
TINY_SD2_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4, 4],
    "cross_attention_dim": 32,
    "norm_num_groups": 32,
    "use_linear_projection": True,
}
TINY_SD2_VAE = {**TINY_VAE, "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "block_out_channels": [32, 32, 32, 64], "scaling_factor": 0.18215}


def _tiny_sd2_modules(seed: int) -> dict[str, nn.Module]:
    return {"unet": _build("UNet2DConditionModel", TINY_SD2_UNET, seed),
            "vae": _build("AutoencoderKL", TINY_SD2_VAE, seed + 2)}


def tiny_sd2_configs() -> dict[str, dict]:
    """Architecture configs of the tiny SD 2.x base (what the single file embeds)."""
    cfg = tiny_single_file_configs()
    cfg.update({"unet": copy.deepcopy(TINY_SD2_UNET), "vae": copy.deepcopy(TINY_SD2_VAE)})
    return cfg


def write_tiny_sd2_single_file(path: str | Path, seed: int = 0, v_prediction: bool = True) -> Path:
    """A tiny SD 2.x single-file checkpoint in the LDM naming a ComfyUI checkpoint has
    (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.model.*``), its tiny configs
    in the safetensors metadata. ``v_prediction`` sets the spread of the bias ``load_sd_base`` reads to
    tell a 768-v model from the 512 base. Returns the path."""
    path = Path(path)
    sd = _ldm_single_file(_tiny_sd2_modules(seed), seed)
    outs = [k for k in sd if k.startswith(LDM_PREFIXES["unet"] + "output_blocks.")]
    last = max(int(k[len(LDM_PREFIXES["unet"]):].split(".")[1]) for k in outs)
    key = f"{LDM_PREFIXES['unet']}output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
    sd[key] = sd[key] / sd[key].std() * (0.2 if v_prediction else 0.01)
    _save(sd, path, metadata={"vsr_configs": json.dumps(tiny_sd2_configs())})
    return path


def write_tiny_sd2(folder: str | Path, seed: int = 0) -> Path:
    """A tiny SD 2.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/ with
    ``epsilon`` prediction). Returns the folder."""
    folder = Path(folder)
    for name, module in _tiny_sd2_modules(seed).items():
        _write_component(folder / name, module, _state(module), "safetensors")
    _write_text_side(folder, seed)
    sched = _public(shipped_config("sd2", "scheduler"))
    sched["prediction_type"] = "epsilon"
    _write_json(folder / "scheduler" / "scheduler_config.json", sched)
    return folder
