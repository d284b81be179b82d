"""SATeCo: the frozen Stable Diffusion 2.x base, and the adapter file this pack trains.

Base (``load_sd_base``), either of:

* the single-file checkpoint a ComfyUI user already has in ``models/checkpoints/`` (e.g.
  ``v2-1_768-ema-pruned.safetensors`` / ``.ckpt`` from stabilityai/stable-diffusion-2-1, or the 512 base),
  with LDM key names (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.model.*``),
  converted at load time with the same remaps as the x4 single file;
* a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``).

The prediction type is the folder's scheduler config, or for a single file, ``v_prediction`` when the
bias of the last output block's first transformer norm has a spread above 0.09 (the 768-v models) and
``epsilon`` otherwise (the 512 base); ``prediction`` overrides it.

Adapters (``save_satec`` / ``load_satec``): one safetensors file in ``models/vsr/satec/`` holding any of
the trained parts, ``unet.*`` (E_z + SFA/TFA of the UNet decoder), ``vae.*`` (guidance encoder + SFA/TFA of
the VAE decoder), ``refiner.*``, with the ``SATeCoConfig`` and the list of trained parts in its metadata.
Training stages add their part to the same file. Loading is strict per part.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..memory import trim_heap
from ..models.bundle import VSRModel
from ..models.satec import SATeCoAdapter, SATeCoConfig, VideoRefiner, decoder_plan
from .clip import text_side
from .common import key_mismatches, mismatch_message
from .diffusion import (DiffusionWeightsError, _load_component, _scheduler_config, _text_loader,
                        _single_file_configs, _single_file_text_loader, build_ldm_unet_vae, read_weights,
                        remap_vae_legacy_attention, resolve_dtype, split_ldm_checkpoint, vae_dtype_for)

__all__ = ["SD_BASE_HINT", "SATeCoParts", "load_sd_base", "detect_prediction", "save_satec", "load_satec",
           "new_parts", "PARTS", "TRAIN_HINT"]

PARTS = ("unet", "vae", "refiner")
META_CONFIG = "vsr_satec_config"
META_PARTS = "vsr_satec_parts"
SD_BASE_HINT = ("Expected a Stable Diffusion 2.x checkpoint: the single file from ComfyUI/models/checkpoints/ (e.g. "
                "v2-1_768-ema-pruned.safetensors from huggingface.co/stabilityai/stable-diffusion-2-1) or a diffusers "
                "folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/ in ComfyUI/models/vsr/satec/.")
TRAIN_HINT = ("SATeCo has no published weights: train them with this pack, e.g. `python -m vsr_core train-satec "
              "--stage 2 --data YOUR_CLIPS --base YOUR_SD2.safetensors --out runs/satec` (then --stage 3 and 4), "
              "and put the resulting satec.safetensors in ComfyUI/models/vsr/satec/. See the README section "
              "'SATeCo'.")


def detect_prediction(unet_ldm: dict[str, Tensor]) -> str:
    """``v_prediction`` or ``epsilon`` for an SD 2.x UNet in LDM naming (see the module docstring): read on
    the last output block's first transformer norm (``output_blocks.11.1...`` in SD 2.x)."""
    import re

    found = [(int(m.group(1)), k) for k in unet_ldm
             if (m := re.fullmatch(r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias", k))]
    bias = unet_ldm[max(found)[1]] if found else None  # output_blocks.11 in SD 2.x
    if bias is not None and float(bias.float().std(unbiased=False)) > 0.09:
        return "v_prediction"
    return "epsilon"


def load_sd_base(path: str | Path, prediction: str = "auto", dtype: str | torch.dtype = "auto",
                 device: str | torch.device = "cpu", offload_device: str | torch.device = "cpu",
                 text_encoder: bool = True, configs=None, keep_text_encoder: bool = False) -> VSRModel:
    """The frozen SD 2.x UNet, VAE (fp32) and text encoder as a ``VSRModel`` with ``method="satec"``
    (SATeCo conditions on the empty prompt, encoded at load time; keep_text_encoder: see
    ``loaders.clip.text_side``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if prediction not in ("auto", "epsilon", "v_prediction"):
        raise ValueError(f"prediction must be 'auto', 'epsilon' or 'v_prediction', got {prediction!r}")
    root = Path(path)
    compute = resolve_dtype(dtype, device)
    vae_dtype = vae_dtype_for(compute, device)
    offload = torch.device(offload_device)
    text: dict = {}
    source = {"path": str(root)}
    if root.is_dir():
        if text_encoder:  # first: encoded and gone before the UNet is read
            load_text, tokenizer, text_src = _text_loader(root, "sd2_diffusers", compute)
            text = text_side(load_text, tokenizer, [""], device, offload, keep=keep_text_encoder)
            source.update(text_src)
        unet, source["unet"] = _load_component(root, "unet", UNet2DConditionModel, "sd2", "sd2_diffusers",
                                               dtype=compute)
        vae, source["vae"] = _load_component(root, "vae", AutoencoderKL, "sd2", "sd2_diffusers",
                                             remap=remap_vae_legacy_attention, dtype=vae_dtype)
        scheduler, source["scheduler"] = _scheduler_config(root, "sd2", "scheduler")
        own_prediction = scheduler.get("prediction_type", "epsilon")
    elif root.is_file():
        arch = _single_file_configs(root, configs)
        parts = split_ldm_checkpoint(read_weights(root, "SD 2.x checkpoint", SD_BASE_HINT))
        unet, vae = build_ldm_unet_vae(parts, arch, "sd2", root, "a Stable Diffusion", SD_BASE_HINT)
        own_prediction = detect_prediction(parts["unet"])
        if text_encoder:
            if not parts["text_encoder"]:
                raise DiffusionWeightsError(f"{root} has no 'cond_stage_model.model.*' keys (the OpenCLIP text "
                                            f"encoder of SD 2.x). {SD_BASE_HINT}")
            load_text, tokenizer = _single_file_text_loader(parts.pop("text_encoder"), root,
                                                            arch.get("text_encoder"), compute, arch.get("tokenizer"))
            text = text_side(load_text, tokenizer, [""], device, offload, keep=keep_text_encoder)
        del parts
        scheduler, source["scheduler"] = _scheduler_config(None, "sd2", "scheduler")
    else:
        raise DiffusionWeightsError(f"SD 2.x base not found: {root}. {SD_BASE_HINT}")
    scheduler = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    scheduler["prediction_type"] = own_prediction if prediction == "auto" else prediction
    source["prediction_type"] = scheduler["prediction_type"]
    unet = nn.Module.to(unet, device=offload, dtype=compute)
    vae = nn.Module.to(vae, device=offload, dtype=vae_dtype)
    trim_heap()  # what reading and converting left on the heap
    vcfg = vae.config
    return VSRModel(method="satec", unet=unet, vae=vae, **text,
                    scheduler_config=scheduler,
                    config={"vae_scale_factor": 2 ** (len(vcfg.block_out_channels) - 1),
                            "scaling_factor": float(vcfg.scaling_factor), "latent_channels": int(vcfg.latent_channels),
                            "lr_channels": 0},
                    dtype=compute, vae_dtype=vae_dtype, device=torch.device(device), offload_device=offload,
                    source=source)


# ------------------------------------------------------------------------------------------- adapters

@dataclass
class SATeCoParts:
    """SATeCo's trainable networks and which of them carry trained weights."""

    config: SATeCoConfig
    unet: SATeCoAdapter
    vae: SATeCoAdapter
    refiner: VideoRefiner
    trained: set = field(default_factory=set)
    metadata: dict = field(default_factory=dict)

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "refiner": self.refiner}

    def require(self, part: str, what: str) -> None:
        if part not in self.trained:
            have = ", ".join(sorted(self.trained)) or "none"
            raise ValueError(f"{what} needs trained SATeCo '{part}' weights (this file has: {have}). {TRAIN_HINT}")


def new_parts(config: SATeCoConfig | None = None, base: VSRModel | None = None) -> SATeCoParts:
    """Untrained parts (identity at initialisation); with ``base``, sized to its decoder blocks."""
    config = config or SATeCoConfig()
    if base is not None:
        config.unet_blocks, config.vae_blocks = decoder_plan(dict(base.unet.config), dict(base.vae.config))
        config.latent_channels = int(base.config.get("latent_channels", 4))
    return SATeCoParts(config, SATeCoAdapter(config, "unet"), SATeCoAdapter(config, "vae"),
                       VideoRefiner(config.refiner_channels, config.refiner_weight))


def check_base(parts: SATeCoParts, base: VSRModel) -> None:
    """Refuse adapters trained for a base with other decoder blocks than ``base``."""
    unet_plan, vae_plan = decoder_plan(dict(base.unet.config), dict(base.vae.config))
    if [list(b) for b in parts.config.unet_blocks] != unet_plan or [list(b) for b in parts.config.vae_blocks] != vae_plan:
        raise ValueError(f"these SATeCo adapters were trained for a base with decoder blocks {parts.config.unet_blocks} "
                         f"(UNet) / {parts.config.vae_blocks} (VAE); the loaded base has {unet_plan} / {vae_plan}. "
                         "Load the base model they were trained on.")


def save_satec(path: str | Path, parts: SATeCoParts, which=None, metadata: dict | None = None) -> Path:
    """Write the parts in ``which`` (default: ``parts.trained``) to ``path`` (safetensors), keeping the
    other trained parts an existing file at ``path`` already holds. Written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    which = set(parts.trained if which is None else which)
    state: dict[str, Tensor] = {}
    kept: set = set()
    if path.is_file():
        old = load_satec(path)
        for name in old.trained - which:
            state.update({f"{name}.{k}": v for k, v in old.modules()[name].state_dict().items()})
            kept.add(name)
    for name in which:
        state.update({f"{name}.{k}": v.detach().float().cpu().contiguous()
                      for k, v in parts.modules()[name].state_dict().items()})
    meta = {META_CONFIG: json.dumps(parts.config.to_dict()), META_PARTS: ",".join(sorted(which | kept))}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in {**parts.metadata, **(metadata or {})}.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_satec(path: str | Path) -> SATeCoParts:
    """The parts a SATeCo adapter file holds (strict: every key of each present part, nothing else)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SATeCo adapter file not found: {path}. {TRAIN_HINT}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if META_CONFIG not in meta:
        raise DiffusionWeightsError(f"{path} is not a SATeCo adapter file of this pack (no '{META_CONFIG}' "
                                    f"metadata). {TRAIN_HINT}")
    parts = new_parts(SATeCoConfig.from_dict(json.loads(meta[META_CONFIG])))
    trained = {p for p in meta.get(META_PARTS, "").split(",") if p}
    sd = load_file(str(path))
    for name, module in parts.modules().items():
        own = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
        if name not in trained:
            if own:
                raise DiffusionWeightsError(f"{path}: weights for '{name}' but the metadata does not list it")
            continue
        message = mismatch_message(f"{path}: the SATeCo '{name}' weights do not match the architecture:",
                                   *key_mismatches(module.state_dict(), own))
        if message:
            raise DiffusionWeightsError(message)
        module.load_state_dict(own, strict=True)
    stray = [k for k in sd if k.split(".", 1)[0] not in PARTS]
    if stray:
        raise DiffusionWeightsError(f"{path}: unexpected keys {stray[:5]}")
    parts.trained = trained
    parts.metadata = {k: v for k, v in meta.items() if k not in (META_CONFIG, META_PARTS)}
    for m in parts.modules().values():
        m.eval().requires_grad_(False)
    return parts
