"""Spatial tiling: plans cover the image, reassembly is exact, official placements are reproduced."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vsr_core.tiling import (
    TILE_MODES,
    TileMerger,
    hann_ramp,
    plan_tiles,
    plan_tiles_uav,
    tile_weights,
    tiled_apply,
)


def _axis(tiles, which, axis):
    k = 0 if axis == "y" else 2
    return sorted({getattr(t, which)[k:k + 2] for t in tiles})


def _official_snap_starts(length, tile, stride):
    # The placement rule stated in spec §4.3 (MGLD canvas / ImageSpliterTh): starts every `stride`,
    # any tile running past the end moved back to end at the border, duplicates removed.
    if length <= tile:
        return [0]
    starts = [min(s, length - tile) for s in range(0, length, stride)]
    return sorted(set(starts))


@pytest.mark.parametrize("size", [1, 7, 16, 24, 33, 64, 100, 129, 250])
@pytest.mark.parametrize("tile,overlap", [(16, 8), (32, 0), (64, 32), (20, 3)])
def test_plan_covers_image_and_matches_official_placement(size, tile, overlap):
    tiles = plan_tiles((size, size + 5), tile, overlap)
    for axis, length in (("y", size), ("x", size + 5)):
        wins = _axis(tiles, "window", axis)
        assert [s for s, _ in wins] == _official_snap_starts(length, tile, tile - overlap)
        assert wins[0][0] == 0 and wins[-1][1] == length  # last tile snapped to the border
        assert all(0 <= s < e <= length and e - s == min(tile, length) for s, e in wins)
    cover = torch.zeros(size, size + 5)
    for t in tiles:
        cover[t.slices("core")] += 1
        y0, y1, x0, x1 = t.core
        wy0, wy1, wx0, wx1 = t.window
        assert wy0 <= y0 < y1 <= wy1 and wx0 <= x0 < x1 <= wx1
    assert torch.equal(cover, torch.ones_like(cover))  # cores partition the image


def test_plan_small_image_is_one_tile():
    (t,) = plan_tiles((5, 9), 64, 32)
    assert t.region == t.window == t.core == (0, 5, 0, 9)


def test_plan_known_official_layouts():
    # MGLD parity recording: 24x24 latent, tiles 16 / overlap 8 -> 2x2 tiles at 0 and 8.
    assert _axis(plan_tiles((24, 24), 16, 8), "window", "x") == [(0, 16), (8, 24)]
    # MGLD pixel macro-tiles 960 / stride 750.
    assert [s for s, _ in _axis(plan_tiles((1000, 2500), 960, 210), "window", "x")] == [0, 750, 1500, 1540]
    assert [s for s, _ in _axis(plan_tiles((1000, 2500), 960, 210), "window", "y")] == [0, 40]


def test_plan_multiple_keeps_tiles_on_grid():
    tiles = plan_tiles((100, 77), 32, 8, multiple=8)
    for t in tiles:
        for v in (*t.window, *t.core):
            assert v % 8 == 0 or v in (100, 77)
        h = t.window[1] - t.window[0]
        assert 32 <= h < 40 or t.window[0] == 0 and h == 32
    with pytest.raises(ValueError):
        plan_tiles((100, 100), 30, 8, multiple=8)


def test_plan_context_is_clipped_margin():
    tiles = plan_tiles((50, 50), 20, 4, context=6)
    for t in tiles:
        y0, y1, x0, x1 = t.window
        assert t.region == (max(y0 - 6, 0), min(y1 + 6, 50), max(x0 - 6, 0), min(x1 + 6, 50))


@pytest.mark.parametrize("bad", [dict(tile=16, overlap=16), dict(tile=16, overlap=-1), dict(tile=0, overlap=0)])
def test_plan_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        plan_tiles((40, 40), **bad)


def test_plan_uav_official_rule():
    # 600 px: cores 0-256, 256-512 and a short 512-600 (2*256 + 64 < 600).
    assert _axis(plan_tiles_uav((600, 560)), "core", "y") == [(0, 256), (256, 512), (512, 600)]
    # 560 px: 2*256 + 64 >= 560, so the remainder is folded into the second core.
    assert _axis(plan_tiles_uav((600, 560)), "core", "x") == [(0, 256), (256, 560)]
    tiles = plan_tiles_uav((600, 560))
    t = next(t for t in tiles if t.index == (1, 1))
    assert t.region == (192, 576, 192, 560)
    # A side no longer than the context still gets one tile (the official code would plan none).
    assert len(plan_tiles_uav((40, 400))) == 2


def _tiles_for(size, mode):
    if mode == "hard":
        return plan_tiles(size, 16, 6, context=3)
    return plan_tiles(size, 16, 6)


@pytest.mark.parametrize("mode", TILE_MODES)
@pytest.mark.parametrize("size", [(5, 7), (16, 16), (37, 50)])
@pytest.mark.parametrize("scale", [1, 4])
def test_identity_reassembles_exactly(mode, size, scale):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *size, generator=g)
    up = (lambda t: t) if scale == 1 else (lambda t: F.interpolate(t, scale_factor=scale, mode="nearest"))
    out = tiled_apply(up, x, 16, 6, scale=scale, mode=mode, tiles=_tiles_for(size, mode))
    ref = up(x)
    assert out.shape == ref.shape and out.dtype == x.dtype
    if mode == "hard":
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


def test_hard_mode_with_context_equals_whole_image():
    # A 3x3 local op sees its full neighbourhood through the 1-px context, so the pasted cores
    # reproduce the untiled result exactly, for both layouts.
    x = torch.rand(1, 2, 45, 70, generator=torch.Generator().manual_seed(1))
    op = lambda t: F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=True)
    ref = op(x)
    out = tiled_apply(op, x, 16, 4, mode="hard", context=1)
    assert torch.equal(out, ref)
    out_uav = tiled_apply(op, x, None, mode="hard", tiles=plan_tiles_uav((45, 70), tile=16, context=1))
    assert torch.equal(out_uav, ref)
    # Half the overlap beyond each core acts as context too; with neither, the seams differ.
    assert torch.equal(tiled_apply(op, x, 16, 4, mode="hard"), ref)
    assert not torch.equal(tiled_apply(op, x, 16, 0, mode="hard"), ref)


def test_channels_may_change_and_5d_inputs_work():
    x = torch.rand(1, 3, 4, 30, 41)  # [B, C, T, H, W]
    fn = lambda t: torch.cat([t.sum(1, keepdim=True), t.mean(1, keepdim=True)], 1)
    out = tiled_apply(fn, x, 16, 4, mode="gaussian")
    torch.testing.assert_close(out, fn(x), rtol=0, atol=1e-5)


def test_gaussian_weights_are_mgld_official():
    w = tile_weights((16, 16), "gaussian", dtype=torch.float64)
    var = 0.01
    x = torch.arange(16, dtype=torch.float64)
    wx = torch.exp(-((x - 7.5) ** 2) / 256 / (2 * var)) / math.sqrt(2 * math.pi * var)
    wy = torch.exp(-((x - 8.0) ** 2) / 256 / (2 * var)) / math.sqrt(2 * math.pi * var)
    torch.testing.assert_close(w, wy[:, None] * wx[None, :], rtol=1e-12, atol=0)
    # x is centred between pixels 7 and 8; y (sic) on pixel 8.
    assert w[8, 7] == w[8, 8] and w[8, 8] > w[7, 8]
    assert tile_weights((16, 16), "gaussian").dtype == torch.float32


def test_hann_crossfade_is_partition_of_unity():
    r = hann_ramp(12, 4)
    assert r.min() > 0 and torch.equal(r[4:8], torch.ones(4))
    torch.testing.assert_close(r[:4] + r[-4:], torch.ones(4))
    # Width 16 + 2*10 = 36 with tile 16/overlap 6: windows overlap by exactly 6 -> weights sum to 1.
    tiles = plan_tiles((16, 36), 16, 6)
    wsum = torch.zeros(16, 36, dtype=torch.float64)
    for t in tiles:
        wsum[t.slices("window")] += tile_weights((16, 16), "hann", t.overlap, t.fade, dtype=torch.float64)
    torch.testing.assert_close(wsum, torch.ones_like(wsum))


def test_merger_rejects_wrong_shapes_and_gaps():
    tiles = plan_tiles((20, 20), 16, 4)
    m = TileMerger((1, 1, 20, 20), "uniform")
    with pytest.raises(ValueError):
        m.add(tiles[0], torch.zeros(1, 1, 8, 8))
    m.add(tiles[0], torch.zeros(1, 1, 16, 16))
    with pytest.raises(RuntimeError):
        m.result()
    with pytest.raises(ValueError):
        TileMerger((1, 20, 20), "bogus")


def test_gaussian_merge_replays_mgld_canvas_arithmetic_bitwise():
    # Spec §4.3 step 6a: eps = sum(pred * w) / sum(w), float32 preds times float64 weights added into
    # float32 canvases, tiles visited x-major; 24x24 latent with tiles 16/overlap 8 as in the recording.
    g = torch.Generator().manual_seed(0)
    tiles = sorted(plan_tiles((24, 24), 16, 8), key=lambda t: t.index[::-1])
    preds = [torch.randn(5, 4, 16, 16, generator=g) for _ in tiles]
    w64 = tile_weights((16, 16), "gaussian", dtype=torch.float64)
    num, den = torch.zeros(5, 4, 24, 24), torch.zeros(5, 4, 24, 24)
    for t, p in zip(tiles, preds):
        ys, xs = t.slices("window")
        num[..., ys, xs] += p * w64
        den[..., ys, xs] += w64
    m = TileMerger((5, 4, 24, 24), "gaussian")
    for t, p in zip(tiles, preds):
        m.add(t, p)
    assert torch.equal(m.result(), num / den)
