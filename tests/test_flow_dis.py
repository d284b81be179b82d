"""The weight-free DIS engine on synthetic frames with known motion.

End-point errors (EPE, mean px) measured when these tests were written, preset "medium", 96x128 frames
(80x112 for the object scene), 8 px frame border excluded (content there enters or leaves the frame):
integer shift 0.016, sub-pixel shift 0.07, 9 px shift 0.03, 3 deg rotation 0.07, moving square: static
background 0.07-0.10, square core 0.25-0.38. Thresholds below leave 2-6x margin.
"""
from __future__ import annotations

import math
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from vsr_core.flow import DISEngine

H, W = 96, 128
BORDER = 8


def smooth_noise(h, w, seed, channels=3, sigmas=(2.0, 4.0, 8.0)):
    """Multi-scale Gaussian-smoothed noise in [0, 1]: texture DIS can track, smooth enough to resample."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, channels, h, w)
    for s in sigmas:
        r = int(3 * s)
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-(x**2) / (2 * s * s))
        k = (k / k.sum()).repeat(channels, 1).view(channels, 1, 1, -1)
        n = F.pad(torch.randn(1, channels, h, w, generator=g), (r, r, r, r), mode="circular")
        n = F.conv2d(F.conv2d(n, k, groups=channels), k.transpose(2, 3), groups=channels)
        out += n / n.std()
    lo, hi = out.amin(dim=(2, 3), keepdim=True), out.amax(dim=(2, 3), keepdim=True)
    return (out - lo) / (hi - lo)


def pixel_grid(h, w):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack((xs, ys), -1)  # [h, w, 2] (x, y)


def sample(tex, coords):
    """tex [1, C, Ht, Wt] sampled at pixel coords [h, w, 2] -> [1, C, h, w] (bicubic)."""
    ht, wt = tex.shape[-2:]
    grid = torch.stack((2 * coords[..., 0] / (wt - 1) - 1, 2 * coords[..., 1] / (ht - 1) - 1), -1)[None]
    return F.grid_sample(tex, grid, mode="bicubic", padding_mode="border", align_corners=True).clamp(0, 1)


TEX = smooth_noise(256, 256, 0)
OFFSET = torch.tensor([64.0, 64.0])
INTERIOR = torch.zeros(H, W, dtype=torch.bool)
INTERIOR[BORDER:-BORDER, BORDER:-BORDER] = True


def epe(flow, gt, mask):
    return float((flow[0] - gt).norm(dim=0)[mask].mean())


def shifted_pair(dx, dy):
    """src(p) = T(p + o), dst(q) = T(q + o - d): so src(p) = dst(p + d) and the flow src -> dst is d."""
    p = pixel_grid(H, W)
    src = sample(TEX, p + OFFSET)
    dst = sample(TEX, p + OFFSET - torch.tensor([dx, dy]))
    gt = torch.tensor([dx, dy]).view(2, 1, 1).expand(2, H, W)
    return src, dst, gt


@pytest.fixture(scope="module")
def medium():
    return DISEngine("medium")


@pytest.mark.parametrize(
    "dx, dy, limit",
    [(3.0, -2.0, 0.1), (0.5, 0.25, 0.2), (-1.25, 0.75, 0.2), (9.0, 6.0, 0.15)],
    ids=["integer", "subpixel", "subpixel-neg", "large"],
)
def test_global_shift_epe(medium, dx, dy, limit):
    src, dst, gt = shifted_pair(dx, dy)
    flow = medium(src, dst)
    assert flow.shape == (1, 2, H, W) and flow.dtype == torch.float32
    assert epe(flow, gt, INTERIOR) < limit
    assert epe(-medium(dst, src), gt, INTERIOR) < limit + 0.05  # the reverse pair gives -d


def test_small_rotation_epe(medium):
    theta = math.radians(3.0)
    c = torch.tensor([W / 2, H / 2])
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    p = pixel_grid(H, W)
    src = sample(TEX, p + OFFSET)
    dst = sample(TEX, (p - c) @ rot + c + OFFSET)  # dst(q) = T(R^-1 (q - c) + c + o)
    gt = ((p - c) @ rot.T + c - p).permute(2, 0, 1)  # src(p) = dst(R (p - c) + c)
    assert float(gt.norm(dim=0).max()) > 3  # the motion is not negligible
    assert epe(medium(src, dst), gt, INTERIOR) < 0.25


@pytest.mark.parametrize("d", [(4.0, 2.0), (-3.0, 1.5)])
def test_moving_object_over_static_background(medium, d):
    h, w, side = 80, 112, 28
    p = pixel_grid(h, w)
    bg = smooth_noise(h, w, 1)
    obj = smooth_noise(64, 64, 2)
    o0 = torch.tensor([40.0, 26.0])
    d = torch.tensor(d)

    def frame(o):
        m = (p[..., 0] >= o[0]) & (p[..., 0] < o[0] + side) & (p[..., 1] >= o[1]) & (p[..., 1] < o[1] + side)
        return bg * ~m + sample(obj, p - o + 8) * m, m

    src, m0 = frame(o0)
    dst, m1 = frame(o0 + d)
    gt = torch.zeros(2, h, w)
    gt[:, m0] = d.view(2, 1)
    flow = medium(src, dst)
    background = ~m0 & ~m1  # static and visible in both frames
    core = torch.zeros(h, w, dtype=torch.bool)
    core[26 + 4 : 26 + side - 4, 40 + 4 : 40 + side - 4] = True
    assert epe(flow, gt, background) < 0.3
    assert epe(flow, gt, core) < 0.75  # vs |d| >= 3.35 for a method that missed the object


@pytest.mark.parametrize("preset", ["fast", "ultrafast"])
def test_faster_presets_still_track(preset):
    src, dst, gt = shifted_pair(2.0, -1.0)
    assert epe(DISEngine(preset)(src, dst), gt, INTERIOR) < 0.5


def test_batches_and_gray_inputs(medium):
    src, dst, gt = shifted_pair(1.0, 2.0)
    batch = medium(torch.cat([src, dst]), torch.cat([dst, src]))
    assert batch.shape == (2, 2, H, W)
    torch.testing.assert_close(batch[0:1], medium(src, dst))
    gray = medium(src.mean(1, keepdim=True), dst.mean(1, keepdim=True))
    assert epe(gray, gt, INTERIOR) < 0.2


def test_small_and_thin_frames_do_not_crash():
    """OpenCV's DIS segfaults on frames thinner than ~2 patches at its finest level; the engine pads.

    Run in a subprocess so a regression shows up as a failed test instead of killing the test run.
    """
    code = textwrap.dedent(
        """
        import torch
        from vsr_core.flow import DISEngine
        for preset in ("ultrafast", "fast", "medium"):
            e = DISEngine(preset)
            for h, w in [(1, 1), (5, 7), (8, 8), (12, 64), (16, 200), (20, 200), (200, 16), (33, 17)]:
                a = torch.rand(2, 3, h, w)
                f = e(a, a.roll(1, dims=3))
                assert f.shape == (2, 2, h, w), (preset, h, w, f.shape)
                assert torch.isfinite(f).all()
        print("ok")
        """
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", f"rc={r.returncode} stderr={r.stderr[-2000:]}"


def test_engine_protocol_details(medium):
    assert medium.name == "dis-medium"
    e = DISEngine("ULTRAFAST", patch_stride=2, variational_refinement_iterations=2)
    assert e.name == "dis-ultrafast"
    e2 = pickle.loads(pickle.dumps(e))
    a = torch.rand(1, 3, 40, 48)
    torch.testing.assert_close(e(a, a.roll(2, 3)), e2(a, a.roll(2, 3)))


@pytest.mark.parametrize(
    "args, kwargs, err",
    [(("slow",), {}, ValueError), ((), {"patch": 8}, ValueError)],
)
def test_bad_construction(args, kwargs, err):
    with pytest.raises(err):
        DISEngine(*args, **kwargs)


@pytest.mark.parametrize(
    "a, b",
    [
        (torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)),
        (torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17)),
        (torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)),
        (torch.zeros(1, 16, 16, 3), torch.zeros(1, 16, 16, 3)),
    ],
)
def test_bad_inputs_raise(medium, a, b):
    with pytest.raises(ValueError):
        medium(a, b)
