"""MGLD's two official checkpoints into a ``VSRModel`` (method "mgld"), strictly.

* ``mgldvsr_unet.ckpt`` (6.68 GB, PyTorch Lightning): ``model.diffusion_model.*`` (the UNet),
  ``structcond_stage_model.*`` (structure encoder), ``first_stage_model.*`` (SD 2.1 VAE, which encodes the
  LR frames), ``cond_stage_model.model.*`` (OpenCLIP ViT-H text tower, only ever fed ""), plus keys no
  network here uses (``flownet_model.*`` RAFT, the schedule buffers), which are dropped.
* ``video_vae_cfw.ckpt`` (803 MB): ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``
  (a leading ``first_stage_model.`` is stripped, as the official ``init_from_ckpt`` does) and the training
  loss ``loss.*`` (dropped).

Pickles are read through ``safe_pickle`` (never a plain unpickle); a ``.safetensors`` file beside a
``.ckpt`` (same stem, e.g. from ``convert_to_safetensors``) is preferred. Networks are built from the
configs in ``vsr_core/configs/mgld`` (or ``configs=``) and loaded with ``strict=True``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..memory import trim_heap
from ..models.bundle import VSRModel
from ..models.mgld_unet import MGLDUNet, StructEncoder
from ..models.mgld_vae import MGLDVideoVAE
from .clip import text_side
from .common import to_dtype_
from .diffusion import (CONFIG_DIR, DiffusionWeightsError, build_strict, ldm_vae_to_diffusers, resolve_dtype,
                        vae_dtype_for)
from .safe_pickle import UnsafeCheckpointError, load_state_dict

__all__ = [
    "MGLD_PREFIXES",
    "WHERE_TO_GET",
    "find_mgld_files",
    "MGLDWeightsError",
    "shipped_mgld_configs",
    "configs_from_official",
    "split_mgld_checkpoint",
    "video_vae_state_dict",
    "prefer_safetensors",
    "read_mgld_weights",
    "convert_to_safetensors",
    "load_mgld_model",
    "tiny_mgld_configs",
    "write_tiny_mgld",
]

MGLD_PREFIXES = {
    "unet": "model.diffusion_model.",
    "struct_encoder": "structcond_stage_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.model.",
}
SCALE_FACTOR = 0.18215  # LatentDiffusionVSRTextWT scale_factor (SD 2.1 latent space)

WHERE_TO_GET = (
    "Get 'mgldvsr_unet.ckpt' and 'video_vae_cfw.ckpt' from the links in the MGLD-VSR README "
    "(github.com/IanYeung/MGLD-VSR: BaiduNetDisk pan.baidu.com/s/1xQF996RsxnmN-60ZLB6Vig?pwd=gh4i or OneDrive), "
    "or the Hugging Face mirror 'Iceclear/MGLD-VSR', and place them in ComfyUI/models/vsr/mgld/."
)


class MGLDWeightsError(DiffusionWeightsError):
    """An MGLD checkpoint that is missing, unsafe, unreadable or of another architecture."""


# ------------------------------------------------------------------------------------------- configs
def shipped_mgld_configs() -> dict[str, dict]:
    """The released model's configs: ``unet``, ``struct_encoder``, ``vae`` (diffusers AutoencoderKL),
    ``video_vae``, ``scheduler`` (diffusers DDPM format), as fresh dicts without comments."""
    out = {}
    for name in ("unet", "struct_encoder", "vae", "video_vae", "scheduler"):
        data = json.loads((CONFIG_DIR / "mgld" / f"{name}.json").read_text(encoding="utf-8"))
        out[name] = {k: v for k, v in data.items() if k != "_comment"}
    return out


_UNET_KEYS = ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
              "attention_resolutions", "num_head_channels", "num_heads", "context_dim", "semb_channels",
              "transformer_depth", "use_linear_in_transformer", "num_frames")
_STRUCT_KEYS = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
                "channel_mult", "num_heads", "num_head_channels")


def _params(cfg: Mapping) -> Mapping:
    cfg = cfg.get("model", cfg)
    return cfg.get("params", cfg)


def _diffusers_vae_config(dd: Mapping, scale: float) -> dict:
    n = len(dd["ch_mult"])
    return {"in_channels": dd.get("in_channels", 3), "out_channels": dd.get("out_ch", 3),
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]], "layers_per_block": dd["num_res_blocks"],
            "act_fn": "silu", "latent_channels": dd["z_channels"], "norm_num_groups": 32,
            "sample_size": dd.get("resolution", 512), "scaling_factor": scale}


def configs_from_official(model_config: Mapping, video_vae_config: Mapping | None = None) -> dict[str, dict]:
    """Our configs from the official OmegaConf configs (as dicts, e.g. ``OmegaConf.to_container`` of
    ``mgldvsr_512_realbasicvsr_deg.yaml`` and ``video_autoencoder_kl_64x64x4_resi.yaml``; the
    ``model:``/``params:`` wrappers are optional). Missing parts come from the shipped configs."""
    out = shipped_mgld_configs()
    p = _params(model_config)
    if "unet_config" in p:
        u = p["unet_config"]["params"]
        out["unet"] = {k: u[k] for k in _UNET_KEYS if k in u}
    if "structcond_stage_config" in p:
        s = p["structcond_stage_config"]["params"]
        out["struct_encoder"] = {k: s[k] for k in _STRUCT_KEYS if k in s}
    if "first_stage_config" in p:
        out["vae"] = _diffusers_vae_config(p["first_stage_config"]["params"]["ddconfig"],
                                           float(p.get("scale_factor", SCALE_FACTOR)))
    if video_vae_config is not None:
        v = _params(video_vae_config)
        dd = {k: x for k, x in v["ddconfig"].items() if k != "dropout"}
        out["video_vae"] = {"ddconfig": dd, "embed_dim": v.get("embed_dim", 4), "fusion_w": v.get("fusion_w", 1.0)}
    return out


def _resolve_configs(configs: Mapping | str | Path | None) -> dict[str, dict]:
    if configs is None:
        return shipped_mgld_configs()
    if isinstance(configs, (str, Path)):
        configs = json.loads(Path(configs).read_text(encoding="utf-8"))
    merged = shipped_mgld_configs()
    merged.update({k: dict(v) for k, v in configs.items() if isinstance(v, Mapping)})
    return merged


# ------------------------------------------------------------------------------------- remaps (pure)
def split_mgld_checkpoint(sd: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Split the diffusion checkpoint's state dict by ``MGLD_PREFIXES``: ``unet``, ``struct_encoder``,
    ``vae`` with their prefix removed, ``text_encoder`` with it kept (``open_clip_to_hf`` reads it).
    Keys under no prefix (RAFT ``flownet_model.*``, schedule buffers) are dropped."""
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in MGLD_PREFIXES}
    for key, value in sd.items():
        for name, prefix in MGLD_PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key if name == "text_encoder" else key[len(prefix):]] = value
                break
    return parts


def video_vae_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The video VAE checkpoint's keys for ``MGLDVideoVAE``: a leading ``first_stage_model.`` removed,
    the training loss (``loss.*``: LPIPS, discriminator) dropped."""
    out = {}
    for key, value in sd.items():
        if key.startswith(MGLD_PREFIXES["vae"]):
            key = key[len(MGLD_PREFIXES["vae"]):]
        if not key.startswith("loss."):
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------- reading
def prefer_safetensors(path: str | Path) -> Path:
    """``path``, or the ``.safetensors`` file with the same stem beside it when ``path`` is a pickle."""
    path = Path(path)
    twin = path.with_suffix(".safetensors")
    return twin if path.suffix != ".safetensors" and twin.is_file() else path


def read_mgld_weights(path: str | Path, what: str, mmap: bool = True) -> tuple[dict[str, Tensor], Path]:
    """(state dict, file actually read) for an MGLD checkpoint, safetensors twin preferred. ``mmap``: a
    pickle's tensors stay mapped from the file (no copy; for weights used as stored), else each is read
    into memory of its own (for weights converted to another dtype: a converted tensor's source is then
    freed, where a mapping keeps every page it was read through resident until the last tensor dies).
    Raises MGLDWeightsError naming the file and where to get it (also for a refused unsafe pickle)."""
    path = prefer_safetensors(path)
    if not path.is_file():
        raise MGLDWeightsError(f"{what}: file not found: {path}. {WHERE_TO_GET}")
    try:
        sd = load_state_dict(path, mmap=mmap)
    except UnsafeCheckpointError as exc:
        raise MGLDWeightsError(f"{what}: {exc} {WHERE_TO_GET}") from exc
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable weight file"
        raise MGLDWeightsError(f"{what}: could not read {path} ({type(exc).__name__}: "
                               f"{(str(exc).strip().splitlines() or [''])[0]}). {WHERE_TO_GET}") from exc
    for key in list(sd):  # safetensors offsets leave tensors unaligned; aligned copies compute like in-memory weights
        if sd[key].data_ptr() % 64:
            sd[key] = sd[key].clone()
    return sd, path


def convert_to_safetensors(ckpt: str | Path, out: str | Path | None = None, on_exists: str = "error") -> Path:
    """Write the tensors of a (Lightning) checkpoint to ``out`` (default: same stem, ``.safetensors``)
    once, so later loads skip the pickle. Every tensor key is kept, shared storages are copied apart.
    An existing ``out`` is refused (``on_exists="error"``, before any work) or replaced (``"replace"``) once
    the new file is complete. Returns the written path."""
    from safetensors.torch import save_file

    from ..io.video import refuse_existing, write_file

    ckpt = Path(ckpt)
    out = Path(out) if out is not None else ckpt.with_suffix(".safetensors")
    if out.resolve() == ckpt.resolve():
        raise ValueError(f"convert_to_safetensors: the output {out} would overwrite the input")
    if on_exists == "error":
        refuse_existing(out)
    try:
        sd = load_state_dict(ckpt)
    except UnsafeCheckpointError as exc:
        raise MGLDWeightsError(str(exc)) from exc
    seen: set[tuple[int, int]] = set()
    clean = {}
    for key, value in sd.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        value = value.contiguous()
        clean[key] = value.clone() if ident in seen or value.untyped_storage().nbytes() != value.nbytes else value
        seen.add(ident)
    return write_file(out, lambda tmp: save_file(clean, str(tmp), metadata={"format": "pt", "source": ckpt.name}),
                      on_exists)


# -------------------------------------------------------------------------------------------- loading
def _build(cls, config: Mapping, sd: Mapping[str, Tensor], what: str, source: Path) -> nn.Module:
    try:
        return build_strict(cls, config, sd, what, source, WHERE_TO_GET)
    except MGLDWeightsError:
        raise
    except DiffusionWeightsError as exc:
        raise MGLDWeightsError(str(exc)) from None


def _text_loader(sd: dict[str, Tensor], source: Path, dtype: torch.dtype, config: Mapping | None,
                 tokenizer: Mapping | None):
    """``(load, tokenizer)``: the first ``load()`` builds the OpenCLIP tower from ``sd`` (already read),
    later ones read the checkpoint's ``cond_stage_model.model.*`` tensors again."""
    from .clip import (CLIPWeightsError, EmptyPromptTokenizer, OPEN_CLIP_PREFIX, read_text_encoder_state_dict,
                       shipped_text_encoder_config, text_encoder_from_state_dict)

    given = [sd]

    def load():
        if given:
            tensors = given.pop()
        elif source.suffix == ".safetensors":
            tensors = read_text_encoder_state_dict(source, prefix=OPEN_CLIP_PREFIX, dtype=dtype)
        else:  # a pickle is read whole (MGLD only ever encodes "", which the loader encoded)
            tensors = {k: v for k, v in read_mgld_weights(source, "MGLD diffusion checkpoint")[0].items()
                       if k.startswith(OPEN_CLIP_PREFIX)}
        try:
            return text_encoder_from_state_dict(tensors, config or shipped_text_encoder_config("sd_x4"), dtype=dtype,
                                                source=str(source))
        except CLIPWeightsError as exc:
            raise MGLDWeightsError(f"text encoder (cond_stage_model.model.*) of {source}: {exc}") from exc

    # the checkpoint carries no vocabulary; MGLD only ever encodes "" (spec §4.1)
    return load, EmptyPromptTokenizer.from_config(tokenizer)


def load_mgld_model(
    unet_ckpt: str | Path,
    vae_ckpt: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    offload_device: str | torch.device = "cpu",
    text_encoder: bool | str = "auto",
    configs: Mapping | str | Path | None = None,
    keep_text_encoder: bool = False,
) -> VSRModel:
    """Load MGLD into a ``VSRModel(method="mgld")``.

    unet_ckpt: ``mgldvsr_unet.ckpt`` (or its .safetensors); vae_ckpt: ``video_vae_cfw.ckpt`` (idem).
    dtype: "auto" (fp16 on CUDA/MPS, bf16 on a CPU with native bf16, else fp32), "fp32", "fp16", "bf16" for the UNet, the structure
    encoder and the text encoder; both VAEs fp32, or bf16 beside a bf16 UNet where bf16 is native
    (``vae_dtype``, ``diffusion.vae_dtype_for``). text_encoder: "auto" loads the
    OpenCLIP tower when the checkpoint has it, True requires it, False skips it (samplers then take
    embeddings); it encodes "" at load time and is not kept unless keep_text_encoder (``clip.text_side``).
    configs: our config dicts (``{"unet", "struct_encoder", "vae", "video_vae",
    "text_encoder", "tokenizer" (special ids)}``, partial allowed) or a JSON file of them; default the released model's.

    Fields: ``unet`` (MGLDUNet), ``struct_encoder`` (StructEncoder), ``vae`` (diffusers AutoencoderKL, the
    first stage: z_LR = 0.18215·encode(x).sample()), ``video_vae`` (MGLDVideoVAE, the CFW decoder),
    ``text_encoder`` + ``tokenizer`` (EmptyPromptTokenizer), ``scheduler_config`` (1000-step DDPM, eps),
    ``config`` = {vae_scale_factor 8, scaling_factor 0.18215, latent_channels 4, num_frames 5, fusion_w,
    ...}. Raises MGLDWeightsError naming the file, the mismatching keys and where to get the weights.
    """
    from diffusers import AutoencoderKL

    cfg = _resolve_configs(configs)
    compute = resolve_dtype(dtype, device)
    vae_dtype = vae_dtype_for(compute, device)
    device, offload = torch.device(device), torch.device(offload_device)

    # a model stored in bf16/fp16 reads the file's tensors into memory of their own and converts them one
    # at a time, each fp32 source freed as its copy is made (the fp32 file is 5.7 GB; mapped, all of it
    # would stay resident beside the copies)
    sd, unet_file = read_mgld_weights(unet_ckpt, "MGLD diffusion checkpoint (mgldvsr_unet.ckpt)",
                                      mmap=compute == torch.float32)  # (the VAEs are bf16 only beside bf16)
    parts = split_mgld_checkpoint(sd)
    del sd
    for part, dt in (("unet", compute), ("struct_encoder", compute), ("text_encoder", compute), ("vae", vae_dtype)):
        to_dtype_(parts[part], dt)
    for part in ("unet", "struct_encoder", "vae"):
        if not parts[part]:
            raise MGLDWeightsError(f"{unet_file} has no '{MGLD_PREFIXES[part]}*' keys: not MGLD's diffusion "
                                   f"checkpoint (mgldvsr_unet.ckpt). {WHERE_TO_GET}")
    if text_encoder not in (True, False, "auto"):
        raise ValueError(f"text_encoder must be True, False or 'auto', got {text_encoder!r}")
    if text_encoder is True and not parts["text_encoder"]:
        raise MGLDWeightsError(f"{unet_file} has no 'cond_stage_model.model.*' keys (the OpenCLIP text "
                               f"encoder). {WHERE_TO_GET}")
    text: dict = {}
    if text_encoder and parts["text_encoder"]:
        load_text, tokenizer = _text_loader(parts.pop("text_encoder"), unet_file, compute, cfg.get("text_encoder"),
                                            cfg.get("tokenizer"))
        text = text_side(load_text, tokenizer, [""], device, offload, keep=keep_text_encoder)
    unet = _build(MGLDUNet, cfg["unet"], parts["unet"], "MGLD UNet (model.diffusion_model.*)", unet_file)
    struct = _build(StructEncoder, cfg["struct_encoder"], parts["struct_encoder"],
                    "MGLD structure encoder (structcond_stage_model.*)", unet_file)
    vae = _build(AutoencoderKL, cfg["vae"], ldm_vae_to_diffusers(parts["vae"], cfg["vae"]),
                 "MGLD first-stage VAE (first_stage_model.*)", unet_file)
    del parts

    vsd, vae_file = read_mgld_weights(vae_ckpt, "MGLD video VAE checkpoint (video_vae_cfw.ckpt)",
                                      mmap=vae_dtype == torch.float32)
    to_dtype_(vsd, vae_dtype)
    video_vae = _build(MGLDVideoVAE, cfg["video_vae"], video_vae_state_dict(vsd), "MGLD video VAE", vae_file)
    del vsd

    unet = nn.Module.to(unet, device=offload, dtype=compute)
    struct = nn.Module.to(struct, device=offload, dtype=compute)
    vae = nn.Module.to(vae, device=offload, dtype=vae_dtype)
    video_vae = nn.Module.to(video_vae, device=offload, dtype=vae_dtype)
    trim_heap()  # what reading and converting left on the heap
    return VSRModel(
        method="mgld",
        unet=unet,
        vae=vae,
        **text,
        scheduler_config=dict(cfg["scheduler"]),
        config={
            "vae_scale_factor": 2 ** (len(cfg["vae"]["block_out_channels"]) - 1),
            "scaling_factor": float(cfg["vae"].get("scaling_factor", SCALE_FACTOR)),
            "latent_channels": int(cfg["unet"].get("in_channels", 4)),
            "lr_channels": 0,
            "uses_class_labels": False,
            "num_frames": int(cfg["unet"].get("num_frames", 5)),
            "fusion_w": float(cfg["video_vae"].get("fusion_w", 1.0)),
        },
        dtype=compute,
        vae_dtype=vae_dtype,
        device=device,
        offload_device=offload,
        source={"unet": str(unet_file), "video_vae": str(vae_file)},
        struct_encoder=struct,
        video_vae=video_vae,
    )


# ---------------------------------------------------------------------------------------------- tiny
def tiny_mgld_configs() -> dict[str, dict]:
    """Configs of the tiny MGLD used in tests: the parity recording's sizes (UNet 32 ch, mult [1,2,2,2],
    1 res block, 16-ch heads, context 32, semb 32; structure encoder 32 ch, 2 heads; VAEs ch 32)."""
    dd = {"double_z": True, "num_frames": 5, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3,
          "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": []}
    return {
        "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 2, 2],
                 "num_res_blocks": 1, "attention_resolutions": [4, 2, 1], "num_head_channels": 16,
                 "context_dim": 32, "semb_channels": 32, "transformer_depth": 1,
                 "use_linear_in_transformer": True, "num_frames": 5},
        "struct_encoder": {"in_channels": 4, "model_channels": 32, "out_channels": 32, "num_res_blocks": 1,
                           "attention_resolutions": [4, 2, 1], "channel_mult": [1, 1, 2, 2], "num_heads": 2,
                           "num_head_channels": -1},
        "vae": _diffusers_vae_config(dd, SCALE_FACTOR),
        "video_vae": {"ddconfig": dd, "embed_dim": 4, "fusion_w": 1.0},
    }


def write_tiny_mgld(folder: str | Path, seed: int = 0, weights: str = "ckpt", text_encoder: bool = True) -> dict[str, Path]:
    """Write a tiny random MGLD in the official Lightning layout: ``mgldvsr_unet.ckpt`` (torch.save of
    ``{"state_dict": {model.diffusion_model.*, structcond_stage_model.*, first_stage_model.*,
    cond_stage_model.model.* (tiny OpenCLIP, when text_encoder), flownet_model.* and a schedule buffer (both
    ignored by the loader)}, "global_step": 0}``), ``video_vae_cfw.ckpt`` (with a ``loss.*`` key) and
    ``mgld_configs.json`` (``tiny_mgld_configs`` + the tiny text config and tokenizer ids). weights: "ckpt", "safetensors"
    (same stems) or "both". Returns {"unet", "video_vae", "configs"} paths (the preferred files)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from .diffusion import diffusers_vae_to_ldm
    from .tiny import randomize_, tiny_open_clip, tiny_single_file_configs, tiny_text_config

    if weights not in ("ckpt", "safetensors", "both"):
        raise ValueError(f"weights must be 'ckpt', 'safetensors' or 'both', got {weights!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_mgld_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = randomize_(MGLDUNet.from_config(cfg["unet"]), seed)
        struct = randomize_(StructEncoder.from_config(cfg["struct_encoder"]), seed + 1)
        vae = randomize_(AutoencoderKL.from_config(cfg["vae"]), seed + 2)
        video = randomize_(MGLDVideoVAE.from_config(cfg["video_vae"]), seed + 3)
    sd: dict[str, Tensor] = {}
    for prefix, module_sd in ((MGLD_PREFIXES["unet"], unet.state_dict()),
                              (MGLD_PREFIXES["struct_encoder"], struct.state_dict()),
                              (MGLD_PREFIXES["vae"], diffusers_vae_to_ldm(vae.state_dict(), cfg["vae"]))):
        sd.update({prefix + k: v.contiguous() for k, v in module_sd.items()})
    if text_encoder:
        sd.update(tiny_open_clip(seed))
        cfg["text_encoder"] = tiny_text_config()
        cfg["tokenizer"] = tiny_single_file_configs()["tokenizer"]
    sd["flownet_model.fnet.conv1.weight"] = torch.zeros(4, 3, 7, 7)
    sd["betas"] = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    vsd = {k: v.contiguous() for k, v in video.state_dict().items()}
    vsd["loss.logvar"] = torch.zeros(())
    paths = {}
    for name, state in (("mgldvsr_unet", sd), ("video_vae_cfw", vsd)):
        if weights in ("ckpt", "both"):
            torch.save({"state_dict": state, "global_step": 0, "epoch": 0}, folder / f"{name}.ckpt")
            paths[name] = folder / f"{name}.ckpt"
        if weights in ("safetensors", "both"):
            save_file({k: v.clone() for k, v in state.items()}, str(folder / f"{name}.safetensors"))
            paths[name] = folder / f"{name}.safetensors"
    (folder / "mgld_configs.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return {"unet": paths["mgldvsr_unet"], "video_vae": paths["video_vae_cfw"], "configs": folder / "mgld_configs.json"}


def find_mgld_files(folder: str | Path) -> tuple[Path, Path, Path | None]:
    """(UNet checkpoint, video-VAE checkpoint, configs JSON or None) in an MGLD model folder.

    The released names (``mgldvsr_unet``, ``video_vae_cfw``; .safetensors preferred to .ckpt) or any
    single file whose name contains "unet" / "vae". ``mgld_configs.json`` beside them (tiny test models)
    overrides the released architecture.
    """
    folder = Path(folder)

    def pick(word: str, released: str) -> Path:
        for ext in (".safetensors", ".ckpt", ".pth"):
            if (folder / f"{released}{ext}").is_file():
                return folder / f"{released}{ext}"
        found = sorted(p for p in folder.iterdir() if p.is_file() and word in p.name.lower()
                       and p.suffix in (".safetensors", ".ckpt", ".pth"))
        if not found:
            raise MGLDWeightsError(f"no MGLD {word} checkpoint in {folder}: expected {released}.ckpt (or "
                                   f".safetensors). {WHERE_TO_GET}")
        return found[0]

    configs = folder / "mgld_configs.json"
    return pick("unet", "mgldvsr_unet"), pick("vae", "video_vae_cfw"), configs if configs.is_file() else None
