"""The Stable Diffusion x4 upscaler family: LR conditioning, the x4 denoiser, the per-frame baseline.

The x4 UNet denoises a latent on the LR grid with the LR frame (in [-1, 1]) concatenated as three
extra input channels; the released upscaler also noise-augments that LR with its low-res scheduler and
feeds the noise level as the class label (methods.md §2.1). StableVSR's UNet is the same network
without the class embedding, fed the clean LR (§3.3 step 1).

``sample_per_frame`` is what a user gets from diffusers' ``StableDiffusionUpscalePipeline`` called on
each frame in turn with one ``torch.Generator`` (tests/test_sampler_x4.py checks this on tiny weights):
per frame the generator gives the augmentation noise, then the initial latent, then the ancestral
noise of each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.bundle import VSRModel
from .loop import call_releasing, sample
from .schedulers import Schedule, add_noise, make_schedule

__all__ = [
    "LRConditioning",
    "prepare_lr",
    "lr_conditioning",
    "augment_lr",
    "uses_class_labels",
    "x4_model_output",
    "x4_denoiser",
    "FrameNoiseFn",
    "sample_per_frame",
]

FrameNoiseFn = Callable[[int, int, tuple], Tensor]
"""``noise(step_index, frame_index, shape) -> Tensor``: the ancestral noise of one frame at one step."""

MAX_NOISE_LEVEL = 350  # StableDiffusionUpscalePipeline / UAV UNet max_noise_level (methods.md §2.1)


@dataclass
class LRConditioning:
    """The LR conditioning of the x4 family (what ``VSR_LatentEncoderLR`` outputs).

    lr: ``[T, 3, h, w]`` float32 CPU, the clean LR frames in [-1, 1] on the latent grid.
    noise_level: the low-res scheduler timestep of the noise augmentation, also the UNet class label
    (x4 upscaler); None for no augmentation (StableVSR).
    noise: optional ``[T, 3, h, w]`` augmentation noise; None = drawn by the sampler from its seed, in
    the order diffusers' pipeline draws it.
    """

    lr: Tensor
    noise_level: int | None = None
    noise: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.lr, Tensor) or self.lr.dim() != 4 or self.lr.shape[1] != 3:
            got = tuple(self.lr.shape) if isinstance(self.lr, Tensor) else type(self.lr).__name__
            raise ValueError(f"LRConditioning.lr must be [T, 3, h, w] in [-1, 1], got {got}")
        if self.noise_level is not None:
            self.noise_level = int(self.noise_level)
            if not 0 <= self.noise_level <= MAX_NOISE_LEVEL:
                raise ValueError(f"noise_level must be in [0, {MAX_NOISE_LEVEL}], got {self.noise_level}")
        if self.noise is not None and tuple(self.noise.shape) != tuple(self.lr.shape):
            raise ValueError(f"LRConditioning.noise {tuple(self.noise.shape)} must match lr {tuple(self.lr.shape)}")

    @property
    def num_frames(self) -> int:
        return int(self.lr.shape[0])

    @property
    def latent_size(self) -> tuple[int, int]:
        return int(self.lr.shape[-2]), int(self.lr.shape[-1])

    @property
    def class_labels(self) -> Tensor | None:
        """``[1]`` int64 noise level (the x4 UNet's class label), None without augmentation."""
        return None if self.noise_level is None else torch.tensor([self.noise_level], dtype=torch.long)

    def frames(self, start: int, stop: int) -> "LRConditioning":
        """The conditioning of frames ``[start, stop)``."""
        return LRConditioning(self.lr[start:stop], self.noise_level,
                              None if self.noise is None else self.noise[start:stop])


def prepare_lr(frames: Tensor, multiple: int = 4, resample: str = "bicubic") -> Tensor:
    """ComfyUI frames ``[T, H, W, 3]`` in 0..1 (float, or uint8 0..255) -> ``[T, 3, h, w]`` float32 in [-1, 1].

    h, w are H, W rounded down to a multiple of ``multiple`` (the VAE factor, 4), and the frames resized
    to them when they differ, as diffusers' ``VaeImageProcessor`` does (``resample`` is its mode for
    PIL input in the x4 pipeline; tensor input there uses nearest).
    """
    if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be [T, H, W, 3], got {got}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    x = x.permute(0, 3, 1, 2)
    H, W = x.shape[-2:]
    h, w = H - H % multiple, W - W % multiple
    if h < multiple or w < multiple:
        raise ValueError(f"frames of {H}x{W} are smaller than the VAE factor {multiple}")
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode=resample, **({} if resample == "nearest" else
                                                           {"align_corners": False})).clamp(0, 1)
    return (x * 2.0 - 1.0).contiguous()


def lr_conditioning(model: VSRModel, frames: Tensor, noise_level: int | None = 20) -> LRConditioning:
    """``LRConditioning`` for ``model`` from ComfyUI frames. The noise level is kept only for models
    that augment their LR (a low-res scheduler config: the x4 upscaler); StableVSR gets the clean LR."""
    lr = prepare_lr(frames, model.vae_scale_factor)
    level = noise_level if model.low_res_scheduler_config is not None else None
    return LRConditioning(lr, level)


def augment_lr(lr: Tensor, low_res_scheduler_config: dict, noise_level: int, noise: Tensor) -> Tensor:
    """Noise augmentation of the x4 family: ``low_res_scheduler.add_noise(lr, noise, noise_level)``."""
    ac = make_schedule(low_res_scheduler_config, "ddpm", 1).alphas_cumprod
    return add_noise(lr, noise.to(lr.device, lr.dtype), ac, noise_level)


def uses_class_labels(model: VSRModel) -> bool:
    """Whether the UNet takes the noise level as class label (a class embedding in its config)."""
    if "uses_class_labels" in model.config:
        return bool(model.config["uses_class_labels"])
    return _takes_labels(model.unet)


def _takes_labels(net: nn.Module) -> bool:
    cfg = getattr(net, "config", None)
    return cfg is not None and (cfg.get("num_class_embeds") is not None or cfg.get("class_embed_type") is not None)


def x4_model_output(unet: nn.Module, x_t: Tensor, lr: Tensor, t: Tensor, prompt_embeds: Tensor,
                    negative_embeds: Tensor | None = None, guidance_scale: float = 1.0,
                    class_labels: Tensor | None = None, controlnet: nn.Module | None = None,
                    controlnet_cond: Tensor | None = None, conditioning_scale: float = 1.0) -> Tensor:
    """One x4 UNet evaluation: ``unet(cat(x_t, lr), t, text, class_labels)``, optionally with the residuals
    of a ControlNet fed the same input and ``controlnet_cond`` (StableVSR's Temporal Conditioning Module).

    x_t: ``[B, 4, h, w]``; lr: ``[B, 3, h, w]`` (the possibly augmented LR); prompt_embeds ``[1 or B, L, D]``;
    controlnet_cond: ``[1 or B, 3, H, W]`` HR image. With ``guidance_scale > 1`` the unconditional
    (``negative_embeds``) and conditional halves run as one batch (ControlNet included, as StableVSR's
    pipeline does) and are combined as ``uncond + s·(cond − uncond)``. Inputs are cast to the UNet's
    dtype; the output is float32 on the UNet's device.
    """
    p = next(unet.parameters())
    dev, dt = p.device, p.dtype
    b = x_t.shape[0]
    cfg = guidance_scale > 1.0
    if cfg and negative_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative_embeds (the unconditional prompt embedding)")
    emb = prompt_embeds.to(dev, dt).expand(b, -1, -1)
    sample_in = torch.cat([x_t.to(dev, dt), lr.to(dev, dt)], dim=1)
    labels = None if class_labels is None else class_labels.to(dev).reshape(-1).expand(b)
    if cfg:
        emb = torch.cat([negative_embeds.to(dev, dt).expand(b, -1, -1), emb])
        sample_in = torch.cat([sample_in, sample_in])
        labels = None if labels is None else torch.cat([labels, labels])
    t = t.to(dev)
    down = mid = None
    if controlnet is not None:
        cp = next(controlnet.parameters())
        cond = controlnet_cond.to(cp.device, cp.dtype).expand(sample_in.shape[0], -1, -1, -1)
        down, mid = controlnet(sample_in.to(cp.dtype), t, encoder_hidden_states=emb.to(cp.dtype),
                               controlnet_cond=cond, conditioning_scale=conditioning_scale,
                               class_labels=labels if _takes_labels(controlnet) else None, return_dict=False)
        del cond
    out = unet(sample_in, t, encoder_hidden_states=emb, class_labels=labels,
               down_block_additional_residuals=down, mid_block_additional_residual=mid,
               return_dict=False)[0].float()
    del down, mid, sample_in
    if cfg:
        uncond, text = out.chunk(2)
        out = uncond + guidance_scale * (text - uncond)
    return out


def x4_denoiser(unet: nn.Module, lr: Tensor, prompt_embeds: Tensor, negative_embeds: Tensor | None = None,
                guidance_scale: float = 1.0, class_labels: Tensor | None = None):
    """``denoise(x_t, t, i)`` for ``loop.sample``: the x4 UNet on ``cat(x_t, lr)`` with optional CFG.
    Returns the model output on x_t's device in x_t's dtype."""

    def denoise(x_t: Tensor, t: Tensor, i: int) -> Tensor:
        out = x4_model_output(unet, x_t, lr, t, prompt_embeds, negative_embeds, guidance_scale, class_labels)
        return out.to(x_t.device, x_t.dtype)

    return denoise


def _per_frame_draws(seed: int, reseed_per_frame: bool):
    """A CPU generator per frame: one shared (a pipeline called frame after frame with one generator)
    or re-seeded for every frame (each frame gets the same noise)."""
    shared = torch.Generator("cpu").manual_seed(int(seed))

    def gen_for(_frame: int) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(int(seed)) if reseed_per_frame else shared

    return gen_for


def sample_per_frame(
    model: VSRModel,
    cond: LRConditioning,
    prompt_embeds: Tensor,
    negative_embeds: Tensor | None = None,
    guidance_scale: float = 9.0,
    steps: int = 75,
    scheduler: str = "ddim",
    seed: int = 0,
    latents: Tensor | None = None,
    noise: FrameNoiseFn | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    hooks: Sequence[object] = (),
    reseed_per_frame: bool = False,
    timestep_spacing: str | None = None,
    temporal: Sequence[object] = (),
) -> Tensor:
    """The x4 upscaler applied frame by frame (the per-frame baseline). Returns latents ``[T, 4, h, w]``
    float32 on the CPU (decode with ``decode.decode_latents``).

    Equals ``StableDiffusionUpscalePipeline(image=frame_k, prompt_embeds=..., negative_prompt_embeds=...,
    guidance_scale, num_inference_steps=steps, noise_level=cond.noise_level, generator=g)`` for k = 0..T−1
    with ``g = torch.Generator().manual_seed(seed)`` created once (``reseed_per_frame=True``: re-created
    for every frame) and the pipeline's scheduler set to ``scheduler`` (diffusers defaults: 75 steps,
    guidance 9, noise level 20). latents: optional initial latents ``[T, 4, h, w]``; noise: optional
    ``noise(step, frame, shape)`` for the ancestral steps (both replace draws from the seed).
    callback(done, total, x0): once per frame per step, may raise to cancel.

    temporal: temporal mechanisms (``mechanisms.Mechanism``, e.g. latent propagation, motion guidance),
    run in order after every step on the whole clip. Given any, all frames go through one sampling loop
    (the UNet still sees one frame at a time, each frame draws its noise from its own copy of the
    generator as above), so a mechanism that does nothing leaves the result bit-identical; ``hooks`` then
    see the whole clip too.
    """
    if not isinstance(cond, LRConditioning):
        raise TypeError(f"cond must be an LRConditioning, got {type(cond).__name__}")
    if prompt_embeds is None:
        raise ValueError("prompt_embeds is required (encode the prompt with the model's text encoder first)")
    schedule = make_schedule(model.scheduler_config, scheduler, steps, timestep_spacing)
    if temporal:
        from .mechanisms import Site, check_mechanisms, mechanism_hooks

        site = Site("sd_x4", cond.num_frames, len(schedule))
        check_mechanisms(temporal, site)
        clip_hooks = mechanism_hooks(temporal, site) + list(hooks)
        return call_releasing(_run_clip, model, cond, schedule, prompt_embeds, negative_embeds,
                              float(guidance_scale), int(seed), latents, noise, callback, clip_hooks,
                              bool(reseed_per_frame))
    return call_releasing(_run_per_frame, model, cond, schedule, prompt_embeds, negative_embeds,
                          float(guidance_scale), int(seed), latents, noise, callback, tuple(hooks),
                          bool(reseed_per_frame))


def _frame_setup(model, cond, latents):
    """What both x4 loops need: frames, latent size, channels, whether (and how) the LR is augmented, the
    class labels; checks the initial latents' shape."""
    T, (h, w) = cond.num_frames, cond.latent_size
    c = int(model.config.get("latent_channels", getattr(getattr(model.vae, "config", None), "latent_channels", 4)))
    if latents is not None and tuple(latents.shape) != (T, c, h, w):
        raise ValueError(f"latents must be {[T, c, h, w]}, got {tuple(latents.shape)}")
    augment = model.low_res_scheduler_config is not None and cond.noise_level is not None
    labels = cond.class_labels if uses_class_labels(model) else None
    if uses_class_labels(model) and labels is None:
        raise ValueError("this UNet takes the noise level as class label: give the conditioning a noise_level")
    low_ac = make_schedule(model.low_res_scheduler_config, "ddpm", 1).alphas_cumprod if augment else None
    return T, (h, w), c, augment, labels, low_ac


@torch.no_grad()
def _run_per_frame(model, cond, schedule: Schedule, prompt_embeds, negative_embeds, guidance_scale, seed,
                   latents, noise, callback, hooks, reseed_per_frame) -> Tensor:
    T, (h, w), c, augment, labels, low_ac = _frame_setup(model, cond, latents)
    gen_for = _per_frame_draws(seed, reseed_per_frame)
    n = len(schedule)
    out = torch.empty(T, c, h, w)
    with model.on_device("unet") as (unet,):
        device = next(unet.parameters()).device
        for k in range(T):
            g = gen_for(k)
            lr = cond.lr[k:k + 1]
            if augment:
                z = cond.noise[k:k + 1] if cond.noise is not None else torch.randn(lr.shape, generator=g)
                lr = add_noise(lr, z, low_ac, cond.noise_level)
            x = (latents[k:k + 1].float() if latents is not None else
                 torch.randn((1, c, h, w), generator=g)) * schedule.init_noise_sigma

            def frame_noise(i, shape, k=k, g=g):
                return noise(i, k, shape) if noise is not None else torch.randn(shape, generator=g)

            def frame_callback(done, _total, x0, k=k):
                if callback is not None:
                    callback(k * n + done, T * n, x0)

            denoise = x4_denoiser(unet, lr.to(device), prompt_embeds, negative_embeds, guidance_scale, labels)
            x = sample(denoise, x.to(device), schedule, hooks, frame_noise, frame_callback)
            out[k] = x[0].float().cpu()
    return out


def _frame_generators(seed: int, reseed_per_frame: bool, frames: int, draws: list[tuple]) -> list[torch.Generator]:
    """One generator per frame, each in the state the per-frame loop's generator has when that frame
    starts (the frames before it drew ``draws``: the shapes of one frame's draws, in order)."""
    gen_for = _per_frame_draws(seed, reseed_per_frame)
    out = []
    for k in range(frames):
        g = gen_for(k)
        mine = torch.Generator("cpu")
        mine.set_state(g.get_state())
        out.append(mine)
        if not reseed_per_frame:
            for shape in draws:  # advance the shared generator past this frame's draws
                torch.randn(shape, generator=g)
    return out


@torch.no_grad()
def _run_clip(model, cond, schedule: Schedule, prompt_embeds, negative_embeds, guidance_scale, seed,
              latents, noise, callback, hooks, reseed_per_frame) -> Tensor:
    """The per-frame computation as one loop over the clip, so that hooks see all frames at once."""
    T, (h, w), c, augment, labels, low_ac = _frame_setup(model, cond, latents)
    n = len(schedule)
    draws = ([(1, 3, h, w)] if augment and cond.noise is None else []) + ([(1, c, h, w)] if latents is None else [])
    draws += [(1, c, h, w)] * (0 if noise is not None else sum(schedule.needs_noise(i) for i in range(n)))
    gens = _frame_generators(seed, reseed_per_frame, T, draws)
    lrs, xs = [], []
    for k in range(T):
        lr = cond.lr[k:k + 1]
        if augment:
            z = cond.noise[k:k + 1] if cond.noise is not None else torch.randn(lr.shape, generator=gens[k])
            lr = add_noise(lr, z, low_ac, cond.noise_level)
        lrs.append(lr)
        xs.append((latents[k:k + 1].float() if latents is not None else
                   torch.randn((1, c, h, w), generator=gens[k])) * schedule.init_noise_sigma)

    def clip_noise(i: int, shape: tuple) -> Tensor:
        one = (1, *shape[1:])
        return torch.cat([noise(i, k, one) if noise is not None else torch.randn(one, generator=gens[k])
                          for k in range(T)])

    def clip_callback(done: int, _total: int, x0: Tensor) -> None:
        if callback is not None:
            callback(done * T, T * n, x0)

    with model.on_device("unet") as (unet,):
        device = next(unet.parameters()).device
        lr_dev = [lr.to(device) for lr in lrs]

        def denoise(x_t: Tensor, t: Tensor, i: int) -> Tensor:
            return torch.cat([x4_model_output(unet, x_t[k:k + 1], lr_dev[k], t, prompt_embeds, negative_embeds,
                                              guidance_scale, labels).to(x_t.device, x_t.dtype)
                              for k in range(T)])

        x = sample(denoise, torch.cat(xs).to(device), schedule, hooks, clip_noise, clip_callback)
    return x.float().cpu()
