"""Upscale-A-Video's video UNet: the SD x4 upscaler UNet inflated to clips (methods.md §2.2).

Parameter names equal the official ``unet_video.bin`` keys (except the rotary ``freqs`` constants, which
are recomputed; ``loaders/uav.py`` drops them from the file). Tensors are ``[B, C, T, H, W]``.

What is per frame and what is not (the official behaviour, reproduced by the parity tests):

* Convolutions, attention over pixels, up/down sampling: per frame (T folded into the batch), with
  diffusers' own layers.
* The GroupNorms of every UNet resnet (and of the VAE decoder) normalise a 5-D tensor, so their
  statistics pool over all frames of the clip, not per frame. The transformers' GroupNorm runs after
  the fold and is per frame.
* Temporal layers, at the positions of §2.2: a temporal conv block before every spatial transformer
  (its residual is taken after it), temporal attention (rotary + T5 relative-position bias, as the SDPA
  mask) after the cross-attention of every transformer block, and a temporal module after every down,
  mid and up block, applied to the main path only (skip connections carry pre-temporal features).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import Tensor, nn

from ..tiling import in_slices

__all__ = [
    "UNetVideoModel",
    "InflatedConv",
    "VideoResnet",
    "scaled_sum",
    "TemporalConvBlock",
    "TemporalAttention",
    "RelativePositionBias",
    "VideoTransformer",
    "VideoTransformerBlock",
    "clip_cross_attention",
    "by_rows",
    "TemporalModule",
    "rotary_freqs",
    "apply_rotary",
    "zero_temporal_",
    "temporal_parameter_names",
    "ROTARY_DIM",
]

# Rotary embedding width shared by every temporal attention (``RotaryEmbedding(32)`` in the official
# UNet): it rotates the first 32 channels of each head along the frame axis.
ROTARY_DIM = 32
ROTARY_THETA = 10000.0
# T5-style relative position bias of the temporal attention: 32 buckets, max distance 32 frames.
REL_POS_BUCKETS = 32
REL_POS_MAX_DISTANCE = 32


def to_frames(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W] (batch-major)."""
    return x.transpose(1, 2).flatten(0, 1)


def to_video(x: Tensor, frames: int) -> Tensor:
    """[B*T, C, H, W] -> [B, C, T, H, W]."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


class InflatedConv(nn.Conv2d):
    """A 2-D convolution applied to every frame of a [B, C, T, H, W] clip (2-D weight shapes)."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.ndim == 4:
            return super().forward(x)
        return to_video(super().forward(to_frames(x)), x.shape[2])


def scaled_sum(a: Tensor, b: Tensor, factor: float) -> Tensor:
    """``(a + b) / factor``; no pass over the result for the released factor 1 (x / 1.0 is x exactly)."""
    out = a + b
    return out if factor == 1 else out / factor


class VideoResnet(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` (same parameters and names) run on a clip [B, C, T, H, W]: convs per
    frame, GroupNorms over the whole 5-D tensor (statistics shared by all frames, as the official
    ``ResnetBlock3D``), the time embedding [B, temb] broadcast over frames and pixels."""

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:  # noqa: D102
        frames = x.shape[2]

        def conv(layer, h):
            return to_video(layer(to_frames(h)), frames)

        h = conv(self.conv1, self.nonlinearity(self.norm1(x)))
        if temb is not None and self.time_emb_proj is not None:
            h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None, None]
        h = self.conv2(to_frames(self.dropout(self.nonlinearity(self.norm2(h)))))
        h = to_video(h, frames)
        if self.conv_shortcut is not None:
            x = conv(self.conv_shortcut, x)
        return scaled_sum(x, h, self.output_scale_factor)


class TemporalConvBlock(nn.Module):
    """Residual block of 1-D convolutions along time (official ``ResnetBlock3DCNN``).

    GroupNorm(32, eps 1e-6) -> SiLU -> Conv3d(k_t,1,1) [+ time embedding] -> GroupNorm -> SiLU ->
    Conv3d(3,1,1), plus the identity. Zero padding along T: clip borders see zeros.
    """

    def __init__(self, channels: int, kernel: int = 3, temb_channels: int | None = None, groups: int = 32,
                 eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, (kernel, 1, 1), padding=((kernel - 1) // 2, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:  # noqa: D102
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None and self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return x + h


def rotary_freqs(dim: int = ROTARY_DIM, theta: float = ROTARY_THETA, device=None) -> Tensor:
    """The rotary frequencies ``1 / theta^(arange(0, dim, 2) / dim)`` ([dim/2], fp32): the value of the
    official ``rotary_emb.freqs`` tensors, recomputed instead of loaded."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)


def apply_rotary(x: Tensor, dim: int = ROTARY_DIM) -> Tensor:
    """Rotate the first ``dim`` channels of ``x`` [..., F, D] by angle ``position * freq`` along the
    sequence axis F (-2). Channel pairs are interleaved (2i, 2i+1), as in ``rotary-embedding-torch``;
    channels beyond ``dim`` pass unchanged."""
    n = x.shape[-2]
    freqs = rotary_freqs(dim, device=x.device)
    angles = torch.arange(n, device=x.device, dtype=torch.float32)[:, None] * freqs  # [F, dim/2]
    angles = angles.repeat_interleave(2, dim=-1)  # [F, dim]: each frequency drives one channel pair
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    pairs = rot.unflatten(-1, (-1, 2))
    half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat((rot * cos + half * sin, rest), dim=-1)


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative position bias: a learned scalar per (bucket, head).

    Buckets: half for each sign of ``j - i``; within a half, exact distances below num_buckets/4, then
    log-spaced up to ``max_distance``. Returns [heads, n, n], added to the attention logits.
    """

    def __init__(self, heads: int, num_buckets: int = REL_POS_BUCKETS, max_distance: int = REL_POS_MAX_DISTANCE):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, n: int, device=None) -> Tensor:
        """[n, n] bucket index of key j seen from query i."""
        pos = torch.arange(n, device=device)
        dist = pos[:, None] - pos[None, :]  # i - j: positive when the key is in the past
        half = self.num_buckets // 2
        out = (dist < 0).long() * half
        dist = dist.abs()
        exact = half // 2
        large = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
                         * (half - exact)).long()
        large = large.clamp(max=half - 1)
        return out + torch.where(dist < exact, dist, large)

    def forward(self, n: int, device=None) -> Tensor:  # noqa: D102
        return self.relative_attention_bias(self.buckets(n, device)).permute(2, 0, 1)


class TemporalAttention(nn.Module):
    """Self-attention along frames: x [N, F, C] (N = batch x pixels) -> [N, F, C].

    q, k rotated by the rotary embedding (first 32 channels of each head), logits q.k/sqrt(d) plus the
    relative-position bias, through ``scaled_dot_product_attention`` with the bias as float mask.
    ``to_out.0`` starts at zero weight (bias not), as in the official model.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0, rotary_dim: int = ROTARY_DIM):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.rotary_dim = rotary_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])
        self.time_rel_pos_bias = RelativePositionBias(heads)
        with torch.no_grad():
            self.to_out[0].weight.zero_()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        n, f, _ = x.shape
        q, k, v = (layer(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for layer in
                   (self.to_q, self.to_k, self.to_v))
        if self.rotary_dim:
            q, k = apply_rotary(q, self.rotary_dim), apply_rotary(k, self.rotary_dim)
        # [1, heads, F, F], broadcast over N (a 4-D mask: a 3-D one sends SDPA to its slow math path)
        bias = self.time_rel_pos_bias(f, x.device).to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).flatten(2)))


# Rows of a per-token function computed at once: the GEGLU feed-forward's 4x-wide activations of a
# few thousand tokens stay in the CPU's cache (about 20 % faster than all tokens at once at latent 32).
ROW_CHUNK = 2048


def by_rows(fn, x: Tensor, rows: int = ROW_CHUNK) -> Tensor:
    """``fn(x)`` for a function of each token alone (LayerNorm, feed-forward, residual), ``rows`` tokens at a
    time (``in_slices``). x [..., C]; the result has x's shape but fn's last dimension and fn's dtype."""
    out = in_slices(fn, x.reshape(-1, x.shape[-1]), size=rows)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def clip_cross_attention(attn: Attention, x: Tensor, context: Tensor, frames: int) -> Tensor:
    """diffusers ``Attention`` (SDPA, no mask) from the tokens of every frame, x [(B T), P, C], to the
    context of its clip, [B, N, D]. The keys and values are projected once per clip instead of once per
    frame (the x4 UNet's text context is the same for all T frames: 1/T of the projections). Any other
    layout of the layer (norms, a custom processor) takes diffusers' own path on the repeated context.
    context None: the layer attends to x itself (diffusers' behaviour without encoder states)."""
    if context is None:
        return attn(x)
    b = context.shape[0]
    if x.shape[0] != b * frames:
        raise ValueError(f"{x.shape[0]} frame batches for {b} context(s) of {frames} frames")
    plain = (type(attn.processor).__name__ == "AttnProcessor2_0" and attn.norm_cross is None
             and attn.group_norm is None and attn.spatial_norm is None and attn.norm_q is None
             and attn.norm_k is None and not attn.residual_connection and attn.rescale_output_factor == 1.0)
    if not plain:
        return attn(x, encoder_hidden_states=context.repeat_interleave(frames, dim=0))
    heads = attn.heads

    def split(t: Tensor) -> Tensor:  # [n, L, h*d] -> [n, h, L, d]
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    q = split(attn.to_q(x))
    k, v = (split(p(context)).repeat_interleave(frames, dim=0) for p in (attn.to_k, attn.to_v))
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.transpose(1, 2).flatten(2).to(q.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class VideoTransformerBlock(nn.Module):
    """attn1 (self-, or text cross-attention when ``only_cross_attention``) -> attn2 (text) -> temporal
    attention -> GEGLU feed-forward, each pre-LayerNorm and residual. x [(B*T), HW, C]."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int | None,
                 only_cross_attention: bool = False, upcast_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               heads=heads, dim_head=dim_head, dropout=dropout, bias=False,
                               upcast_attention=upcast_attention)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head,
                                   dropout=dropout, bias=False, upcast_attention=upcast_attention)
        else:
            self.norm2 = self.attn2 = None
        self.attn_temporal = TemporalAttention(dim, heads, dim_head, dropout)
        self.norm_temporal = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None, frames: int) -> Tensor:
        """x [(B T), P, C]; context [B, N, D], one per clip (shared by its T frames), or None."""
        h = self.norm1(x)
        if self.only_cross_attention:
            x = clip_cross_attention(self.attn1, h, context, frames) + x
        else:
            x = self.attn1(h) + x
        if self.attn2 is not None:
            x = clip_cross_attention(self.attn2, self.norm2(x), context, frames) + x
        # [(B T), P, C] -> [(B P), T, C]: attend along frames at every pixel
        bt, p, c = x.shape
        xt = x.unflatten(0, (-1, frames)).transpose(1, 2).reshape(-1, frames, c)
        xt = self.attn_temporal(self.norm_temporal(xt)) + xt
        x = xt.unflatten(0, (-1, p)).transpose(1, 2).reshape(bt, p, c)
        return by_rows(lambda r: self.ff(self.norm3(r)) + r, x)


class VideoTransformer(nn.Module):
    """Temporal conv block, then the spatial transformer per frame (GroupNorm, proj_in, blocks,
    proj_out) with its residual taken after the temporal conv. x [B, C, T, H, W]; context [B, N, D]."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int | None, norm_num_groups: int = 32,
                 use_linear_projection: bool = True, only_cross_attention: bool = False,
                 upcast_attention: bool = False, num_layers: int = 1):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.resblock_temporal = TemporalConvBlock(channels, kernel=3)
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([
            VideoTransformerBlock(channels, heads, channels // heads, cross_attention_dim,
                                  only_cross_attention, upcast_attention) for _ in range(num_layers)])
        if use_linear_projection:
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:  # noqa: D102
        frames = x.shape[2]
        x = to_frames(self.resblock_temporal(x))
        bt, c, h, w = x.shape
        y = self.norm(x)
        if self.use_linear_projection:
            y = self.proj_in(y.permute(0, 2, 3, 1).reshape(bt, h * w, c))
        else:
            y = self.proj_in(y).permute(0, 2, 3, 1).reshape(bt, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, context, frames)
        if self.use_linear_projection:
            y = self.proj_out(y).reshape(bt, h, w, c).permute(0, 3, 1, 2)
        else:
            y = self.proj_out(y.reshape(bt, h, w, c).permute(0, 3, 1, 2))
        return to_video(y + x, frames)


class TemporalModule(nn.Module):
    """The module after every down/mid/up block (official ``TemporalModule3D`` without attention):
    x + shift_conv(spatial_resnet(temporal_conv(x, temb), temb)). ``shift_conv`` starts at zero, so the
    module starts as the identity."""

    def __init__(self, channels: int, temb_channels: int):
        super().__init__()
        self.resblocks_3d_temporal = TemporalConvBlock(channels, kernel=5, temb_channels=temb_channels)
        self.resblocks_3d_spatial = VideoResnet(in_channels=channels, out_channels=channels,
                                                temb_channels=temb_channels, groups=32, eps=1e-6)
        self.shift_conv = InflatedConv(channels, channels, 1)
        with torch.no_grad():
            self.shift_conv.weight.zero_()
            self.shift_conv.bias.zero_()

    def forward(self, x: Tensor, temb: Tensor, w: float = 1.0) -> Tensor:  # noqa: D102
        h = self.resblocks_3d_spatial(self.resblocks_3d_temporal(x, temb), temb)
        return x + self.shift_conv(h) * w


class _NoTemporal(nn.Module):
    def forward(self, x: Tensor, temb: Tensor, w: float = 1.0) -> Tensor:
        return x


class VideoDownBlock(nn.Module):
    """``DownBlock3D`` / ``CrossAttnDownBlock3D``: resnets (+ transformers), optional stride-2 conv."""

    def __init__(self, in_channels, out_channels, temb_channels, num_layers, add_downsample, eps, groups,
                 heads=None, cross_attention_dim=None, use_linear_projection=True, only_cross_attention=False,
                 upcast_attention=False, downsample_padding=1):
        super().__init__()
        self.resnets = nn.ModuleList([
            VideoResnet(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                        temb_channels=temb_channels, eps=eps, groups=groups) for i in range(num_layers)])
        self.attentions = None
        if heads is not None:
            self.attentions = nn.ModuleList([
                VideoTransformer(out_channels, heads, cross_attention_dim, groups, use_linear_projection,
                                 only_cross_attention, upcast_attention) for _ in range(num_layers)])
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                            padding=downsample_padding, name="op")])

    def forward(self, x, temb, context):  # noqa: D102
        skips = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips += (x,)
        if self.downsamplers is not None:
            x = to_video(self.downsamplers[0](to_frames(x)), x.shape[2])
            skips += (x,)
        return x, skips


class VideoMidBlock(nn.Module):
    """``UNetMidBlock3DCrossAttn``: resnet, then (transformer, resnet) pairs."""

    def __init__(self, channels, temb_channels, eps, groups, heads, cross_attention_dim,
                 use_linear_projection=True, upcast_attention=False, output_scale_factor=1.0):
        super().__init__()
        self.resnets = nn.ModuleList([
            VideoResnet(in_channels=channels, out_channels=channels, temb_channels=temb_channels, eps=eps,
                        groups=groups, output_scale_factor=output_scale_factor) for _ in range(2)])
        self.attentions = nn.ModuleList([VideoTransformer(channels, heads, cross_attention_dim, groups,
                                                          use_linear_projection, False, upcast_attention)])

    def forward(self, x, temb, context):  # noqa: D102
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


class VideoUpBlock(nn.Module):
    """``UpBlock3D`` / ``CrossAttnUpBlock3D``: resnets on cat(x, skip) (+ transformers), optional
    nearest x2 upsampling + conv."""

    def __init__(self, in_channels, out_channels, prev_output_channel, temb_channels, num_layers, add_upsample,
                 eps, groups, heads=None, cross_attention_dim=None, use_linear_projection=True,
                 only_cross_attention=False, upcast_attention=False):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            first = prev_output_channel if i == 0 else out_channels
            resnets.append(VideoResnet(in_channels=first + skip, out_channels=out_channels,
                                       temb_channels=temb_channels, eps=eps, groups=groups))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = None
        if heads is not None:
            self.attentions = nn.ModuleList([
                VideoTransformer(out_channels, heads, cross_attention_dim, groups, use_linear_projection,
                                 only_cross_attention, upcast_attention) for _ in range(num_layers)])
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def forward(self, x, skips, temb, context, upsample_size=None):  # noqa: D102
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = to_video(self.upsamplers[0](to_frames(x), upsample_size), x.shape[2])
        return x


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


class UNetVideoModel(ModelMixin, ConfigMixin):
    """Upscale-A-Video's UNet (config = the official ``unet_video_config.json``).

    ``attention_head_dim`` follows the old diffusers convention of the x4 upscaler: it is the number of
    heads (head width = channels / heads). ``*_temporal_idx`` / ``mid_temporal`` place the temporal
    modules; ``temporal_module_config.attention_block_types`` must be empty (the released model has no
    attention in them).
    """

    @register_to_config
    def __init__(
        self,
        down_temporal_idx: Sequence[int] = (0, 1, 2, 3),
        mid_temporal: bool = True,
        up_temporal_idx: Sequence[int] = (0, 1, 2, 3),
        temporal_module_config: dict | None = None,
        sample_size: int | None = None,
        in_channels: int = 7,
        out_channels: int = 4,
        center_input_sample: bool = False,
        max_noise_level: int = 350,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        attention_head_dim: int | Sequence[int] = 8,
        block_out_channels: Sequence[int] = (256, 512, 512, 1024),
        down_block_types: Sequence[str] = ("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                           "CrossAttnDownBlock3D"),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: Sequence[str] = ("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D",
                                         "UpBlock3D"),
        only_cross_attention: bool | Sequence[bool] = (True, True, True, False),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = 1000,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        use_first_frame: bool = False,
        use_relative_position: bool = False,
    ):
        super().__init__()
        types = (temporal_module_config or {}).get("attention_block_types", ["", ""])
        unsupported = {
            "temporal attention blocks (temporal_module_config.attention_block_types)": any(types),
            "dual_cross_attention": dual_cross_attention,
            "use_first_frame": use_first_frame,
            f"class_embed_type={class_embed_type!r}": class_embed_type is not None,
            f"mid_block_type={mid_block_type!r}": mid_block_type != "UNetMidBlock3DCrossAttn",
            f"resnet_time_scale_shift={resnet_time_scale_shift!r}": resnet_time_scale_shift != "default",
            f"act_fn={act_fn!r}": act_fn not in ("silu", "swish"),
        }
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"UNetVideoModel: unsupported config option(s): {', '.join(bad)} (the released "
                             "Upscale-A-Video UNet uses none of them)")
        n = len(block_out_channels)
        heads = _per_block(attention_head_dim, n)
        only_cross = _per_block(only_cross_attention, n)
        temb = block_out_channels[0] * 4

        self.conv_in = InflatedConv(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb)
        # the x4 upscaler feeds the LR input's noise level as the class label
        self.class_embedding = nn.Embedding(num_class_embeds, temb) if num_class_embeds is not None else None

        self.down_blocks = nn.ModuleList()
        self.down_temp_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            attn = "CrossAttn" in kind
            self.down_blocks.append(VideoDownBlock(
                in_ch, out_ch, temb, layers_per_block, i < n - 1, norm_eps, norm_num_groups,
                heads[i] if attn else None, cross_attention_dim, use_linear_projection, only_cross[i],
                upcast_attention, downsample_padding))
            self.down_temp_blocks.append(TemporalModule(out_ch, temb) if i in down_temporal_idx else _NoTemporal())

        self.mid_block = VideoMidBlock(block_out_channels[-1], temb, norm_eps, norm_num_groups, heads[-1],
                                       cross_attention_dim, use_linear_projection, upcast_attention,
                                       mid_block_scale_factor)
        self.mid_temp_block = TemporalModule(block_out_channels[-1], temb) if mid_temporal else _NoTemporal()

        self.up_blocks = nn.ModuleList()
        self.up_temp_blocks = nn.ModuleList()
        rev, rev_heads, rev_cross = list(reversed(block_out_channels)), list(reversed(heads)), list(reversed(only_cross))
        out_ch = rev[0]
        self.num_upsamplers = 0
        for i, kind in enumerate(up_block_types):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, n - 1)]
            add_up = i < n - 1
            self.num_upsamplers += int(add_up)
            attn = "CrossAttn" in kind
            self.up_blocks.append(VideoUpBlock(
                in_ch, out_ch, prev, temb, layers_per_block + 1, add_up, norm_eps, norm_num_groups,
                rev_heads[i] if attn else None, cross_attention_dim, use_linear_projection, rev_cross[i],
                upcast_attention))
            self.up_temp_blocks.append(TemporalModule(out_ch, temb) if i in up_temporal_idx else _NoTemporal())

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, sample: Tensor, timestep: Tensor | int | float, low_res: Tensor,
                encoder_hidden_states: Tensor | None = None, class_labels: Tensor | int | None = None,
                temporal_weight: float = 1.0) -> Tensor:
        """Predict the model output (v for the released weights) for a clip.

        sample: latents [B, 4, T, h, w]; low_res: noise-augmented LR frames [B, 3, T, h, w] in [-1, 1]
        (concatenated as input channels 4-6); timestep: scalar or [B]; encoder_hidden_states: [B, N, D]
        text embeddings; class_labels: the LR noise level(s), int or [B] (<= ``max_noise_level``);
        temporal_weight: the weight ``w`` of every temporal module's output (1 = the released model).
        Returns [B, out_channels, T, h, w]. T frames attend to each other (the official model was run on
        windows of 8).
        """
        if sample.ndim != 5 or low_res.ndim != 5:
            raise ValueError(f"UNetVideoModel expects [B, C, T, H, W] tensors, got sample {tuple(sample.shape)} "
                             f"and low_res {tuple(low_res.shape)}")
        x = torch.cat([sample, low_res.to(sample.dtype)], dim=1)
        b = x.shape[0]
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        up_factor = 2 ** self.num_upsamplers
        force_size = any(s % up_factor for s in x.shape[-2:])

        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0:
            t = t[None]
        emb = self.time_embedding(self.time_proj(t.expand(b)).to(dtype=self.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels (the LR noise level) is required by this UNet")
            labels = torch.as_tensor(class_labels, device=x.device).long().reshape(-1).expand(b)
            if torch.any(labels > self.config.max_noise_level) or torch.any(labels < 0):
                raise ValueError(f"noise level must be in [0, {self.config.max_noise_level}], got {labels.tolist()}")
            emb = emb + self.class_embedding(labels).to(dtype=self.dtype)

        x = self.conv_in(x)
        skips = (x,)
        for block, temporal in zip(self.down_blocks, self.down_temp_blocks):
            x, res = block(x, emb, encoder_hidden_states)
            skips += res
            x = temporal(x, emb, temporal_weight)  # after the skips were taken: they stay pre-temporal

        x = self.mid_temp_block(self.mid_block(x, emb, encoder_hidden_states), emb, temporal_weight)

        for i, (block, temporal) in enumerate(zip(self.up_blocks, self.up_temp_blocks)):
            k = len(block.resnets)
            res, skips = skips[-k:], skips[:-k]
            size = skips[-1].shape[-2:] if force_size and i < len(self.up_blocks) - 1 else None
            x = temporal(block(x, res, emb, encoder_hidden_states, size), emb, temporal_weight)

        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def temporal_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters that UAV added to the x4 UNet (everything the 2-D UNet lacks)."""
    marks = ("resblock_temporal.", "attn_temporal.", "norm_temporal.", "_temp_block")
    return [n for n, _ in module.named_parameters() if any(m in n for m in marks)]


def zero_temporal_(unet: UNetVideoModel) -> UNetVideoModel:
    """Make every temporal layer the identity by zeroing the last layer of each temporal residual branch
    (``resblock_temporal.conv2``, ``attn_temporal.to_out.0``, ``shift_conv``; weights and biases). The
    official initialisation zeroes only ``to_out.0.weight`` and ``shift_conv``; this goes further so
    that the UNet reduces exactly to the spatial x4 UNet (used by tests). Returns ``unet``."""
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, VideoTransformer):
                m.resblock_temporal.conv2.weight.zero_()
                m.resblock_temporal.conv2.bias.zero_()
            elif isinstance(m, TemporalAttention):
                m.to_out[0].weight.zero_()
                m.to_out[0].bias.zero_()
            elif isinstance(m, TemporalModule):
                m.shift_conv.weight.zero_()
                m.shift_conv.bias.zero_()
    return unet
