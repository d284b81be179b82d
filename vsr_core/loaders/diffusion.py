"""The SD x4 upscaler and StableVSR from their official file layouts into a ``VSRModel``.

Accepted layouts (``detect_layout``):

* ``"stablevsr"``: the diffusers folder of HF ``claudiom4sir/StableVSR`` (``unet/``, ``controlnet/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).
* ``"sd_x4_diffusers"``: the diffusers folder of HF ``stabilityai/stable-diffusion-x4-upscaler`` (``unet/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``low_res_scheduler/``). Its VAE was saved by
  diffusers 0.9, whose attention layer was named ``query/key/value/proj_attn``.
* ``"sd_x4_single_file"``: the original Stability release ``x4-upscaler-ema.safetensors`` / ``.ckpt`` with
  latent-diffusion (LDM) key names, ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
  ``cond_stage_model.model.*`` (OpenCLIP text tower), converted here at load time.

Every network is built from a config (the folder's own ``config.json``, else the JSON shipped in
``vsr_core/configs``: nothing is fetched) and loaded with ``strict=True``. Key remaps are pure
``dict -> dict`` functions. diffusers' single-file converters (``diffusers.loaders.single_file_utils``)
are not used at run time: they are internal helpers rather than a public API, and they fill absent keys
with ``None`` instead of reporting them; the tests check that our remaps give exactly their result.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..memory import trim_heap
from ..models.bundle import DTYPES, VSRModel
from .clip import text_side
from .common import first_keys, key_mismatches, mismatch_message, read_safetensors, to_dtype_

__all__ = [
    "LAYOUTS",
    "DiffusionWeightsError",
    "detect_layout",
    "resolve_dtype",
    "load_diffusion_model",
    "read_weights",
    "shipped_config",
    "remap_vae_legacy_attention",
    "ldm_unet_to_diffusers",
    "diffusers_unet_to_ldm",
    "ldm_vae_to_diffusers",
    "diffusers_vae_to_ldm",
    "split_ldm_checkpoint",
    "build_strict",
    "build_ldm_unet_vae",
]

LAYOUTS = ("stablevsr", "sd_x4_diffusers", "sd_x4_single_file")
METHODS = ("stablevsr", "sd_x4")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pth", ".pt")
# In the order tried: full precision first, then the fp16 "variant" files some downloads contain.
COMPONENT_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
SHARD_INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")

LDM_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.model.",
}

# x4 upscaler pipeline settings that live in no component config.
MAX_NOISE_LEVEL = 350  # StableDiffusionUpscalePipeline's max_noise_level (model_index.json of the x4 repo)

SOURCES = {
    "stablevsr": (
        "the diffusers folder of the Hugging Face repo 'claudiom4sir/StableVSR' (unet/, controlnet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/), placed as ComfyUI/models/vsr/stablevsr/<folder>/"
    ),
    "sd_x4_diffusers": (
        "the diffusers folder of the Hugging Face repo 'stabilityai/stable-diffusion-x4-upscaler' (unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/, low_res_scheduler/), placed as ComfyUI/models/vsr/sd_x4/<folder>/"
    ),
    "sd_x4_single_file": (
        "'x4-upscaler-ema.safetensors' (or .ckpt) from the Hugging Face repo "
        "'stabilityai/stable-diffusion-x4-upscaler', placed as ComfyUI/models/vsr/sd_x4/x4-upscaler-ema.safetensors"
    ),
    "sd2_diffusers": (
        "a Stable Diffusion 2.x diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), placed as "
        "ComfyUI/models/vsr/satec/<folder>/"
    ),
}
ACCEPTED = (
    "Accepted: (1) " + SOURCES["stablevsr"] + "; (2) " + SOURCES["sd_x4_diffusers"] + "; (3) "
    + SOURCES["sd_x4_single_file"] + "."
)


class DiffusionWeightsError(ValueError):
    """A model folder or file that is missing, unreadable, or does not match the expected layout."""


# ------------------------------------------------------------------------------------------- configs
def shipped_config(method: str, component: str) -> dict:
    """The config shipped with the code for ``method`` ("sd_x4" | "stablevsr") and ``component`` ("unet",
    "vae", "controlnet", "scheduler", "low_res_scheduler", "text_encoder"), as a fresh dict."""
    path = CONFIG_DIR / method / f"{component}.json"
    if not path.is_file() and method == "stablevsr" and component == "text_encoder":
        path = CONFIG_DIR / "sd_x4" / "text_encoder.json"  # StableVSR kept the x4 text encoder
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {path} (the install is incomplete)")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DiffusionWeightsError(f"could not read the config {path}: {exc}") from exc


# -------------------------------------------------------------------------------------------- dtypes
def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``"auto"`` -> fp16 on CUDA and MPS (the x4 UNet is stable in half precision; bf16 would lose
    mantissa bits for no gain where fp16 is fast); bf16 on a CPU that computes it natively and faster
    (AVX512-BF16 or AMX and a one-time probe: about twice as fast as fp32 there, and half the memory;
    ``speed.native_bf16_cpu``, which the environment variable ``VSR_CPU_BF16=0`` turns off); fp32
    elsewhere (an AVX2 CPU emulates bf16, slowly, and a VM that hides AMX can run it slower than fp32).
    ``"fp32"``/``"fp16"``/``"bf16"`` or a ``torch.dtype`` as given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        from ..speed import native_bf16_cpu

        kind = torch.device(device).type
        if kind in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if kind == "cpu" and native_bf16_cpu() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto', 'fp32', 'fp16' or 'bf16', got {dtype!r}")
    return DTYPES[dtype]


def vae_dtype_for(compute: torch.dtype, device: str | torch.device) -> torch.dtype:
    """The dtype a loader stores a VAE in, given the UNet's: bf16 when the UNet is bf16 and ``device``
    computes bf16 natively (``speed.bf16_fast``), else fp32. Never fp16: the x4 VAE overflows there
    (its config says ``force_upcast``), while bf16 has fp32's range."""
    from ..speed import bf16_fast

    return torch.bfloat16 if compute == torch.bfloat16 and bf16_fast(device) else torch.float32


# ------------------------------------------------------------------------------------------- reading
def read_weights(path: str | Path, what: str = "weights", hint: str = "",
                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file, or a torch pickle (``.ckpt``/``.bin``/``.pth``/``.pt``) through
    ``torch.load(weights_only=True)``, into a flat ``{name: tensor}`` dict on the CPU; ``dtype``: the
    floating-point tensors in that dtype (a safetensors file is converted tensor by tensor as it is read).

    A pickle holding ``{"state_dict": {...}}`` (Lightning/LDM checkpoints) is unwrapped. Raises
    DiffusionWeightsError naming the file, ``what`` it should have been and ``hint`` (where to get it).
    """
    path = Path(path)
    tail = f" {hint}" if hint else ""
    if not path.is_file():
        raise DiffusionWeightsError(f"{what}: file not found: {path}.{tail}")
    try:
        if path.suffix == ".safetensors":
            sd: Any = read_safetensors(path, dtype)
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable weight file"
        raise DiffusionWeightsError(
            f"{what}: could not read {path} ({type(exc).__name__}: {_first_line(exc)}). Pickles are opened with "
            f"torch.load(weights_only=True) only; a .safetensors copy always works.{tail}"
        ) from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise DiffusionWeightsError(f"{what}: {path} does not hold a flat tensor state dict.{tail}")
    to_dtype_(sd, dtype)  # one at a time: each fp32 tensor is freed as its copy is made
    _align_(sd)
    return sd


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _align_(sd: dict[str, Tensor]) -> None:
    """Copy, in place and one at a time, the tensors that are not 64-byte aligned (safetensors places
    them at file offsets): CPU kernels take other SIMD paths on them, which is slower and changes results
    in the last bits, so a loaded model would not compute exactly what the same weights built in memory do."""
    for key in list(sd):
        if sd[key].device.type == "cpu" and sd[key].data_ptr() % 64:
            sd[key] = sd[key].clone()


def _component_weights(folder: Path, what: str, hint: str,
                       dtype: torch.dtype | None = None) -> tuple[dict[str, Tensor], Path]:
    for name in COMPONENT_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_weights(folder / name, what, hint, dtype), folder / name
    for name in SHARD_INDEX_FILES:
        index = folder / name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            sd: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(read_weights(folder / shard, what, hint, dtype))
            return sd, index
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    where = f"{folder} holds {found}" if folder.is_dir() else f"{folder} does not exist"
    raise DiffusionWeightsError(
        f"{what}: no weight file in {folder}. Expected {folder / COMPONENT_WEIGHT_FILES[0]} "
        f"(or diffusion_pytorch_model.bin); {where}. {hint}"
    )


# ------------------------------------------------------------------------------------ remaps (pure)
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_ATTN_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def remap_vae_legacy_attention(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers < 0.14 VAE attention names -> current ones.

    ``*.attentions.N.{query,key,value,proj_attn}.*`` -> ``*.attentions.N.{to_q,to_k,to_v,to_out.0}.*``
    (``group_norm`` kept its name). The x4 upscaler's diffusers VAE was saved with the old names. Keys
    already in the new form, and all other keys, pass unchanged.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = _LEGACY_ATTN_RE.match(key)
        out[f"{m[1]}.{_LEGACY_ATTN[m[2]]}.{m[3]}" if m else key] = value
    return out


# LDM ResBlock (openaimodel.py) sub-module names -> diffusers ResnetBlock2D names.
_UNET_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
# LDM VAE ResnetBlock -> diffusers ResnetBlock2D (only the shortcut differs).
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
# LDM VAE AttnBlock (1x1 convs) -> diffusers Attention (linears).
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _block_has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type


def _unet_prefix_table(config: Mapping[str, Any]) -> list[tuple[str, str, dict | None]]:
    """(LDM prefix, diffusers prefix, inner-name map) for every module of a UNet2DConditionModel of
    ``config`` as the LDM ``UNetModel`` numbers it: ``input_blocks.i.{0 resnet|0.op downsample|1 attention}``,
    ``middle_block.{0,1,2}``, ``output_blocks.i.{0 resnet|1 attention|1 or 2 upsample}``."""
    n = len(config["block_out_channels"])
    per = int(config["layers_per_block"])
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    rows: list[tuple[str, str, dict | None]] = [
        ("input_blocks.0.0", "conv_in", None),
        ("time_embed.0", "time_embedding.linear_1", None),
        ("time_embed.2", "time_embedding.linear_2", None),
        ("label_emb", "class_embedding", None),
        ("out.0", "conv_norm_out", None),
        ("out.2", "conv_out", None),
        ("middle_block.0", "mid_block.resnets.0", _UNET_RESNET),
        ("middle_block.1", "mid_block.attentions.0", None),
        ("middle_block.2", "mid_block.resnets.1", _UNET_RESNET),
    ]
    for b in range(n):
        first = 1 + b * (per + 1)
        for j in range(per):
            rows.append((f"input_blocks.{first + j}.0", f"down_blocks.{b}.resnets.{j}", _UNET_RESNET))
            if _block_has_attention(down_types[b]):
                rows.append((f"input_blocks.{first + j}.1", f"down_blocks.{b}.attentions.{j}", None))
        if b < n - 1:
            rows.append((f"input_blocks.{first + per}.0.op", f"down_blocks.{b}.downsamplers.0.conv", None))
    for u in range(n):
        attn = _block_has_attention(up_types[u])
        for j in range(per + 1):
            i = u * (per + 1) + j
            rows.append((f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{j}", _UNET_RESNET))
            if attn:
                rows.append((f"output_blocks.{i}.1", f"up_blocks.{u}.attentions.{j}", None))
        if u < n - 1:
            i = u * (per + 1) + per
            rows.append((f"output_blocks.{i}.{2 if attn else 1}.conv", f"up_blocks.{u}.upsamplers.0.conv", None))
    return rows


def _vae_prefix_table(config: Mapping[str, Any]) -> list[tuple[str, str, dict | None]]:
    """(LDM prefix, diffusers prefix, inner map) for an AutoencoderKL of ``config`` as the LDM
    ``Encoder``/``Decoder`` number it (the decoder's ``up.i`` counts from the lowest resolution, diffusers'
    ``up_blocks.i`` from the highest)."""
    n = len(config["block_out_channels"])
    per = int(config["layers_per_block"])
    rows: list[tuple[str, str, dict | None]] = [("quant_conv", "quant_conv", None),
                                               ("post_quant_conv", "post_quant_conv", None)]
    for part in ("encoder", "decoder"):
        rows += [
            (f"{part}.conv_in", f"{part}.conv_in", None),
            (f"{part}.conv_out", f"{part}.conv_out", None),
            (f"{part}.norm_out", f"{part}.conv_norm_out", None),
            (f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", _VAE_RESNET),
            (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", _VAE_RESNET),
            (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", _VAE_ATTN),
        ]
    for i in range(n):
        for j in range(per):
            rows.append((f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", _VAE_RESNET))
        if i < n - 1:
            rows.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", None))
    for i in range(n):
        level = n - 1 - i
        for j in range(per + 1):
            rows.append((f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", _VAE_RESNET))
        if level > 0:
            rows.append((f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv", None))
    return rows


def _rename(sd: Mapping[str, Tensor], table, reverse: bool) -> dict[str, Tensor]:
    """Rename every key whose leading components match a table prefix; unknown keys pass through, so a
    strict load names them."""
    lookup: dict[str, tuple[str, dict | None]] = {}
    for ldm, diff, inner in table:
        if reverse:
            lookup[diff] = (ldm, {v: k for k, v in inner.items()} if inner else None)
        else:
            lookup[ldm] = (diff, inner)
    depth = max(p.count(".") + 1 for p in lookup)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        parts = key.split(".")
        new = key
        for cut in range(min(depth, len(parts) - 1), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in lookup:
                target, inner = lookup[prefix]
                rest = ".".join(parts[cut:])
                if inner:
                    for old in sorted(inner, key=len, reverse=True):
                        if rest == old or rest.startswith(old + "."):
                            rest = inner[old] + rest[len(old):]
                            break
                new = f"{target}.{rest}"
                break
        out[new] = value
    return out


def ldm_unet_to_diffusers(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """LDM ``UNetModel`` keys (without ``model.diffusion_model.``) -> ``UNet2DConditionModel`` keys.

    ``config``: the diffusers UNet config (block count, ``layers_per_block`` and which blocks have
    attention fix the LDM numbering). Transformer internals keep their names; ``label_emb`` (the x4
    noise-level embedding) becomes ``class_embedding``. Unknown keys pass unchanged.
    """
    return _rename(sd, _unet_prefix_table(config), reverse=False)


def diffusers_unet_to_ldm(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Inverse of ``ldm_unet_to_diffusers`` (used to write LDM-layout test checkpoints)."""
    return _rename(sd, _unet_prefix_table(config), reverse=True)


def ldm_vae_to_diffusers(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """LDM ``AutoencoderKL`` keys (without ``first_stage_model.``) -> diffusers ``AutoencoderKL`` keys.

    The mid-block attention's 1x1 conv weights ``[C, C, 1, 1]`` become linear weights ``[C, C]``.
    Unknown keys pass unchanged.
    """
    out = _rename(sd, _vae_prefix_table(config), reverse=False)
    return {k: (v[:, :, 0, 0] if v.ndim == 4 and ".attentions." in k else v) for k, v in out.items()}


def diffusers_vae_to_ldm(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Inverse of ``ldm_vae_to_diffusers`` (attention linears back to 1x1 convs)."""
    out = _rename(sd, _vae_prefix_table(config), reverse=True)
    return {k: (v[:, :, None, None] if v.ndim == 2 and ".attn_1." in k else v) for k, v in out.items()}


def split_ldm_checkpoint(sd: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Split an LDM single-file checkpoint into ``{"unet", "vae"}`` dicts with their prefixes removed and
    ``"text_encoder"`` with its prefix kept (``open_clip_to_hf`` expects it). Other keys (the diffusion
    schedule buffers, ``low_scale_model.*``) belong to no network and are dropped."""
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in LDM_PREFIXES}
    for key, value in sd.items():
        for name, prefix in LDM_PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key if name == "text_encoder" else key[len(prefix):]] = value
                break
    return parts


# ------------------------------------------------------------------------------------ strict build
def build_strict(cls: type[nn.Module], config: Mapping[str, Any], state_dict: Mapping[str, Tensor],
                 what: str, source: str | Path, hint: str = "") -> nn.Module:
    """Build ``cls.from_config(config)`` and load ``state_dict`` into it with ``strict=True``.

    The module is created on the meta device and the tensors are assigned, so a 470 M-parameter UNet is
    neither randomly initialised nor held twice. On any missing/unexpected key or shape mismatch, raises
    DiffusionWeightsError naming ``what``, ``source`` (the file), the first offending keys and ``hint``.
    Returns the module in eval mode without gradients, in the file's dtype.
    """
    with torch.device("meta"):
        model = cls.from_config(dict(config))
    message = mismatch_message(f"{what}: {source} does not match the expected architecture strictly:",
                               *key_mismatches(model.state_dict(), state_dict), hint=hint, limit=6)
    if message:
        raise DiffusionWeightsError(message)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def build_ldm_unet_vae(parts: Mapping[str, dict], arch: Mapping[str, dict], method: str, source: str | Path,
                       kind: str, hint: str) -> tuple[nn.Module, nn.Module]:
    """The diffusers UNet and VAE of a split LDM single file (``split_ldm_checkpoint``), built strictly from
    the ``arch`` configs, else the shipped ``method`` ones. ``kind`` names the expected checkpoint in the
    error when its UNet or VAE keys are missing."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    for part in ("unet", "vae"):
        if not parts[part]:
            raise DiffusionWeightsError(
                f"{source} has no '{LDM_PREFIXES[part]}*' keys: not {kind} single-file checkpoint. {hint}")
    ucfg = arch.get("unet") or shipped_config(method, "unet")
    vcfg = arch.get("vae") or shipped_config(method, "vae")
    unet = build_strict(UNet2DConditionModel, ucfg, ldm_unet_to_diffusers(parts["unet"], ucfg),
                        "UNet (model.diffusion_model.*)", source, hint)
    vae = build_strict(AutoencoderKL, vcfg, ldm_vae_to_diffusers(parts["vae"], vcfg),
                       "VAE (first_stage_model.*)", source, hint)
    return unet, vae


# ------------------------------------------------------------------------------------------ layouts
def _model_index_class(folder: Path) -> str:
    index = folder / "model_index.json"
    if index.is_file():
        try:
            return str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
        except (OSError, ValueError):
            return ""
    return ""


def _resolve(path: str | Path) -> tuple[str, Path]:
    path = Path(path)
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise DiffusionWeightsError(f"{path} is not a weight file ({'/'.join(WEIGHT_SUFFIXES)}). {ACCEPTED}")
        if path.suffix == ".safetensors":
            _check_single_file_keys(path)
        return "sd_x4_single_file", path
    if not path.is_dir():
        raise DiffusionWeightsError(f"model not found: {path}. {ACCEPTED}")
    pipeline = _model_index_class(path)
    if (path / "controlnet").is_dir() or "StableVSR" in pipeline:
        return "stablevsr", path
    if (path / "unet").is_dir() or "Upscale" in pipeline:
        return "sd_x4_diffusers", path
    files = [p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if len(files) == 1:
        return _resolve(files[0])
    found = sorted(p.name for p in path.iterdir())
    raise DiffusionWeightsError(
        f"{path} is not a model folder this pack reads: it has no unet/ or controlnet/ sub-folder "
        f"(it holds {found[:12]}). {ACCEPTED}"
    )


def _check_single_file_keys(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001
        raise DiffusionWeightsError(f"could not read {path}: {exc}. {ACCEPTED}") from exc
    if not any(k.startswith(LDM_PREFIXES["unet"]) for k in keys):
        looks_diffusers = any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for k in keys)
        extra = (" It looks like one component of a diffusers folder: select the whole folder instead."
                 if looks_diffusers else "")
        raise DiffusionWeightsError(
            f"{path} is not an x4 upscaler single-file checkpoint: no 'model.diffusion_model.*' keys "
            f"(first keys: {first_keys(keys[:6], 6)}).{extra} {ACCEPTED}"
        )


def detect_layout(path: str | Path) -> str:
    """``"stablevsr"`` | ``"sd_x4_diffusers"`` | ``"sd_x4_single_file"`` for a model folder or file.

    A folder with ``controlnet/`` (or a StableVSR ``model_index.json``) is StableVSR; one with ``unet/``
    is the x4 diffusers folder; a weight file (or a folder holding exactly one) is the LDM single file.
    Raises DiffusionWeightsError listing the accepted layouts and where to get them otherwise.
    """
    return _resolve(path)[0]


# ---------------------------------------------------------------------------------------- loading
def _component_config(folder: Path, method: str, component: str, file: str = "config.json") -> tuple[dict, str]:
    own = folder / file
    if own.is_file():
        return _read_json(own), str(own)
    return shipped_config(method, component), f"shipped vsr_core/configs/{method}/{component}.json"


def _load_component(root: Path, sub: str, cls, method: str, layout: str,
                    remap: Callable[[dict], dict] | None = None,
                    dtype: torch.dtype | None = None) -> tuple[nn.Module, dict]:
    folder = root / sub
    hint = f"Expected {SOURCES[layout]}."
    what = f"{sub} of {root.name}"
    if not folder.is_dir():
        raise DiffusionWeightsError(f"{what}: missing folder {folder}. {hint}")
    config, config_src = _component_config(folder, method, sub)
    sd, weights = _component_weights(folder, what, hint, dtype)
    if remap is not None:
        sd = remap(sd)
    module = build_strict(cls, config, sd, what, weights, hint)
    return module, {"weights": str(weights), "config": config_src}


def _scheduler_config(root: Path | None, method: str, sub: str) -> tuple[dict, str]:
    if root is not None:
        own = root / sub / "scheduler_config.json"
        if own.is_file():
            return _read_json(own), str(own)
    return shipped_config(method, sub), f"shipped vsr_core/configs/{method}/{sub}.json"


def _text_error(exc: Exception, hint: str) -> DiffusionWeightsError:
    return DiffusionWeightsError(f"{exc} {hint}")


def _text_loader(root: Path, layout: str, dtype: torch.dtype):
    """``(load, tokenizer, source)`` of a diffusers folder's text side: ``load()`` builds the encoder from
    ``text_encoder/`` strictly (checked now: a missing or wrong file fails the model's load, not a later
    prompt), the tokenizer from ``tokenizer/``."""
    from .clip import CLIPWeightsError, load_text_encoder, load_tokenizer

    hint = f"Expected {SOURCES[layout]}."
    folder = root / "text_encoder"
    if not folder.is_dir():
        raise DiffusionWeightsError(f"text_encoder of {root.name}: missing folder {folder}. {hint}")

    def load():
        try:
            return load_text_encoder(folder, dtype=dtype)
        except (FileNotFoundError, CLIPWeightsError) as exc:
            raise _text_error(exc, hint) from exc

    tok_dir = root / "tokenizer"
    tokenizer = load_tokenizer(tok_dir)  # no vocabulary: EmptyPromptTokenizer (the empty prompt only)
    return load, tokenizer, {"text_encoder": str(folder), "tokenizer": str(tok_dir) if tok_dir.is_dir() else None}


def _single_file_text_loader(sd: dict[str, Tensor], file: Path, config: Mapping | None, dtype: torch.dtype,
                             tokenizer_ids: Mapping | None = None):
    """``(load, tokenizer)`` of a single file's text side: the first ``load()`` builds the encoder from
    ``sd`` (the file's ``cond_stage_model.model.*`` tensors, already read), later ones read them again."""
    from .clip import CLIPWeightsError, OPEN_CLIP_PREFIX, load_tokenizer, read_text_encoder_state_dict, \
        text_encoder_from_state_dict

    given = [sd]

    def load():
        tensors = given.pop() if given else read_text_encoder_state_dict(file, prefix=OPEN_CLIP_PREFIX, dtype=dtype)
        try:
            return text_encoder_from_state_dict(tensors, config, dtype=dtype,
                                                source=f"{file} (cond_stage_model.model.*)")
        except CLIPWeightsError as exc:
            raise _text_error(exc, f"Expected {SOURCES['sd_x4_single_file']}.") from exc

    # The single file carries no vocabulary; a tokenizer/ folder beside it is used when present, else the
    # special ids (the x4 ones unless the configs say otherwise) tokenize the empty prompt.
    return load, load_tokenizer(file.parent / "tokenizer", fallback=tokenizer_ids)


def _single_file_configs(file: Path, configs: Mapping[str, dict] | str | Path | None) -> dict[str, dict]:
    """Architecture configs for a single file: ``configs`` (a dict with any of ``unet``, ``vae``,
    ``text_encoder``, ``tokenizer`` (special ids), or a diffusers-style folder with ``unet/config.json``...),
    else those embedded in the safetensors metadata under ``"vsr_configs"`` (test checkpoints carry their
    tiny configs there), else (``{}``) the shipped x4 ones."""
    if isinstance(configs, (str, Path)):
        folder = Path(configs)
        found = {}
        for part in ("unet", "vae", "text_encoder"):
            if (folder / part / "config.json").is_file():
                found[part] = _read_json(folder / part / "config.json")
        return found
    if configs is not None:
        return dict(configs)
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
        if "vsr_configs" in meta:
            return json.loads(meta["vsr_configs"])
    return {}


def _model_config(unet: nn.Module, vae: nn.Module, layout: str) -> dict:
    ucfg, vcfg = unet.config, vae.config
    latent = int(vcfg.latent_channels)
    return {
        "layout": layout,
        "vae_scale_factor": 2 ** (len(vcfg.block_out_channels) - 1),
        "scaling_factor": float(vcfg.scaling_factor),
        "max_noise_level": MAX_NOISE_LEVEL,
        "latent_channels": latent,
        "lr_channels": int(ucfg.in_channels) - latent,
        "uses_class_labels": ucfg.num_class_embeds is not None,
    }


def load_diffusion_model(
    path: str | Path,
    method: str = "auto",
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    offload_device: str | torch.device = "cpu",
    text_encoder: bool = True,
    configs: Mapping[str, dict] | str | Path | None = None,
    keep_text_encoder: bool = False,
) -> VSRModel:
    """Load a StableVSR or x4-upscaler model folder/file into a ``VSRModel``.

    path: a folder or file in one of ``LAYOUTS`` (see ``detect_layout``). method: ``"auto"`` (StableVSR
    for its folder, ``"sd_x4"`` otherwise), ``"stablevsr"`` (needs the ControlNet), or ``"sd_x4"`` (on a
    StableVSR folder: its fine-tuned UNet run per frame, without the ControlNet). dtype: ``"auto"``
    (``resolve_dtype``: fp16 on CUDA/MPS, bf16 on a CPU with native bf16, else fp32), ``"fp32"``,
    ``"fp16"``, ``"bf16"`` for the UNet, ControlNet and text encoder; the x4 VAE is fp32, or bf16 beside a
    bf16 UNet where bf16 is native (``vae_dtype_for``), never fp16, where it overflows. Weights rest on
    ``offload_device``; ``VSRModel.on_device`` moves them to ``device`` while they run. text_encoder: False
    skips the text encoder and tokenizer (samplers then need prompt embeddings). keep_text_encoder: keep
    it in the bundle; by default the empty prompt is encoded at load time and the encoder is built again
    from its file only for another prompt (``loaders.clip.text_side``). configs: architecture configs for
    a single-file checkpoint (dict or diffusers-style folder; default: shipped x4 configs).

    Every network is built from its config and loaded with ``strict=True``. Raises
    DiffusionWeightsError naming the file, what was expected and the official source.
    """
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    layout, root = _resolve(path)
    if method not in ("auto",) + METHODS:
        raise ValueError(f"method must be 'auto', 'stablevsr' or 'sd_x4', got {method!r}")
    if method == "auto":
        method = "stablevsr" if layout == "stablevsr" else "sd_x4"
    if method == "stablevsr" and layout != "stablevsr":
        raise DiffusionWeightsError(
            f"{root} is an x4 upscaler ({layout}) without StableVSR's ControlNet (Temporal Conditioning "
            f"Module). For StableVSR use {SOURCES['stablevsr']}."
        )
    compute = resolve_dtype(dtype, device)
    vae_dtype = vae_dtype_for(compute, device)
    device, offload = torch.device(device), torch.device(offload_device)
    source: dict[str, Any] = {"path": str(root), "layout": layout}
    controlnet = None
    text: dict[str, Any] = {}
    low_res: dict | None = None

    if layout in ("stablevsr", "sd_x4_diffusers"):
        cfg_method = "stablevsr" if layout == "stablevsr" else "sd_x4"
        if text_encoder:  # first: encoded and gone before the UNet is read
            load_text, tokenizer, text_src = _text_loader(root, layout, compute)
            text = text_side(load_text, tokenizer, [""], device, offload, keep=keep_text_encoder)
            source.update(text_src)
        # read straight into the stored dtype: a bf16 model never holds its fp32 weights all at once
        unet, source["unet"] = _load_component(root, "unet", UNet2DConditionModel, cfg_method, layout,
                                               dtype=compute)
        vae, source["vae"] = _load_component(root, "vae", AutoencoderKL, cfg_method, layout,
                                             remap=remap_vae_legacy_attention, dtype=vae_dtype)
        if method == "stablevsr":
            controlnet, source["controlnet"] = _load_component(root, "controlnet", ControlNetModel,
                                                               "stablevsr", layout, dtype=compute)
        scheduler, source["scheduler"] = _scheduler_config(root, cfg_method, "scheduler")
        if layout == "sd_x4_diffusers":
            low_res, source["low_res_scheduler"] = _scheduler_config(root, "sd_x4", "low_res_scheduler")
    else:
        hint = f"Expected {SOURCES['sd_x4_single_file']}."
        arch = _single_file_configs(root, configs)
        parts = split_ldm_checkpoint(read_weights(root, "x4 upscaler checkpoint", hint))
        unet, vae = build_ldm_unet_vae(parts, arch, "sd_x4", root, "the x4 upscaler", hint)
        if text_encoder:
            if not parts["text_encoder"]:
                raise DiffusionWeightsError(f"{root} has no 'cond_stage_model.model.*' keys (text encoder). {hint}")
            load_text, tokenizer = _single_file_text_loader(parts.pop("text_encoder"), root,
                                                            arch.get("text_encoder"), compute, arch.get("tokenizer"))
            text = text_side(load_text, tokenizer, [""], device, offload, keep=keep_text_encoder)
        del parts
        scheduler, source["scheduler"] = _scheduler_config(None, "sd_x4", "scheduler")
        low_res, source["low_res_scheduler"] = _scheduler_config(None, "sd_x4", "low_res_scheduler")
        source["configs"] = "given" if configs is not None else ("embedded" if arch else "shipped")

    if method == "sd_x4" and layout == "stablevsr":
        low_res = None  # StableVSR's fine-tuned UNet never saw noise-augmented LR frames

    # nn.Module.to, not diffusers' override, which warns on every dtype cast in diffusers 0.42.
    unet = nn.Module.to(unet, device=offload, dtype=compute)
    vae = nn.Module.to(vae, device=offload, dtype=vae_dtype)
    if controlnet is not None:
        controlnet = nn.Module.to(controlnet, device=offload, dtype=compute)
    trim_heap()  # what reading and converting left on the heap
    return VSRModel(
        method=method,
        unet=unet,
        vae=vae,
        controlnet=controlnet,
        **text,
        scheduler_config=scheduler,
        low_res_scheduler_config=low_res,
        config=_model_config(unet, vae, layout),
        dtype=compute,
        vae_dtype=vae_dtype,
        device=device,
        offload_device=offload,
        source=source,
    )
