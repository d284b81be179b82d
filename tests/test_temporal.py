"""Temporal windows and segments: official UAV planning and merge, exact reassembly, MGLD segments."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vsr_core.temporal import (
    WINDOW_MODES,
    WindowMerger,
    pad_frames,
    plan_segments,
    plan_windows,
    unique_windows,
    unpad_frames,
)


def test_uav_window_plan_official_examples():
    assert plan_windows(10, 8, 2, layout="uav") == [(0, 8), (2, 10)]  # the parity recording
    assert plan_windows(16, 8, 2, layout="uav") == [(0, 8), (6, 14), (8, 16)]
    # The official loop keeps visiting starts past T - 8 and shifts each back: the tail repeats.
    assert plan_windows(14, 8, 2, layout="uav") == [(0, 8), (6, 14), (6, 14)]
    assert plan_windows(20, 8, 2, layout="uav") == [(0, 8), (6, 14), (12, 20), (12, 20)]
    for t in range(1, 9):
        assert plan_windows(t, 8, 2, layout="uav") == [(0, t)]


@pytest.mark.parametrize("window,overlap", [(8, 2), (5, 0), (6, 3), (3, 1)])
def test_snap_plan_is_uav_plan_without_repeats(window, overlap):
    for t in range(1, 60):
        snap = plan_windows(t, window, overlap)
        uav = plan_windows(t, window, overlap, layout="uav")
        assert [(s, e) for s, e, _ in unique_windows(uav)] == snap
        assert sum(n for *_, n in unique_windows(uav)) == len(uav)
        assert snap[0][0] == 0 and snap[-1][1] == t
        assert all(e - s == min(window, t) for s, e in snap)
        assert all(b[0] - a[0] <= window - overlap for a, b in zip(snap, snap[1:]))


def test_plan_windows_rejects_bad_arguments():
    for args in [(0, 8, 2), (10, 8, 8), (10, 0, 0), (10, 8, -1)]:
        with pytest.raises(ValueError):
            plan_windows(*args)
    with pytest.raises(ValueError):
        plan_windows(10, 8, 2, layout="bogus")


def _const(value, frames, dim=2):
    shape = [1, 2, 1, 3, 3]
    shape[dim] = frames
    return torch.full(shape, float(value))


def test_running_average_weights_are_official():
    # Frame 3 is covered by three windows: weights 0.25 / 0.25 / 0.5 (order-dependent).
    m = WindowMerger(7, "running")
    m.add(_const(1, 4), 0, 4)
    m.add(_const(10, 4), 2, 6)
    m.add(_const(100, 4), 3, 7)
    out = m.result()[0, 0, :, 0, 0]
    assert out[3].item() == 0.25 * 1 + 0.25 * 10 + 0.5 * 100
    assert out[2].item() == 0.5 * 1 + 0.5 * 10
    assert out[6].item() == 100 and out[0].item() == 1
    assert m.coverage == [1, 1, 2, 3, 2, 2, 1]


def test_repeats_equal_repeated_calls_bitwise():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 8, 5, 6, generator=g), torch.randn(1, 4, 8, 5, 6, generator=g)
    twice, once = WindowMerger(14), WindowMerger(14)
    for (s, e), p in zip(plan_windows(14, layout="uav"), (a, b, b)):
        twice.add(p, s, e)
    for (s, e, n), p in zip(unique_windows(plan_windows(14, layout="uav")), (a, b)):
        once.add(p, s, e, repeats=n)
    assert torch.equal(twice.result(), once.result())
    # Frames 6-7: 0.25 a + 0.75 b, not the 0.5/0.5 of a single visit.
    torch.testing.assert_close(once.result()[:, :, 6:8], 0.25 * a[:, :, 6:8] + 0.75 * b[:, :, :2])


@pytest.mark.parametrize("mode", WINDOW_MODES)
@pytest.mark.parametrize("frames", [1, 5, 8, 10, 14, 23])
@pytest.mark.parametrize("layout", ["snap", "uav"])
def test_identity_reassembles_exactly(mode, frames, layout):
    x = torch.rand(frames, 3, 4, 5, generator=torch.Generator().manual_seed(frames))  # [T, C, H, W]
    m = WindowMerger(frames, mode, overlap=2, dim=0)
    for s, e in plan_windows(frames, 8, 2, layout=layout):
        m.add(x[s:e], s, e)
    out = m.result()
    assert out.shape == x.shape and out.dtype == x.dtype
    if mode == "running":
        assert torch.equal(out, x)
    else:
        torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_hann_crossfades_and_uniform_averages():
    # Two windows overlapping by 4 frames: 0 then 1. Hann ramps monotonically, uniform is flat 0.5.
    outs = {}
    for mode in ("hann", "uniform"):
        m = WindowMerger(12, mode, overlap=4)
        m.add(_const(0, 8), 0, 8)
        m.add(_const(1, 8), 4, 12)
        outs[mode] = m.result()[0, 0, :, 0, 0]
    h = outs["hann"]
    assert torch.equal(h[:4], torch.zeros(4)) and torch.equal(h[8:], torch.ones(4))
    assert (h[4:8] > 0).all() and (h[4:8] < 1).all() and (h[5:8] > h[4:7]).all()
    torch.testing.assert_close(h[4:8] + h[4:8].flip(0), torch.ones(4))
    assert torch.equal(outs["uniform"][4:8], torch.full((4,), 0.5))


def test_merger_rejects_bad_windows_and_gaps():
    m = WindowMerger(10, "uniform")
    with pytest.raises(ValueError):
        m.add(_const(0, 8), 4, 12)  # runs past the end
    with pytest.raises(ValueError):
        m.add(_const(0, 7), 0, 8)  # wrong frame count
    m.add(_const(0, 8), 0, 8)
    with pytest.raises(RuntimeError):
        m.result()
    with pytest.raises(ValueError):
        WindowMerger(10, "bogus")


def test_uav_parity_running_merge_then_cfg(parity_dir):
    d = load_file(str(parity_dir / "uav" / "pipeline_io.safetensors"))
    windows = plan_windows(10, 8, 2, layout="uav")
    assert windows == [(0, 8), (2, 10)]
    for step in range(3):
        m = WindowMerger(10, "running", dim=2)
        for k, (s, e) in enumerate(windows):
            m.add(d[f"unet_call{2 * step + k}.out"], s, e)  # [2 (uncond, text), 4, 8, h, w]
        v_uncond, v_text = m.result().chunk(2)
        v = v_uncond + 6.0 * (v_text - v_uncond)  # CFG after the merge, as the official loop does
        ref = d[f"step{step}.v_merged_cfg"]
        assert torch.equal(v, ref)
        # A uniform merge is not the official behaviour: it only agrees on single-coverage frames.
        u = WindowMerger(10, "uniform", dim=2)
        for k, (s, e) in enumerate(windows):
            u.add(d[f"unet_call{2 * step + k}.out"], s, e)
        vu_uncond, vu_text = u.result().chunk(2)
        vu = vu_uncond + 6.0 * (vu_text - vu_uncond)
        torch.testing.assert_close(vu[:, :, [0, 1, 8, 9]], ref[:, :, [0, 1, 8, 9]])


def test_segments_mgld_and_decode_chunks():
    assert plan_segments(10, 5) == [(0, 5), (5, 10)]
    assert plan_segments(7, 5) == [(0, 5), (5, 10)]  # padded to 10 with the last frame
    assert plan_segments(7, 5, pad="none") == [(0, 5), (5, 7)]
    assert [e - s for s, e in plan_segments(10, 3, pad="none")] == [3, 3, 3, 1]  # UAV VAE decode
    with pytest.raises(ValueError):
        plan_segments(0, 5)


def test_pad_and_unpad_frames():
    x = torch.arange(7.0).view(7, 1, 1, 1)
    p = pad_frames(x, 10, dim=0)
    assert p.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6]
    assert torch.equal(unpad_frames(p, 7, dim=0), x)
    r = pad_frames(torch.arange(3.0).view(1, 3), 8, dim=1, mode="reflect")
    assert r.flatten().tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert pad_frames(x[:1], 3, dim=0, mode="reflect").flatten().tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        pad_frames(x, 5, dim=0)
