"""RAFT-large optical flow (Teed & Deng, ECCV 2020), our own implementation, and its flow engine.

The parameter names are those of the original princeton-vl release (``raft-things.pth`` without its
DataParallel ``module.`` prefix), so that file loads with ``strict=True`` after one prefix strip;
torchvision's ``raft_large`` layout is remapped by ``vsr_core.loaders.raft``.

What the two official implementations share, and we reproduce, bit for bit where torch allows:

* feature encoder ``fnet`` (instance norm, 256 ch) and context encoder ``cnet`` (batch norm, split into
  a tanh hidden state and a relu context), both at 1/8 resolution;
* all-pairs correlation divided by sqrt(C), a 4-level pyramid built by 2x2 average pooling of the
  *second* frame's axes (floor sizes), looked up in a (2r+1)^2 window with bilinear sampling, zero
  padding and the ``align_corners=True`` pixel convention (x / (W - 1));
* the window order of both codes: channel ``i*(2r+1) + j`` holds x offset ``i - r`` and y offset
  ``j - r`` (x-major), which the trained weights depend on;
* a separable ConvGRU (1x5 then 5x1), flow head, the upsampling mask scaled by 0.25, and the 8x convex
  upsampling over the 3x3 neighbourhood at 1/8 resolution.

What differs between the layouts is not numerical: princeton's ``forward`` maps [0, 255] to [-1, 1]
itself (Upscale-A-Video and MGLD comment that line out; torchvision never does it), which is
``RAFTConfig.normalize_input``; princeton can run its encoders and update block under fp16 autocast
with the correlation in fp32 (``mixed_precision``); and princeton registers each stride-2 block's
downsample norm twice (``norm3`` and ``downsample.1``), which the remap handles.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RAFTConfig",
    "RAFT_LARGE",
    "RAFT_TINY",
    "RAFT",
    "RAFTEngine",
    "RAFT_PRESETS",
    "INPUT_RANGES",
    "PAD_MODES",
]

# Fixed by the architecture: features live at 1/8 resolution (three stride-2 stages) and the convex
# upsampler predicts 8*8 sub-pixel weights over 9 neighbours (RAFT §3.3).
DOWNSAMPLE = 8
UPSAMPLE_NEIGHBOURS = 9


@dataclass(frozen=True)
class RAFTConfig:
    """Sizes of a RAFT model (the defaults are RAFT-large, "raft-things" / torchvision ``raft_large``).

    encoder_dims: channels of the encoders' stem, layer1, layer2, layer3 (layer2/3 have stride 2).
    feature_dim: fnet output channels. hidden_dim / context_dim: the two parts of the cnet output.
    corr_levels / corr_radius: pyramid depth and lookup radius (RAFT §3.2: 4 levels, r = 4).
    motion_corr_dims / motion_flow_dims / motion_dim: the motion encoder (its output includes the 2
    flow channels). flow_head_dim, mask_dim: hidden widths of the flow head and the mask predictor.
    mask_scale: 0.25, the official code's factor on the upsampling mask logits ("to balance gradients").
    normalize_input: apply princeton's ``2 * (x / 255) - 1`` inside ``forward`` (off in UAV, MGLD and
    torchvision; the engine scales its input instead).
    iters: default number of GRU updates when ``forward`` is not told.
    """

    encoder_dims: tuple[int, int, int, int] = (64, 64, 96, 128)
    feature_dim: int = 256
    hidden_dim: int = 128
    context_dim: int = 128
    corr_levels: int = 4
    corr_radius: int = 4
    motion_corr_dims: tuple[int, int] = (256, 192)
    motion_flow_dims: tuple[int, int] = (128, 64)
    motion_dim: int = 128
    flow_head_dim: int = 256
    mask_dim: int = 256
    mask_scale: float = 0.25
    normalize_input: bool = False
    iters: int = 12

    @property
    def corr_channels(self) -> int:
        return self.corr_levels * (2 * self.corr_radius + 1) ** 2

    @property
    def min_size(self) -> int:
        """Smallest input side (px) for which every pyramid level has at least 2 px.

        With a 1-px level the official lookup divides by (W - 1) = 0 and returns NaN, so below this
        size the engine pads (the official code would give NaN flows).
        """
        return DOWNSAMPLE * 2 ** self.corr_levels

    def to_dict(self) -> dict:
        return asdict(self)


RAFT_LARGE = RAFTConfig()
# A few channels everywhere: same structure and key set as RAFT-large, loads in milliseconds; for tests
# and the smoke model set.
RAFT_TINY = RAFTConfig(
    encoder_dims=(8, 8, 12, 16),
    feature_dim=16,
    hidden_dim=8,
    context_dim=8,
    corr_levels=4,
    corr_radius=2,
    motion_corr_dims=(16, 12),
    motion_flow_dims=(8, 8),
    motion_dim=16,
    flow_head_dim=16,
    mask_dim=16,
)


# --------------------------------------------------------------------------------------------- encoders
def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        # affine=False, no running stats: no state-dict entries, as in both official encoders.
        return nn.InstanceNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 conv-norm-relu layers plus a skip (a 1x1 conv-norm when the block strides).

    The stride-2 skip norm is reachable as ``norm3`` and as ``downsample.1`` (one module, two
    state-dict names), as in ``raft-things.pth``.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm1 = _norm(norm, out_ch)
        self.norm2 = _norm(norm, out_ch)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1:
            self.downsample = None
        else:
            self.norm3 = _norm(norm, out_ch)
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), self.norm3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BasicEncoder(nn.Module):
    """7x7/2 stem, three stages of two residual blocks (strides 1, 2, 2), 1x1 projection: 1/8 resolution."""

    def __init__(self, dims: tuple[int, int, int, int], out_dim: int, norm: str):
        super().__init__()
        stem, d1, d2, d3 = dims
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, stem)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(stem, d1, norm, 1), ResidualBlock(d1, d1, norm, 1))
        self.layer2 = nn.Sequential(ResidualBlock(d1, d2, norm, 2), ResidualBlock(d2, d2, norm, 1))
        self.layer3 = nn.Sequential(ResidualBlock(d2, d3, norm, 2), ResidualBlock(d3, d3, norm, 1))
        self.conv2 = nn.Conv2d(d3, out_dim, 1)
        # The official init (kaiming fan_out), so that a random-weight model behaves like an untrained one.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


# --------------------------------------------------------------------------------------- update block
class BasicMotionEncoder(nn.Module):
    """Encodes the correlation features and the current flow; appends the raw flow (2 channels)."""

    def __init__(self, cfg: RAFTConfig):
        super().__init__()
        c1, c2 = cfg.motion_corr_dims
        f1, f2 = cfg.motion_flow_dims
        self.convc1 = nn.Conv2d(cfg.corr_channels, c1, 1)
        self.convc2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, f1, 7, padding=3)
        self.convf2 = nn.Conv2d(f1, f2, 3, padding=1)
        self.conv = nn.Conv2d(c2 + f2, cfg.motion_dim - 2, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], dim=1))), flow], dim=1)


class SepConvGRU(nn.Module):
    """ConvGRU run twice: with 1x5 kernels (horizontal), then with 5x1 kernels (vertical)."""

    def __init__(self, hidden_dim: int, input_dim: int):
        super().__init__()
        ch = hidden_dim + input_dim
        for suffix, k, p in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in ("z", "r", "q"):
                setattr(self, f"conv{gate}{suffix}", nn.Conv2d(ch, hidden_dim, k, padding=p))

    @staticmethod
    def _step(h: Tensor, x: Tensor, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    """Two 3x3 convs from the hidden state to a 2-channel flow update."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class BasicUpdateBlock(nn.Module):
    """One RAFT iteration: motion encoder -> SepConvGRU -> (flow update, upsampling mask logits)."""

    def __init__(self, cfg: RAFTConfig):
        super().__init__()
        self.mask_scale = cfg.mask_scale
        self.encoder = BasicMotionEncoder(cfg)
        self.gru = SepConvGRU(cfg.hidden_dim, cfg.context_dim + cfg.motion_dim)
        self.flow_head = FlowHead(cfg.hidden_dim, cfg.flow_head_dim)
        self.mask = nn.Sequential(
            nn.Conv2d(cfg.hidden_dim, cfg.mask_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.mask_dim, DOWNSAMPLE * DOWNSAMPLE * UPSAMPLE_NEIGHBOURS, 1),
        )

    def forward(
        self, net: Tensor, inp: Tensor, corr: Tensor, flow: Tensor, with_mask: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        delta = self.flow_head(net)
        # The mask only matters when a flow is upsampled; skipping it on the other iterations
        # changes nothing in the result.
        mask = self.mask_scale * self.mask(net) if with_mask else None
        return net, mask, delta


# ---------------------------------------------------------------------------------------- correlation
def _pixel_grid(n: int, h: int, w: int, device) -> Tensor:
    """``[N, 2, h, w]`` float32 pixel coordinates, channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=0)[None].expand(n, 2, h, w).contiguous()


class CorrPyramid:
    """All-pairs correlation of two feature maps and its lookup (RAFT §3.2).

    fmap1, fmap2: ``[N, C, h, w]`` (computed in float32). Level l pools frame 2's axes by 2^l.
    ``lookup(coords)`` takes ``[N, 2, h, w]`` pixel positions in frame 2 and returns
    ``[N, levels * (2r+1)^2, h, w]``.
    """

    def __init__(self, fmap1: Tensor, fmap2: Tensor, levels: int, radius: int):
        n, c, h, w = fmap1.shape
        self.levels, self.radius = levels, radius
        corr = torch.matmul(fmap1.reshape(n, c, h * w).transpose(1, 2), fmap2.reshape(n, c, h * w))
        # Both official codes divide by sqrt(C) (a float32 scalar); not in the paper's Eq. 1.
        corr = corr / torch.sqrt(torch.tensor(float(c), device=corr.device))
        corr = corr.reshape(n * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)
        side = 2 * radius + 1
        offs = torch.linspace(-radius, radius, side, device=corr.device)
        # Last axis is (x, y); x varies along the first window axis, y along the second: the order
        # of both official codes, which the motion encoder's weights were trained on.
        self.window = torch.stack(torch.meshgrid(offs, offs, indexing="ij"), dim=-1).view(1, side, side, 2)

    def lookup(self, coords: Tensor) -> Tensor:
        n, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for level, corr in enumerate(self.pyramid):
            pts = centre / 2 ** level + self.window
            lh, lw = corr.shape[-2:]
            gx, gy = pts.split(1, dim=-1)
            grid = torch.cat([2 * gx / (lw - 1) - 1, 2 * gy / (lh - 1) - 1], dim=-1)
            sampled = F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out.append(sampled.view(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()


def convex_upsample(flow: Tensor, mask: Tensor) -> Tensor:
    """8x upsampling of a 1/8-res flow as a convex combination of its 3x3 neighbours (RAFT §3.3).

    flow: ``[N, 2, h, w]`` in 1/8-res pixels; mask: ``[N, 8*8*9, h, w]`` logits (softmax over the 9).
    Returns ``[N, 2, 8h, 8w]`` in full-res pixels.
    """
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, UPSAMPLE_NEIGHBOURS, DOWNSAMPLE, DOWNSAMPLE, h, w), dim=2)
    patches = F.unfold(DOWNSAMPLE * flow, [3, 3], padding=1).view(n, 2, UPSAMPLE_NEIGHBOURS, 1, 1, h, w)
    up = (weights * patches).sum(dim=2)  # [N, 2, 8, 8, h, w]: sub-row, sub-col, row, col
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, DOWNSAMPLE * h, DOWNSAMPLE * w)


# --------------------------------------------------------------------------------------------- model
class RAFT(nn.Module):
    """RAFT optical flow network; attribute names = ``raft-things.pth`` keys (without ``module.``).

    ``forward(image1, image2)`` returns the flow from image1 to image2 (``image1(p) ≈ image2(p + flow)``),
    ``[N, 2, H, W]`` float32 in pixels, channel 0 = dx. Inputs are ``[N, 3, H, W]`` already in the
    network's range (``[-1, 1]`` for the released weights unless ``cfg.normalize_input``), H and W
    multiples of 8 and at least ``cfg.min_size``. Use ``RAFTEngine`` for arbitrary frames in [0, 1].
    """

    def __init__(self, config: RAFTConfig = RAFT_LARGE):
        super().__init__()
        self.config = config
        self.fnet = BasicEncoder(config.encoder_dims, config.feature_dim, "instance")
        self.cnet = BasicEncoder(config.encoder_dims, config.hidden_dim + config.context_dim, "batch")
        self.update_block = BasicUpdateBlock(config)

    def _check_inputs(self, image1: Tensor, image2: Tensor) -> None:
        if image1.dim() != 4 or image1.shape[1] != 3:
            raise ValueError(f"RAFT expects images [N, 3, H, W], got {tuple(image1.shape)}")
        if image1.shape != image2.shape:
            raise ValueError(f"RAFT image shapes differ: {tuple(image1.shape)} vs {tuple(image2.shape)}")
        h, w = image1.shape[-2:]
        if h % DOWNSAMPLE or w % DOWNSAMPLE:
            raise ValueError(
                f"RAFT needs H and W divisible by {DOWNSAMPLE}, got {h}x{w}; pad or resize first "
                "(RAFTEngine does it for you)"
            )
        m = self.config.min_size
        if h < m or w < m:
            raise ValueError(
                f"RAFT with {self.config.corr_levels} correlation levels needs frames of at least {m}x{m} px, "
                f"got {h}x{w} (smaller pyramids give NaN); pad first (RAFTEngine does it for you)"
            )

    def forward(
        self,
        image1: Tensor,
        image2: Tensor,
        iters: int | None = None,
        flow_init: Tensor | None = None,
        mixed_precision: bool = False,
        all_predictions: bool = False,
    ) -> Tensor | list[Tensor]:
        """Flow image1 -> image2, ``[N, 2, H, W]`` float32 (or the list of every iteration's flow).

        iters: GRU updates (default ``config.iters``). flow_init: ``[N, 2, H/8, W/8]`` warm start in
        1/8-res pixels. mixed_precision: fp16 autocast around the encoders and the update block, with the
        correlation kept in float32 (princeton's ``mixed_precision``; meant for CUDA).
        """
        self._check_inputs(image1, image2)
        cfg = self.config
        iters = cfg.iters if iters is None else int(iters)
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        if cfg.normalize_input:
            image1 = 2 * (image1 / 255.0) - 1.0
            image2 = 2 * (image2 / 255.0) - 1.0
        dtype = self.update_block.flow_head.conv2.weight.dtype
        image1 = image1.to(dtype).contiguous()
        image2 = image2.to(dtype).contiguous()
        n = image1.shape[0]
        amp = dict(device_type=image1.device.type, dtype=torch.float16, enabled=bool(mixed_precision))

        with torch.autocast(**amp):
            # One batch through fnet: instance norm is per sample, so this equals two separate passes.
            fmaps = self.fnet(torch.cat([image1, image2], dim=0))
        fmap1, fmap2 = fmaps.float().split(n, dim=0)
        corr = CorrPyramid(fmap1, fmap2, cfg.corr_levels, cfg.corr_radius)

        with torch.autocast(**amp):
            net, inp = self.cnet(image1).split([cfg.hidden_dim, cfg.context_dim], dim=1)
            net, inp = torch.tanh(net), torch.relu(inp)

        _, _, h8, w8 = fmap1.shape
        coords0 = _pixel_grid(n, h8, w8, image1.device)
        coords1 = coords0.clone()
        if flow_init is not None:
            if flow_init.shape != coords0.shape:
                raise ValueError(f"flow_init must be {tuple(coords0.shape)}, got {tuple(flow_init.shape)}")
            coords1 = coords1 + flow_init.to(coords1)

        flows = []
        for it in range(iters):
            coords1 = coords1.detach()
            feats = corr.lookup(coords1)
            flow = coords1 - coords0
            last = it == iters - 1
            with torch.autocast(**amp):
                net, mask, delta = self.update_block(
                    net, inp, feats.to(dtype), flow.to(dtype), with_mask=last or all_predictions
                )
            coords1 = coords1 + delta.float()
            if last or all_predictions:
                flows.append(convex_upsample(coords1 - coords0, mask).float())
        return flows if all_predictions else flows[-1]


# -------------------------------------------------------------------------------------------- engine
INPUT_RANGES = {"-1_1": (2.0, -1.0), "0_1": (1.0, 0.0), "0_255": (255.0, 0.0)}
PAD_MODES = ("replicate", "resize", "none")

# The official call of each method (methods.md §8). MGLD feeds [0, 1] to weights trained on [-1, 1]:
# faithful, and kept.
RAFT_PRESETS = {
    "uav": dict(iters=20, input_range="-1_1", pad_mode="resize", uav_rescale=True),
    "stablevsr": dict(iters=12, input_range="-1_1", pad_mode="none"),
    "mgld": dict(iters=10, input_range="0_1", pad_mode="replicate"),
}


def _ceil_to(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)


def _centred_pad(h: int, w: int, th: int, tw: int) -> list[int]:
    """F.pad amounts (left, right, top, bottom) that centre an h x w frame in th x tw, the extra pixel
    on the right/bottom (RAFT ``InputPadder`` "sintel" mode)."""
    ph, pw = th - h, tw - w
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


@dataclass
class RAFTEngine:
    """Flow engine around a ``RAFT`` model: ``engine(src, dst) -> flow_src_to_dst``.

    src, dst: ``[N, 3, H, W]`` float RGB in [0, 1], any size, any device. Returns ``[N, 2, H, W]``
    float32 pixels on the input's device, ``src(p) ≈ dst(p + flow(p))``.

    iters: GRU updates. input_range: what [0, 1] is scaled to before the network
    (``"-1_1"``: UAV, StableVSR; ``"0_1"``: MGLD; ``"0_255"``: a model with ``normalize_input``).
    pad_mode: how frames reach a multiple of 8 —
      ``"replicate"``: edge-replicate padding centred as RAFT's ``InputPadder`` (MGLD), cropped back;
      ``"resize"``: bilinear resize up to the next multiple of 8 and back, flow rescaled (UAV);
      ``"none"``: sizes must already be multiples of 8 (StableVSR), else ValueError.
    uav_rescale: with ``"resize"``, rescale the flow back as UAV's ``resize_flow_pytorch`` does
    (multiplies spatial rows 0 and 1 by H/H8 and W/W8 instead of the dx/dy channels) — faithful, wrong
    by up to 8/H in dy. Off: dx *= W/W8, dy *= H/H8.
    Frames smaller than ``model.config.min_size`` are additionally replicate-padded to it in every
    mode (the official code would return NaN there).
    device, dtype: where and in which weight dtype the network runs (default: the model's device,
    float32); the model is moved in place. The correlation and the flow stay float32.
    half: fp16 autocast on CUDA (encoders and update block; princeton's ``mixed_precision``); ignored
    with a warning elsewhere.
    """

    model: RAFT
    iters: int = 12
    input_range: str = "-1_1"
    pad_mode: str = "replicate"
    device: torch.device | str | None = None
    dtype: torch.dtype = torch.float32
    half: bool = False
    uav_rescale: bool = False
    name: str = "raft"
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {sorted(INPUT_RANGES)}, got {self.input_range!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if int(self.iters) < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.device is None:
            self.device = next(self.model.parameters()).device
        self.device = torch.device(self.device)
        self.model = self.model.to(self.device, self.dtype).eval()

    @classmethod
    def for_method(cls, model: RAFT, method: str, **overrides) -> "RAFTEngine":
        """An engine with the official settings of ``method`` (``"uav"``, ``"stablevsr"``, ``"mgld"``)."""
        if method not in RAFT_PRESETS:
            raise ValueError(f"method must be one of {sorted(RAFT_PRESETS)}, got {method!r}")
        kw = {**RAFT_PRESETS[method], "name": f"raft-{method}", **overrides}
        return cls(model, **kw)

    def _use_amp(self) -> bool:
        if not self.half:
            return False
        if self.device.type == "cuda":
            return True
        if not self._warned:
            warnings.warn(f"RAFTEngine(half=True) runs in float32 on {self.device.type}: fp16 is CUDA-only here")
            self._warned = True
        return False

    @torch.no_grad()
    def __call__(self, src: Tensor, dst: Tensor) -> Tensor:
        if src.dim() != 4 or src.shape[1] != 3:
            raise ValueError(f"src must be [N, 3, H, W] RGB, got {tuple(src.shape)}")
        if src.shape != dst.shape:
            raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} must have the same shape")
        out_device = src.device
        h, w = src.shape[-2:]
        scale, shift = INPUT_RANGES[self.input_range]
        x = torch.cat([src, dst], dim=0).to(self.device, torch.float32) * scale + shift

        if self.pad_mode == "resize":
            rh, rw = _ceil_to(h, DOWNSAMPLE), _ceil_to(w, DOWNSAMPLE)
            if (rh, rw) != (h, w):
                x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        elif self.pad_mode == "replicate":
            rh, rw = _ceil_to(h, DOWNSAMPLE), _ceil_to(w, DOWNSAMPLE)
        else:
            if h % DOWNSAMPLE or w % DOWNSAMPLE:
                raise ValueError(
                    f"pad_mode='none' needs frame sizes divisible by {DOWNSAMPLE} (as the official StableVSR "
                    f"call), got {h}x{w}; use pad_mode='replicate' or 'resize'"
                )
            rh, rw = h, w
        m = self.model.config.min_size
        pad = _centred_pad(x.shape[-2], x.shape[-1], max(rh, m), max(rw, m))
        if any(pad):
            x = F.pad(x, pad, mode="replicate")

        src_n, dst_n = x.split(src.shape[0], dim=0)
        flow = self.model(src_n, dst_n, iters=int(self.iters), mixed_precision=self._use_amp())
        flow = flow[..., pad[2] : flow.shape[-2] - pad[3], pad[0] : flow.shape[-1] - pad[1]]

        if self.pad_mode == "resize" and (rh, rw) != (h, w):
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            if self.uav_rescale:
                flow[:, :, 0] *= h / rh
                flow[:, :, 1] *= w / rw
            else:
                flow = flow * torch.tensor([w / rw, h / rh], device=flow.device).view(1, 2, 1, 1)
        return flow.float().to(out_device)
