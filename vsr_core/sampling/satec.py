"""SATeCo inference (methods.md §5.1): the upscaled video X_u → VAE latent Z → noised to ``strength`` →
denoised by the frozen UNet with SFA/TFA guided by E_z(Z), clip by clip → decoded by the frozen VAE with
SFA/TFA guided by X_u → X_d → the video refiner blends X_d with X_u into X_H.

Clips are non-overlapping runs of ``clip_length`` frames (the tubelet length L, 6 in the paper); the last
one may be shorter (its tubelets are masked). Everything here also serves training (``training/satec.py``),
so the path that is trained is the path that runs.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor

from ..loaders.satec import SATeCoParts
from ..models.bundle import VSRModel
from .loop import call_releasing, sample, seeded_noise
from .prompt import prompt_embeddings
from .schedulers import add_noise, make_schedule

__all__ = ["clips", "encode_frames", "sample_satec_latents", "decode_satec", "refine", "attached", "unet_output"]


def clips(n: int, length: int) -> list[slice]:
    """Non-overlapping slices of ``length`` frames covering ``n`` (the last may be shorter)."""
    if length < 1:
        raise ValueError(f"clip_length must be >= 1, got {length}")
    return [slice(s, min(s + length, n)) for s in range(0, n, length)]


@contextlib.contextmanager
def attached(adapter, base):
    """``adapter`` hooked onto ``base`` for the block, and detached afterwards."""
    handles = adapter.attach(base)
    try:
        yield adapter
    finally:
        for h in handles:
            h.remove()


def encode_frames(vae, x: Tensor, scaling_factor: float, chunk: int = 4) -> Tensor:
    """Frames ``[N, 3, H, W]`` in [-1, 1] → latents ``[N, 4, H/8, W/8]`` (the posterior mean, scaled)."""
    dev, dt = next(vae.parameters()).device, next(vae.parameters()).dtype
    out = [vae.encode(x[i:i + chunk].to(dev, dt)).latent_dist.mean * scaling_factor for i in range(0, x.shape[0], chunk)]
    return torch.cat(out)


def unet_output(model: VSRModel, parts: SATeCoParts, x_t: Tensor, t: Tensor, z_guide: Tensor, frames: int,
                context: Tensor) -> Tensor:
    """The UNet's prediction for latents ``x_t`` of clips of ``frames`` with SFA/TFA guided by E_z(``z_guide``)
    (the adapter must be attached to ``model.unet``)."""
    unet = model.unet
    dt = next(unet.parameters()).dtype
    tt = torch.as_tensor(t, device=x_t.device).reshape(-1)
    if tt.numel() == 1:
        tt = tt.expand(x_t.shape[0])
    with parts.unet.guidance(z_guide.to(dt), frames=frames):
        out = unet(x_t.to(dt), tt, encoder_hidden_states=context.to(x_t.device, dt).expand(x_t.shape[0], -1, -1)).sample
    return out.to(x_t.dtype)


def sample_satec_latents(model: VSRModel, parts: SATeCoParts, x_u: Tensor, strength: float = 0.5, steps: int = 20,
                         seed: int = 0, clip_length: int = 6, scheduler: str = "ddim", progress=None,
                         noise=None, temporal=()) -> Tensor:
    """Denoised latents ``[N, 4, h, w]`` (float32, CPU) for the upscaled frames ``x_u [N, 3, H, W]`` in [-1, 1].

    strength: how far the latent of X_u is noised (1 = pure noise, 0 = none: the encoded X_u comes back);
    the last ``round(steps·strength)`` steps of a ``steps``-step schedule run. progress(done, total) per step
    and clip; it may raise to cancel. noise: a ``NoiseFn`` (default: seeded from ``seed``). temporal: temporal
    mechanisms (``mechanisms.Mechanism``) run in order on the frames of each clip."""
    parts.require("unet", "The SATeCo sampler")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    schedule = make_schedule(model.scheduler_config, scheduler, steps)
    run = int(round(len(schedule) * strength))
    start = len(schedule) - run
    noise = noise or seeded_noise(seed)
    context = prompt_embeddings(model, "")
    spans = clips(x_u.shape[0], clip_length)
    total = max(run, 1) * len(spans)
    if temporal:
        from .mechanisms import Site, check_mechanisms, mechanism_hooks

        check_mechanisms(temporal, Site("satec", x_u.shape[0], len(schedule)))
    out = []
    with model.on_device("unet", "vae") as (unet, vae), torch.no_grad():
        dev = model.device
        parts.unet.to(dev, model.dtype)
        try:
            with attached(parts.unet, unet):
                for k, span in enumerate(spans):
                    z = encode_frames(vae, x_u[span], model.scaling_factor).float()
                    if run == 0:
                        out.append(z.cpu())
                        continue
                    x = add_noise(z, noise(-1, tuple(z.shape)).to(z), schedule.alphas_cumprod,
                                  int(schedule.timesteps[start]))
                    n = span.stop - span.start

                    def denoise(x_t, t, i, z=z, n=n):
                        return unet_output(model, parts, x_t, t, z, n, context)

                    def step(done, _total, _x0, k=k):
                        if progress is not None:
                            progress(k * run + done - start, total)
                    hooks = mechanism_hooks(temporal, Site("satec", x_u.shape[0], len(schedule), frames=n,
                                                           offset=span.start)) if temporal else ()
                    x = call_releasing(sample, denoise, x, schedule, hooks, noise=noise, callback=step, start=start)
                    out.append(x.float().cpu())
        finally:
            parts.unet.to("cpu")
    return torch.cat(out)


def decode_satec(model: VSRModel, parts: SATeCoParts, latents: Tensor, x_u: Tensor, clip_length: int = 6,
                 progress: Callable | None = None) -> Tensor:
    """Latents → X_d ``[N, 3, H, W]`` in [-1, 1] (float32, CPU): the frozen VAE decoder with SFA/TFA guided by
    the upscaled frames ``x_u``, clip by clip."""
    parts.require("vae", "SATeCo decoding")
    spans = clips(latents.shape[0], clip_length)
    out = []
    with model.on_device("vae") as (vae,), torch.no_grad():
        parts.vae.to(model.device, model.vae_dtype)
        try:
            with attached(parts.vae, vae):
                for k, span in enumerate(spans):
                    out.append(_decode_clip(model, parts, vae, latents[span], x_u[span]).float().cpu())
                    if progress is not None:
                        progress(span.stop, latents.shape[0])
        finally:
            parts.vae.to("cpu")
    return torch.cat(out)


def _decode_clip(model: VSRModel, parts: SATeCoParts, vae, z: Tensor, x_u: Tensor) -> Tensor:
    dev, dt = next(vae.parameters()).device, next(vae.parameters()).dtype
    with parts.vae.guidance(x_u.to(dev, dt), frames=z.shape[0]):
        return vae.decode(z.to(dev, dt) / model.scaling_factor).sample


def refine(parts: SATeCoParts, x_u: Tensor, x_d: Tensor, weight: float | None = None, chunk: int = 8,
           device: str | torch.device = "cpu") -> Tensor:
    """X_H = w·X_u + (1 − w)·X_d + ResBlock([X_u, X_d]) (frames ``[N, 3, H, W]`` in [-1, 1]), clamped."""
    parts.require("refiner", "The video refiner")
    if x_u.shape != x_d.shape:
        raise ValueError(f"the refiner blends frames of one size: upscaled {tuple(x_u.shape)} vs decoded "
                         f"{tuple(x_d.shape)}")
    out = []
    with torch.no_grad():
        parts.refiner.to(device)
        try:
            for i in range(0, x_u.shape[0], chunk):
                out.append(parts.refiner(x_u[i:i + chunk].to(device), x_d[i:i + chunk].to(device), weight)
                           .clamp(-1, 1).cpu())
        finally:
            parts.refiner.to("cpu")
    return torch.cat(out)
