"""The pack's own learned video upscaler: small, multi-frame, fast on a CPU, trained here.

SATeCo's first stage is a transformer video upscaler (two TMSA blocks from VRT + PixelShuffle x4,
SATeCo §3, "video upscaler"). This is a small member of that family sized for a 2-core CPU:

0. ``align`` (config, ``"dis"``): every neighbour of a centre frame is first moved onto the centre
   frame's grid by the whole-pixel part of the optical flow centre -> neighbour from OpenCV's DIS
   (weight-free, on the CPU), and the sub-pixel remainder goes with it as two input channels, so the
   window below looks at the same scene point in every frame however far the camera moved, and knows
   at which sub-pixel phase each frame sampled it. ``"none"`` (files trained before alignment) leaves
   the frames as they are. The phases are only as good as the flow: ``flow_finest_scale=0`` (the
   shipped weights) runs DIS down to full resolution, which halves its error on the held-out clips
   against the medium preset's half-resolution finish (``bench/flow_precision.py``).
1. ``conv_in``: per-frame features (``channels``) of every frame of a centre's (aligned) window.
2. ``attn`` (:class:`TemporalWindowAttention`): for every pixel of the centre frame, attention over a
   ``window x window`` neighbourhood in each of the ``2*radius + 1`` frames of its temporal window
   (VRT's windowed self-attention across frames, with the window shrunk to one query pixel and a
   small spatial neighbourhood). It gathers the neighbours' detail at the spots that match the
   centre frame, which is what flow alignment does in other VSR models, without a flow network.
3. ``fuse``: 1x1 conv of [centre features, attended features]; ``body``: residual blocks at LR.
4. ``heads["x4"]`` / ``heads["x2"]``: conv to ``3*s*s`` channels + PixelShuffle(s), added to the
   bicubic upscale of the centre frame (the network learns the residual).

The temporal receptive field is exactly ``radius`` frames each way, so a long video can be processed in
chunks that carry ``radius`` frames of context on each side and give the same result as one pass. The
flows are computed on whole frames before any spatial tiling (:meth:`VideoUpscaler.align_windows`), and
the network after them is local (:attr:`VideoUpscaler.receptive_radius`), so tiles are exact too.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["VideoUpscalerConfig", "VideoUpscaler", "TemporalWindowAttention", "ALIGN_MODES"]

ALIGN_MODES = ("none", "dis")


@dataclass
class VideoUpscalerConfig:
    channels: int = 32
    attn_channels: int = 16
    heads: int = 2
    radius: int = 2
    window: int = 3
    num_blocks: int = 8
    scales: tuple[int, ...] = (2, 4)
    align: str = "none"  # "dis": neighbours moved by the whole-pixel DIS flow, the sub-pixel phase as input
    flow_preset: str = "medium"  # the DIS preset the weights were trained with
    # the finest pyramid level of that DIS (0: full resolution, twice as precise as medium's own 1 on the
    # held-out clips, ~3x its time); None: the preset's own. Also fixed by the weights' training.
    flow_finest_scale: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.align not in ALIGN_MODES:
            raise ValueError(f"VideoUpscaler align must be one of {ALIGN_MODES}, got {self.align!r}")
        if self.flow_finest_scale is not None and not 0 <= int(self.flow_finest_scale) <= 4:
            raise ValueError(f"VideoUpscaler flow_finest_scale must be None or 0-4, got {self.flow_finest_scale!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VideoUpscalerConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - {"_class_name"})
        if unknown:
            raise ValueError(f"unknown VideoUpscaler config keys {unknown}")
        kw = {k: v for k, v in d.items() if k in names}
        if "scales" in kw:
            kw["scales"] = tuple(int(s) for s in kw["scales"])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["_class_name"] = "VideoUpscaler"
        return d


class TemporalWindowAttention(nn.Module):
    """Attention of each centre-frame pixel over a ``window x window`` patch of each frame of its window.

    Keys and values of all frames are computed once (``to_k``/``to_v``, 1x1); a query (``to_q``) from the
    centre frame scores ``(2r+1) * window^2`` keys per head (scaled dot product), and the
    softmax-weighted values are mixed by ``to_out``. Borders replicate (a pixel at the edge sees copies
    of the edge, not zeros). The projections run as matmuls (:func:`_pointwise`), batch elements in
    groups of :attr:`pixels_per_pass` pixels; neither changes the result.
    """

    def __init__(self, channels: int, attn_channels: int, heads: int, radius: int, window: int):
        super().__init__()
        if attn_channels % heads or channels % heads:
            raise ValueError(f"channels {channels} and attn_channels {attn_channels} must divide by heads {heads}")
        if window % 2 == 0:
            raise ValueError(f"window must be odd, got {window}")
        self.heads, self.radius, self.window = heads, radius, window
        self.to_q = nn.Conv2d(channels, attn_channels, 1)
        self.to_k = nn.Conv2d(channels, attn_channels, 1)
        self.to_v = nn.Conv2d(channels, channels, 1)
        self.to_out = nn.Conv2d(channels, channels, 1)
        self.scale = (attn_channels // heads) ** -0.5

    # Windows attended together: the per-key products stay in the CPU's caches (~3 MB of scores per pass).
    pixels_per_pass = 1 << 16

    def forward(self, feat: Tensor | Sequence[Tensor]) -> Tensor:
        """``feat``: ``[B, N, C, H, W]`` features of consecutive frames, or the ``N`` frames' ``[B, C, H, W]``
        as a sequence -> ``[B, N - 2r, C, H, W]`` (centres). Keys and values are projected frame by frame
        (into one kept buffer inside :meth:`reusing_buffers`)."""
        frames = feat.unbind(1) if isinstance(feat, Tensor) else tuple(feat)
        r, win, hd = self.radius, self.window, self.heads
        n = len(frames)
        b, c, h, w = frames[0].shape
        if n <= 2 * r:
            raise ValueError(f"need more than {2 * r} frames for a temporal window of radius {r}, got {n}")
        hk, hv, p = self.to_k.out_channels // hd, c // hd, win // 2
        # One projection for keys and values: per head, its key channels then its value channels.
        w_kv = torch.cat([self.to_k.weight.view(hd, hk, c), self.to_v.weight.view(hd, hv, c)], 1).view(-1, c)
        b_kv = torch.cat([self.to_k.bias.view(hd, hk), self.to_v.bias.view(hd, hv)], 1).view(-1)
        w_q, b_q = self.to_q.weight.view(-1, c) * self.scale, self.to_q.bias * self.scale
        # A loop over the (frame, offset) pairs of the window reads shifted views of the padded keys and
        # values; unfolding them instead would copy every feature window**2 times (memory-bound, ~10x slower).
        keys = [(j, dy, dx) for j in range(2 * r + 1) for dy in range(win) for dx in range(win)]
        grad = torch.is_grad_enabled()
        out = frames[0].new_empty(b, n - 2 * r, hd, hv, h, w)
        step = max(1, self.pixels_per_pass // (h * w))
        attend = self._attend_train if grad else self._attend
        for b0 in range(0, b, step):
            part = [f[b0:b0 + step] for f in frames]
            m = part[0].shape[0]
            dests = [None] * n if grad else \
                self._work("kv", (n, m, hd * (hk + hv), h + 2 * p, w + 2 * p), part[0]).unbind(0)
            kv = [_pointwise(f, w_kv, b_kv, p, dest).view(m, hd, hk + hv, h + 2 * p, w + 2 * p)
                  for f, dest in zip(part, dests)]
            ks, vs = zip(*(f.split([hk, hv], 2) for f in kv))
            for i in range(n - 2 * r):
                qi = _pointwise(part[r + i], w_q, b_q, 0).view(m, hd, hk, h, w)
                attend(qi, ks[i:i + 2 * r + 1], vs[i:i + 2 * r + 1], keys, out[b0:b0 + step, i])
        return self.to_out(out.view(b * (n - 2 * r), c, h, w)).unflatten(0, (b, n - 2 * r))

    @staticmethod
    def _attend_train(q: Tensor, ks: Sequence[Tensor], vs: Sequence[Tensor], keys, out: Tensor) -> None:
        """Out of place (autograd): ``out`` = the softmax over ``keys`` of ``q . k`` times ``v``."""
        h, w = q.shape[-2:]
        logits = torch.stack([(q * ks[j][..., dy:dy + h, dx:dx + w]).sum(2) for j, dy, dx in keys])
        attn = logits.softmax(0, dtype=torch.float32).to(logits.dtype).unsqueeze(3)  # [keys, m, hd, 1, H, W]
        acc = None
        for k, (j, dy, dx) in enumerate(keys):
            v = vs[j][..., dy:dy + h, dx:dx + w]
            acc = attn[k] * v if acc is None else acc.addcmul(attn[k], v)
        out.copy_(acc)

    def _attend(self, q: Tensor, ks: Sequence[Tensor], vs: Sequence[Tensor], keys, out: Tensor) -> None:
        """The same in place (inference): each key's scores written straight into one float32 buffer (summed
        in float32 whatever the features' dtype), the softmax taken in it, the weighted values summed in
        ``out``, then divided by the softmax's denominator once. No full-size temporary per key."""
        m, hd, hk, h, w = q.shape
        logits = self._work("logits", (len(keys), m, hd, h, w), q, torch.float32)
        prod = self._work("prod", q.shape, q)
        for k, (j, dy, dx) in enumerate(keys):
            torch.sum(torch.mul(q, ks[j][..., dy:dy + h, dx:dx + w], out=prod), 2, dtype=torch.float32, out=logits[k])
        logits.sub_(logits.amax(0)).exp_()  # softmax's numerator; the denominator divides once at the end
        total = logits.sum(0).unsqueeze(2)  # [m, hd, 1, H, W]
        attn = logits.unsqueeze(3)  # [keys, m, hd, 1, H, W]
        for k, (j, dy, dx) in enumerate(keys):
            v = vs[j][..., dy:dy + h, dx:dx + w]
            if k == 0:
                torch.mul(attn[0], v, out=out)
            else:
                out.addcmul_(attn[k], v)
        out.div_(total)

    @contextlib.contextmanager
    def reusing_buffers(self):
        """Within: the attention keeps its work buffers (every frame's padded keys and values, the scores)
        from one call to the next instead of allocating them afresh (~110 MB a call at 320x180, which the C
        heap hands back to the OS and faults in again page by page: ~15 % of the upscaler's time on a
        2-core CPU). Released on exit (of the outermost, when nested). Values are the same either way."""
        if getattr(self, "_work_store", None) is not None:
            yield
            return
        self._work_store = {}
        try:
            yield
        finally:
            self._work_store = None

    def _work(self, name: str, shape, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """An uninitialised ``shape`` buffer on ``like``'s device, in ``dtype`` (default ``like``'s): the one
        kept as ``name`` inside :meth:`reusing_buffers` (remade when its shape or dtype changes), else fresh."""
        dtype = dtype or like.dtype
        store = getattr(self, "_work_store", None)
        buf = None if store is None else store.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype or buf.device != like.device:
            buf = like.new_empty(shape, dtype=dtype)
            if store is not None:
                store[name] = buf
        return buf


def _pointwise(x: Tensor, weight: Tensor, bias: Tensor, pad: int, out: Tensor | None = None) -> Tensor:
    """The 1x1 convolution ``weight`` ``[C', C]`` + ``bias`` of ``x`` ``[M, C, H, W]`` as one matmul, whose
    output is planar (NCHW) in either layout of ``x``, replicate-padded by ``pad`` pixels with the bias
    added in the same pass (into ``out`` when given: ``[M, C', H + 2 pad, W + 2 pad]``, no grad). On a CPU
    the convolutions of a channels-last model return channels-last tensors, on which the attention's
    per-pixel products stride over the channels (~3x slower)."""
    m, _, h, w = x.shape
    y = torch.matmul(weight, x.flatten(2)).view(m, -1, h, w)
    bias = bias.to(y.dtype).view(-1, 1, 1)
    if not pad and out is None:
        return y + bias
    if torch.is_grad_enabled():  # training: F.pad's gradient is one pass, the in-place copies' are not
        return F.pad(y + bias, (pad,) * 4, mode="replicate")
    out = y.new_empty(m, y.shape[1], h + 2 * pad, w + 2 * pad) if out is None else out
    torch.add(y, bias, out=out[:, :, pad:pad + h, pad:pad + w])
    if pad:
        out[:, :, :pad, pad:pad + w] = out[:, :, pad:pad + 1, pad:pad + w]
        out[:, :, pad + h:, pad:pad + w] = out[:, :, pad + h - 1:pad + h, pad:pad + w]
        out[:, :, :, :pad] = out[:, :, :, pad:pad + 1]
        out[:, :, :, pad + w:] = out[:, :, :, pad + w - 1:pad + w]
    return out


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # in place on fresh outputs (same values): no new full-size buffer, whose first touch costs the
        # CPU as much as the sum itself
        return self.conv2(F.leaky_relu(self.conv1(x), 0.1, inplace=True)).add_(x)


class UpscaleHead(nn.Module):
    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), self.scale)


class VideoUpscaler(nn.Module):
    """Low-resolution frames in [0, 1] -> the upscaled centre frames (not clamped)."""

    def __init__(self, config: VideoUpscalerConfig | None = None):
        super().__init__()
        self.config = config = config or VideoUpscalerConfig()
        c = config.channels
        self.conv_in = nn.Conv2d(self.in_channels, c, 3, padding=1)
        self.attn = TemporalWindowAttention(c, config.attn_channels, config.heads, config.radius, config.window)
        self.fuse = nn.Conv2d(2 * c, c, 1)
        self.body = nn.Sequential(*[ResBlock(c) for _ in range(config.num_blocks)])
        self.body_out = nn.Conv2d(c, c, 3, padding=1)
        self.heads = nn.ModuleDict({f"x{s}": UpscaleHead(c, s) for s in config.scales})

    @property
    def radius(self) -> int:
        return self.config.radius

    @property
    def scales(self) -> tuple[int, ...]:
        return self.config.scales

    @property
    def receptive_radius(self) -> int:
        """LR pixels each side that can reach an output pixel: conv_in, attention window, two convs per
        residual block, body_out, the head, and bicubic's 2-pixel support. Tiles with this much context
        reassemble exactly."""
        return 1 + self.config.window // 2 + 2 * self.config.num_blocks + 1 + 1 + 2

    def _flow_engine(self):
        if getattr(self, "_dis", None) is None:
            from ..flow import DISEngine

            fs = self.config.flow_finest_scale
            self._dis = DISEngine(self.config.flow_preset, **({} if fs is None else {"finest_scale": int(fs)}))
        return self._dis

    @property
    def in_channels(self) -> int:
        """Channels of one frame of an aligned window: RGB, plus the sub-pixel phase (dx, dy) with DIS."""
        return 5 if self.config.align == "dis" else 3

    def align_windows(self, frames: Tensor) -> Tensor:
        """``[B, N, 3, H, W]`` consecutive frames -> ``[B, N - 2r, 2r + 1, C, H, W]``: the window of every
        centre frame (centre at index ``r``).

        ``align="none"``: the frames as they are (``C = 3``). ``align="dis"`` (``C = 5``): with the flow
        ``f`` centre -> neighbour (DIS on whole frames), each neighbour pixel is moved by the whole-pixel
        part ``round(f)`` (its samples kept exactly, edges replicated) and the remainder ``f - round(f)``
        (in [-0.5, 0.5], the sub-pixel phase of those samples) rides along as two more channels (zero for
        the centre frame). Interpolating the neighbours instead would smooth away the aliasing that
        carries the detail each frame sees differently; this way the network gets the samples and where
        they sit.
        """
        r = self.radius
        b, n = frames.shape[:2]
        if n <= 2 * r:
            raise ValueError(f"need more than {2 * r} frames for a temporal window of radius {r}, got {n}")
        windows = frames.unfold(1, 2 * r + 1, 1).permute(0, 1, 5, 2, 3, 4)  # [B, N - 2r, 2r + 1, 3, H, W]
        if self.config.align == "none":
            return windows
        from ..flow.warp import warp

        h, w = frames.shape[-2:]
        out = frames.new_zeros(b, n - 2 * r, 2 * r + 1, 5, h, w)
        out[:, :, :, :3] = windows
        centres = frames[:, r:n - r].flatten(0, 1)
        engine = self._flow_engine()
        for j in (*range(r), *range(r + 1, 2 * r + 1)):
            neighbour = windows[:, :, j].flatten(0, 1)
            flow = engine(centres.float(), neighbour.float()).to(frames.device)  # float32: phases of long moves
            whole = flow.round()
            moved = warp(neighbour, whole, mode="nearest", padding_mode="border", align_corners=False)
            out[:, :, j, :3] = moved.unflatten(0, (b, n - 2 * r))
            out[:, :, j, 3:] = (flow - whole).unflatten(0, (b, n - 2 * r))
        return out

    def upscale_windows(self, windows: Tensor, scale: int = 4, autocast: torch.dtype | None = None) -> Tensor:
        """``[M, 2r + 1, C, H, W]`` (aligned) windows -> ``[M, 3, sH, sW]``: the network after alignment.
        Local: an output pixel depends on LR pixels within :attr:`receptive_radius` of it.

        ``autocast`` (e.g. ``torch.bfloat16``): the network runs under ``torch.autocast`` in that dtype,
        while the bicubic base and the sum stay in the windows' dtype (the residual is small, so its
        rounding is too). None leaves the caller's autocast state as it is."""
        if f"x{scale}" not in self.heads:
            raise ValueError(f"this upscaler has no x{scale} head (it has {list(self.config.scales)})")
        r = self.radius
        region = torch.autocast(windows.device.type, autocast) if autocast is not None else contextlib.nullcontext()
        with region:
            # frame by frame: no buffer holds all 2r + 1 frames' features (see TemporalWindowAttention.forward)
            feat = [F.leaky_relu(self.conv_in(f), 0.1, inplace=True) for f in windows.unbind(1)]
            x = self.fuse(torch.cat([feat[r], self.attn(feat)[:, 0]], 1))
            x = self.body_out(self.body(x)).add_(x)
            residual = self.heads[f"x{scale}"](x)
        base = F.interpolate(windows[:, r, :3], scale_factor=scale, mode="bicubic", align_corners=False)
        return base.add_(residual.to(base.dtype))

    def forward(self, frames: Tensor, scale: int = 4) -> Tensor:
        """``frames``: ``[B, N, 3, H, W]`` (or ``[N, 3, H, W]``) -> ``[B, N - 2r, 3, sH, sW]`` (or unbatched)."""
        if f"x{scale}" not in self.heads:
            raise ValueError(f"this upscaler has no x{scale} head (it has {list(self.config.scales)})")
        unbatched = frames.dim() == 4
        if unbatched:
            frames = frames.unsqueeze(0)
        windows = self.align_windows(frames)
        b, m = windows.shape[:2]
        out = self.upscale_windows(windows.flatten(0, 1), scale).unflatten(0, (b, m))
        return out[0] if unbatched else out
