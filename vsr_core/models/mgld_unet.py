"""MGLD's denoising UNet and its time-aware structure encoder (spec §4.1-4.2).

The UNet is the SD 2.1 LDM UNet with two changes: every residual block ends with a SPADE layer driven by
the structure encoder's features (StableSR), and the middle block gains a temporal convolution and a
temporal attention over the frames of a segment. Attribute names are the official checkpoint keys
(``model.diffusion_model.*`` and ``structcond_stage_model.*`` once the prefixes are stripped), so the
official Lightning state dicts load with ``strict=True`` and no remap.

Frames travel in the batch dimension: ``(b·t, C, H, W)`` with ``t = num_frames`` consecutive frames
per clip, as in the official code.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GroupNorm32",
    "timestep_embedding",
    "SPADE",
    "ResBlock",
    "SpatialTemporalConv",
    "TemporalAttention",
    "AttentionBlock",
    "MGLDUNet",
    "StructEncoder",
    "frames_to_clips",
]


class GroupNorm32(nn.GroupNorm):
    """LDM ``normalization``: GroupNorm(32) computed in float32 and cast back, so fp16 runs normalise
    like the fp32 reference."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] of timesteps [N], LDM order: cos half first, then sin (diffusers'
    ``flip_sin_to_cos=True, downscale_freq_shift=0``). Always float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      / half)
    args = timesteps.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def frames_to_clips(bt: int, num_frames: int, what: str) -> int:
    """Number of clips b in a batch of ``bt = b·num_frames`` frames; a clear error otherwise."""
    if num_frames < 1 or bt % num_frames:
        raise ValueError(f"{what}: a batch of {bt} frames is not a whole number of {num_frames}-frame clips "
                         f"(frames are stacked in the batch as (clips·frames)); pass num_frames=")
    return bt // num_frames


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (StableSR's structure injection, spec §4.2a).

    ``out = GN(x)·(1 + γ) + β`` with ``γ, β = Conv3×3(ReLU(Conv3×3(seg)))`` and ``seg`` the structure
    feature whose width equals x's width. The hidden width 128 is fixed in the official code.
    """

    hidden = 128

    def __init__(self, norm_nc: int, label_nc: int):
        super().__init__()
        self.param_free_norm = GroupNorm32(norm_nc)  # affine despite the name (the checkpoints carry its weights)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, self.hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(self.hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(self.hidden, norm_nc, 3, padding=1)

    def forward(self, x: Tensor, struct_cond: Mapping[str, Tensor]) -> Tensor:
        key = str(x.shape[-1])
        if key not in struct_cond:
            raise KeyError(f"SPADE: no structure feature of width {key} (have {sorted(struct_cond, key=int)})")
        actv = self.mlp_shared(struct_cond[key].to(x.dtype))
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class ResBlock(nn.Module):
    """LDM ``ResBlock``; with ``semb_channels`` it is MGLD's ``ResBlockDual`` (SPADE after ``out_layers``).

    x: [N, C, H, W]; emb: [N or 1, emb_channels]; struct_cond: width-keyed features (ResBlockDual only).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 semb_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        if semb_channels is not None:
            self.spade = SPADE(out_channels, semb_channels)
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor, struct_cond: Mapping[str, Tensor] | None = None) -> Tensor:
        h = self.in_layers(x)
        h = self.out_layers(h + self.emb_layers(emb).to(h.dtype)[..., None, None])
        if hasattr(self, "spade"):
            if struct_cond is None:
                raise ValueError("MGLD UNet: struct_cond (the structure encoder's features) is required")
            h = self.spade(h, struct_cond)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SpatialTemporalConv(nn.Module):
    """``α·Conv3d_(3,1,1)(x) + (1−α)·x`` over the frames of each clip (spec §4.2b), α learned
    (``temporal_alpha``). x: [(b·t), C, H, W] with t = num_frames."""

    def __init__(self, channels: int, num_frames: int = 5, by_frame: bool = False):
        super().__init__()
        self.num_frames = num_frames
        self.by_frame = by_frame
        self.temporal_conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.temporal_alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor, num_frames: int | None = None) -> Tensor:
        t = num_frames or self.num_frames
        bt, c, h, w = x.shape
        b = frames_to_clips(bt, t, "SpatialTemporalConv")
        if self.by_frame and not torch.is_grad_enabled():
            return self._by_frame(x, b, t)
        res = self.temporal_conv(x.reshape(b, t, c, h, w).transpose(1, 2)).transpose(1, 2).reshape(bt, c, h, w)
        return self.temporal_alpha * res + (1 - self.temporal_alpha) * x

    def _by_frame(self, x: Tensor, b: int, t: int) -> Tensor:
        """The same equation one output frame at a time: the (3, 1, 1) kernel is one 1x1 convolution of the
        previous, same and next frame stacked along the channels (frames beyond the clip are left out:
        the Conv3d's zero padding), accumulated and rounded once as in the Conv3d. Only the output and one
        frame's temporaries exist beside the input (the Conv3d path holds four full-size copies)."""
        a, bias = self.temporal_alpha, self.temporal_conv.bias
        k = self.temporal_conv.weight[:, :, :, 0, 0]  # [C_out, C_in, 3 taps: previous, same, next]
        weights = {}
        out = torch.empty_like(x)
        for clip in range(b):
            for i in range(t):
                f = clip * t + i
                lo, hi = (0 if i > 0 else 1), (3 if i < t - 1 else 2)  # the taps that see a frame of the clip
                if (lo, hi) not in weights:
                    weights[lo, hi] = k[:, :, lo:hi].permute(0, 2, 1).reshape(k.shape[0], -1, 1, 1)
                taps = x[f - 1 + lo:f - 1 + hi].reshape(1, -1, *x.shape[2:])
                res = F.conv2d(taps, weights[lo, hi], bias)
                out[f:f + 1] = a * res + (1 - a) * x[f:f + 1]
        return out


class _SelfAttention(nn.Module):
    """Multi-head self-attention with LDM key names (``to_q/k/v`` without bias, ``to_out.0``)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        q, k, v = (p(x).reshape(n, length, self.heads, -1).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class TemporalAttention(nn.Module):
    """Self-attention along time at every pixel, blended as ``α·attn + (1−α)·x`` (spec §4.2b).
    No positional encoding. x: [(b·t), C, H, W]."""

    def __init__(self, channels: int, num_heads: int, dim_head: int, num_frames: int = 5):
        super().__init__()
        self.num_frames = num_frames
        self.temporal_attn = _SelfAttention(channels, num_heads, dim_head)
        self.norm = nn.LayerNorm(channels)
        self.temporal_alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor, num_frames: int | None = None) -> Tensor:
        t = num_frames or self.num_frames
        bt, c, h, w = x.shape
        b = frames_to_clips(bt, t, "TemporalAttention")
        seq = x.reshape(b, t, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, t, c)
        res = self.temporal_attn(self.norm(seq))
        res = res.reshape(b, h * w, t, c).permute(0, 2, 3, 1).reshape(bt, c, h, w)
        return self.temporal_alpha * res + (1 - self.temporal_alpha) * x


class AttentionBlock(nn.Module):
    """LDM ``AttentionBlock`` (the structure encoder's): 1-D conv ``qkv`` with the legacy head-major
    packing ``[heads × (q, k, v) × ch]``, ``proj_out``, residual."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        # [b, heads, 3 * ch, L] -> q, k, v as contiguous [b, heads, L, ch]: the layout SDPA's fused kernels
        # take (3-D or strided inputs fall back to the math path, which builds the whole L x L score matrix)
        qkv = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, length).transpose(2, 3)
        q, k, v = (t.contiguous() for t in qkv.chunk(3, dim=3))
        a = F.scaled_dot_product_attention(q, k, v)
        h = self.proj_out(a.transpose(2, 3).reshape(b, c, length))
        return (flat + h).reshape(b, c, *spatial)


def _transformer(channels: int, heads: int, dim_head: int, depth: int, context_dim: int, linear: bool) -> nn.Module:
    """LDM ``SpatialTransformerV2`` = diffusers ``Transformer2DModel`` (same keys: norm, proj_in,
    transformer_blocks.N.{attn1,attn2,ff,norm1-3}, proj_out; GroupNorm eps 1e-6, GEGLU)."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return Transformer2DModel(num_attention_heads=heads, attention_head_dim=dim_head, in_channels=channels,
                              num_layers=depth, cross_attention_dim=context_dim, use_linear_projection=linear,
                              norm_num_groups=32)


class _Block(nn.ModuleList):
    """LDM ``TimestepEmbedSequential``: runs its layers in order, giving each the inputs it takes."""

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None = None,
                struct_cond: Mapping[str, Tensor] | None = None, num_frames: int | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, struct_cond)
            elif isinstance(layer, (SpatialTemporalConv, TemporalAttention)):
                h = layer(h, num_frames)
            elif isinstance(layer, (nn.Conv2d, Downsample, Upsample, AttentionBlock)):
                h = layer(h)
            else:  # the spatial transformer
                h = layer(h, encoder_hidden_states=context, return_dict=False)[0]
        return h


def _heads(ch: int, num_heads: int, num_head_channels: int) -> tuple[int, int]:
    if num_head_channels == -1:
        return num_heads, ch // num_heads
    return ch // num_head_channels, num_head_channels


class _Configured(nn.Module):
    """``from_config(dict)`` construction (what ``loaders.diffusion.build_strict`` calls)."""

    config: dict

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        return cls(**dict(config))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class MGLDUNet(_Configured):
    """MGLD's ``InflatedUNetModelDualcondV2`` (eps-prediction, spec §4.1-4.2).

    Config (the official ``unet_config.params`` names): in_channels, out_channels, model_channels,
    channel_mult, num_res_blocks, attention_resolutions, num_head_channels (or num_heads), context_dim,
    semb_channels (structure feature width), transformer_depth, use_linear_in_transformer, num_frames.
    SD 2.1 sizes are in ``vsr_core/configs/mgld/unet.json``.

    forward(x [(b·t),4,h,w], timesteps [1 or b·t] (original 0..999 indices), context [1 or b·t, L, D],
    struct_cond {str(width): [(b·t), semb, h', w']}, num_frames=None (config)) -> eps [(b·t),4,h,w].
    A batch-1 context is repeated over the batch (the official attention repeat-interleaves it).
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 4, model_channels: int = 320,
                 channel_mult=(1, 2, 4, 4), num_res_blocks: int = 2, attention_resolutions=(4, 2, 1),
                 num_head_channels: int = 64, num_heads: int = -1, context_dim: int = 1024,
                 semb_channels: int = 256, transformer_depth: int = 1, use_linear_in_transformer: bool = True,
                 num_frames: int = 5, dropout: float = 0.0):
        super().__init__()
        self.config = dict(in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
                           channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                           attention_resolutions=list(attention_resolutions), num_head_channels=num_head_channels,
                           num_heads=num_heads, context_dim=context_dim, semb_channels=semb_channels,
                           transformer_depth=transformer_depth,
                           use_linear_in_transformer=use_linear_in_transformer, num_frames=num_frames,
                           dropout=dropout)
        self.model_channels = model_channels
        self.num_frames = num_frames
        temb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, temb), nn.SiLU(), nn.Linear(temb, temb))

        def res(cin, cout=None):
            return ResBlock(cin, temb, cout, semb_channels=semb_channels, dropout=dropout)

        def attn(ch):
            heads, dim_head = _heads(ch, num_heads, num_head_channels)
            return _transformer(ch, heads, dim_head, transformer_depth, context_dim, use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([_Block([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(_Block(layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Block([Downsample(ch)]))
                chans.append(ch)
                ds *= 2
        heads, dim_head = _heads(ch, num_heads, num_head_channels)
        # middle_block.{0..5}: the temporal layers sit between the standard LDM ResBlock/attention/ResBlock
        self.middle_block = _Block([
            res(ch), SpatialTemporalConv(ch, num_frames), attn(ch),
            TemporalAttention(ch, heads, dim_head, num_frames), res(ch), SpatialTemporalConv(ch, num_frames),
        ])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_Block(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor, struct_cond: Mapping[str, Tensor],
                num_frames: int | None = None) -> Tensor:
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        context = context.to(x.dtype)
        if context.shape[0] != x.shape[0]:
            context = torch.repeat_interleave(context, x.shape[0] // context.shape[0], dim=0)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context, struct_cond, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, struct_cond, num_frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, struct_cond, num_frames)
        return self.out(h)


class StructEncoder(_Configured):
    """MGLD's time-aware structure encoder ``InflatedEncoderUNetModelWT`` (StableSR's, spec §4.1).

    Config: in_channels, model_channels, out_channels (= the UNet's semb_channels), num_res_blocks,
    attention_resolutions, channel_mult, num_heads, num_head_channels.

    forward(lr_latent [N,4,h,w] (the clean, scaled LR latent), timesteps [1 or N]) ->
    {str(width): [N, out_channels, h', w']}: the features just before each downsample and after the middle
    block, each through its ``fea_tran`` ResBlock, keyed by width (SPADE looks them up by the width of the
    activation it modulates).
    """

    def __init__(self, in_channels: int = 4, model_channels: int = 256, out_channels: int = 256,
                 num_res_blocks: int = 2, attention_resolutions=(4, 2, 1), channel_mult=(1, 1, 2, 2),
                 num_heads: int = 4, num_head_channels: int = -1, dropout: float = 0.0):
        super().__init__()
        self.config = dict(in_channels=in_channels, model_channels=model_channels, out_channels=out_channels,
                           num_res_blocks=num_res_blocks, attention_resolutions=list(attention_resolutions),
                           channel_mult=list(channel_mult), num_heads=num_heads,
                           num_head_channels=num_head_channels, dropout=dropout)
        self.model_channels = model_channels
        temb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.input_blocks = nn.ModuleList([_Block([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        feature_chans, ch, ds = [], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, temb, mult * model_channels, dropout=dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads, num_head_channels))
                self.input_blocks.append(_Block(layers))
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Block([Downsample(ch)]))
                feature_chans.append(ch)
                ds *= 2
        self.middle_block = _Block([ResBlock(ch, temb, dropout=dropout), AttentionBlock(ch, num_heads, num_head_channels),
                                    ResBlock(ch, temb, dropout=dropout)])
        feature_chans.append(ch)
        self.fea_tran = nn.ModuleList([ResBlock(c, temb, out_channels, dropout=dropout) for c in feature_chans])

    def forward(self, x: Tensor, timesteps: Tensor) -> dict[str, Tensor]:
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        feats, h = [], x
        for block in self.input_blocks:
            new = block(h, emb)
            if new.shape[-1] != h.shape[-1]:
                feats.append(h)
            h = new
        feats.append(self.middle_block(h, emb))
        return {str(f.shape[-1]): tran(f, emb) for f, tran in zip(feats, self.fea_tran)}
