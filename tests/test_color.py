"""Colour correction: synthetic casts are removed, detail is kept, LAB conversion is exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vsr_core.color import (
    COLOR_FIX_MODES,
    adain_color_fix,
    color_fix,
    lab_color_fix,
    lab_to_rgb,
    rgb_to_lab,
    wavelet_color_fix,
    wavelet_decomposition,
)


def _scene(n=2, h=64, w=80, seed=0):
    """Smooth colourful images in about [0.15, 0.85] (upsampled noise), [n, 3, h, w]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 16, w // 16, generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return (0.15 + 0.7 * img).clamp(0, 1)


def _detail(n=2, h=64, w=80, seed=1, amp=0.06):
    g = torch.Generator().manual_seed(seed)
    return amp * (torch.rand(n, 1, h, w, generator=g) * 2 - 1).expand(n, 3, h, w)


def _cast(x):
    gain = torch.tensor([1.15, 0.9, 0.75]).view(1, 3, 1, 1)
    offset = torch.tensor([0.04, -0.03, 0.08]).view(1, 3, 1, 1)
    return (x * gain + offset).clamp(0, 1)


def _channel_mean_err(a, b):
    return (a.mean((-2, -1)) - b.mean((-2, -1))).abs().max().item()


# An RGB gain/offset is exactly what AdaIN and the wavelet low band undo; in LAB it is not an affine
# map, so the LAB match removes most but not all of it (see the LAB-space cast test below).
@pytest.mark.parametrize("fix,ratio", [(adain_color_fix, 0.1), (wavelet_color_fix, 0.1), (lab_color_fix, 0.3)])
def test_rgb_colour_cast_is_removed(fix, ratio):
    clean = _scene()
    target = _cast(clean)  # the "upscaled output" with a colour cast
    before = _channel_mean_err(target, clean)
    after = _channel_mean_err(fix(target, clean), clean)
    assert before > 0.03
    assert after < ratio * before
    # the whole image, not just its means, gets closer
    assert (fix(target, clean) - clean).abs().mean() < 2.5 * ratio * (target - clean).abs().mean()


def test_lab_space_cast_is_removed_exactly():
    clean = 0.25 + 0.5 * _scene()  # muted colours, so the cast below stays in gamut
    lab = rgb_to_lab(clean)
    lab_cast = lab * torch.tensor([0.9, 1.2, 0.8]).view(1, 3, 1, 1) + torch.tensor([4.0, 6.0, -5.0]).view(1, 3, 1, 1)
    target = lab_to_rgb(lab_cast)
    assert target.min() >= 0 and target.max() <= 1  # the cast stays in gamut: nothing is clipped
    out = lab_color_fix(target, clean)
    assert (out - clean).abs().max() < 1e-4 < 0.05 < (target - clean).abs().max()
    # RGB AdaIN cannot undo a LAB-space cast as well.
    assert (adain_color_fix(target, clean) - clean).abs().max() > 10 * (out - clean).abs().max()


def test_adain_matches_source_statistics():
    src, tgt = _scene(seed=3), _cast(_scene(seed=4))
    out = adain_color_fix(tgt, src, clamp=False)
    torch.testing.assert_close(out.mean((-2, -1)), src.mean((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((-2, -1)), src.std((-2, -1)), atol=1e-4, rtol=1e-3)


def test_wavelet_keeps_target_detail_and_takes_source_colour():
    src = _scene()
    detail = _detail()
    target = _cast(src) + detail  # cast output with fine texture the source lacks
    out = wavelet_color_fix(target, src, clamp=False)
    high_out, _ = wavelet_decomposition(out)
    high_tgt, _ = wavelet_decomposition(target)
    # The output's detail bands are the target's (up to the smooth source's own small detail)...
    assert (high_out - high_tgt).abs().mean() < 0.05 * high_tgt.abs().mean()
    # ... and its colour is the source's.
    assert _channel_mean_err(out, src) < 0.1 * _channel_mean_err(target, src)


def test_wavelet_decomposition_kernel_and_dilation():
    x = torch.zeros(1, 3, 41, 41)
    x[..., 20, 20] = 1.0
    high, low = wavelet_decomposition(x, levels=1)
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    torch.testing.assert_close(low[0, 0, 19:22, 19:22], torch.outer(k, k))
    assert low[0, 0].sum().item() == pytest.approx(1.0)
    assert torch.count_nonzero(low[0, 0]) == 9
    # Level 2 is dilated by 2: the two-level low band reaches ±(1 + 2) = ±3 px.
    _, low2 = wavelet_decomposition(x, levels=2)
    nz = torch.nonzero(low2[0, 0])
    assert nz.min().item() == 17 and nz.max().item() == 23
    # Five levels: the dilations 1..16 reach ±31 px; high + low recomposes the input.
    high5, low5 = wavelet_decomposition(x, levels=5)
    torch.testing.assert_close(high5 + low5, x, atol=1e-6, rtol=0)
    # Replicate padding: a constant image has no detail at all.
    h_c, l_c = wavelet_decomposition(torch.full((1, 3, 20, 20), 0.3))
    assert h_c.abs().max() < 1e-6 and (l_c - 0.3).abs().max() < 1e-6


def test_lab_round_trip_and_reference_values():
    rgb = torch.rand(4, 3, 17, 19, generator=torch.Generator().manual_seed(5))
    rgb[0, :, 0, 0] = 0.0
    rgb[0, :, 0, 1] = 1.0
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, rgb, atol=1e-4, rtol=0)
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1))
    torch.testing.assert_close(lab[0].flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    torch.testing.assert_close(lab[1].flatten(), torch.zeros(3), atol=1e-4, rtol=0)
    # sRGB red: L* 53.24, a* 80.09, b* 67.20 (standard D65 values).
    torch.testing.assert_close(lab[2].flatten(), torch.tensor([53.24, 80.09, 67.20]), atol=0.02, rtol=0)


@pytest.mark.parametrize("mode", COLOR_FIX_MODES)
def test_outputs_are_clamped_and_shaped(mode):
    src = _scene()
    target = _cast(src) * 1.6 - 0.3  # well outside [0, 1], as a raw decode can be
    out = color_fix(target, src, mode)
    assert out.shape == target.shape and out.dtype == target.dtype
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, color_fix(target, src, mode, clamp=False).clamp(0, 1))
    assert color_fix(target, src, "none", clamp=False).min() < 0


def test_low_resolution_reference_is_bicubic_upscaled():
    src_hr = _scene(h=64, w=80)
    src_lr = F.interpolate(src_hr, size=(16, 20), mode="area")
    target = _cast(src_hr)
    for fix in (adain_color_fix, wavelet_color_fix, lab_color_fix):
        out = fix(target, src_lr)
        assert out.shape == target.shape
        assert _channel_mean_err(out, src_hr) < 0.2 * _channel_mean_err(target, src_hr)


def test_leading_dims_and_bad_inputs():
    src = _scene(n=6).view(2, 3, 3, 64, 80)  # [B, T, 3, H, W]
    out = adain_color_fix(_cast(src), src)
    assert out.shape == src.shape
    torch.testing.assert_close(out.view(6, 3, 64, 80),
                               adain_color_fix(_cast(src).view(6, 3, 64, 80), src.view(6, 3, 64, 80)))
    with pytest.raises(ValueError):
        adain_color_fix(torch.rand(2, 64, 80, 3), torch.rand(2, 64, 80, 3))  # channels last
    with pytest.raises(ValueError):
        color_fix(src, src, "bogus")
    with pytest.raises(ValueError):
        wavelet_color_fix(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))
