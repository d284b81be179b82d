"""SATeCo (Chen et al., CVPR 2024, arXiv 2403.17000): spatial adaptation and temporal coherence
modules on a frozen Stable Diffusion 2.x UNet and VAE decoder.

The paper has no public code or weights (methods.md §5). What it states, and what is built here:

* an **LR latent encoder** ``E_z`` turns the latent code Z of the upscaled video into guidance feature
  maps G, one per resolution of the UNet decoder (``LatentGuidance``);
* **SFA** (spatial feature adaptation), in every decoder block: per-pixel affine parameters S (scale) and
  M (shift) are estimated from G by 2-D convolutions and modulate the normalised HR feature,
  ``f̃ = S ⊙ (f − μ) / σ + M`` (μ, σ: the feature's per-channel spatial mean and std) (``SFA``);
* **TFA** (temporal feature alignment), after SFA: self-attention among the tokens of each 3-D tubelet
  (L frames × h × w pixels, 6 × 8 × 8 in the paper) with Conv3D projections, then cross-attention from
  each HR tubelet to its LR counterpart in G, ``Q' = Conv3D(F̂), K', V' = Conv3D(G)`` (``TFA``);
* the same SFA + TFA pair in every block of the frozen VAE decoder, guided by LR features;
* the **video refiner** ``X_H = w·X_u + (1 − w)·X_d + ResBlock([X_u, X_d])``, w = 0.5 (``VideoRefiner``).

Choices the paper leaves open (stated, so they can be changed in one place):

* **Identity at initialisation.** ``S = σ ⊙ (1 + ΔS)`` and ``M = μ + ΔM`` with ΔS, ΔM from zero-initialised
  convolutions, so the untrained SFA returns f exactly (the paper's equation with that parameterisation);
  both TFA attentions are residual with zero-initialised output projections; the refiner's ResBlock ends in
  a zero-initialised convolution. An untrained SATeCo is therefore exactly the frozen base (tested).
* **Guidance for the VAE decoder** comes from a small pixel-space encoder on the upscaled frames X_u
  (``PixelGuidance``), at the decoder blocks' resolutions; the paper says only "LR features".
* **Where G meets each block**: E_z builds a pyramid at 1, 1/2, 1/4 … of the latent grid, and each block
  takes the level of its own output resolution.
* TFA normalises each token over its channels (LayerNorm), so a tubelet's output depends on that tubelet
  alone. Its inner width is the block's channel count capped at ``max_inner`` with 64-channel heads; tokens of a
  tubelet that fall outside the frame (sizes that are not multiples of the tubelet) are padding, masked
  out of every attention and cropped afterwards.

Modules attach to a diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` through forward hooks on their
decoder ``up_blocks`` (``attach``), so the base networks stay untouched, frozen and shareable.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["SATeCoConfig", "SFA", "TFA", "LatentGuidance", "PixelGuidance", "SATeCoAdapter", "VideoRefiner",
           "tubelet_partition", "tubelet_merge", "decoder_plan"]


@dataclass
class SATeCoConfig:
    """Sizes of SATeCo's trainable parts. ``unet_blocks`` / ``vae_blocks``: (channels, factor) of each
    decoder block's output (factor: its downsampling relative to the latent grid for the UNet, to the image
    for the VAE), from ``decoder_plan`` of the base networks."""

    unet_blocks: list = field(default_factory=lambda: [[1280, 4], [1280, 2], [640, 1], [320, 1]])
    vae_blocks: list = field(default_factory=lambda: [[512, 4], [512, 2], [256, 1], [128, 1]])
    latent_channels: int = 4
    latent_guide_channels: int = 128
    pixel_guide_channels: int = 32
    sfa_hidden: int = 128
    tubelet: list = field(default_factory=lambda: [6, 8, 8])  # L, h, w (paper: 8 x 8 x 6)
    max_inner: int = 320
    head_dim: int = 64
    refiner_channels: int = 64
    refiner_weight: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SATeCoConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SATeCo config keys {sorted(unknown)}")
        return cls(**d)


def decoder_plan(unet_config, vae_config) -> tuple[list, list]:
    """(channels, factor) of every decoder block output of a diffusers UNet and VAE config.

    Up block i of both upsamples except the last, so its output is 2**max(n − 2 − i, 0) times coarser
    than the finest grid (the latent for the UNet, the image for the VAE)."""
    def plan(channels):
        n = len(channels)
        return [[int(c), 2 ** max(n - 2 - i, 0)] for i, c in enumerate(reversed(list(channels)))]
    return plan(unet_config["block_out_channels"]), plan(vae_config["block_out_channels"])


def _zero_(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


# --------------------------------------------------------------------------------------------- tubelets

def tubelet_partition(x: Tensor, size: tuple[int, int, int]) -> tuple[Tensor, Tensor, tuple]:
    """``x [B, C, T, H, W]`` → tokens ``[B·n, L·h·w, C]`` of non-overlapping L×h×w tubelets, a key mask
    ``[B·n, L·h·w]`` (False on padding) and what ``tubelet_merge`` needs. Sizes that are not multiples of
    the tubelet are zero-padded at the end of each axis."""
    B, C, T, H, W = x.shape
    L, h, w = size
    pt, ph, pw = (-T) % L, (-H) % h, (-W) % w
    if pt or ph or pw:
        x = F.pad(x, (0, pw, 0, ph, 0, pt))
    nt, nh, nw = (T + pt) // L, (H + ph) // h, (W + pw) // w
    tok = x.reshape(B, C, nt, L, nh, h, nw, w).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B * nt * nh * nw, L * h * w, C)
    valid = torch.zeros(T + pt, H + ph, W + pw, dtype=torch.bool, device=x.device)
    valid[:T, :H, :W] = True
    mask = valid.reshape(nt, L, nh, h, nw, w).permute(0, 2, 4, 1, 3, 5).reshape(1, nt * nh * nw, L * h * w)
    mask = mask.expand(B, -1, -1).reshape(B * nt * nh * nw, L * h * w)
    return tok, mask, (B, C, T, H, W, nt, nh, nw)


def tubelet_merge(tok: Tensor, meta: tuple, size: tuple[int, int, int]) -> Tensor:
    """Inverse of ``tubelet_partition``: tokens ``[B·n, L·h·w, C']`` → ``[B, C', T, H, W]`` (padding cropped)."""
    B, _, T, H, W, nt, nh, nw = meta
    L, h, w = size
    C = tok.shape[-1]
    x = tok.reshape(B, nt, nh, nw, L, h, w, C).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, C, nt * L, nh * h, nw * w)
    return x[:, :, :T, :H, :W]


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, heads: int) -> Tensor:
    """Multi-head attention over tokens ``[N, S, D]`` with a key mask ``[N, S]``; padded queries (whose
    row would be all-masked if every key were padding) never occur, since a tubelet always holds at least
    one real token."""
    N, S, D = q.shape
    d = D // heads
    # contiguous heads: SDPA's fused kernels need a unit stride on the last dimension (k, v come strided)
    q, k, v = (t.reshape(N, -1, heads, d).transpose(1, 2).contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return out.transpose(1, 2).reshape(N, S, D)


# ------------------------------------------------------------------------------------------------ modules

class SFA(nn.Module):
    """Spatial feature adaptation: ``f̃ = S ⊙ (f − μ)/σ + M`` with S, M per pixel from the LR guidance g.

    ``S = σ ⊙ (1 + ΔS)``, ``M = μ + ΔM``; ΔS and ΔM come from two 2-D convolutions on a shared
    embedding of g, zero-initialised, so ``f̃ = f + ΔS ⊙ (f − μ) + ΔM`` equals f at initialisation.
    """

    def __init__(self, channels: int, guide_channels: int, hidden: int = 128):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(guide_channels, hidden, 3, padding=1), nn.SiLU())
        self.scale = _zero_(nn.Conv2d(hidden, channels, 3, padding=1))
        self.shift = _zero_(nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        """f ``[N, C, H, W]`` (one frame per item), g ``[N, G, H, W]``."""
        e = self.shared(g.to(f.dtype))
        mu = f.mean(dim=(-2, -1), keepdim=True)
        return f + self.scale(e) * (f - mu) + self.shift(e)


class _ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each token of ``[B, C, T, H, W]``: per token, so a tubelet's result
    depends on its own tokens only (clips and tiles can be processed apart)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class TFA(nn.Module):
    """Temporal feature alignment inside 3-D tubelets: self-attention among HR tokens, then
    cross-attention to the LR tubelet at the same place, both residual (zero-initialised outputs)."""

    def __init__(self, channels: int, guide_channels: int, tubelet=(6, 8, 8), max_inner: int = 320,
                 head_dim: int = 64):
        super().__init__()
        inner = min(channels, max_inner)
        self.heads = max(1, inner // head_dim)
        inner = self.heads * min(head_dim, inner)
        self.tubelet = tuple(int(s) for s in tubelet)
        self.norm1 = _ChannelNorm(channels)
        self.qkv = nn.Conv3d(channels, 3 * inner, 1)
        self.out1 = _zero_(nn.Conv3d(inner, channels, 1))
        self.norm2 = _ChannelNorm(channels)
        self.q2 = nn.Conv3d(channels, inner, 1)
        self.kv2 = nn.Conv3d(guide_channels, 2 * inner, 1)
        self.out2 = _zero_(nn.Conv3d(inner, channels, 1))

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        """f ``[B, C, T, H, W]``, g ``[B, G, T, H, W]`` (same T, H, W) → ``[B, C, T, H, W]``."""
        size = self.tubelet
        q, k, v = self.qkv(self.norm1(f)).chunk(3, dim=1)
        tq, mask, meta = tubelet_partition(q, size)
        tk, _, _ = tubelet_partition(k, size)
        tv, _, _ = tubelet_partition(v, size)
        f = f + self.out1(tubelet_merge(_attend(tq, tk, tv, mask, self.heads), meta, size))
        q = self.q2(self.norm2(f))
        k, v = self.kv2(g.to(f.dtype)).chunk(2, dim=1)
        tq, mask, meta = tubelet_partition(q, size)
        tk, _, _ = tubelet_partition(k, size)
        tv, _, _ = tubelet_partition(v, size)
        return f + self.out2(tubelet_merge(_attend(tq, tk, tv, mask, self.heads), meta, size))


class _Pyramid(nn.Module):
    """Conv features at factors 1, 2, 4, … (stride-2 steps) of its input."""

    def __init__(self, in_channels: int, channels: int, levels: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU())
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU(),
                                                nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU())
                                  for _ in range(levels - 1))

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        feats = {1: self.stem(x)}
        f = 1
        for block in self.down:
            feats[2 * f] = block(feats[f])
            f *= 2
        return feats


class LatentGuidance(_Pyramid):
    """E_z: the latent code Z of the upscaled video → guidance maps G at each UNet decoder resolution."""


class PixelGuidance(_Pyramid):
    """LR features of the upscaled frames X_u at each VAE decoder resolution (full, 1/2, 1/4 ...)."""


class SATeCoAdapter(nn.Module):
    """SFA + TFA for every decoder block of one base network, and the guidance encoder that feeds them.

    ``kind``: "unet" (guidance from the latent Z, ``LatentGuidance``) or "vae" (from the upscaled frames
    X_u, ``PixelGuidance``). Use::

        handles = adapter.attach(unet)                 # once
        with adapter.guidance(z, frames=T):            # per call: G for this clip of T frames
            out = unet(...)                            # SFA/TFA run inside the decoder blocks
    """

    def __init__(self, config: SATeCoConfig, kind: str):
        super().__init__()
        if kind not in ("unet", "vae"):
            raise ValueError(f"kind must be 'unet' or 'vae', got {kind!r}")
        self.kind = kind
        blocks = config.unet_blocks if kind == "unet" else config.vae_blocks
        self.factors = [int(f) for _, f in blocks]
        levels = int(math.log2(max(self.factors))) + 1
        gc = config.latent_guide_channels if kind == "unet" else config.pixel_guide_channels
        src = config.latent_channels if kind == "unet" else 3
        self.encoder = (LatentGuidance if kind == "unet" else PixelGuidance)(src, gc, levels)
        self.sfa = nn.ModuleList(SFA(int(c), gc, config.sfa_hidden) for c, _ in blocks)
        self.tfa = nn.ModuleList(TFA(int(c), gc, config.tubelet, config.max_inner, config.head_dim)
                                 for c, _ in blocks)
        self.checkpointing = False
        self._ctx: dict | None = None

    @contextlib.contextmanager
    def guidance(self, source: Tensor, frames: int, repeat: int = 1):
        """Compute G from ``source`` (``[N, 4, h, w]`` latents for the UNet, ``[N, 3, H, W]`` frames in
        [-1, 1] for the VAE; N = clips × frames) for the calls inside the block. ``repeat``: the base
        network's batch holds the clips this many times (e.g. 2 with classifier-free guidance)."""
        if source.shape[0] % frames:
            raise ValueError(f"{source.shape[0]} guidance frames do not split into clips of {frames}")
        feats = self.encoder(source)
        if repeat > 1:
            feats = {k: v.repeat(repeat, 1, 1, 1) for k, v in feats.items()}
        self._ctx = {"feats": feats, "frames": int(frames)}
        try:
            yield self
        finally:
            self._ctx = None

    def adapt(self, i: int, f: Tensor) -> Tensor:
        """Block i's output ``[N, C, H, W]`` → SFA → TFA over clips of ``frames``."""
        if self._ctx is None:
            return f  # no guidance given: the frozen base runs unchanged
        g = self._ctx["feats"][self.factors[i]]
        if g.shape[-2:] != f.shape[-2:]:  # odd sizes: the base rounds differently from stride-2 convs
            g = F.interpolate(g, size=f.shape[-2:], mode="bilinear", align_corners=False)
        T = self._ctx["frames"]
        if self.checkpointing and torch.is_grad_enabled():  # recomputed in backward, after the context ended
            return checkpoint(self._adapt, i, f, g, T, use_reentrant=False, determinism_check="none")
        return self._adapt(i, f, g, T)

    def _adapt(self, i: int, f: Tensor, g: Tensor, T: int) -> Tensor:
        f = self.sfa[i](f, g)
        N, C, H, W = f.shape
        f5 = f.reshape(N // T, T, C, H, W).transpose(1, 2)
        g5 = g.reshape(N // T, T, -1, H, W).transpose(1, 2)
        return self.tfa[i](f5, g5).transpose(1, 2).reshape(N, C, H, W)

    def attach(self, base: nn.Module) -> list:
        """Hook SFA/TFA onto the decoder up-blocks of ``base`` (a UNet2DConditionModel, or an AutoencoderKL
        for kind "vae"); returns the hook handles (``h.remove()`` detaches)."""
        blocks = base.up_blocks if self.kind == "unet" else base.decoder.up_blocks
        if len(blocks) != len(self.sfa):
            raise ValueError(f"the base {self.kind} has {len(blocks)} decoder blocks, the adapter {len(self.sfa)}: "
                             "adapter weights trained for another base model")
        handles = []
        for i, block in enumerate(blocks):
            def hook(_m, _inp, out, i=i):
                return self.adapt(i, out)
            handles.append(block.register_forward_hook(hook))
        return handles


class VideoRefiner(nn.Module):
    """``X_H = w·X_u + (1 − w)·X_d + ResBlock([X_u, X_d])``: blends the upscaler's output X_u with the
    decoded diffusion output X_d (frames in [-1, 1] or [0, 1], ``[N, 3, H, W]``). The ResBlock's last
    convolution starts at zero, so an untrained refiner is the plain weighted blend."""

    def __init__(self, channels: int = 64, weight: float = 0.5):
        super().__init__()
        self.weight = float(weight)
        self.body = nn.Sequential(nn.Conv2d(6, channels, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(),
                                  _zero_(nn.Conv2d(channels, 3, 3, padding=1)))

    def forward(self, x_u: Tensor, x_d: Tensor, weight: float | None = None) -> Tensor:
        w = self.weight if weight is None else float(weight)
        return w * x_u + (1 - w) * x_d + self.body(torch.cat([x_u, x_d], dim=1))
