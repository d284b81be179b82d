"""StableVSR: the Temporal Conditioning Module and frame-wise bidirectional sampling (methods.md §3.3).

At every timestep the frames are denoised one after another in the current order. Frame k (k > 0 in
that order) gets a ControlNet (the TCM) fed the *Temporal Texture Guidance*: the x̂0 that the frame
processed just before it predicted at this same step, VAE-decoded to HR RGB (not clamped) and
backward-warped onto frame k with StableVSR's warp convention; the first frame of each pass has no
ControlNet. The order is reversed after every step, so consecutive steps alternate past -> future and
future -> past.

Flows (a ``VideoFlow`` on the HR grid; resized to it otherwise): in natural order frame k is guided by
frame k−1 through ``backward[k-1]`` (flow k -> k−1; the official ``forward_flows[k-1] = RAFT(cur=k,
prev=k-1)``), in reverse order frame k by frame k+1 through ``forward[k]`` (the official reversed
``backward_flows``).

Everything around the frame loop is the shared loop (``loop.sample``): the denoiser below returns all
frames' model outputs for one step and the scheduler update then runs on the whole clip. This is the
official computation: a frame's update never feeds another frame within the step (only its x̂0 does),
and the default noise is drawn from one CPU generator in the official order (every frame's initial
latent, then each step's ancestral noise frame by frame in processing order), so ``seed=42`` on the
CPU reproduces the official run's random numbers exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..flow import VideoFlow, resize_flow, warp
from ..models.bundle import VSRModel
from .decode import vae_decode
from .loop import call_releasing, sample
from .schedulers import Schedule, add_noise, make_schedule
from .x4 import FrameNoiseFn, LRConditioning, uses_class_labels, x4_model_output

__all__ = ["frame_order", "guidance_flow", "temporal_guidance", "sample_stablevsr", "PrecedingFrame"]


@dataclass
class PrecedingFrame:
    """The frame just before a clip, carried from the previous chunk of a stream (``vsr_core.stream``).

    x0: its x̂0 latent ``[1, 4, h, w]`` at each loop index (what it predicted at that step of its own
    chunk); flow: ``[1, 2, H, W]`` backward flow from the clip's first frame into it (any grid; resized
    to the HR grid). At the natural-order steps the clip's first frame is then guided by it exactly as
    frame k is guided by frame k−1 inside a clip, instead of running without the TCM.
    """

    x0: dict
    flow: Tensor


def frame_order(num_frames: int, step_index: int, bidirectional: bool = True) -> list[int]:
    """Frames in the order they are denoised at ``step_index``: natural at even steps, reversed at odd
    steps when ``bidirectional`` (StableVSR reverses its frame lists after every step)."""
    order = list(range(num_frames))
    return order[::-1] if bidirectional and step_index % 2 == 1 else order


def guidance_flow(flow: VideoFlow, frame: int, previous: int, size: tuple[int, int], device=None) -> Tensor:
    """``[1, 2, H, W]`` float32 flow on ``frame``'s grid pointing into ``previous`` (its neighbour), resized
    to ``size`` when the flows live on another grid (after moving the pair to ``device``, so a clip's
    flows can stay small and on the CPU).

    previous = frame − 1 -> ``backward[frame-1]``; previous = frame + 1 -> ``forward[frame]``.
    """
    if previous == frame - 1:
        f = flow.backward[frame - 1:frame]
    elif previous == frame + 1:
        f = flow.forward[frame:frame + 1]
    else:
        raise ValueError(f"frame {previous} is not a neighbour of frame {frame}")
    f = f.to(device=device, dtype=torch.float32)
    if tuple(f.shape[-2:]) != tuple(size):
        f = resize_flow(f, size)
    return f


def temporal_guidance(vae, x0_prev: Tensor, flow: Tensor, scaling_factor: float, tile: int = 0) -> Tensor:
    """The Temporal Texture Guidance: ``warp(vae.decode(x̂0_prev / s), flow)`` with StableVSR's warp
    convention (bilinear, zeros, align_corners=False with (W−1) normalisation). x0_prev ``[1, 4, h, w]``;
    flow ``[1, 2, H, W]``; returns ``[1, 3, H, W]`` float32 in about [-1, 1] (not clamped), on the VAE's
    device. ``tile`` > 0 decodes in latent tiles of that size (a memory bound; not in the official code).
    """
    hr = vae_decode(vae, x0_prev, scaling_factor, tile=tile).float()
    return warp(hr, flow.to(hr.device), convention="stablevsr")


def sample_stablevsr(
    model: VSRModel,
    cond: LRConditioning | Tensor,
    flow: VideoFlow | None,
    prompt_embeds: Tensor,
    steps: int = 50,
    scheduler: str = "ddpm",
    seed: int = 42,
    tcm: bool = True,
    bidirectional: bool = True,
    keep_on_cpu: bool = False,
    guidance_tile: int = 0,
    noise: FrameNoiseFn | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    latents: Tensor | None = None,
    hooks: Sequence[object] = (),
    negative_embeds: Tensor | None = None,
    guidance_scale: float = 0.0,
    conditioning_scale: float = 1.0,
    timestep_spacing: str | None = None,
    preceding: PrecedingFrame | None = None,
    temporal: Sequence[object] = (),
) -> Tensor:
    """StableVSR sampling of a clip. Returns latents ``[T, 4, h, w]`` float32 on the CPU.

    model: a bundle with ``unet`` (x4 structure), ``controlnet`` (the TCM) and ``vae``; its
    ``scheduler_config`` gives the timesteps (published: ``"ddpm"``, 50 steps, seed 42; ``"ddim"`` /
    ``"dpmpp_2m"`` are faster options). cond: ``LRConditioning`` or ``[T, 3, h, w]`` LR in [-1, 1].
    flow: the clip's ``VideoFlow`` (StableVSR computes it on the bicubic x4 frames; any grid is resized
    to the HR grid); may be None when ``tcm`` is off or T = 1. prompt_embeds: ``[1, L, D]`` (StableVSR:
    the '' prompt); CFG only when ``guidance_scale > 1`` (StableVSR: off).
    tcm: use the ControlNet; bidirectional: reverse the order every step (off: always natural order).
    keep_on_cpu: per-frame latents and x̂0 wait on the CPU between uses (same numbers, less GPU memory
    on long clips; the decoded guidance is never held: it is made right before the ControlNet call and
    dropped after it); guidance_tile: latent tile size of the guidance decode (0 = whole frame).
    noise: ``noise(step, frame, shape)`` replacing the seed's ancestral noise; latents: initial latents
    ``[T, 4, h, w]``; hooks: ``loop.sample`` hooks on the whole clip after each step.
    callback(done, total, x0): after each frame of each step (total = steps·T); an exception raised
    there stops the run within one frame's denoising step and propagates (the run's tensors released).
    preceding: the frame before the clip (a ``PrecedingFrame``), so that a clip streamed in chunks keeps
    its previous-frame guidance across chunk borders; None = the clip starts the video.
    temporal: temporal mechanisms (``mechanisms.Mechanism``) run in order after each step on the whole
    clip; a Flow-Warped Conditioning sets ``tcm`` (with its scale and ``bidirectional``).
    """
    if isinstance(cond, Tensor):
        cond = LRConditioning(cond)
    if not isinstance(cond, LRConditioning):
        raise TypeError(f"cond must be an LRConditioning or a [T, 3, h, w] tensor, got {type(cond).__name__}")
    if prompt_embeds is None:
        raise ValueError("prompt_embeds is required (StableVSR uses the embedding of the empty prompt)")
    T = cond.num_frames
    if temporal:
        from .mechanisms import Site, check_mechanisms, mechanism_hooks, mechanism_settings

        site = Site("stablevsr", T, steps, has_controlnet=model.controlnet is not None)
        check_mechanisms(temporal, site)
        chosen = mechanism_settings(temporal, site)
        tcm = chosen.get("tcm", tcm)
        conditioning_scale = chosen.get("conditioning_scale", conditioning_scale)
        bidirectional = chosen.get("bidirectional", bidirectional)
        hooks = (*mechanism_hooks(temporal, site), *hooks)
    use_tcm = bool(tcm) and (T > 1 or preceding is not None)
    if use_tcm:
        if model.controlnet is None:
            raise ValueError("tcm=True needs the model's ControlNet (the Temporal Conditioning Module)")
        if flow is None:
            raise ValueError("tcm=True needs the clip's flows (VSR_FLOW from FlowGuidance)")
        if flow.num_frames != T:
            raise ValueError(f"the flows describe {flow.num_frames} frames but the clip has {T}")
    if guidance_tile < 0:
        raise ValueError(f"guidance_tile must be >= 0, got {guidance_tile}")
    schedule = make_schedule(model.scheduler_config, scheduler, steps, timestep_spacing)
    return call_releasing(_run, model, cond, flow if use_tcm else None, schedule, prompt_embeds, int(seed),
                          use_tcm, bool(bidirectional), bool(keep_on_cpu), int(guidance_tile), noise, callback,
                          latents, tuple(hooks), negative_embeds, float(guidance_scale), float(conditioning_scale),
                          preceding if use_tcm else None)


@torch.no_grad()
def _run(model: VSRModel, cond: LRConditioning, flow: VideoFlow | None, schedule: Schedule, prompt_embeds,
         seed, tcm, bidirectional, keep_on_cpu, guidance_tile, noise, callback, latents, hooks, negative_embeds,
         guidance_scale, conditioning_scale, preceding=None) -> Tensor:
    T, (h, w) = cond.num_frames, cond.latent_size
    c = int(model.config.get("latent_channels", getattr(getattr(model.vae, "config", None), "latent_channels", 4)))
    if latents is not None and tuple(latents.shape) != (T, c, h, w):
        raise ValueError(f"latents must be {[T, c, h, w]}, got {tuple(latents.shape)}")
    hr_size = (h * model.vae_scale_factor, w * model.vae_scale_factor)
    labels = cond.class_labels if uses_class_labels(model) else None
    gen = torch.Generator("cpu").manual_seed(seed)

    lr = cond.lr.float()
    if model.low_res_scheduler_config is not None and cond.noise_level is not None:
        low_ac = make_schedule(model.low_res_scheduler_config, "ddpm", 1).alphas_cumprod
        z = cond.noise if cond.noise is not None else torch.randn(lr.shape, generator=gen)
        lr = add_noise(lr, z.float(), low_ac, cond.noise_level)
    if latents is None:  # one (1, c, h, w) draw per frame, in frame order, as the official pipeline
        latents = torch.cat([torch.randn((1, c, h, w), generator=gen) for _ in range(T)])
    x = latents.float() * schedule.init_noise_sigma
    n = len(schedule)

    def step_noise(i: int, shape: tuple) -> Tensor:
        z = torch.empty(shape)
        for k in frame_order(T, i, bidirectional):
            z[k:k + 1] = noise(i, k, (1, *shape[1:])) if noise is not None else \
                torch.randn((1, *shape[1:]), generator=gen)
        return z

    names = ("unet", "controlnet", "vae") if tcm else ("unet",)
    with model.on_device(*names) as nets:
        unet = nets[0]
        controlnet, vae = (nets[1], nets[2]) if tcm else (None, None)
        device = next(unet.parameters()).device
        store = torch.device("cpu") if keep_on_cpu else device
        lr = lr.to(store)
        x = x.to(store)

        def denoise(x_t: Tensor, t: Tensor, i: int) -> Tensor:
            out = torch.empty_like(x_t)
            x0_prev, prev = None, None
            for pos, k in enumerate(frame_order(T, i, bidirectional)):
                z = x_t[k:k + 1].to(device)
                guide = None
                if tcm and pos > 0:
                    f = guidance_flow(flow, k, prev, hr_size, device)
                    guide = temporal_guidance(vae, x0_prev.to(device), f, model.scaling_factor, guidance_tile)
                    del f
                elif tcm and k == 0 and preceding is not None and i in preceding.x0:
                    f = preceding.flow.to(device, torch.float32)
                    f = resize_flow(f, hr_size) if tuple(f.shape[-2:]) != hr_size else f
                    guide = temporal_guidance(vae, preceding.x0[i].to(device), f, model.scaling_factor,
                                              guidance_tile)
                    del f
                o = x4_model_output(unet, z, lr[k:k + 1], t, prompt_embeds, negative_embeds, guidance_scale,
                                    labels, controlnet if guide is not None else None, guide,
                                    conditioning_scale)
                del guide
                out[k:k + 1] = o.to(store, out.dtype)
                x0, _ = schedule.predict(o, z, i)
                x0_prev, prev = x0.to(store), k
                del o, z
                if callback is not None:
                    callback(i * T + pos + 1, n * T, x0)
                del x0
            return out

        x = sample(denoise, x, schedule, hooks, step_noise)
    return x.float().cpu()
