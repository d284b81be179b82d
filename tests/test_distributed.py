"""Streaming on a Ray cluster (vsr_core/distributed.py, ``stream --workers``): a local two-CPU cluster here."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vsr_core.distributed import (RunStatus, StreamJob, plan_segments, run_distributed, window_spans,
                                  work_folder)
from vsr_core.io import OutputExistsError, load_video, save_video
from vsr_core.stream import PipelineSpec, plan_chunks, stream_video
from vsr_core.upscale import stream_windows

ray = pytest.importorskip("ray", reason="the distributed stream needs Ray (tests/requirements.txt installs it)")

LOSSLESS = "mkv (ffv1 lossless)"


def _clip(path: Path, frames: int, hw: tuple[int, int], seed: int = 3) -> Path:
    from vsr_core.synthetic import camera_path, render_views, smooth_texture

    views = render_views(smooth_texture(hw[0] * 2, hw[1] * 2, seed=seed), hw, camera_path(frames, "pan"))
    save_video(torch.from_numpy(views), path, 8, fmt=LOSSLESS)
    return path


@pytest.fixture(scope="module")
def cluster():
    from vsr_core.distributed import init_ray

    init_ray(num_cpus=2, object_store_memory=128 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clips")
    return {"small": _clip(root / "small.mkv", 14, (16, 24)), "learned": _clip(root / "learned.mkv", 20, (32, 48), 5),
            "slow": _clip(root / "slow.mkv", 40, (128, 160), 7)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from vsr_core.loaders.tiny import write_tiny_sd_x4
    from vsr_core.loaders.uav import write_tiny_uav

    root = tmp_path_factory.mktemp("models")
    return {"sd_x4": write_tiny_sd_x4(root / "x4"), "upscale_a_video": write_tiny_uav(root / "uav")}


@pytest.fixture
def one_thread():
    """The reference run at the workers' thread count: torch's CPU kernels round differently with another."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _single(src, dst, spec, **kw) -> torch.Tensor:
    stream_video(src, dst, spec.build(), fmt=LOSSLESS, **kw)
    return load_video(dst)[0]


def _no_leftovers(folder: Path, keep: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == keep


# ------------------------------------------------------------------------------------ segment plans

@pytest.mark.parametrize("total,chunk,radius", [(1, 4, 2), (7, 3, 2), (20, 5, 2), (20, 8, 0), (33, 6, 1)])
def test_window_spans_are_the_single_process_windows(total, chunk, radius):
    video = torch.arange(total, dtype=torch.float32).view(-1, 1, 1, 1)
    expected, done = [], 0
    for window, n in stream_windows((video[s:s + chunk] for s in range(0, total, chunk)), radius):
        assert torch.equal(window[:, 0, 0, 0], torch.tensor([min(max(i, 0), total - 1)
                                                             for i in range(done - radius, done + n + radius)],
                                                            dtype=torch.float32))
        expected.append((done, n))
        done += n
    assert window_spans(total, chunk, radius) == expected


@pytest.mark.parametrize("total,segment", [(20, 4), (20, 7), (3, 64), (61, 16)])
def test_upscaler_segments_are_whole_windows_covering_every_frame_once(total, segment):
    segs = plan_segments("learned", total, 5, 0, 2, segment)
    assert segs[0].first == 0 and segs[-1].stop == total
    assert all(a.stop == b.first for a, b in zip(segs, segs[1:]))
    assert [w for s in segs for w in s.windows] == window_spans(total, 5, 2)
    assert all(s.head == s.tail == 0 for s in segs)
    assert all(s.stop - s.first >= segment for s in segs[:-1])


@pytest.mark.parametrize("total,chunk,overlap,segment", [(30, 8, 2, 10), (30, 8, 4, 1), (9, 6, 2, 100), (50, 9, 3, 20)])
def test_diffusion_segments_are_whole_chunks_sharing_the_chunk_overlap(total, chunk, overlap, segment):
    segs = plan_segments("upscale_a_video", total, chunk, overlap, 0, segment)
    spans = plan_chunks(total, chunk, overlap)
    starts, stops = {s for s, _ in spans}, {e for _, e in spans}
    assert segs[0].first == 0 and segs[-1].stop == total
    for a, b in zip(segs, segs[1:]):
        assert a.first in starts and a.stop in stops
        assert b.first == a.stop - overlap and a.tail == b.head == overlap
    assert segs[0].head == 0 and segs[-1].tail == 0
    assert sum(s.owned for s in segs) == total


def test_a_plan_that_cannot_be_segmented_says_how_to_fix_it():
    with pytest.raises(ValueError, match="--chunk"):
        plan_segments("mgld", 40, 6, 4, 0, 6)
    assert len(plan_segments("mgld", 40, 6, 4, 0, 1000)) == 1  # one segment: any chunking


# ------------------------------------------------------------------------------------- on the cluster

def test_learned_upscaler_on_two_workers_is_bit_identical_to_one_process(cluster, clips, tmp_path, one_thread):
    spec = PipelineSpec.make("learned")
    ref = _single(clips["learned"], tmp_path / "ref.mkv", spec, chunk=4)
    seen = []
    job = StreamJob(str(clips["learned"]), str(tmp_path / "out" / "up.mkv"), spec, chunk=4, fmt=LOSSLESS)
    (out,) = run_distributed([job], workers=2, threads=1, segment_frames=5, progress=seen.append)
    assert torch.equal(load_video(out)[0], ref)
    assert seen and isinstance(seen[-1], RunStatus) and seen[-1].done == seen[-1].total == 20
    assert len(seen[-1].rates) == 2 and all(r > 0 for r in seen[-1].rates.values())  # both workers did frames
    _no_leftovers(tmp_path / "out", {"up.mkv"})  # the work folder is gone, no partial file is left


def test_per_frame_x4_sampler_and_many_files_in_one_job(cluster, clips, tiny, tmp_path, one_thread):
    spec = PipelineSpec.make("sd_x4", {"steps": 2}, model=tiny["sd_x4"])
    srcs = [clips["small"], clips["learned"]]
    refs = [_single(s, tmp_path / f"ref{i}.mkv", spec, chunk=3) for i, s in enumerate(srcs)]
    jobs = [StreamJob(str(s), str(tmp_path / "out" / f"{i}.mkv"), spec, chunk=3, fmt=LOSSLESS)
            for i, s in enumerate(srcs)]
    outs = run_distributed(jobs, workers=2, threads=1, segment_frames=4)
    for out, ref in zip(outs, refs):
        assert torch.equal(load_video(out)[0], ref)


def test_diffusion_segments_do_not_depend_on_the_workers(cluster, clips, tiny, tmp_path, one_thread):
    """UAV carries state between chunks; a segment border restarts it, so the result depends on the plan,
    never on how many workers ran it. With one segment it is the single-process stream."""
    spec = PipelineSpec.make("upscale_a_video", {"steps": 2}, model=tiny["upscale_a_video"])
    kw = dict(chunk=6, overlap=2)
    ref = _single(clips["small"], tmp_path / "ref.mkv", spec, **kw)
    run = lambda name, workers, segment: load_video(run_distributed(  # noqa: E731
        [StreamJob(str(clips["small"]), str(tmp_path / name), spec, fmt=LOSSLESS, **kw)], workers=workers,
        threads=1, segment_frames=segment)[0])[0]
    assert torch.equal(run("whole.mkv", 2, 1000), ref)
    one, two = run("one.mkv", 1, 4), run("two.mkv", 2, 4)
    assert torch.equal(one, two)
    assert one.shape == ref.shape
    # frames before the first segment border are those of the single process; after it they start afresh
    assert torch.equal(one[:4], ref[:4]) and not torch.equal(one, ref)


def test_a_killed_worker_is_retried_and_the_output_is_unchanged(cluster, clips, tmp_path, one_thread):
    spec = PipelineSpec.make("learned")
    ref = _single(clips["slow"], tmp_path / "ref.mkv", spec, chunk=4)
    killed: dict = {}

    def progress(status: RunStatus) -> None:
        if not killed and status.running:
            key, worker = sorted(status.running.items())[0]
            os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
            killed[key] = worker
        progress.last = status

    job = StreamJob(str(clips["slow"]), str(tmp_path / "up.mkv"), spec, chunk=4, fmt=LOSSLESS)
    # two segments of 20 frames, seconds each: the kill (within a second of their start) finds them running
    (out,) = run_distributed([job], workers=2, threads=1, segment_frames=20, progress=progress)
    (key,) = killed
    assert progress.last.attempts[key] == 2  # Ray ran the killed segment again
    assert torch.equal(load_video(out)[0], ref)


def test_an_interrupted_job_leaves_no_output_and_a_rerun_resumes(cluster, clips, tmp_path, one_thread):
    spec = PipelineSpec.make("learned")
    ref = _single(clips["slow"], tmp_path / "ref.mkv", spec, chunk=4)
    out_dir = tmp_path / "out"
    job = StreamJob(str(clips["slow"]), str(out_dir / "up.mkv"), spec, chunk=4, fmt=LOSSLESS)
    markers = lambda: sorted(p.name for p in out_dir.rglob("seg*.json"))  # noqa: E731

    def stop_after_one(status: RunStatus) -> None:
        if markers():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_distributed([job], workers=2, threads=1, segment_frames=10, progress=stop_after_one)
    assert not (out_dir / "up.mkv").exists()
    assert not [p for p in out_dir.iterdir() if p.name != ".up.mkv.vsr-segments"]  # no partial output
    kept = markers()
    assert 1 <= len(kept) < 4
    time.sleep(3)  # the cancelled tasks are gone: nothing more gets finished
    assert markers() == kept

    seen: list[RunStatus] = []
    stats: dict = {}
    (out,) = run_distributed([job], workers=2, threads=1, segment_frames=10, progress=seen.append, stats=stats)
    assert stats["resumed"] == len(kept) and stats["segments"] == 4
    redone = {i for status in seen for (_, i) in status.attempts}
    assert not redone & {int(name[3:8]) for name in kept}  # finished segments were not computed again
    assert torch.equal(load_video(out)[0], ref)
    _no_leftovers(out_dir, {"up.mkv"})


def test_outputs_are_checked_before_any_work(cluster, clips, tmp_path):
    spec = PipelineSpec.make("bicubic")
    taken = tmp_path / "taken.mkv"
    taken.write_bytes(b"mine")
    jobs = [StreamJob(str(clips["small"]), str(tmp_path / "new.mkv"), spec, fmt=LOSSLESS),
            StreamJob(str(clips["small"]), str(taken), spec, fmt=LOSSLESS)]
    with pytest.raises(OutputExistsError):
        run_distributed(jobs, workers=2)
    assert taken.read_bytes() == b"mine" and not (tmp_path / "new.mkv").exists()
    assert not work_folder(jobs[0], "x").parent.exists()
    with pytest.raises(ValueError, match="same output"):
        run_distributed([jobs[0], jobs[0]], workers=2)
    with pytest.raises(ValueError, match="needs its model"):
        run_distributed([StreamJob(str(clips["small"]), str(tmp_path / "m.mkv"), PipelineSpec.make("mgld"))])
    with pytest.raises(ValueError, match="unknown upscale_a_video setting"):
        run_distributed([StreamJob(str(clips["small"]), str(tmp_path / "m.mkv"),
                                   PipelineSpec.make("upscale_a_video", {"stpes": 3}, model=clips["small"]))])
    (out,) = run_distributed([jobs[1]], workers=2, on_exists="replace")  # asked: replaced once complete
    assert load_video(out)[0].shape[0] == 14


def test_cli_stream_many_files_on_workers(cluster, clips, tmp_path, capsys, monkeypatch):
    import shutil

    from vsr_core.cli import main

    (tmp_path / "clips").mkdir()
    for name in ("small", "learned"):
        shutil.copy(clips[name], tmp_path / "clips" / f"{name}.mkv")
    monkeypatch.chdir(tmp_path)  # relative paths: the workers do not run in this folder
    out = tmp_path / "ups"
    args = ["stream", "clips", "ups", "--method", "bicubic", "--workers", "2",
            "--threads-per-worker", "1", "--segment-frames", "4", "--format", LOSSLESS]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["learned_x4.mkv", "small_x4.mkv"]
    assert load_video(out / "learned_x4.mkv")[0].shape == (20, 128, 192, 3)
    assert main(args) == 2  # a second run refuses to replace them
    assert "--overwrite" in capsys.readouterr().err


def test_ten_bit_output_goes_through_sixteen_bit_segments_unchanged(cluster, clips, tmp_path):
    from vsr_core.io.video import iter_stored_frames

    spec = PipelineSpec.make("bicubic")
    kw = dict(fmt="mp4 (h264)", pix_fmt="yuv420p10le", chunk=3)
    stream_video(clips["small"], tmp_path / "ref.mp4", spec.build(), **kw)
    job = StreamJob(str(clips["small"]), str(tmp_path / "up.mp4"), spec, **kw)
    (out,) = run_distributed([job], workers=2, segment_frames=4)
    ref, got = (np.concatenate(list(iter_stored_frames(p))) for p in (tmp_path / "ref.mp4", out))
    assert ref.dtype == np.uint16 and ref.shape == (14, 64, 96, 3)
    assert np.array_equal(got, ref)
