"""Upscale-A-Video from its official folder into a ``VSRModel`` (method "upscale_a_video"), and tiny
checkpoints in the same layout for tests.

The official folder (README: the Google Drive folder ``pretrained_models/upscale_a_video``; here
``ComfyUI/models/vsr/upscale_a_video/``)::

    unet/unet_video_config.json, unet/unet_video.bin      the video UNet
    vae/vae_video_config.json, vae/vae_video.bin          the LR-conditioned temporal VAE decoder
    vae/vae_3d_config.json, vae/vae_3d.bin                the per-frame VAE
    scheduler/scheduler_config.json                       DDIM, v-prediction (the x4 one)
    low_res_scheduler/scheduler_config.json               DDPM noise augmentation of the LR input
    text_encoder/, tokenizer/                             the x4 upscaler's CLIP text side
    propagator/raft-things.pth                            RAFT for the latent propagation (optional here)

``.bin`` files are raw ``torch.save`` state dicts, read with ``torch.load(weights_only=True)``; a
``.safetensors`` file of the same stem is preferred when present. Every network loads with
``strict=True``; configs missing from the folder fall back to the shipped copies in
``vsr_core/configs/upscale_a_video``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..memory import trim_heap
from ..models.bundle import VSRModel
from ..models.uav_unet import ROTARY_DIM, UNetVideoModel, rotary_freqs
from ..models.uav_vae import AutoencoderKLVideo
from .clip import text_side
from .diffusion import (
    DiffusionWeightsError,
    build_strict,
    read_weights,
    remap_vae_legacy_attention,
    resolve_dtype,
    shipped_config,
    vae_dtype_for,
)

__all__ = [
    "METHOD",
    "UAV_SOURCE",
    "load_uav_model",
    "load_uav_unet",
    "load_uav_vae",
    "drop_rotary_freqs",
    "add_rotary_freqs",
    "write_tiny_uav",
    "tiny_uav_modules",
    "TINY_UAV_UNET",
    "TINY_UAV_VAE_VIDEO",
    "TINY_UAV_VAE_3D",
]

METHOD = "upscale_a_video"
CONFIG_METHOD = "upscale_a_video"
MAX_NOISE_LEVEL = 350  # UNetVideoModel.max_noise_level: the pipeline rejects higher LR noise levels
UAV_SOURCE = (
    "Download the Upscale-A-Video models from the official Google Drive folder "
    "https://drive.google.com/drive/folders/1O8pbeR1hsRlFUU8O4EULe-lOKNGEWZl1 (linked from the README of "
    "github.com/sczhou/Upscale-A-Video) and place its contents as ComfyUI/models/vsr/upscale_a_video/ "
    "(unet/, vae/, scheduler/, low_res_scheduler/, text_encoder/, tokenizer/, propagator/)."
)

# (sub-folder, weight stem, config file, what it is)
_PARTS = {
    "unet": ("unet", "unet_video", "unet_video_config.json", "the Upscale-A-Video video UNet"),
    "vae_video": ("vae", "vae_video", "vae_video_config.json",
                  "the Upscale-A-Video temporal VAE decoder (LR-conditioned, 'vae_video')"),
    "vae_3d": ("vae", "vae_3d", "vae_3d_config.json", "the Upscale-A-Video per-frame VAE ('vae_3d')"),
}
_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


# ------------------------------------------------------------------------------------ remaps (pure)
def drop_rotary_freqs(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove the ``*rotary_emb.freqs`` constants of the official UNet file (one shared module saved under
    every temporal attention plus ``temporal_rotary_emb``); the model recomputes them. Raises
    DiffusionWeightsError if one differs from ``1/10000^(arange(0,32,2)/32)``: the model would then not
    compute what the file's author ran. The table is compared in the dtype it was read in (a file read
    straight into bf16 or fp16 holds it rounded)."""
    expected = rotary_freqs(ROTARY_DIM)
    out = {}
    for key, value in sd.items():
        if key.endswith("rotary_emb.freqs"):
            if value.shape != expected.shape or not torch.allclose(
                    value.float(), expected.to(value.dtype).float(), rtol=1e-3, atol=1e-6):
                raise DiffusionWeightsError(
                    f"{key} {tuple(value.shape)} is not the standard rotary frequency table 1/10000^(2i/32); "
                    "this UNet recomputes it, so the file is not the released Upscale-A-Video UNet.")
            continue
        out[key] = value
    return out


def add_rotary_freqs(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of ``drop_rotary_freqs`` (for writing files in the official layout): one ``freqs`` entry
    per temporal attention and ``temporal_rotary_emb.freqs``."""
    out = dict(sd)
    prefixes = sorted({k[: -len("to_q.weight")] for k in sd if k.endswith("attn_temporal.to_q.weight")})
    for p in prefixes:
        out[p + "rotary_emb.freqs"] = rotary_freqs(ROTARY_DIM)
    out["temporal_rotary_emb.freqs"] = rotary_freqs(ROTARY_DIM)
    return out


# ------------------------------------------------------------------------------------------ reading
def _weights_file(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{s}" for s in _SUFFIXES if (folder / f"{stem}{s}").is_file()), None)


def _missing(root: Path, part: str) -> DiffusionWeightsError:
    sub, stem, cfg, what = _PARTS[part]
    folder = root / sub
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    where = f"{folder} holds {found}" if found is not None else f"{folder} does not exist"
    return DiffusionWeightsError(f"{what}: missing {folder / (stem + '.bin')} ({where}). {UAV_SOURCE}")


def _config(root: Path, part: str) -> tuple[dict, str]:
    sub, _, cfg, what = _PARTS[part]
    path = root / sub / cfg
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), str(path)
        except (OSError, ValueError) as exc:
            raise DiffusionWeightsError(f"{what}: could not read the config {path}: {exc}. {UAV_SOURCE}") from exc
    return shipped_config(CONFIG_METHOD, "unet" if part == "unet" else part), \
        f"shipped vsr_core/configs/{CONFIG_METHOD}/{'unet' if part == 'unet' else part}.json"


def load_uav_unet(root: str | Path, dtype: torch.dtype | None = None) -> tuple[UNetVideoModel, dict]:
    """Build the video UNet from ``root/unet`` strictly, its floating-point weights read in ``dtype`` (None:
    the file's). Returns (model (eval), source)."""
    root = Path(root)
    file = _weights_file(root / "unet", "unet_video")
    if file is None:
        raise _missing(root, "unet")
    config, cfg_src = _config(root, "unet")
    what = _PARTS["unet"][3]
    sd = drop_rotary_freqs(read_weights(file, what, UAV_SOURCE, dtype))
    model = build_strict(UNetVideoModel, config, sd, what, file, UAV_SOURCE)
    return model, {"weights": str(file), "config": cfg_src}


def load_uav_vae(root: str | Path, kind: str = "video",
                 dtype: torch.dtype | None = None) -> tuple[AutoencoderKLVideo, dict]:
    """Build ``vae_video`` (kind "video") or ``vae_3d`` (kind "3d") from ``root/vae`` strictly, with the
    old diffusers attention names remapped, its weights read in ``dtype`` (None: the file's). Returns
    (model, source)."""
    if kind not in ("video", "3d"):
        raise ValueError(f"vae must be 'video' or '3d', got {kind!r}")
    root, part = Path(root), f"vae_{kind}"
    file = _weights_file(root / "vae", part)
    if file is None:
        raise _missing(root, part)
    config, cfg_src = _config(root, part)
    what = _PARTS[part][3]
    sd = remap_vae_legacy_attention(read_weights(file, what, UAV_SOURCE, dtype))
    model = build_strict(AutoencoderKLVideo, config, sd, what, file, UAV_SOURCE)
    return model, {"weights": str(file), "config": cfg_src}


def _scheduler(root: Path, sub: str) -> tuple[dict, str]:
    path = root / sub / "scheduler_config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), str(path)
        except (OSError, ValueError) as exc:
            raise DiffusionWeightsError(f"{sub}: could not read {path}: {exc}. {UAV_SOURCE}") from exc
    return shipped_config(CONFIG_METHOD, sub), f"shipped vsr_core/configs/{CONFIG_METHOD}/{sub}.json"


def _text_loader(root: Path, dtype: torch.dtype):
    """``(load, tokenizer, source)``: ``load()`` builds the text encoder from ``text_encoder/`` strictly."""
    from .clip import CLIPWeightsError, load_text_encoder, load_tokenizer

    folder = root / "text_encoder"
    what = "text_encoder of Upscale-A-Video (the x4 upscaler's CLIP text model)"
    if not folder.is_dir():
        raise DiffusionWeightsError(f"{what}: missing folder {folder}. {UAV_SOURCE}")

    def load():
        try:
            return load_text_encoder(folder, dtype=dtype)
        except (FileNotFoundError, CLIPWeightsError) as exc:
            raise DiffusionWeightsError(f"{what}: {exc} {UAV_SOURCE}") from exc

    tok = root / "tokenizer"
    return load, load_tokenizer(tok), {"text_encoder": str(folder), "tokenizer": str(tok) if tok.is_dir() else None}


def load_uav_model(
    folder: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    offload_device: str | torch.device = "cpu",
    vae: str = "video",
    text_encoder: bool = True,
    load_other_vae: bool = True,
    keep_text_encoder: bool = False,
) -> VSRModel:
    """Load the official Upscale-A-Video folder into a ``VSRModel`` (method "upscale_a_video").

    folder: the folder of the layout above. dtype: "auto" (fp16 on CUDA/MPS, bf16 on a CPU with native
    bf16, else fp32; ``resolve_dtype``), "fp32", "fp16", "bf16" for the UNet and text encoder; the VAEs
    are fp32 (the official pipeline decodes in fp32, the x4 VAE overflows in fp16), or bf16 beside a bf16
    UNet where bf16 is native (``vae_dtype_for``). vae: "video" (``vae_video``, LR-conditioned; the official
    ``--use_video_vae``) or "3d" (``vae_3d``, the official default): it becomes ``VSRModel.vae`` and is
    required. ``load_other_vae``: also load the other VAE when its file is present. Both loaded VAEs are
    in ``VSRModel.config["vaes"]`` ({"video": module, "3d": module}); ``config["vae_kind"]`` names the
    one in ``.vae``. text_encoder: False skips text_encoder/ and tokenizer/. keep_text_encoder: keep it in
    the bundle; by default the pipeline's prompts (``UAV_A_PROMPT``, ``UAV_N_PROMPT``, "") are encoded at
    load time and the encoder is built again from its file only for another prompt (``clip.text_side``).
    ``config["raft_path"]`` is ``propagator/raft-things.pth`` when present (else None): the flow
    network is loaded by the flow nodes, not here.

    Raises DiffusionWeightsError naming the missing/mismatching file, what it is and where to get it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DiffusionWeightsError(f"Upscale-A-Video: {root} is not a folder. {UAV_SOURCE}")
    if vae not in ("video", "3d"):
        raise ValueError(f"vae must be 'video' or '3d', got {vae!r}")
    compute = resolve_dtype(dtype, device)
    device, offload = torch.device(device), torch.device(offload_device)
    source: dict[str, Any] = {"path": str(root), "layout": METHOD}

    text: dict[str, Any] = {}
    if text_encoder:  # first: encoded and gone before the UNet is read
        from ..sampling.uav import UAV_A_PROMPT, UAV_N_PROMPT

        load_text, tokenizer, text_src = _text_loader(root, compute)
        text = text_side(load_text, tokenizer, [UAV_A_PROMPT, UAV_N_PROMPT, ""], device, offload,
                         keep=keep_text_encoder)
        source.update(text_src)
    unet, source["unet"] = load_uav_unet(root, compute)  # read straight into the stored dtype
    vaes: dict[str, nn.Module] = {}
    vae_dtype = vae_dtype_for(compute, device)
    vaes[vae], source[f"vae_{vae}"] = load_uav_vae(root, vae, vae_dtype)
    other = "3d" if vae == "video" else "video"
    if load_other_vae and _weights_file(root / "vae", f"vae_{other}") is not None:
        vaes[other], source[f"vae_{other}"] = load_uav_vae(root, other, vae_dtype)

    scheduler, source["scheduler"] = _scheduler(root, "scheduler")
    low_res, source["low_res_scheduler"] = _scheduler(root, "low_res_scheduler")
    raft = root / "propagator" / "raft-things.pth"

    unet = nn.Module.to(unet, device=offload, dtype=compute)
    for k in vaes:
        vaes[k] = nn.Module.to(vaes[k], device=offload, dtype=vae_dtype)
    vcfg = vaes[vae].config
    trim_heap()  # what reading and converting left on the heap
    config = {
        "layout": METHOD,
        "vae_scale_factor": 2 ** (len(vcfg.block_out_channels) - 1),
        "scaling_factor": float(vcfg.scaling_factor),
        "max_noise_level": int(unet.config.max_noise_level),
        "latent_channels": int(vcfg.latent_channels),
        "lr_channels": int(unet.config.in_channels) - int(vcfg.latent_channels),
        "uses_class_labels": unet.config.num_class_embeds is not None,
        "vae_kind": vae,
        "vaes": vaes,
        "raft_path": str(raft) if raft.is_file() else None,
        # official pipeline settings (methods.md §2.3)
        "window": 8,
        "window_overlap": 2,
        "decode_chunk": 3,
    }
    return VSRModel(method=METHOD, unet=unet, vae=vaes[vae], **text,
                    scheduler_config=scheduler, low_res_scheduler_config=low_res, config=config, dtype=compute,
                    vae_dtype=vae_dtype, device=device, offload_device=offload, source=source)


# -------------------------------------------------------------------------------------- tiny writer
# The parity vectors' tiny sizes: width 32/64, heads [2,2,1,1] (so rotary covers a whole 32-wide head
# in one level and half a 64-wide head elsewhere), cross-attention width 32 = the tiny CLIP's.
TINY_UAV_UNET = {
    "_class_name": "UNetVideoModel",
    "down_temporal_idx": [0, 1, 2, 3], "mid_temporal": True, "up_temporal_idx": [0, 1, 2, 3],
    "temporal_module_config": {"attention_block_types": ["", ""]},
    "sample_size": 16, "in_channels": 7, "out_channels": 4, "max_noise_level": 350,
    "attention_head_dim": [2, 2, 1, 1], "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
    "up_block_types": ["CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"],
    "only_cross_attention": [True, True, True, False], "layers_per_block": 1, "norm_num_groups": 32,
    "norm_eps": 1e-05, "cross_attention_dim": 32, "use_linear_projection": True, "num_class_embeds": 1000,
}
_TINY_VAE = {
    "_class_name": "AutoencoderKLVideo", "act_fn": "silu", "block_out_channels": [32, 32, 64],
    "down_block_types": ["DownEncoderBlock3D"] * 3, "in_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 64, "scaling_factor": 0.08333,
}
TINY_UAV_VAE_VIDEO = {**_TINY_VAE, "up_block_types": ["UpDecoderBlock3D_plus"] * 3, "condition_img": True,
                      "condition_channels": 32, "use_temporal_block": True}
TINY_UAV_VAE_3D = {**_TINY_VAE, "up_block_types": ["UpDecoderBlock3D"] * 3}


def tiny_uav_modules(seed: int = 0) -> dict[str, nn.Module]:
    """The tiny networks ``write_tiny_uav`` saves ("unet", "vae_video", "vae_3d"), randomised with the
    parity rule (zero-init layers included, so no temporal branch is a no-op). Same seed, same weights."""
    from .tiny import randomize_

    out = {}
    for i, (name, cls, cfg) in enumerate((("unet", UNetVideoModel, TINY_UAV_UNET),
                                          ("vae_video", AutoencoderKLVideo, TINY_UAV_VAE_VIDEO),
                                          ("vae_3d", AutoencoderKLVideo, TINY_UAV_VAE_3D))):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            model = cls.from_config(dict(cfg))
        out[name] = randomize_(model, seed + i).eval()
    return out


def write_tiny_uav(folder: str | Path, seed: int = 0, text: bool = True, raft: bool = False) -> Path:
    """Write a tiny Upscale-A-Video folder in the official layout: unet/unet_video{_config.json,.bin}
    (with the rotary ``freqs`` copies the official file has), vae/vae_{video,3d}{_config.json,.bin}
    (old diffusers attention names), scheduler/, low_res_scheduler/, text_encoder/ + tokenizer/ (the
    tiny CLIP of ``write_tiny_clip``, unless ``text=False``) and, with ``raft=True``, a tiny random
    propagator/raft-things.pth. Returns the folder."""
    from .tiny import _public, legacy_vae_attention

    root = Path(folder)
    mods = tiny_uav_modules(seed)

    def save(sd, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(path))

    def write_json(data, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    write_json(TINY_UAV_UNET, root / "unet" / "unet_video_config.json")
    save(add_rotary_freqs(mods["unet"].state_dict()), root / "unet" / "unet_video.bin")
    for kind, cfg in (("video", TINY_UAV_VAE_VIDEO), ("3d", TINY_UAV_VAE_3D)):
        write_json(cfg, root / "vae" / f"vae_{kind}_config.json")
        save(legacy_vae_attention(mods[f"vae_{kind}"].state_dict()), root / "vae" / f"vae_{kind}.bin")
    for sub in ("scheduler", "low_res_scheduler"):
        write_json(_public(shipped_config(CONFIG_METHOD, sub)), root / sub / "scheduler_config.json")
    if text:
        from .clip import write_tiny_clip

        write_tiny_clip(root / "text_encoder", root / "tokenizer", seed=seed)
    if raft:
        _write_tiny_raft(root / "propagator" / "raft-things.pth", seed)
    return root


def _write_tiny_raft(path: Path, seed: int) -> None:
    from ..flow.raft import RAFT, RAFTConfig
    from .raft import add_module_prefix
    from .tiny import randomize_

    model = randomize_(RAFT(RAFTConfig()), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(add_module_prefix(model.state_dict()), str(path))
