"""``VSRModel``: one method's networks and settings, passed between nodes as ``VSR_MODEL``.

The bundle owns the networks; samplers borrow them for the duration of a run through ``on_device``,
which moves a sub-model to the compute device and back to its offload device afterwards, so large
sub-models (text encoder, VAE, ControlNet) occupy GPU memory only while they run.

Who moves the weights is pluggable: by default ``borrow`` calls ``nn.Module.to``; a host application
installs a ``DeviceManager`` with ``set_device_manager`` (the node pack installs one that loads
through ComfyUI's model management, so ComfyUI can evict other models for ours and knows our use).
This module never imports the host.
"""
from __future__ import annotations

import contextlib
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceManager(Protocol):
    """Moves borrowed sub-models for ``borrow``; either method returns False to let ``borrow`` do the
    plain ``nn.Module.to`` itself (e.g. when the host application is not running)."""

    def load(self, modules: Sequence[nn.Module], device: torch.device, offload_device: torch.device,
             memory_required: int = 0, keep: Sequence[nn.Module] = ()) -> bool:
        """Put ``modules`` on ``device``, making room for them plus ``memory_required`` bytes of
        activations. ``keep``: modules an enclosing ``borrow`` still uses, which must stay loaded."""
        ...

    def release(self, modules: Sequence[nn.Module], offload_device: torch.device | None) -> bool:
        """The block using ``modules`` ended: move them to ``offload_device`` now, or (None) leave them
        where they are for the manager to evict when it needs the room."""
        ...


_manager: DeviceManager | None = None
_in_use: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
_reserve: contextvars.ContextVar[int] = contextvars.ContextVar("vsr_memory_reserve", default=0)


def set_device_manager(manager: DeviceManager | None) -> DeviceManager | None:
    """Install ``manager`` for every ``borrow`` / ``VSRModel.on_device`` (None: plain moves); returns
    the previous one."""
    global _manager
    previous, _manager = _manager, manager
    return previous


def get_device_manager() -> DeviceManager | None:
    return _manager


@contextlib.contextmanager
def reserve_memory(nbytes: int):
    """Within the block, loads ask the device manager for ``nbytes`` of working memory on top of the
    weights (the sampler's activation estimate, ``vsr_core.memory.estimate_vram``)."""
    token = _reserve.set(max(int(nbytes), 0))
    try:
        yield
    finally:
        _reserve.reset(token)


@contextlib.contextmanager
def borrow(modules: Sequence[tuple[nn.Module, torch.dtype | None]], device: torch.device | str,
           offload_device: torch.device | str):
    """Have ``modules`` (each with the dtype to run in, or None to keep its own) on ``device`` for the
    block, then back on ``offload_device`` when it differs from ``device``.

    Nested borrows of one module are counted: only the outermost block's end moves it away, and a
    device manager is told which modules enclosing blocks still use.
    """
    device, offload_device = torch.device(device), torch.device(offload_device)
    mods = list({id(m): (m, dt) for m, dt in modules if m is not None}.values())
    keep = [m for m, n in list(_in_use.items()) if n > 0 and all(m is not x for x, _ in mods)]
    manager = _manager
    if manager is not None:
        for m, dt in mods:
            if dt is not None:
                nn.Module.to(m, dtype=dt)  # a manager moves weights but never casts them
    if manager is None or not manager.load([m for m, _ in mods], device, offload_device, _reserve.get(), keep):
        for m, dt in mods:
            # nn.Module.to: diffusers' ModelMixin.to warns on every dtype move
            nn.Module.to(m, device, dt)
    for m, _ in mods:
        _in_use[m] = _in_use.get(m, 0) + 1
    try:
        yield
    finally:
        done = []
        for m, _ in mods:
            n = _in_use.get(m, 1) - 1
            if n > 0:
                _in_use[m] = n
            else:
                _in_use.pop(m, None)
                done.append(m)
        target = offload_device if offload_device != device else None
        if done and (manager is None or not manager.release(done, target)) and target is not None:
            for m in done:
                nn.Module.to(m, target)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def prompt_cache_key(prompt: str) -> tuple:
    """The key of ``prompt``'s embeddings in a ``VSRModel``'s prompt cache."""
    return ("prompt", prompt)


@dataclass
class VSRModel:
    """A diffusion method's bundle.

    method: "sd_x4" (the Stable Diffusion x4 upscaler, per-frame), "stablevsr", ...
    unet, vae, controlnet (StableVSR's Temporal Conditioning Module), text_encoder, tokenizer: the networks
    (None where the method has none). text_reload: builds the text encoder again from its file, when the
    loader did not keep it (``loaders.clip.text_side``: the prompts a method uses by default are encoded at
    load time, in the cache, and a new prompt's one encode reloads it); ``text_encoder`` is then None.
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
    text_reload: Callable[[], nn.Module] | None = field(default=None, repr=False)
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
        for the block, then back to the offload device (a no-op when both are the same); see ``borrow``."""
        mods = [(getattr(self, n), self.dtype_for(n)) for n in names if getattr(self, n) is not None]
        with borrow(mods, self.device, self.offload_device):
            yield tuple(getattr(self, n) for n in names)

    def cached_prompt(self, key, compute):
        """Prompt embeddings are computed once per (prompt, negative) and kept on the CPU."""
        if key not in self._prompt_cache:
            self._prompt_cache[key] = compute().to("cpu")
        return self._prompt_cache[key]
