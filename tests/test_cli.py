"""The command line, end to end, in a separate process (as a user runs it)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from media import frame_index, indexed_frames, write_video
from pack import REPO

from vsr_core.io import load_audio, load_video, probe


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "vsr_core", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=300)


def test_upscale_a_short_clip_with_selection_audio_and_comparison(tmp_path):
    src = write_video(tmp_path / "in.mkv", indexed_frames(30, 24, 32), fps=30, codec="ffv1", pix_fmt="bgr0",
                      audio=(16000, 2, 1.0))
    out, png = tmp_path / "out" / "up.mp4", tmp_path / "cmp.png"
    r = run_cli("upscale", src, out, "--scale", 4, "--method", "lanczos", "--skip", 2, "--nth", 2, "--frames", 9,
                "--chunk", 4, "--compare", png)
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr  # tqdm progress
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (128, 96, 9)
    assert info.fps == pytest.approx(15.0)
    frames, _ = load_video(out)
    assert [frame_index(f) for f in frames] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    audio = load_audio(out)
    assert audio["waveform"].shape[1] == 2 and audio["waveform"].shape[-1] / 16000 == pytest.approx(0.6, abs=0.06)
    import cv2

    assert cv2.imread(str(png)).shape == (96, 128 * 2 + 4, 3)  # bicubic | result
    assert not list((tmp_path / "out").glob(".*"))


def test_missing_input_and_same_output_are_clear_errors(tmp_path):
    r = run_cli("upscale", tmp_path / "nope.mp4", tmp_path / "o.mp4")
    assert r.returncode == 2 and "not found" in r.stderr
    src = write_video(tmp_path / "a.mkv", indexed_frames(2), codec="ffv1", pix_fmt="bgr0")
    r = run_cli("upscale", src, src)
    assert r.returncode == 2 and "output path is the input path" in r.stderr
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    r = run_cli("upscale", bad, tmp_path / "o.mp4")
    assert r.returncode == 1 and "damaged or not a video" in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_upscale_never_replaces_an_existing_file_unless_asked(tmp_path):
    src = write_video(tmp_path / "clip.mkv", indexed_frames(3, 16, 16), codec="ffv1", pix_fmt="bgr0")
    out = tmp_path / "result.mp4"
    out.write_bytes(b"an hour of someone's render")
    r = run_cli("upscale", src, out, "--method", "bicubic")
    assert r.returncode == 2 and r.stderr == f"error: {out} already exists; use --overwrite (-y) to replace it\n"
    assert out.read_bytes() == b"an hour of someone's render"
    r = run_cli("upscale", src, out, "--method", "bicubic", "-y")
    assert r.returncode == 0, r.stderr
    assert probe(out).num_frames == 3 and sorted(tmp_path.iterdir()) == [src, out]


def test_demo_job_writes_video_and_comparison(tmp_path):
    r = run_cli("demo", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    info = probe(tmp_path / "demo_x4.mp4")
    lr = probe(REPO / "vsr_core" / "assets" / "demo_coffee_lr.mp4")
    assert (info.width, info.height, info.num_frames) == (lr.width * 4, lr.height * 4, lr.num_frames)
    assert (tmp_path / "demo_compare.png").stat().st_size > 10_000


def test_render_makes_a_clip_with_ground_truth(tmp_path):
    import cv2
    import numpy as np

    from vsr_core.synthetic import smooth_texture

    img = tmp_path / "tex.png"
    cv2.imwrite(str(img), smooth_texture(200, 260)[..., ::-1])
    r = run_cli("render", img, tmp_path / "lr.mkv", "--hr", tmp_path / "hr.mkv", "--frames", 6, "--size", "96x128",
                "--motion", "pan")
    assert r.returncode == 0, r.stderr
    lr, hr = probe(tmp_path / "lr.mkv"), probe(tmp_path / "hr.mkv")
    assert (lr.width, lr.height, lr.num_frames) == (32, 24, 6) and (hr.width, hr.height) == (128, 96)
    frames, _ = load_video(tmp_path / "hr.mkv")
    assert float((frames[0] - frames[5]).abs().mean()) > 0.01  # the camera moves
    assert np.isfinite(frames.numpy()).all()


def test_convert_a_lightning_checkpoint_to_safetensors(tmp_path):
    from safetensors.torch import load_file

    from vsr_core.loaders.mgld import write_tiny_mgld
    from vsr_core.loaders.safe_pickle import load_state_dict

    paths = write_tiny_mgld(tmp_path / "mgld", weights="ckpt", text_encoder=False)
    ckpt = paths["video_vae"]
    r = run_cli("convert", ckpt, tmp_path / "vae.safetensors")
    assert r.returncode == 0, r.stderr
    converted = load_file(str(tmp_path / "vae.safetensors"))
    original = load_state_dict(ckpt)
    assert converted.keys() == original.keys()
    assert all((converted[k] == original[k]).all() for k in original)
