"""MGLD's temporal-aware sequence VAE with controllable feature wrapping (CFW), spec §4.2c.

``VideoAutoencoderKLResi`` (version 1): the SD 2.1 encoder, which also returns two skip features of the
(bicubic-upsampled) LR input, and ``VideoDecoder_Mix``: the SD 2.1 decoder with a temporal convolution
after ``mid.block_1`` and after every up-level ResnetBlock, and two CFW fusion layers that add
``w · f(enc_fea, dec)`` to the decoder features at up-levels 1 and 2 (``w`` = ``fusion_w``, the
script's ``--dec_w``). Attribute names are the official ``video_vae_cfw.ckpt`` keys.

Frames travel in the batch dimension ``(b·t, C, H, W)``; the temporal convs see ``num_frames``
consecutive frames (5, a segment).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tiling import in_slices
from .mgld_unet import SpatialTemporalConv, Upsample, _Configured

__all__ = ["MGLDVideoVAE", "Encoder", "VideoDecoder", "CFWFusion", "ResidualDenseBlock", "FusionResBlock"]


def by_frame(fn, *xs: Tensor) -> Tensor:
    """``fn(*xs)`` for a per-frame 2-D computation, one frame at a time into one output when autograd is
    off (``in_slices``): only one frame's intermediate tensors are alive at once (a ResnetBlock at 512 px
    holds about four full-size tensors, 1.3 GiB in bf16 for a 5-frame segment). Frames are independent in
    ``fn`` (convolutions, GroupNorm per sample), so the result is the one-call result."""
    return fn(*xs) if torch.is_grad_enabled() else in_slices(fn, *xs, size=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """LDM VAE ResnetBlock without time embedding: GN-swish-conv ×2, 1×1 ``nin_shortcut`` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """LDM VAE single-head spatial self-attention (1×1 conv q/k/v/proj_out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # contiguous [b, 1, HW, C]: SDPA's fused kernels need a unit stride on the last dimension
        q, k, v = (p(n).reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(a)


class Downsample(nn.Module):
    """Stride-2 conv with the LDM asymmetric (right/bottom) zero padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """LDM ``Encoder`` (SD 2.1). forward(x [N,3,H,W] in [-1,1], return_features) -> h [N, 2·z, H/f, W/f]
    and, with return_features, ``[level-1 output (H/2), level-2 output (H/4)]`` (the CFW skip features,
    taken after the level's blocks and before its downsample)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, in_channels: int, z_channels: int,
                 double_z: bool = True, attn_resolutions: Sequence[int] = (), resolution: int = 256):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult, res = (1,) + tuple(ch_mult), resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_in = ch * in_mult[i]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor, return_features: bool = False, features_only: bool = False):
        """The latent moments (and the two CFW skip features with ``return_features``); ``features_only``
        returns just the features, computing nothing past the deeper one."""
        h = self.conv_in(x)
        features = []
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i in (1, 2):
                features.append(h)
                if features_only and i == 2:
                    return features
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return (h, features) if return_features else h


class FusionResBlock(nn.Module):
    """The CFW residual block (CodeFormer style): GN-swish-conv ×2, 1×1 ``conv_out`` shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_out = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (self.conv_out(x) if hasattr(self, "conv_out") else x)


class ResidualDenseBlock(nn.Module):
    """ESRGAN residual dense block: 5 densely connected 3×3 convs (growth ``grow``), LeakyReLU 0.2, and the
    0.2 residual scaling of the ESRGAN paper (§3.2)."""

    def __init__(self, channels: int, grow: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, grow, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + grow, grow, 3, padding=1)
        self.conv3 = nn.Conv2d(channels + 2 * grow, grow, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 3 * grow, grow, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 4 * grow, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class CFWFusion(nn.Module):
    """``Fuse_sft_block_ResidualDenseBlock``: ``dec + w · Res(RDB×n(Res(cat(enc, dec))))``."""

    def __init__(self, channels: int, num_block: int = 2, grow: int = 32):
        super().__init__()
        self.encode_enc_1 = FusionResBlock(2 * channels, channels)
        self.encode_enc_2 = nn.Sequential(*[ResidualDenseBlock(channels, grow) for _ in range(num_block)])
        self.encode_enc_3 = FusionResBlock(channels, channels)

    def forward(self, enc_feat: Tensor, dec_feat: Tensor, w: float = 1.0) -> Tensor:
        f = self.encode_enc_3(self.encode_enc_2(self.encode_enc_1(torch.cat([enc_feat.to(dec_feat.dtype), dec_feat], 1))))
        return dec_feat + w * f


class VideoDecoder(nn.Module):
    """``VideoDecoder_Mix`` (spec §4.2c). forward(z [(b·t), z, h, w] (after post_quant_conv), enc_fea (the
    encoder's two skip features), fusion_w, num_frames) -> [(b·t), 3, 8h, 8w]."""

    def __init__(self, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 num_frames: int = 5, attn_resolutions: Sequence[int] = (), resolution: int = 256,
                 num_fuse_block: int = 2, fusion_w: float = 1.0):
        super().__init__()
        self.fusion_w = fusion_w
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in)
        self.temporal_mixing = SpatialTemporalConv(block_in, num_frames, by_frame=True)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in)
        ups = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.temporal_mixing = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * ch_mult[i]
            if 0 < i < n - 1:
                setattr(self, f"fusion_layer_{i}", CFWFusion(block_out, num_fuse_block))
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                level.temporal_mixing.append(SpatialTemporalConv(block_in, num_frames, by_frame=True))
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: Tensor, enc_fea: Sequence[Tensor], fusion_w: float | None = None,
                num_frames: int | None = None) -> Tensor:
        w = self.fusion_w if fusion_w is None else fusion_w
        h = self.temporal_mixing(self.mid.block_1(self.conv_in(z)), num_frames)
        h = self.mid.block_2(self.mid.attn_1(h))
        # the 2-D parts run frame by frame without autograd (``by_frame``): at 512 px a 5-frame segment's
        # temporaries were the peak of the whole MGLD run; the temporal convs do the same internally
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = level.temporal_mixing[j](by_frame(block, h), num_frames)
                if len(level.attn):
                    h = by_frame(level.attn[j], h)
            if 0 < i < len(self.up) - 1:
                fuse = getattr(self, f"fusion_layer_{i}")
                h = by_frame(lambda e, d: fuse(e, d, w), enc_fea[i - 1], h)
            if i != 0:
                h = by_frame(level.upsample, h)
        return by_frame(lambda d: self.conv_out(F.silu(self.norm_out(d))), h)


class MGLDVideoVAE(_Configured):
    """``VideoAutoencoderKLResi`` version 1 (the ``video_vae_cfw.ckpt`` network).

    Config: ``ddconfig`` (the official dict: ch, out_ch, ch_mult, num_res_blocks, in_channels, z_channels,
    double_z, attn_resolutions, resolution, num_frames), ``embed_dim`` (4), ``fusion_w`` (default CFW weight).

    encode(x [N,3,H,W] in [-1,1]) -> (moments [N, 2·embed, H/8, W/8] (mean, logvar), enc_fea list);
    decode(z [N, embed, H/8, W/8] = latents / 0.18215, enc_fea, fusion_w=None, num_frames=None) -> [N,3,H,W].
    """

    def __init__(self, ddconfig: Mapping[str, Any], embed_dim: int = 4, fusion_w: float = 1.0):
        super().__init__()
        dd = dict(ddconfig)
        self.config = dict(ddconfig=dd, embed_dim=embed_dim, fusion_w=fusion_w)
        common = dict(ch=dd["ch"], ch_mult=dd["ch_mult"], num_res_blocks=dd["num_res_blocks"],
                      z_channels=dd["z_channels"], attn_resolutions=dd.get("attn_resolutions", ()),
                      resolution=dd.get("resolution", 256))
        self.encoder = Encoder(in_channels=dd.get("in_channels", 3), double_z=dd.get("double_z", True), **common)
        self.decoder = VideoDecoder(out_ch=dd.get("out_ch", 3), num_frames=dd.get("num_frames", 5),
                                    fusion_w=fusion_w, **common)
        z = dd["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)

    @property
    def num_frames(self) -> int:
        return self.decoder.temporal_mixing.num_frames

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h, feats = self.encoder(x, return_features=True)
        return self.quant_conv(h), feats

    def encode_features(self, x: Tensor) -> list[Tensor]:
        """Only the CFW skip features of ``x`` (what the decoder needs besides the latents), frame by frame
        without autograd (the encoder is 2-D), nothing computed past the deeper feature."""
        if torch.is_grad_enabled() or x.shape[0] == 1:
            return self.encoder(x, features_only=True)
        per_frame = [self.encoder(x[i:i + 1], features_only=True) for i in range(x.shape[0])]
        return [torch.cat(level) for level in zip(*per_frame)]

    def decode(self, z: Tensor, enc_fea: Sequence[Tensor], fusion_w: float | None = None,
               num_frames: int | None = None) -> Tensor:
        return self.decoder(self.post_quant_conv(z), enc_fea, fusion_w, num_frames)
