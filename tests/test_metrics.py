"""Metrics: PSNR/SSIM on known cases, the BT.601 luma, warping error on a clip whose motion is known,
the VSR_VideoMetrics node, and bench/quality.py on a user's Vid4-style folders."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsr_core.flow import DISEngine, estimate_video_flow
from vsr_core.metrics import psnr, rgb_to_y, ssim, video_metrics, warp_error
from vsr_core.synthetic import camera_path, render_views, smooth_texture

REPO = Path(__file__).resolve().parents[1]


def test_psnr_of_a_known_error_rgb_and_y():
    ref = torch.full((2, 8, 8, 3), 100 / 255)
    out = ref + 4 / 255
    assert torch.allclose(psnr(out, ref), torch.tensor(20 * math.log10(255 / 4)).expand(2), atol=1e-4)
    # Y of a uniform +4 RGB offset moves by 4 * (65.481 + 128.553 + 24.966) / 255 levels
    dy = 4 * (65.481 + 128.553 + 24.966) / 255
    assert torch.allclose(psnr(out, ref, y_channel=True), torch.tensor(20 * math.log10(255 / dy)).expand(2),
                          atol=1e-3)
    assert torch.isinf(psnr(ref, ref)).all()
    white = rgb_to_y(torch.ones(1, 3, 1, 1)).item() * 255
    black = rgb_to_y(torch.zeros(1, 3, 1, 1)).item() * 255
    assert white == pytest.approx(235.0, abs=1e-3) and black == pytest.approx(16.0)


def test_border_crop_ignores_the_border():
    ref = torch.rand(1, 20, 20, 3)
    out = ref.clone()
    out[:, :3] = 0  # damage only the top 3 rows
    assert torch.isinf(psnr(out, ref, crop=3)).all()
    assert torch.isfinite(psnr(out, ref, crop=2)).all()
    with pytest.raises(ValueError, match="too small"):
        psnr(out, ref, crop=10)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(out[:, :10], ref)


def test_ssim_is_one_for_equal_frames_and_falls_with_noise_and_blur():
    g = torch.Generator().manual_seed(0)
    ref = torch.from_numpy(smooth_texture(64, 64, seed=2, octaves=6)).float().unsqueeze(0) / 255
    assert ssim(ref, ref).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (ref + torch.randn(ref.shape, generator=g) * 0.05).clamp(0, 1)
    blurred = F.avg_pool2d(ref.permute(0, 3, 1, 2), 5, 1, 2, count_include_pad=False).permute(0, 2, 3, 1)
    s_noise, s_blur = ssim(noisy, ref).item(), ssim(blurred, ref).item()
    assert 0 < s_noise < 0.95 and 0 < s_blur < 1
    assert ssim((ref + 0.1).clamp(0, 1), ref).item() > s_noise  # a small brightness shift keeps structure


def test_ssim_matches_the_closed_form_on_constant_images():
    """For constant images (no variance) SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)."""
    a, b = 100.0, 140.0
    x = torch.full((1, 16, 16, 3), a / 255)
    y = torch.full((1, 16, 16, 3), b / 255)
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)


def _moving_clip(t=6):
    img = smooth_texture(160, 200, seed=5, octaves=6)
    views = render_views(img, (64, 80), camera_path(t, "pan", 0.3, seed=1))
    return torch.from_numpy(views).float() / 255


def test_warping_error_sees_flicker_that_psnr_barely_notices():
    hr = _moving_clip()
    flow = estimate_video_flow(hr, DISEngine("medium"))
    floor = warp_error(hr, hr, flow=flow).mean().item()
    flicker = hr.clone()
    flicker[1::2] = (flicker[1::2] * 0.96).clamp(0, 1)  # every other frame 4 % darker
    steady = (hr * 0.96).clamp(0, 1)  # every frame 4 % darker: same per-frame error, no flicker
    we_flicker = warp_error(flicker, hr, flow=flow).mean().item()
    we_steady = warp_error(steady, hr, flow=flow).mean().item()
    assert floor < 2.5  # the flow explains the motion of the truth itself
    assert we_flicker > we_steady + 2.0
    m = video_metrics(flicker, hr, DISEngine("ultrafast"))
    assert {"psnr", "psnr_y", "ssim", "ssim_y", "warp_error", "warp_error_reference", "tof"} <= set(m)
    assert m["warp_error"] > m["warp_error_reference"]


def test_video_metrics_node_shows_and_returns_the_figures():
    from pack import load_pack

    pack = load_pack()
    node = pack.NODE_CLASS_MAPPINGS["VSR_VideoMetrics"]()
    hr = _moving_clip(4)
    out = (hr + 2 / 255).clamp(0, 1)
    res = node.measure(out, hr, border=2)
    text, p_y, s_y = res["result"]
    assert "PSNR Y" in text and res["ui"]["text"] == [text]
    assert 35 < p_y < 50 and 0.9 < s_y <= 1.0
    assert "warping" not in text
    flow = estimate_video_flow(hr, DISEngine("ultrafast"))
    assert "warping error" in node.measure(out, hr, 0, flow)["result"][0]
    with pytest.raises(ValueError, match="same size"):
        node.measure(out[:, :32], hr)


def test_quality_bench_reads_vid4_style_folders(tmp_path, capsys):
    import cv2

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import quality
    finally:
        sys.path.remove(str(REPO / "bench"))
    from vsr_core.synthetic import bicubic_downscale

    for clip in ("calendar", "city"):
        hr = _moving_clip(3)
        lr = bicubic_downscale(hr, 4)
        for root, frames in (("GT", hr), ("BIx4", lr)):
            d = tmp_path / root / clip
            d.mkdir(parents=True)
            for i, f in enumerate(frames):
                cv2.imwrite(str(d / f"{i:08d}.png"), (f.numpy()[..., ::-1] * 255).round().astype(np.uint8))
    (tmp_path / "BIx4" / "extra").mkdir()  # only clips present on both sides are scored
    clips = quality.folder_clips(tmp_path / "GT", tmp_path / "BIx4")
    assert [c[0] for c in clips] == ["calendar", "city"] and clips[0][1].shape == (3, 64, 80, 3)
    quality.quality_table(clips, 4, [], crop=4)
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"bicubic", "lanczos", "learned"} <= set(rows)
    with pytest.raises(FileNotFoundError, match="no clip names in common"):
        quality.folder_clips(tmp_path / "GT", tmp_path / "BIx4" / "extra")
    # --h264: the clip a viewer receives, compressed and decoded again (same frames, slightly changed)
    lr = clips[0][2]
    coded = quality.h264(lr, 35)
    assert coded.shape == lr.shape and 0 < (coded - lr).abs().mean() < 0.1
