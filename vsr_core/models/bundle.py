"""``VSRModel``: one method's networks and settings, passed between nodes as ``VSR_MODEL``.

The bundle owns the networks; samplers borrow them for the duration of a run through ``on_device``,
which moves a sub-model to the compute device and back to its offload device afterwards, so large
sub-models (text encoder, VAE, ControlNet) occupy GPU memory only while they run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class VSRModel:
    """A diffusion method's bundle.

    method: "sd_x4" (the Stable Diffusion x4 upscaler, per-frame), "stablevsr", ...
    unet, vae, controlnet (StableVSR's Temporal Conditioning Module), text_encoder, tokenizer: the networks
    (None where the method has none).
    scheduler_config: the model's own scheduler config (dict, diffusers format); low_res_scheduler_config:
    the x4 family's noise-augmentation scheduler (None for StableVSR, which does not augment).
    config: method settings — ``vae_scale_factor`` (4 for the x4 family), ``scaling_factor`` (0.08333),
    ``max_noise_level`` (350), ``latent_channels``, ``lr_channels`` (3: the LR frame concatenated to the
    latent), ``uses_class_labels`` (noise level fed as class label).
    dtype: compute dtype of the UNet/ControlNet; vae_dtype: of the VAE decoder (fp32 for the x4 VAE,
    which overflows in fp16). device: compute device; offload_device: where weights rest between uses.
    source: where it was loaded from (paths), for messages and cache keys.
    struct_encoder: MGLD's time-aware structure encoder (compute dtype); video_vae: MGLD's CFW sequence
    VAE (``vae_dtype``); None for the other methods. satec: SATeCo's trained parts (``SATeCoParts``).
    """

    method: str
    unet: nn.Module
    vae: nn.Module
    controlnet: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: Any = None
    scheduler_config: dict = field(default_factory=dict)
    low_res_scheduler_config: dict | None = None
    config: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    source: dict = field(default_factory=dict)
    struct_encoder: nn.Module | None = None
    video_vae: nn.Module | None = None
    satec: Any = None  # SATeCo's adapters and refiner (loaders.satec.SATeCoParts) on its SD 2.x base
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    @property
    def scaling_factor(self) -> float:
        return float(self.config.get("scaling_factor", getattr(getattr(self.vae, "config", None),
                                                                "scaling_factor", 0.08333)))

    @property
    def vae_scale_factor(self) -> int:
        return int(self.config.get("vae_scale_factor", 4))

    def dtype_for(self, name: str) -> torch.dtype:
        return self.vae_dtype if name in ("vae", "video_vae") else self.dtype

    @contextlib.contextmanager
    def on_device(self, *names: str):
        """Move the named sub-models ("unet", "vae", "controlnet", "text_encoder", "struct_encoder",
        "video_vae") to the compute device
        for the block, then back to the offload device (a no-op when both are the same)."""
        mods = [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]
        for n, m in mods:
            # nn.Module.to: diffusers' ModelMixin.to warns on every dtype move
            nn.Module.to(m, self.device, self.dtype_for(n))
        try:
            yield tuple(getattr(self, n) for n in names)
        finally:
            if self.offload_device != self.device:
                for _, m in mods:
                    nn.Module.to(m, self.offload_device)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def cached_prompt(self, key, compute):
        """Prompt embeddings are computed once per (prompt, negative) and kept on the CPU."""
        if key not in self._prompt_cache:
            self._prompt_cache[key] = compute().to("cpu")
        return self._prompt_cache[key]
