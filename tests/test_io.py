"""Video reading/writing: round trips, selection arithmetic, odd inputs and broken files."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from media import frame_index, indexed_frames, level, write_video

from vsr_core.io import (FrameSelection, OutputExistsError, VideoReadError, VideoWriter, iter_frames, load_audio,
                         load_video, probe, save_video, target_size)
from vsr_core.memory import InsufficientMemoryError


# ------------------------------------------------------------------------------ selection arithmetic

@pytest.mark.parametrize("total", [0, 1, 7, 30])
@pytest.mark.parametrize("skip", [0, 1, 5, 40])
@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize("cap", [0, 1, 4])
def test_selection_matches_brute_force(total, skip, nth, cap):
    sel = FrameSelection(skip_first=skip, nth=nth, cap=cap)
    expected = [i for i in range(total) if i >= skip and (i - skip) % nth == 0]
    if cap:
        expected = expected[:cap]
    assert list(sel.indices(total)) == expected
    assert sel.count(total) == len(expected)


@pytest.mark.parametrize("kwargs", [dict(skip_first=-1), dict(nth=0), dict(cap=-2)])
def test_selection_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FrameSelection(**kwargs)


def test_load_returns_exactly_the_selected_frames(tmp_path):
    path = write_video(tmp_path / "idx.mkv", indexed_frames(30), fps=30, codec="ffv1", pix_fmt="bgr0")
    frames, info = load_video(path, FrameSelection(skip_first=3, nth=4, cap=5))
    assert [frame_index(f) for f in frames] == [3, 7, 11, 15, 19]
    assert info.loaded_frames == 5 and info.num_frames == 30
    assert info.loaded_fps == pytest.approx(30 / 4)
    # iterating in chunks yields the same frames, never more than `chunk` at a time
    parts = list(iter_frames(path, FrameSelection(skip_first=3, nth=4, cap=5), chunk=2))
    assert [p.shape[0] for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat(parts), frames)


def test_skip_past_the_end_is_a_clear_error(tmp_path):
    path = write_video(tmp_path / "short.mkv", indexed_frames(4), codec="ffv1", pix_fmt="bgr0")
    with pytest.raises(VideoReadError, match="skip_first_frames"):
        load_video(path, FrameSelection(skip_first=10))


# ------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("fmt", ["mp4 (h264)", "mp4 (h265)", "mkv (ffv1 lossless)"])
def test_round_trip_keeps_count_fps_size_and_audio(tmp_path, fmt):
    frames = torch.from_numpy(indexed_frames(12, 40, 64)).float() / 255
    audio = {"waveform": torch.sin(torch.linspace(0, 200, 22050))[None, None].repeat(1, 2, 1) * 0.3,
             "sample_rate": 22050}
    fps = 30000 / 1001
    out = save_video(frames, tmp_path / "rt", fps, fmt=fmt, audio=audio)
    assert out.exists() and not list(tmp_path.glob(".*partial*"))
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (64, 40, 12)
    assert info.fps == pytest.approx(fps, abs=1e-3)
    back, _ = load_video(out)
    assert back.shape == frames.shape
    tol = 0 if "lossless" in fmt else 2 / 255
    assert (back - frames).abs().max() <= tol + 1e-6
    got = load_audio(out)
    assert got is not None and got["sample_rate"] == 22050 and got["waveform"].shape[1] == 2
    # the audio is trimmed to the video length (12 frames at 29.97 fps = 0.4 s)
    assert got["waveform"].shape[-1] / 22050 == pytest.approx(12 / fps, abs=0.06)


def test_png_sequence_is_lossless_and_atomic(tmp_path):
    frames = torch.rand(3, 17, 21, 3)
    out = save_video(frames, tmp_path / "seq", 24, fmt="png sequence")
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    import cv2

    first = cv2.imread(str(pngs[0]))[..., ::-1] / 255.0
    assert np.abs(first - frames[0].numpy()).max() <= 0.5 / 255 + 1e-6


def test_ten_bit_output_keeps_precision(tmp_path):
    ramp = torch.linspace(0.2, 0.21, 64)  # a ramp finer than 8-bit steps
    frames = ramp[None, None, :, None].expand(2, 16, 64, 3).contiguous()
    out = save_video(frames, tmp_path / "ten", 24, fmt="mkv (ffv1 lossless)")
    assert probe(out).bit_depth == 8  # ffv1 default is 8-bit RGB
    out10 = save_video(frames, tmp_path / "ten10", 24, fmt="mp4 (h264)", pix_fmt="yuv420p10le", crf=0)
    info = probe(out10)
    assert info.bit_depth == 10
    back, _ = load_video(out10)
    assert len(torch.unique(back[0, 8, :, 1])) > 4  # 8-bit would collapse the ramp to ~3 levels


def test_odd_size_is_padded_for_h264_and_exact_for_ffv1(tmp_path):
    frames = torch.rand(2, 23, 37, 3)
    with VideoWriter(tmp_path / "odd.mp4", 24) as w:
        w.write(frames)
    assert w.padded
    assert (probe(w.path).width, probe(w.path).height) == (38, 24)
    exact = save_video(frames, tmp_path / "odd", 24, fmt="mkv (ffv1 lossless)")
    back, _ = load_video(exact)
    assert back.shape == (2, 23, 37, 3)


# ------------------------------------------------------------------------------ unusual inputs

def test_grayscale_input_loads_as_rgb(tmp_path):
    gray = indexed_frames(5)[..., :1].copy()
    path = write_video(tmp_path / "gray.mkv", gray[..., 0], codec="ffv1", pix_fmt="gray", in_format="gray")
    frames, info = load_video(path)
    assert frames.shape == (5, 32, 48, 3)
    assert torch.equal(frames[..., 0], frames[..., 1]) and torch.equal(frames[..., 1], frames[..., 2])
    assert [frame_index(f) for f in frames] == list(range(5))


def test_alpha_input_loads_rgb_and_reports_alpha(tmp_path):
    rgba = np.concatenate([indexed_frames(4), np.full((4, 32, 48, 1), 128, np.uint8)], axis=-1)
    path = write_video(tmp_path / "alpha.mov", rgba, codec="png", pix_fmt="rgba", in_format="rgba")
    info = probe(path)
    assert info.has_alpha
    frames, _ = load_video(path)
    assert frames.shape == (4, 32, 48, 3)
    assert [frame_index(f) for f in frames] == list(range(4))


def test_ten_bit_input_is_read_with_full_precision(tmp_path):
    arr = np.zeros((3, 16, 32, 3), np.uint16)
    arr[..., :] = (np.linspace(400, 420, 32)[None, None, :, None] * 64).astype(np.uint16)  # 10-bit levels
    path = write_video(tmp_path / "ten.mkv", arr, codec="ffv1", pix_fmt="yuv444p10le", in_format="rgb48le")
    info = probe(path)
    assert info.bit_depth == 10
    frames, _ = load_video(path)
    values = torch.unique((frames[0, 8, :, 1] * 1023).round())
    assert len(values) >= 15  # 21 ten-bit levels survive; an 8-bit path would keep ~6


def test_variable_frame_rate_file(tmp_path):
    tb = Fraction(1, 1000)
    pts = [0, 40, 80, 200, 240, 400, 440, 480]  # irregular gaps
    path = write_video(tmp_path / "vfr.mkv", indexed_frames(8), fps=25, codec="ffv1", pix_fmt="bgr0",
                       pts=pts, time_base=tb)
    frames, info = load_video(path)
    assert [frame_index(f) for f in frames] == list(range(8))  # every frame, in order, none duplicated
    assert info.loaded_frames == 8 and info.fps > 0


def test_resize_targets():
    assert target_size(100, 60, "none") is None
    assert target_size(100, 60, "multiple_of_8") == (64, 104)
    assert target_size(640, 360, "custom", custom_width=320) == (184, 320)
    assert target_size(640, 360, "custom", 320, 200) == (200, 320)
    with pytest.raises(ValueError):
        target_size(10, 10, "stretch")


def test_load_with_resize(tmp_path):
    path = write_video(tmp_path / "r.mkv", indexed_frames(3, 30, 50), codec="ffv1", pix_fmt="bgr0")
    frames, info = load_video(path, size=target_size(50, 30, "multiple_of_8"))
    assert frames.shape == (3, 32, 48, 3) and info.loaded_size == (32, 48)


# ------------------------------------------------------------------------------ broken files

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_video(tmp_path / "nope.mp4")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="damaged or not a video"):
        load_video(bad)


def test_truncated_file_gives_the_frames_before_the_damage_or_a_clear_error(tmp_path):
    path = write_video(tmp_path / "t.mp4", indexed_frames(20, 64, 64), options={"g": "1"})
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        frames, _ = load_video(cut)
    except VideoReadError as e:
        assert "cut.mp4" in str(e)
    else:
        assert 0 < frames.shape[0] < 20


@pytest.mark.parametrize("ext,codec", [("mkv", "ffv1"), ("mp4", "libx264")])
def test_zero_frame_file(tmp_path, ext, codec):
    path = tmp_path / f"empty.{ext}"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()  # header with a video stream, then no frames
    assert path.stat().st_size > 0
    # mkv keeps the empty track; the mp4 demuxer drops it: either way the user learns there is no video
    with pytest.raises(VideoReadError, match="no video frames" if ext == "mkv" else "no video stream"):
        load_video(path)


def test_audio_only_file_is_refused(tmp_path):
    path = tmp_path / "a.mka"
    with av.open(str(path), "w") as c:
        a = c.add_stream("flac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for p in a.encode(frame):
            c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    with pytest.raises(VideoReadError, match="no video stream"):
        probe(path)


def test_refuses_up_front_when_frames_do_not_fit_in_ram(tmp_path, monkeypatch):
    path = write_video(tmp_path / "big.mkv", indexed_frames(10, 256, 256), codec="ffv1", pix_fmt="bgr0")
    monkeypatch.setenv("VSR_RAM_BUDGET_MB", "4")  # 10 frames of 256x256 float need 7.5 MiB
    with pytest.raises(InsufficientMemoryError, match="frame_load_cap"):
        load_video(path)
    frames, _ = load_video(path, FrameSelection(cap=2))  # 1.5 MiB fits
    assert frames.shape[0] == 2


# ------------------------------------------------------------------------------ atomic writes

def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, 24) as w:
            w.write(torch.rand(3, 32, 32, 3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_size_change_mid_video_is_refused_and_cleaned(tmp_path):
    with pytest.raises(ValueError, match="frame size changed"):
        with VideoWriter(tmp_path / "x.mp4", 24) as w:
            w.write(torch.rand(1, 32, 32, 3))
            w.write(torch.rand(1, 16, 16, 3))
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "keep.mp4"
    save_video(torch.full((2, 16, 16, 3), level(3) / 255), target, 24)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 24, on_exists="replace") as w:
            w.write(torch.rand(2, 16, 16, 3))
            raise RuntimeError("interrupted")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]
    save_video(torch.full((3, 16, 16, 3), level(5) / 255), target, 24, on_exists="replace")
    assert probe(target).num_frames == 3


def test_existing_output_is_refused_before_any_work(tmp_path):
    target = tmp_path / "mine.mp4"
    target.write_bytes(b"an hour of someone's render")
    with pytest.raises(OutputExistsError, match="mine.mp4 already exists"):
        VideoWriter(target, 24)
    assert target.read_bytes() == b"an hour of someone's render"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.mp4"]


@pytest.mark.parametrize("fmt", ["mp4 (h264)", "png sequence"])
def test_output_that_appears_while_writing_is_never_replaced(tmp_path, fmt):
    target = tmp_path / "race.mp4" if fmt != "png sequence" else tmp_path / "race"
    w = VideoWriter(target, 24, fmt=fmt)
    w.write(torch.rand(2, 16, 16, 3))
    if fmt == "png sequence":  # another run finished first under the same name
        target.mkdir()
        (target / "theirs.png").write_bytes(b"theirs")
    else:
        target.write_bytes(b"theirs")
    with pytest.raises(OutputExistsError, match="was left as it was; the result was saved as .*race.1"):
        w.close()
    theirs = target / "theirs.png" if fmt == "png sequence" else target
    assert theirs.read_bytes() == b"theirs"
    assert w.kept_as == w.path and w.path.name.startswith("race.1")
    kept = sorted(w.path.iterdir()) if fmt == "png sequence" else [w.path]
    assert len(kept) == 2 if fmt == "png sequence" else probe(w.path).num_frames == 2
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name or p.name.startswith(".")]


def test_output_that_appears_while_writing_goes_to_the_next_name_given(tmp_path):
    target = tmp_path / "v_00001.mp4"
    names = iter([tmp_path / "v_00002.mp4", tmp_path / "v_00003.mp4"])
    w = VideoWriter(target, 24, on_exists=lambda taken: next(names))
    w.write(torch.rand(2, 16, 16, 3))
    target.write_bytes(b"one")
    (tmp_path / "v_00002.mp4").write_bytes(b"two")
    assert w.close() == tmp_path / "v_00003.mp4"
    assert target.read_bytes() == b"one" and (tmp_path / "v_00002.mp4").read_bytes() == b"two"
    assert probe(tmp_path / "v_00003.mp4").num_frames == 2


def test_two_writers_to_one_name_never_share_a_partial_file(tmp_path):
    a, b = VideoWriter(tmp_path / "same.mp4", 24), VideoWriter(tmp_path / "same.mp4", 24,
                                                               on_exists=lambda t: tmp_path / "other.mp4")
    assert a._tmp != b._tmp
    a.write(torch.zeros(2, 16, 16, 3))
    b.write(torch.ones(3, 16, 16, 3))
    assert a.close() == tmp_path / "same.mp4" and b.close() == tmp_path / "other.mp4"
    assert probe(tmp_path / "same.mp4").num_frames == 2 and probe(tmp_path / "other.mp4").num_frames == 3


def test_bad_fps_and_format():
    with pytest.raises(ValueError, match="fps"):
        VideoWriter("/tmp/x.mp4", 0)
    with pytest.raises(ValueError, match="unknown output format"):
        VideoWriter("/tmp/x.avi", 24, fmt="avi")


def test_sixteen_bit_ffv1_stores_the_integers_it_was_given(tmp_path):
    from vsr_core.io.video import iter_stored_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 65536, (3, 10, 14, 3), dtype=np.uint16)
    out = save_video(frames, tmp_path / "master.mkv", 24, fmt="mkv (ffv1 lossless)", pix_fmt="gbrp16le")
    assert probe(out).bit_depth == 16
    assert np.array_equal(np.concatenate(list(iter_stored_frames(out, chunk=2))), frames)
    eight = rng.integers(0, 256, (2, 10, 14, 3), dtype=np.uint8)
    out8 = save_video(eight, tmp_path / "eight.mkv", 24, fmt="mkv (ffv1 lossless)")
    (back,) = iter_stored_frames(out8)
    assert back.dtype == np.uint8 and np.array_equal(back, eight)
