"""Streaming a video file through a method chunk by chunk (vsr_core/stream.py, the stream node and CLI)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vsr_core.flow import VideoFlow, warp
from vsr_core.io import FrameSelection, load_video, probe, save_video
from vsr_core.stream import (ChunkBlender, ChunkCarry, StreamPipeline, _DiffusionRunner, _morph,
                             crossfade_weights, frame_noise, overlapping_chunks, plan_chunks,
                             stream_video)

LR = (16, 24)


def _texture(h, w, seed=0):
    from vsr_core.synthetic import smooth_texture

    return torch.from_numpy(smooth_texture(h, w, seed=seed)).float() / 255


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 9-frame 24x16 clip with camera motion (lossless, so reads are exact)."""
    from vsr_core.synthetic import camera_path, render_views, smooth_texture

    path = tmp_path_factory.mktemp("clip") / "in.mkv"
    views = render_views(smooth_texture(64, 96, seed=3), LR, camera_path(9, "pan"))
    save_video(torch.from_numpy(views), path, 8, fmt="mkv (ffv1 lossless)")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from vsr_core.loaders import load_method_model
    from vsr_core.loaders.mgld import write_tiny_mgld
    from vsr_core.loaders.tiny import write_tiny_sd_x4, write_tiny_stablevsr
    from vsr_core.loaders.uav import write_tiny_uav

    root = tmp_path_factory.mktemp("models")
    folders = {"stablevsr": write_tiny_stablevsr(root / "svsr"), "sd_x4": write_tiny_sd_x4(root / "x4"),
               "upscale_a_video": write_tiny_uav(root / "uav"), "mgld": root / "mgld"}
    write_tiny_mgld(root / "mgld")
    out = {k: load_method_model(k, p) for k, p in folders.items()}
    out["folders"] = folders
    return out


def _frames(path) -> torch.Tensor:
    frames, _ = load_video(path)
    return frames


# ---------------------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("total", [1, 5, 10, 17])
@pytest.mark.parametrize("chunk,overlap", [(3, 0), (3, 1), (6, 2), (6, 0)])
@pytest.mark.parametrize("incoming", [1, 4, 16])
def test_overlapping_chunks_follow_the_plan_whatever_the_reader_delivers(total, chunk, overlap, incoming):
    video = torch.arange(total, dtype=torch.float32).view(total, 1, 1, 1).expand(total, 2, 2, 3)
    reads = (video[s:s + incoming] for s in range(0, total, incoming))
    got = list(overlapping_chunks(reads, chunk, overlap))
    spans = plan_chunks(total, chunk, overlap)
    assert [(s, s + f.shape[0]) for s, f, _ in got] == spans
    assert [last for *_, last in got] == [False] * (len(spans) - 1) + [True]
    for s, f, _ in got:
        assert torch.equal(f, video[s:s + f.shape[0]])
    # every chunk after the first brings at least one new frame
    assert all(e - s > overlap for s, e in spans[1:])


def test_chunk_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap < chunk"):
        plan_chunks(10, 4, 4)
    with pytest.raises(ValueError, match="overlap < chunk"):
        list(overlapping_chunks([torch.zeros(3, 2, 2, 3)], 2, 2))


def test_crossfade_weights_rise_and_pair_to_one():
    for n in (1, 2, 4, 7):
        w = crossfade_weights(n)
        assert ((w > 0) & (w < 1)).all() and (w[1:] > w[:-1]).all()
        assert torch.allclose(w + w.flip(0), torch.ones(n))


def test_frame_noise_depends_on_the_frame_not_the_chunk():
    a = frame_noise(7, 12, (4, 3, 3))
    assert torch.equal(a, frame_noise(7, 12, (4, 3, 3)))
    assert not torch.equal(a, frame_noise(7, 13, (4, 3, 3)))
    assert not torch.equal(a, frame_noise(8, 12, (4, 3, 3)))
    assert not torch.equal(a, frame_noise(7, 12, (4, 3, 3), stream=1))


# ---------------------------------------------------------------------------------------- blending

@pytest.mark.parametrize("mode", ["hann", "flow"])
def test_blender_writes_every_frame_once_and_agreeing_chunks_pass_unchanged(mode):
    from vsr_core.flow import DISEngine

    total, chunk, overlap = 11, 5, 2
    video = torch.stack([_texture(24, 32, seed=i) for i in range(total)])
    blender = ChunkBlender(mode, DISEngine("ultrafast"))
    spans = plan_chunks(total, chunk, overlap)
    written = []
    for k, (s, e) in enumerate(spans):
        last = k == len(spans) - 1
        written.append(blender.push(video[s:e].clone(), overlap if k else 0, 0 if last else overlap, last))
    out = torch.cat(written)
    assert out.shape == video.shape
    assert (out - video).abs().max() < (1e-6 if mode == "hann" else 2e-3)


def test_hann_blend_crossfades_the_overlap():
    blender = ChunkBlender("hann")
    first = torch.zeros(5, 2, 2, 3)
    assert blender.push(first, 0, 2, False).shape[0] == 3
    out = blender.push(torch.ones(5, 2, 2, 3), 2, 0, True)
    w = crossfade_weights(2)
    assert torch.allclose(out[:2, 0, 0, 0], w) and torch.equal(out[2:], torch.ones(3, 2, 2, 3))
    with pytest.raises(RuntimeError, match="held back"):
        ChunkBlender("hann").push(torch.ones(3, 2, 2, 3), 2, 0, True)


def test_flow_aligned_crossfade_slides_details_instead_of_doubling_them():
    """Two versions of a frame whose details sit 4 px apart: halfway, the morph is close to the detail
    moved 2 px (one sharp copy), the plain crossfade is two faint copies."""
    from vsr_core.flow import DISEngine

    a = _texture(64, 96, seed=5)
    x = a.permute(2, 0, 1)[None]

    def shifted(dx):
        return warp(x, torch.tensor([-dx, 0.0]).view(1, 2, 1, 1).expand(1, 2, 64, 96), padding_mode="border")

    b = shifted(4.0)[0].permute(1, 2, 0)
    truth = shifted(2.0)[0].permute(1, 2, 0)
    inner = (slice(8, -8), slice(12, -12))
    morph = _morph(a, b, 0.5, DISEngine("medium"))
    plain = 0.5 * a + 0.5 * b
    err_morph = (morph - truth)[inner].abs().mean()
    err_plain = (plain - truth)[inner].abs().mean()
    assert err_morph < 0.5 * err_plain, (err_morph, err_plain)
    assert torch.allclose(_morph(a, b, 0.0, DISEngine("ultrafast")), a, atol=1e-5)
    assert torch.allclose(_morph(a, b, 1.0, DISEngine("ultrafast")), b, atol=1e-5)


def test_chunk_carry_anchors_the_overlap_and_records_the_tail():
    x0 = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 2, 2).clone()
    prev = torch.full((2, 2, 2, 2), 10.0)
    w = torch.tensor([0.25, 0.75])
    hook = ChunkCarry({3: prev}, w, keep=3)
    out = hook.on_x0(x0, None, 3)
    assert torch.allclose(out[0], torch.full((2, 2, 2), 0.25 * 0 + 0.75 * 10))
    assert torch.allclose(out[1], torch.full((2, 2, 2), 0.75 * 1 + 0.25 * 10))
    assert torch.equal(out[2:], x0[2:]) and torch.equal(x0[0], torch.zeros(2, 2, 2))  # input untouched
    assert torch.equal(hook.recorded[3], out[2:])
    assert torch.equal(hook.on_x0(x0, None, 4), x0)  # no record for that step: nothing to anchor


# ------------------------------------------------------------------------------ carried state

def test_stablevsr_preceding_frame_reproduces_the_whole_clip_run(models):
    """A 1-frame clip given the frame before it (its per-step x̂0 and the flow) computes exactly what
    the 2-frame run computes for that frame (natural order: frame 1 is guided by frame 0)."""
    from vsr_core.sampling.prompt import prompt_embeddings
    from vsr_core.sampling.stablevsr import PrecedingFrame, sample_stablevsr
    from vsr_core.sampling.x4 import LRConditioning

    model = models["stablevsr"]
    g = torch.Generator().manual_seed(0)
    cond = LRConditioning(torch.rand(2, 3, 8, 8, generator=g) * 2 - 1)
    H = 8 * model.vae_scale_factor
    flow = VideoFlow(torch.randn(1, 2, H, H, generator=g), torch.randn(1, 2, H, H, generator=g))
    lat = torch.randn(2, 4, 8, 8, generator=g)
    noise = lambda i, k, shape: frame_noise(1, k, shape, 100 + i)  # noqa: E731
    emb = prompt_embeddings(model, "")
    rec = ChunkCarry(keep=2)
    full = sample_stablevsr(model, cond, flow, emb, steps=3, bidirectional=False, latents=lat, noise=noise,
                            hooks=[rec])
    one = VideoFlow(torch.zeros(0, 2, H, H), torch.zeros(0, 2, H, H))
    alone = sample_stablevsr(model, cond.frames(1, 2), one, emb, steps=3, bidirectional=False, latents=lat[1:],
                             noise=lambda i, k, shape: noise(i, k + 1, shape))
    carried = sample_stablevsr(model, cond.frames(1, 2), one, emb, steps=3, bidirectional=False, latents=lat[1:],
                               noise=lambda i, k, shape: noise(i, k + 1, shape),
                               preceding=PrecedingFrame({i: x[:1] for i, x in rec.recorded.items()},
                                                        flow.backward[:1]))
    assert torch.allclose(carried[0], full[1], atol=1e-5)
    assert (alone[0] - full[1]).abs().max() > 1e-3  # without the carry the guidance is missing


@pytest.mark.parametrize("method", ["upscale_a_video", "stablevsr"])
def test_carried_state_brings_the_chunks_together_in_the_overlap(models, method):
    """Chunk 2 recomputes chunk 1's last frames: with the carried x̂0 its version of the first shared
    frame is much closer to chunk 1's than when chunk 2 starts afresh."""
    from vsr_core.flow import DISEngine

    settings = {"upscale_a_video": dict(steps=3, propagation_steps=[1]), "stablevsr": dict(steps=3)}[method]
    lr = torch.stack([_texture(*LR, seed=i) for i in range(8)])
    pipe = StreamPipeline(method, models[method], DISEngine("ultrafast"), settings)
    tick = lambda f: None  # noqa: E731
    runner = _DiffusionRunner(pipe)
    first = runner(lr[:5], 0, 0, 2, False, tick)
    carried = runner(lr[3:], 3, 2, 0, True, tick)
    fresh_runner = _DiffusionRunner(pipe)
    fresh = fresh_runner(lr[3:], 3, 0, 0, True, tick)
    d_carry = (carried[0] - first[3]).abs().mean()
    d_fresh = (fresh[0] - first[3]).abs().mean()
    assert d_carry < 0.5 * d_fresh, (d_carry, d_fresh)


# ------------------------------------------------------------------------------- whole videos

def test_per_frame_x4_result_does_not_depend_on_the_chunking(models, clip, tmp_path):
    pipe = lambda: StreamPipeline("sd_x4", models["sd_x4"], None, dict(steps=2, guidance_scale=0))  # noqa: E731
    a = stream_video(clip, tmp_path / "a.mkv", pipe(), chunk=3, overlap=0, fmt="mkv (ffv1 lossless)")
    b = stream_video(clip, tmp_path / "b.mkv", pipe(), chunk=9, overlap=0, fmt="mkv (ffv1 lossless)")
    c = stream_video(clip, tmp_path / "c.mkv", pipe(), chunk=4, overlap=2, blend="hann", fmt="mkv (ffv1 lossless)")
    fa, fb, fc = _frames(a), _frames(b), _frames(c)
    assert fa.shape == (9, LR[0] * 4, LR[1] * 4, 3)
    assert torch.equal(fa, fb)
    assert (fa - fc).abs().max() <= 1 / 255 + 1e-6


def test_stream_a_diffusion_method_to_a_file(models, clip, tmp_path):
    seen = []
    pipe = StreamPipeline("upscale_a_video", models["upscale_a_video"], None, dict(steps=2, propagation_steps=[0]))
    out = stream_video(clip, tmp_path / "uav.mp4", pipe, FrameSelection(skip_first=1), chunk=4, overlap=1,
                       progress=lambda d, t: seen.append((d, t)))
    info = probe(out)
    assert (info.num_frames, info.width, info.height) == (8, LR[1] * 4, LR[0] * 4)
    assert seen[-1] == (8, 8) and all(d <= t for d, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("method", ["stablevsr", "mgld"])
def test_stream_other_methods(models, clip, tmp_path, method):
    settings = {"stablevsr": dict(steps=2), "mgld": dict(steps=2, min_side=0)}[method]
    pipe = StreamPipeline(method, models[method], None, settings)
    out = stream_video(clip, tmp_path / f"{method}.mkv", pipe, FrameSelection(cap=6), chunk=4, overlap=1,
                       fmt="mkv (ffv1 lossless)")
    frames = _frames(out)
    assert frames.shape == (6, LR[0] * 4, LR[1] * 4, 3)
    assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0


def test_an_interrupted_stream_leaves_no_file(models, clip, tmp_path):
    class Stop(Exception):
        pass

    def progress(done, total):
        if done >= 3:
            raise Stop

    pipe = StreamPipeline("sd_x4", models["sd_x4"], None, dict(steps=1, guidance_scale=0))
    with pytest.raises(Stop):
        stream_video(clip, tmp_path / "out.mp4", pipe, chunk=3, progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_pipeline_errors(models):
    with pytest.raises(ValueError, match="needs its model"):
        StreamPipeline("stablevsr")
    with pytest.raises(ValueError, match="is a upscale_a_video model"):
        StreamPipeline("stablevsr", models["upscale_a_video"])
    with pytest.raises(ValueError, match=r"unknown upscale_a_video setting\(s\) \['stepz'\]; known: .*steps"):
        StreamPipeline("upscale_a_video", models["upscale_a_video"], settings={"stepz": 3})
    with pytest.raises(ValueError, match="unknown method"):
        StreamPipeline("satec")


def test_propagation_steps_count_from_the_end_and_are_checked_before_any_frame(models):
    uav = models["upscale_a_video"]
    pipe = StreamPipeline("upscale_a_video", uav, None, dict(steps=20, propagation_steps=[-6, -4, -2]))
    assert pipe.settings["propagation_steps"] == [14, 16, 18]
    assert StreamPipeline("upscale_a_video", uav).settings["propagation_steps"] == []
    with pytest.raises(ValueError, match="outside 0..19 .*instead: -6,-4,-2"):
        StreamPipeline("upscale_a_video", uav, None, dict(steps=20, propagation_steps=[24, 26, 28]))


def test_mgld_runs_a_clip_shorter_than_its_segment_in_overlap_mode(models):
    from vsr_core.sampling.mgld import sample_mgld

    lr = torch.rand(3, 3, 16, 16)
    z = sample_mgld(models["mgld"], lr, None, steps=1, segment=5, segment_mode="overlap", guidance_scale=0,
                    min_side=0)
    assert z.shape[0] == 3 and torch.isfinite(z).all()


# ------------------------------------------------------------------------------- CLI and node

def test_cli_stream(models, clip, tmp_path, capsys):
    from vsr_core.cli import main

    out = tmp_path / "cli.mp4"
    rc = main(["stream", str(clip), str(out), "--method", "upscale_a_video", "--model",
               str(models["folders"]["upscale_a_video"]), "--steps", "1", "--chunk", "4", "--overlap", "1",
               "--blend", "hann", "--frames", "5", "--settings", '{"guidance_scale": 1}'])
    assert rc == 0 and probe(out).num_frames == 5
    assert main(["stream", str(clip), str(tmp_path / "x.mp4"), "--method", "mgld"]) == 2
    assert "needs --model" in capsys.readouterr().err
    rc = main(["stream", str(clip), str(tmp_path / "x.mp4"), "--method", "upscale_a_video", "--model",
               str(models["folders"]["upscale_a_video"]), "--settings", '{"windw": 4}'])
    assert rc == 1 and "unknown upscale_a_video setting" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    rc = main(["stream", str(clip), str(tmp_path / "x.mp4"), "--method", "upscale_a_video", "--model",
               str(models["folders"]["upscale_a_video"]), "--steps", "20", "--settings",
               '{"propagation_steps": [24, 26, 28]}'])
    assert rc == 1 and "count from the end instead: -6,-4,-2" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    assert main(["stream", str(clip), str(tmp_path / "l.mp4"), "--frames", "3", "--scale", "2"]) == 0
    assert probe(tmp_path / "l.mp4").width == LR[1] * 2


def test_stream_node_with_the_loader_info_and_a_model(models, clip, folders):
    from pack import load_pack

    nodes = load_pack().NODE_CLASS_MAPPINGS
    (folders / "input" / "clip.mkv").write_bytes(clip.read_bytes())
    frames, count, fps, audio, info = nodes["VSR_LoadVideoFrames"]().load("clip.mkv", frame_load_cap=5,
                                                                            skip_first_frames=2)
    node = nodes["VSR_StreamUpscaleVideo"]()
    res = node.run("the connected model", steps=1, settings=json.dumps({"guidance_scale": 1.0}), chunk_frames=3,
                   chunk_overlap=1, blend="hann", model=models["upscale_a_video"], video_info=info,
                   format="mkv (ffv1 lossless)")
    path = Path(res["result"][0])
    assert path.parent == folders / "output" / "VSR" and res["ui"]["images"][0]["filename"] == path.name
    out = _frames(path)
    assert out.shape == (5, LR[0] * 4, LR[1] * 4, 3)
    # the loader's selection was followed: frame 0 of the output is source frame 2 upscaled
    bic = torch.nn.functional.interpolate(frames[:1].permute(0, 3, 1, 2), scale_factor=4, mode="bicubic")
    assert (out[:1].permute(0, 3, 1, 2) - bic).abs().mean() < (out[1:2].permute(0, 3, 1, 2) - bic).abs().mean() + 0.2

    learned = node.run("learned", video="clip.mkv", scale=2, filename_prefix="VSR/learned")
    assert probe(learned["result"][0]).num_frames == 9
    with pytest.raises(ValueError, match="no model is connected"):
        node.run("the connected model", video="clip.mkv")
    with pytest.raises(ValueError, match="JSON object"):
        node.run("the connected model", video="clip.mkv", settings="{steps: 2", model=models["mgld"])
    with pytest.raises(ValueError, match="no video"):
        node.run("learned")
    with pytest.raises(PermissionError, match="outside the folders"):
        node.run("learned", path="/etc/hostname")
    assert np.array_equal(sorted(p.name for p in (folders / "output" / "VSR").iterdir()),
                          sorted([path.name, Path(learned["result"][0]).name]))


def test_stream_speed_options_stay_within_the_stated_tolerance(models, clip, tmp_path):
    from vsr_core.speed import TOLERANCE_DB

    def run(speed, name):
        pipe = StreamPipeline("sd_x4", models["sd_x4"], None, dict(steps=2, guidance_scale=0), speed=speed)
        return _frames(stream_video(clip, tmp_path / name, pipe, FrameSelection(cap=3), chunk=3,
                                    fmt="mkv (ffv1 lossless)"))

    ref, fast = run("as loaded", "ref.mkv"), run("bf16-autocast", "fast.mkv")
    mse = ((ref - fast) ** 2).mean()
    assert 0 < mse and 10 * torch.log10(1 / mse) >= TOLERANCE_DB
    with pytest.raises(ValueError, match="speed options"):
        stream_video(clip, tmp_path / "bad.mkv", StreamPipeline("sd_x4", models["sd_x4"], speed="fast please"))
