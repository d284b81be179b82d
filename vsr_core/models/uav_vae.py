"""Upscale-A-Video's VAEs (methods.md §2.2 e): ``vae_video`` and the per-frame ``vae_3d``.

Both are the x4 upscaler VAE (downsampling 4, scaling factor 0.08333) with a decoder that takes clips
[B, C, T, H, W]. Parameter names equal the official ``vae_*.bin`` keys once the old diffusers attention
names are remapped (``loaders.diffusion.remap_vae_legacy_attention``).

* ``vae_3d`` (``UpDecoderBlock3D``): the x4 decoder run per frame, except that the decoder's GroupNorms
  normalise the 5-D tensor, so their statistics pool over the frames decoded together (the official
  pipeline decodes chunks of 3 frames).
* ``vae_video`` (``UpDecoderBlock3D_plus``, ``condition_img``): every decoder resnet gains a zero-init
  3x3x3 convolution across frames; after ``conv_in`` the LR frames (at latent resolution, [-1, 1]) are
  fused by SFT: ``dec + w_lr * (dec * scale + shift)``.

The encoder is kept (diffusers' 2-D ``Encoder``) so the official files load strictly; the method never
runs it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import Encoder
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Upsample2D
from torch import Tensor, nn

from .uav_unet import InflatedConv, VideoResnet, scaled_sum, to_frames, to_video

__all__ = ["AutoencoderKLVideo", "VideoResnetPlus", "SFTFuse", "VideoDecoder"]


class VideoResnetPlus(VideoResnet):
    """``VideoResnet`` followed by a residual 3x3x3 convolution across frames (official
    ``ResnetBlock3D_plus``): out + conv_3d(SiLU(norm_3d(out))), ``conv_3d`` zero-initialised."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, groups: int = 32,
                 groups_out: int | None = None, eps: float = 1e-6, **kwargs):
        super().__init__(in_channels=in_channels, out_channels=out_channels, groups=groups, groups_out=groups_out,
                         eps=eps, temb_channels=None, **kwargs)
        out = out_channels or in_channels
        self.norm_3d = nn.GroupNorm(groups_out or groups, out, eps=eps)
        self.conv_3d = nn.Conv3d(out, out, 3, padding=1)
        with torch.no_grad():
            self.conv_3d.weight.zero_()
            self.conv_3d.bias.zero_()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:  # noqa: D102
        out = super().forward(x, temb)
        return scaled_sum(out, self.conv_3d(self.nonlinearity(self.norm_3d(out))), self.output_scale_factor)


class SFTFuse(nn.Module):
    """Spatial feature transform of decoder features by LR features (official ``Fuse_sft_block``):
    f = resnets(cat(cond, dec)); dec + w * (dec * scale(f) + shift(f))."""

    def __init__(self, cond_channels: int, channels: int):
        super().__init__()
        self.shared = nn.Sequential(
            VideoResnet(in_channels=cond_channels + channels, out_channels=channels, temb_channels=None),
            VideoResnet(in_channels=channels, out_channels=channels, temb_channels=None))
        self.scale = InflatedConv(channels, channels, 3, 1, 1)
        self.shift = InflatedConv(channels, channels, 3, 1, 1)

    def forward(self, cond: Tensor, dec: Tensor, w: float = 1.0) -> Tensor:  # noqa: D102
        f = torch.cat([cond, dec], dim=1)
        for block in self.shared:
            f = block(f)
        return dec + w * (dec * self.scale(f) + self.shift(f))


class _MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, plus: bool):
        super().__init__()
        res = VideoResnetPlus if plus else VideoResnet
        kw = {} if plus else {"temb_channels": None}
        self.resnets = nn.ModuleList([res(in_channels=channels, out_channels=channels, groups=groups, eps=1e-6,
                                          **kw) for _ in range(2)])
        # one head over all channels, per frame (diffusers' UNetMidBlock2D attention)
        self.attentions = nn.ModuleList([Attention(channels, heads=1, dim_head=channels, eps=1e-6,
                                                   norm_num_groups=groups, residual_connection=True, bias=True,
                                                   upcast_softmax=True, _from_deprecated_attn_block=True)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        frames = x.shape[2]
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(to_video(attn(to_frames(x)), frames))
        return x


class _UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool,
                 plus: bool):
        super().__init__()
        res = VideoResnetPlus if plus else VideoResnet
        kw = {} if plus else {"temb_channels": None}
        self.resnets = nn.ModuleList([
            res(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels, groups=groups,
                eps=1e-6, **kw) for i in range(num_layers)])
        self.upsamplers = (nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = to_video(self.upsamplers[0](to_frames(x)), x.shape[2])
        return x


class VideoDecoder(nn.Module):
    """The clip decoder: conv_in, [SFT fuse of the LR frames], mid block, up blocks, norm/act/conv_out."""

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: int, norm_num_groups: int, plus: bool, condition_img: bool,
                 condition_channels: int):
        super().__init__()
        top = block_out_channels[-1]
        self.condition_img = condition_img
        self.conv_in = InflatedConv(latent_channels, top, 3, padding=1)
        if condition_img:
            # groups=3 on the 3 RGB channels of the LR frames
            self.condition_in = nn.Sequential(
                VideoResnetPlus(in_channels=3, out_channels=condition_channels, groups=3, groups_out=32),
                VideoResnetPlus(in_channels=condition_channels, out_channels=condition_channels))
            self.condition_fuse = SFTFuse(condition_channels, top)
        self.mid_block = _MidBlock(top, norm_num_groups, plus)
        rev = list(reversed(block_out_channels))
        self.up_blocks = nn.ModuleList()
        out_ch = rev[0]
        for i in range(len(rev)):
            prev, out_ch = out_ch, rev[i]
            self.up_blocks.append(_UpBlock(prev, out_ch, layers_per_block + 1, norm_num_groups,
                                           i < len(rev) - 1, plus))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor, img: Tensor | None = None, w_lr: float = 1.0) -> Tensor:  # noqa: D102
        x = self.conv_in(z)
        if self.condition_img:
            if img is None:
                raise ValueError("this VAE decoder is LR-conditioned (vae_video): pass the LR frames img_lr")
            cond = img.to(x.dtype)
            for block in self.condition_in:
                cond = block(cond)
            x = self.condition_fuse(cond, x, w_lr)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class AutoencoderKLVideo(ModelMixin, ConfigMixin):
    """UAV's VAE (config = the official ``vae_video_config.json`` / ``vae_3d_config.json``).

    ``up_block_types`` "UpDecoderBlock3D_plus" selects the temporal decoder resnets (its mid block
    follows ``up_block_types[0]``); ``condition_img`` adds the LR conditioning.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock3D",) * 3,
        up_block_types: Sequence[str] = ("UpDecoderBlock3D",) * 3,
        block_out_channels: Sequence[int] = (128, 256, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 256,
        scaling_factor: float = 0.08333,
        condition_img: bool = False,
        condition_channels: int = 128,
        use_temporal_block: bool = False,
    ):
        super().__init__()
        kinds = set(up_block_types)
        if not kinds <= {"UpDecoderBlock3D", "UpDecoderBlock3D_plus"} or len(kinds) != 1:
            raise ValueError(f"AutoencoderKLVideo: unsupported up_block_types {list(up_block_types)}")
        if act_fn not in ("silu", "swish"):
            raise ValueError(f"AutoencoderKLVideo: unsupported act_fn {act_fn!r}")
        self.encoder = Encoder(in_channels, latent_channels, ("DownEncoderBlock2D",) * len(down_block_types),
                               tuple(block_out_channels), layers_per_block, norm_num_groups, act_fn, double_z=True)
        self.quant_conv = InflatedConv(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = InflatedConv(latent_channels, latent_channels, 1)
        self.decoder = VideoDecoder(latent_channels, out_channels, block_out_channels, layers_per_block,
                                    norm_num_groups, up_block_types[0] == "UpDecoderBlock3D_plus", condition_img,
                                    condition_channels)

    @property
    def is_conditioned(self) -> bool:
        """True for ``vae_video`` (needs the LR frames to decode)."""
        return bool(self.config.condition_img)

    def decode(self, z: Tensor, img_lr: Tensor | None = None, w_lr: float = 1.0) -> Tensor:
        """Decode latents to images.

        z: [B, 4, T, h, w], already divided by ``scaling_factor``; img_lr: the clean LR frames
        [B, 3, T, h, w] in [-1, 1] (required by ``vae_video``, ignored by ``vae_3d``); w_lr: weight of
        the LR conditioning (1 = the released setting). Returns [B, 3, T, 4h, 4w], roughly [-1, 1],
        not clamped. All T frames are decoded together (the official pipeline passes 3 at a time).
        """
        if z.ndim != 5:
            raise ValueError(f"AutoencoderKLVideo.decode expects z [B, C, T, h, w], got {tuple(z.shape)}")
        if img_lr is not None and self.is_conditioned and img_lr.shape[-3:] != z.shape[-3:]:
            raise ValueError(f"img_lr {tuple(img_lr.shape)} must match the latent grid/frames of z {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z), img_lr if self.is_conditioned else None, w_lr)

    def forward(self, z: Tensor, img_lr: Tensor | None = None, w_lr: float = 1.0) -> Tensor:  # noqa: D102
        return self.decode(z, img_lr, w_lr)
