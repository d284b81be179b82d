"""Upscale-A-Video sampling (methods.md §2.3): windows, CFG, noise level, split DDIM step, propagation.

One run, as the official ``VideoUpscalePipeline.__call__`` does it:

1. the clean LR clip is noise-augmented once with the low-res DDPM schedule at ``noise_level``, which is
   also the UNet's class label;
2. every DDIM step runs the video UNet on temporal windows of ``window`` frames (``overlap`` shared) for
   the unconditional and conditional prompt as one batch, merges the windows' v-predictions (official:
   the order-dependent running average), applies CFG, turns v into x̂0 and ε̂, optionally propagates x̂0
   along the flow over the whole clip (``propagation.LatentPropagation``), and moves to the next
   timestep with the *original* ε̂ (the split step);
3. latents are decoded in 3-frame chunks by the video VAE, conditioned on the clean LR
   (``decode_uav``), then optionally colour-corrected against the bicubic-upsampled LR.

Randomness: with no injected noise, one CPU ``torch.Generator(seed)`` draws the augmentation noise
``(1, 3, T, h, w)`` and then the initial latents ``(1, 4, T, h, w)``, the official order and shapes, so a
seed reproduces the official CPU run. Per-frame state (latents, merged predictions) lives on
``state_device`` (the CPU by default); only one window (× one tile) visits the compute device at a time,
so memory is bounded by the window, not the clip.

Large frames: ``tile`` > 0 splits the latent grid into tiles *inside every step* and blends the tiles'
v-predictions with raised-cosine weights over ``tile_overlap`` latent pixels (``tile_merge="hann"``),
so neighbouring tiles agree on every intermediate latent and no seam survives; propagation still runs on
the whole frame. The official CLI instead runs the whole pipeline per 256-px tile with 64 px of context
and pastes the centres without blending; ``tile_merge="hard"`` keeps that geometry and hard paste, per
step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..color import COLOR_FIX_MODES, color_fix
from ..flow.types import VideoFlow
from ..models.bundle import VSRModel
from ..temporal import WindowMerger, plan_segments, plan_windows, unique_windows
from ..tiling import TileMerger, plan_tiles, plan_tiles_uav
from .loop import call_releasing, sample
from .mechanisms import Propagation, Site, check_mechanisms, mechanism_hooks, mechanism_settings
from .schedulers import make_schedule
from .x4 import LRConditioning, augment_lr

__all__ = [
    "UAV_DEFAULTS",
    "UAV_A_PROMPT",
    "UAV_N_PROMPT",
    "UAV_MERGES",
    "UAV_TILE_MERGES",
    "uav_initial_noise",
    "uav_denoiser",
    "sample_uav",
    "vae_decode_uav",
    "decode_uav",
]

# inference_upscale_a_video.py CLI defaults (§2.3): noise 120, guidance 6, 30 steps, seed 10; the
# pipeline's 8-frame windows overlapping by 2 and 3-frame decode chunks.
UAV_DEFAULTS = dict(noise_level=120, guidance_scale=6.0, steps=30, seed=10, window=8, overlap=2,
                    decode_chunk=3, w_lr=1.0)
UAV_A_PROMPT = "best quality, extremely detailed"  # appended to the (caption) prompt by the CLI
UAV_N_PROMPT = "blur, worst quality"
UAV_MERGES = ("running", "uniform", "hann")
UAV_TILE_MERGES = ("hann", "hard")


def _out(o) -> Tensor:
    if isinstance(o, Tensor):
        return o
    if hasattr(o, "sample"):
        return o.sample
    return o[0]


def uav_initial_noise(num_frames: int, size: tuple[int, int], seed: int, channels: int = 4,
                      lr_noise: Tensor | None = None, latents: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(lr_noise [T, 3, h, w], latents [T, C, h, w])`` float32 CPU, drawn as the official pipeline
    does from one CPU generator (augmentation noise first, in ``(1, 3, T, h, w)``, then the latents in
    ``(1, C, T, h, w)``). Given tensors replace their draw (the generator still advances in order)."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    h, w = size
    if lr_noise is None:
        lr_noise = torch.randn((1, 3, num_frames, h, w), generator=gen)[0].transpose(0, 1).contiguous()
    else:
        torch.randn((1, 3, num_frames, h, w), generator=gen)
    if latents is None:
        latents = torch.randn((1, channels, num_frames, h, w), generator=gen)[0].transpose(0, 1).contiguous()
    return lr_noise.float(), latents.float()


def _tiles(size: tuple[int, int], tile: int, tile_overlap: int, tile_merge: str):
    h, w = size
    if tile <= 0 or (h <= tile and w <= tile):
        return None
    if tile_merge == "hard":
        return plan_tiles_uav((h, w), tile, tile_overlap)
    return plan_tiles((h, w), tile, min(tile_overlap, tile - 1))


def uav_denoiser(
    unet: nn.Module,
    lr: Tensor,
    noise_level: int,
    prompt_embeds: Tensor,
    negative_embeds: Tensor | None = None,
    guidance_scale: float = 6.0,
    window: int = 8,
    overlap: int = 2,
    merge: str = "running",
    tile: int = 0,
    tile_overlap: int = 16,
    tile_merge: str = "hann",
    state_device="cpu",
    on_window: Callable[[int, int], None] | None = None,
):
    """``denoise(x_t, t, i) -> v`` for ``loop.sample``: the video UNet over temporal windows (and tiles).

    lr: ``[T, 3, h, w]`` the noise-augmented LR (channels 4–6 of the UNet input); x_t: ``[T, 4, h, w]``
    on ``state_device``. Per window, the CFG batch ``[uncond, cond]`` runs as one UNet call
    ``unet(sample [B, 4, L, h, w], t, low_res [B, 3, L, h, w], encoder_hidden_states, class_labels)``;
    window predictions of both halves are merged (``merge``: ``"running"`` = official, with the
    official window list including its repeated last window; ``"uniform"``/``"hann"`` on each window
    once), tiles blended, then CFG ``u + g·(c − u)``. Returns v ``[T, 4, h, w]`` float32 on
    ``state_device``. on_window(start, end): called before each UNet call (progress / interrupt).
    """
    if merge not in UAV_MERGES:
        raise ValueError(f"window merge must be one of {UAV_MERGES}, got {merge!r}")
    if tile_merge not in UAV_TILE_MERGES:
        raise ValueError(f"tile_merge must be one of {UAV_TILE_MERGES}, got {tile_merge!r}")
    cfg = guidance_scale > 1.0
    if cfg and negative_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative_embeds (the negative prompt embedding)")
    p = next(unet.parameters())
    dev, dt = p.device, p.dtype
    T, (h, w) = lr.shape[0], lr.shape[-2:]
    batch = 2 if cfg else 1
    emb = prompt_embeds.to(dev, dt)
    if cfg:
        emb = torch.cat([negative_embeds.to(dev, dt).expand(emb.shape[0], -1, -1), emb])
    labels = torch.full((batch,), int(noise_level), dtype=torch.long, device=dev)
    layout = "uav" if merge == "running" else "snap"
    windows = unique_windows(plan_windows(T, window, overlap, layout=layout))
    tiles = _tiles((h, w), tile, tile_overlap, tile_merge)

    def to_video(x: Tensor) -> Tensor:  # [L, C, h, w] -> [B, C, L, h, w] on the compute device
        v = x.transpose(0, 1).unsqueeze(0).to(dev, dt)
        return torch.cat([v] * batch) if batch > 1 else v

    def run_region(x_t: Tensor, t: Tensor, ys: slice, xs: slice) -> Tensor:
        merger = WindowMerger(T, merge, overlap, dim=2)
        for s, e, reps in windows:
            if on_window is not None:
                on_window(s, e)
            out = _out(unet(to_video(x_t[s:e, :, ys, xs]), t.to(dev), to_video(lr[s:e, :, ys, xs]),
                            encoder_hidden_states=emb, class_labels=labels))
            merger.add(out.float().to(state_device), s, e, reps)
            del out
        return merger.result()

    def denoise(x_t: Tensor, t: Tensor, i: int) -> Tensor:
        full = slice(None)
        if tiles is None:
            pred = run_region(x_t, t, full, full)
        else:
            tm = TileMerger((batch, x_t.shape[1], T, h, w), tile_merge, 1, device=state_device)
            for tl in tiles:
                ys, xs = tl.slices("region")
                tm.add(tl, run_region(x_t, t, ys, xs))
            pred = tm.result()
        if cfg:
            uncond, text = pred.chunk(2)
            pred = uncond + guidance_scale * (text - uncond)
        return pred[0].transpose(0, 1).contiguous()

    return denoise


def sample_uav(
    model: VSRModel,
    cond: LRConditioning,
    flow: VideoFlow | None,
    prompt_embeds: Tensor,
    negative_embeds: Tensor | None = None,
    guidance_scale: float = 6.0,
    steps: int = 30,
    seed: int = 10,
    propagation_steps: Sequence[int] = (),
    window: int = 8,
    overlap: int = 2,
    merge: str = "running",
    tile: int = 0,
    tile_overlap: int = 16,
    tile_merge: str = "hann",
    latents: Tensor | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    hooks: Sequence[object] = (),
    state_device="cpu",
    temporal: Sequence[object] = (),
) -> Tensor:
    """Upscale-A-Video sampling. Returns latents ``[T, 4, h, w]`` float32 on ``state_device`` (decode with
    ``decode_uav``).

    cond: ``LRConditioning`` with the clean LR ``[T, 3, h, w]`` in [-1, 1] and ``noise_level`` (0–350,
    official CLI 120: higher = more generated detail, lower fidelity); ``cond.noise`` optionally replaces
    the augmentation noise. flow: the clip's ``VideoFlow`` (any grid; resized to the latent grid), needed
    when ``propagation_steps`` is not empty. prompt_embeds / negative_embeds: ``[1, L, D]`` (official CFG
    batch order [negative, prompt]); CFG when ``guidance_scale > 1``. steps: DDIM steps on the model's
    scheduler config ("leading" spacing: 30 -> 958 … 1). propagation_steps: 0-based loop indices at
    which x̂0 is propagated (e.g. 24, 26, 28 of 30; ``propagation.resolve_propagation_steps`` turns the
    from-the-end form -6, -4, -2 into these); empty = off. window / overlap / merge: temporal
    windows (see ``uav_denoiser``). tile / tile_overlap / tile_merge: per-step latent tiles (0 = off;
    ``"hann"`` blended, ``"hard"`` = official geometry with ``tile_overlap`` px of context, pasted).
    latents: initial latents ``[T, 4, h, w]`` (replace the seed's draw). callback(done, total, x0):
    after every step, may raise to cancel. hooks: extra ``on_x0``/``on_step`` hooks, after propagation.
    temporal: temporal mechanisms (``mechanisms.Mechanism``) run after the published propagation, in order
    (a Window Merge sets ``merge``); refused with the reason when one cannot act on this sampler.
    """
    if not isinstance(cond, LRConditioning):
        raise TypeError(f"cond must be an LRConditioning, got {type(cond).__name__}")
    if cond.noise_level is None:
        raise ValueError("Upscale-A-Video needs a noise_level (0-350): its UNet takes it as class label")
    max_level = int(model.config.get("max_noise_level", 350))
    if cond.noise_level > max_level:
        raise ValueError(f"noise_level must be <= {max_level}, got {cond.noise_level}")
    if prompt_embeds is None:
        raise ValueError("prompt_embeds is required (encode the prompt with the model's text encoder first)")
    steps = int(steps)
    prop = sorted({int(s) for s in propagation_steps})
    if any(s < 0 or s >= steps for s in prop):
        raise ValueError(f"propagation_steps must be loop indices in [0, {steps - 1}], got {prop}")
    T, (h, w) = cond.num_frames, cond.latent_size
    if prop:
        if flow is None:
            raise ValueError("propagation_steps need the clip's flow (a VideoFlow from the flow node)")
        if flow.num_frames != T:
            raise ValueError(f"the flow describes {flow.num_frames} frames but the clip has {T}")
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    c = int(model.config.get("latent_channels", 4))
    if latents is not None and tuple(latents.shape) != (T, c, h, w):
        raise ValueError(f"latents must be {[T, c, h, w]}, got {tuple(latents.shape)}")
    schedule = make_schedule(model.scheduler_config, "ddim", steps)
    site = Site("upscale_a_video", T, steps)
    check_mechanisms(temporal, site)
    merge = mechanism_settings(temporal, site).get("merge", merge)
    own = [Propagation(flow, prop)] if prop else []  # the published mechanism, then the user's chain
    all_hooks = mechanism_hooks([*own, *temporal], site) + list(hooks)
    return call_releasing(_run, model, cond, schedule, prompt_embeds, negative_embeds, float(guidance_scale),
                          int(seed), int(window), int(overlap), merge, int(tile), int(tile_overlap), tile_merge,
                          latents, callback, all_hooks, torch.device(state_device))


@torch.no_grad()
def _run(model, cond, schedule, prompt_embeds, negative_embeds, guidance_scale, seed, window, overlap, merge,
         tile, tile_overlap, tile_merge, latents, callback, hooks, state_device) -> Tensor:
    T, (h, w) = cond.num_frames, cond.latent_size
    c = int(model.config.get("latent_channels", 4))
    lr_noise, x = uav_initial_noise(T, (h, w), seed, c, cond.noise, latents)
    lr = augment_lr(cond.lr.float(), model.low_res_scheduler_config, cond.noise_level, lr_noise)
    x = (x * schedule.init_noise_sigma).to(state_device)
    with model.on_device("unet") as (unet,):
        denoise = uav_denoiser(unet, lr.to(state_device), cond.noise_level, prompt_embeds, negative_embeds,
                               guidance_scale, window, overlap, merge, tile, tile_overlap, tile_merge,
                               state_device)
        x = sample(denoise, x, schedule, hooks, callback=callback)
    return x.float()


# ---- decoding --------------------------------------------------------------------------------------


def vae_decode_uav(vae: nn.Module, z: Tensor, lr: Tensor, scaling_factor: float, w_lr: float = 1.0) -> Tensor:
    """One official decode call: ``vae.decode(z / scaling_factor, lr, w_lr)`` clamped to [-1, 1].

    z: ``[B, 4, L, h, w]`` scaled latents; lr: ``[B, 3, L, h, w]`` clean LR in [-1, 1] (used by the video
    VAE's SFT fuse; the per-frame ``vae_3d`` ignores it). Runs in the VAE's dtype/device (fp32 for the
    x4 VAE); returns float32 ``[B, 3, L, 4h, 4w]`` on the VAE's device.
    """
    p = next(vae.parameters())
    z = z.to(p.device, p.dtype) / scaling_factor
    out = _out(vae.decode(z, lr.to(p.device, p.dtype), w_lr))
    return out.clamp(-1, 1).float()


@torch.no_grad()
def decode_uav(
    model: VSRModel,
    latents: Tensor,
    cond: LRConditioning | Tensor,
    chunk: int = 3,
    w_lr: float = 1.0,
    color: str = "none",
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Decode UAV latents ``[T, 4, h, w]`` in non-overlapping chunks of ``chunk`` frames (official 3; the
    video VAE's 3-D convs see no further), each conditioned on its clean LR frames with weight ``w_lr``.

    cond: the ``LRConditioning`` (or the clean LR ``[T, 3, h, w]`` in [-1, 1]). color: ``"none" | "adain" |
    "wavelet"`` (+ ``"lab"``) colour fix against the bicubic-upsampled LR, as the official CLI's
    ``--color_fix``. Returns ``[T, 3, 4h, 4w]`` float32 CPU in [0, 1]. progress(done, total) after each
    chunk; may raise to stop.
    """
    if color not in COLOR_FIX_MODES:
        raise ValueError(f"color fix must be one of {COLOR_FIX_MODES}, got {color!r}")
    lr = cond.lr if isinstance(cond, LRConditioning) else cond
    T = latents.shape[0]
    if lr.shape[0] != T or tuple(lr.shape[-2:]) != tuple(latents.shape[-2:]):
        raise ValueError(f"LR {tuple(lr.shape)} does not match latents {tuple(latents.shape)}")
    out: Tensor | None = None
    segs = plan_segments(T, int(chunk), pad="none")
    with model.on_device("vae") as (vae,):
        for k, (s, e) in enumerate(segs):
            z = latents[s:e].transpose(0, 1).unsqueeze(0)
            img = vae_decode_uav(vae, z, lr[s:e].float().transpose(0, 1).unsqueeze(0), model.scaling_factor, w_lr)
            img = ((img[0].transpose(0, 1) + 1) / 2).cpu()
            if color != "none":
                img = color_fix(img, ((lr[s:e].float() + 1) / 2), color)
            if out is None:
                out = torch.empty((T,) + tuple(img.shape[1:]), dtype=torch.float32)
            out[s:e] = img.clamp(0, 1)
            if progress is not None:
                progress(k + 1, len(segs))
    return out
