"""Clip-level flow estimation (chunks, layouts, compute size, progress), VideoFlow, and flow_to_rgb."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vsr_core.flow import DISEngine, VideoFlow, estimate_video_flow, flow_to_rgb

H, W, T = 64, 96, 6
STEP = (1.5, -0.5)  # per-frame motion of the scene content, pixels (dx, dy)


def _texture(seed=0, size=192):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)


def _panning_clip(step=STEP, t=T, h=H, w=W):
    """[T, H, W, 3] (ComfyUI IMAGE): frame k shows the texture moved by k*step, so forward flow = step."""
    tex = _texture()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    frames = []
    for k in range(t):
        cx, cy = xs + 48 - k * step[0], ys + 48 - k * step[1]
        grid = torch.stack((2 * cx / (tex.shape[-1] - 1) - 1, 2 * cy / (tex.shape[-2] - 1) - 1), -1)[None]
        frames.append(F.grid_sample(tex, grid, mode="bicubic", align_corners=True).clamp(0, 1)[0])
    return torch.stack(frames).permute(0, 2, 3, 1).contiguous()


class Recorder:
    """Wraps an engine and records the batch size of every call."""

    name = "recorder"

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def __call__(self, src, dst):
        self.sizes.append(src.shape[0])
        return self.inner(src, dst)


class ShiftEngine:
    """A fake engine: flow = mean colour difference (cheap, deterministic, pair-dependent)."""

    name = "fake"

    def __call__(self, src, dst):
        d = (dst - src).mean(dim=1, keepdim=True)
        return torch.cat([d, -d], dim=1) * 10


@pytest.fixture(scope="module")
def clip():
    return _panning_clip()


@pytest.fixture(scope="module")
def dis_flow(clip):
    return estimate_video_flow(clip, DISEngine("medium"), chunk=2)


def test_known_motion_recovered_both_directions(dis_flow):
    vf = dis_flow
    assert vf.num_frames == T and vf.grid_size == (H, W) and vf.frame_size == (H, W)
    assert vf.forward.shape == vf.backward.shape == (T - 1, 2, H, W)
    assert vf.forward.device.type == "cpu" and vf.forward.dtype == torch.float32
    step = torch.tensor(STEP).view(1, 2, 1, 1)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    fwd_epe = (vf.forward - step)[inner].norm(dim=1).mean()
    bwd_epe = (vf.backward + step)[inner].norm(dim=1).mean()
    assert fwd_epe < 0.2 and bwd_epe < 0.2, (float(fwd_epe), float(bwd_epe))
    assert vf.occ_forward.shape == (T - 1, 1, H, W)
    assert set(vf.occ_forward.unique().tolist()) <= {0.0, 1.0}
    # consistent global motion: only content leaving the frame can be occluded
    assert vf.occ_forward[inner].mean() < 0.02 and vf.occ_backward[inner].mean() < 0.02
    assert vf.engine == "dis-medium"


def test_chunked_equals_unchunked_and_engine_sees_at_most_chunk_pairs(clip, dis_flow):
    for chunk in (1, 3, 100):
        rec = Recorder(DISEngine("medium"))
        vf = estimate_video_flow(clip, rec, chunk=chunk)
        assert max(rec.sizes) <= chunk
        assert len(rec.sizes) == 2 * math.ceil((T - 1) / chunk)
        assert sum(rec.sizes) == 2 * (T - 1)
        for name in ("forward", "backward", "occ_forward", "occ_backward"):
            assert torch.equal(getattr(vf, name), getattr(dis_flow, name)), (chunk, name)


def test_frames_are_read_one_window_at_a_time():
    """Memory does not grow with T: the clip is only ever sliced chunk + 1 frames at a time."""

    class Frames(list):
        widest = 0

        def __getitem__(self, i):
            if isinstance(i, slice):
                Frames.widest = max(Frames.widest, len(range(*i.indices(len(self)))))
            return list.__getitem__(self, i)

    frames = Frames(torch.rand(40, 16, 24, 3).unbind(0))
    vf = estimate_video_flow(frames, ShiftEngine(), chunk=4, with_occlusion=False)
    assert vf.num_frames == 40 and Frames.widest <= 5


def test_layouts_agree(clip):
    eng = ShiftEngine()
    a = estimate_video_flow(clip, eng)
    b = estimate_video_flow(clip.permute(0, 3, 1, 2), eng)
    c = estimate_video_flow(list(clip.unbind(0)), eng)
    d = estimate_video_flow((clip * 255).round().to(torch.uint8), eng)
    for other in (b, c):
        assert torch.equal(a.forward, other.forward) and torch.equal(a.occ_backward, other.occ_backward)
    torch.testing.assert_close(a.forward, d.forward, atol=0.05, rtol=0)


def test_compute_size_sets_the_grid_and_keeps_frame_size(clip):
    vf = estimate_video_flow(clip, DISEngine("medium"), compute_size=(32, 48), with_occlusion=False)
    assert vf.grid_size == (32, 48) and vf.frame_size == (H, W) and not vf.has_occlusion
    half = torch.tensor(STEP).view(1, 2, 1, 1) / 2
    assert (vf.forward - half)[..., 6:-6, 6:-6].norm(dim=1).mean() < 0.2
    # back on the frame grid the vectors are full size again
    full = vf.resized((H, W))
    assert full.grid_size == (H, W)
    assert (full.forward - 2 * half)[..., 12:-12, 12:-12].norm(dim=1).mean() < 0.4


def test_progress_reports_and_can_interrupt(clip):
    seen = []
    estimate_video_flow(clip, ShiftEngine(), chunk=2, progress=lambda n, total: seen.append((n, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]

    class Stop(Exception):
        pass

    def stop_after_first(n, total):
        raise Stop

    rec = Recorder(ShiftEngine())
    with pytest.raises(Stop):
        estimate_video_flow(clip, rec, chunk=2, progress=stop_after_first)
    assert len(rec.sizes) == 2  # one chunk, both directions, then stopped


def test_uav_occlusion_form_and_single_frame(clip):
    vf = estimate_video_flow(clip, ShiftEngine(), occlusion_form="uav")
    assert vf.meta["occlusion_form"] == "uav" and vf.occ_forward.shape == (T - 1, 1, H, W)
    one = estimate_video_flow(clip[:1], ShiftEngine())
    assert one.num_frames == 1 and one.forward.shape == (0, 2, H, W)
    assert one.resized((8, 12)).forward.shape == (0, 2, 8, 12)


@pytest.mark.parametrize(
    "frames, kwargs",
    [
        (torch.rand(4, 16, 16), {}),  # 3-D
        (torch.rand(4, 16, 16, 4), {}),  # 4 channels
        (torch.rand(4, 3, 16, 3), {}),  # ambiguous layout
        (torch.rand(4, 16, 16, 3), {"chunk": 0}),
        (torch.rand(4, 16, 16, 3), {"compute_size": (0, 8)}),
        (torch.rand(4, 16, 16, 3), {"occlusion_form": "squared"}),
        (torch.rand(4, 16, 16, 3), {"layout": "tchw"}),
    ],
)
def test_bad_input_is_rejected(frames, kwargs):
    with pytest.raises(ValueError):
        estimate_video_flow(frames, ShiftEngine(), **kwargs)


def test_ambiguous_layout_resolved_explicitly():
    vf = estimate_video_flow(torch.rand(4, 3, 16, 3), ShiftEngine(), layout="thwc", with_occlusion=False)
    assert vf.grid_size == (3, 16)


def test_engine_returning_wrong_shape_is_reported():
    class Bad:
        name = "bad"

        def __call__(self, src, dst):
            return torch.zeros(src.shape[0], 2, 8, 8)

    with pytest.raises(ValueError, match="bad"):
        estimate_video_flow(torch.rand(3, 16, 16, 3), Bad())


# ---- VideoFlow -----------------------------------------------------------------------------------------


def _vf(t=5, h=12, w=20, occ=True):
    torch.manual_seed(0)
    f = torch.randn(t - 1, 2, h, w)
    m = (torch.rand(t - 1, 1, h, w) > 0.7).float() if occ else None
    return VideoFlow(f, -f, m, m.clone() if occ else None, frame_size=(4 * h, 4 * w), engine="x")


def test_video_flow_resized_scales_vectors_and_rethresholds_masks():
    vf = _vf()
    vf.forward[:] = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    up = vf.resized((24, 60))
    torch.testing.assert_close(up.forward[:, 0], torch.full((4, 24, 60), 6.0))
    torch.testing.assert_close(up.forward[:, 1], torch.full((4, 24, 60), -2.0))
    assert up.frame_size == vf.frame_size and up.engine == "x"
    assert up.occ_forward.shape == (4, 1, 24, 60)
    assert torch.equal(up.occ_forward[..., ::2, ::3], vf.occ_forward)  # nearest on upscale
    down = vf.resized((6, 10), mode="area", mask_threshold=0.5)
    expect = (F.avg_pool2d(vf.occ_forward, 2) >= 0.5).float()
    assert torch.equal(down.occ_forward, expect)
    anyocc = vf.resized((6, 10), mode="area", mask_threshold=0.25)
    assert anyocc.occ_forward.sum() > down.occ_forward.sum()
    with pytest.raises(ValueError):
        vf.resized((6, 10), mask_threshold=0.0)


def test_video_flow_slicing_crop_to_and_save_load(tmp_path):
    vf = _vf()
    seg = vf.frames(1, 4)
    assert seg.num_frames == 3 and torch.equal(seg.forward, vf.forward[1:3])
    crop = vf.crop(2, 4, 8, 10)
    assert crop.grid_size == (8, 10) and crop.frame_size == (32, 40)
    assert torch.equal(crop.occ_backward, vf.occ_backward[..., 2:10, 4:14])
    assert vf.to("cpu").forward.device.type == "cpu"
    path = tmp_path / "flows.safetensors"
    vf.save(path)
    back = VideoFlow.load(path)
    assert back.frame_size == vf.frame_size and back.engine == "x"
    assert torch.equal(back.forward, vf.forward) and torch.equal(back.occ_forward, vf.occ_forward)
    with pytest.raises(ValueError):
        vf.frames(3, 9)
    with pytest.raises(ValueError):
        vf.crop(0, 0, 13, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"forward": torch.zeros(4, 3, 8, 8), "backward": torch.zeros(4, 3, 8, 8)},
        {"forward": torch.zeros(4, 2, 8, 8), "backward": torch.zeros(3, 2, 8, 8)},
        {"forward": torch.zeros(4, 2, 8, 8), "backward": torch.zeros(4, 2, 8, 8), "occ_forward": torch.zeros(4, 1, 8, 8)},
        {"forward": torch.zeros(4, 2, 8, 8), "backward": torch.zeros(4, 2, 8, 8),
         "occ_forward": torch.zeros(4, 1, 8, 9), "occ_backward": torch.zeros(4, 1, 8, 9)},
        {"forward": torch.zeros(4, 2, 8, 8), "backward": torch.zeros(4, 2, 8, 8), "frame_size": (0, 8)},
    ],
)
def test_video_flow_validates_shapes(kwargs):
    with pytest.raises(ValueError):
        VideoFlow(**kwargs)


def test_video_flow_accepts_mgld_style_masks():
    f = torch.zeros(4, 2, 8, 8)
    vf = VideoFlow(f, f, torch.zeros(4, 8, 8), torch.zeros(4, 8, 8))
    assert vf.occ_forward.shape == (4, 1, 8, 8)


# ---- flow_to_rgb ---------------------------------------------------------------------------------------


def test_flow_to_rgb_colours():
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0]]).view(5, 2, 1, 1)
    rgb = flow_to_rgb(f).view(5, 3)
    torch.testing.assert_close(rgb[0], torch.tensor([1.0, 0.0, 0.0]))  # right: red
    assert rgb[1, 0] < 0.1 and rgb[1, 2] > 0.9  # left: cyan-blue
    assert rgb[2, 0] > 0.9 and rgb[2, 1] > 0.8 and rgb[2, 2] < 0.1  # down: yellow
    assert rgb[3, 2] > 0.9 and rgb[3, 1] < 0.1  # up: violet
    torch.testing.assert_close(rgb[4], torch.ones(3))  # no motion: white


def test_flow_to_rgb_layout_range_and_normalisation():
    torch.manual_seed(0)
    f = torch.randn(3, 2, 10, 14) * 5
    f[0, 0, 0, 0] = float("nan")
    rgb = flow_to_rgb(f)
    assert rgb.shape == (3, 10, 14, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.equal(rgb[0, 0, 0], torch.zeros(3))
    # a fixed max magnitude makes frames comparable; scaling all flows does not change the normalised image
    torch.testing.assert_close(flow_to_rgb(f[1:] * 3), flow_to_rgb(f[1:]))
    assert not torch.allclose(flow_to_rgb(f[1:] * 3, max_magnitude=20), flow_to_rgb(f[1:], max_magnitude=20))
    with pytest.raises(ValueError):
        flow_to_rgb(torch.zeros(1, 3, 4, 4))
