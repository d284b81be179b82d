"""VAE decoding of frame latents in chunks of frames and, for large frames, in blended spatial tiles.

A 4K frame decoded whole by the x4 VAE (which must run in fp32) needs several GB of activations;
tiles of ``tile`` latent pixels with an ``overlap`` crossfaded by a Hann ramp bound that to a few
hundred MB, so 4K outputs decode on 8 GB GPUs. Results go to the CPU chunk by chunk.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..tiling import tiled_apply


def vae_decode(vae: nn.Module, z: Tensor, scaling_factor: float, tile: int = 0, overlap: int = 8) -> Tensor:
    """Decode scaled latents ``z`` ``[N, C, h, w]`` (on the VAE's device) to images in about [-1, 1].

    ``tile`` > 0 and smaller than the latent: decode in ``tile``x``tile`` latent tiles, Hann-blended over
    ``overlap`` latent pixels. Pixels are not clamped (StableVSR feeds the raw decode to its ControlNet).
    """
    param = next(vae.parameters())
    z = z.to(param.device, param.dtype) / scaling_factor

    def run(x: Tensor) -> Tensor:
        out = vae.decode(x)
        return out.sample if hasattr(out, "sample") else out

    if tile and (z.shape[-2] > tile or z.shape[-1] > tile):
        factor = _vae_scale(vae)
        return tiled_apply(run, z, tile, min(overlap, tile // 2), scale=factor, mode="hann")
    return run(z)


def _vae_scale(vae: nn.Module) -> int:
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 8


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: Tensor, scaling_factor: float, chunk: int = 1, tile: int = 0,
                   overlap: int = 8, device=None, dtype: torch.dtype = torch.float32,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Decode ``[T, C, h, w]`` latents frame-chunk by frame-chunk; returns ``[T, 3, H, W]`` float32 CPU
    in [0, 1] (clamped). ``progress(done, total)`` is called after each chunk and may raise to stop."""
    T = latents.shape[0]
    if device is not None:
        vae.to(device, dtype)
    out: Tensor | None = None
    for s in range(0, T, chunk):
        img = vae_decode(vae, latents[s:s + chunk], scaling_factor, tile, overlap)
        img = ((img.float() + 1) / 2).clamp_(0, 1).cpu()
        if out is None:
            out = torch.empty((T,) + tuple(img.shape[1:]), dtype=torch.float32)
        out[s:s + img.shape[0]] = img
        if progress is not None:
            progress(min(s + chunk, T), T)
    return out
