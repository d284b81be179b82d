"""The streaming upscale on a local Ray cluster: frames/s with 1 and 2 workers against one process, the
memory of the driver and of each worker, and (``--seams``) what a segment border costs a diffusion method.

Each row runs in a fresh process (its peak RSS is its own): the single-process stream, then the Ray driver
with N workers (a local cluster of ``--cpus`` CPUs, started before the clock runs; the workers' start,
imports and model load are inside the time). The output of every row is compared with the single-process
one (max difference in 8-bit levels; torch's CPU kernels round differently at another thread count, so a
worker with fewer threads than the single process may differ by a level).

    python bench/distributed.py [--size 180x320] [--frames 48] [--method learned] [--cpus 2]
    python bench/distributed.py --seams [--frames 24] [--segment 8]   # tiny Upscale-A-Video, random weights
    python bench/distributed.py --seams --model UAV_FOLDER --size 90x160 --steps 30   # the real weights

``--seams``: the warping error of consecutive output frames (flow of the bicubic x4 input, DIS, pixels
failing the forward-backward check left out) over the pairs that cross a segment border and over all
other pairs, for the single-process stream (state carried across every chunk border) and for the
segmented run (state restarted at each segment border, the two sides crossfaded).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import REPO, machine_line, run_child

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
from vsr_core.memory import peak_rss
from vsr_core.stream import PipelineSpec, stream_video
spec = PipelineSpec.make({method!r}, {settings!r}, model={model!r})
workers, threads = {workers}, {threads}
kw = dict(chunk={chunk}, overlap={overlap})
if workers == 0:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    stream_video({src!r}, {dst!r}, spec.build(), fmt="mkv (ffv1 lossless)", **kw)
    stats = {{}}
else:
    from vsr_core.distributed import StreamJob, init_ray, run_distributed
    init_ray(num_cpus={cpus})
    stats = {{}}
    t0 = time.perf_counter()
    run_distributed([StreamJob({src!r}, {dst!r}, spec, fmt="mkv (ffv1 lossless)", **kw)], workers=workers,
                    threads=threads, segment_frames={segment}, stats=stats)
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_rss": peak_rss(),
                  "worker_peak_rss": stats.get("worker_peak_rss"), "segments": stats.get("segments")}}))
"""


def _clip(path: Path, frames: int, hw: tuple[int, int]) -> None:
    import torch

    from vsr_core.io import save_video
    from vsr_core.synthetic import camera_path, render_views, smooth_texture

    views = render_views(smooth_texture(hw[0] * 2, hw[1] * 2, seed=1), hw, camera_path(frames, "mixed"))
    save_video(torch.from_numpy(views), path, 24, fmt="mkv (ffv1 lossless)")


def _run(tmp: Path, name: str, args, workers: int, threads: int, model=None, settings=None, chunk=0,
         overlap=-1, segment=0) -> dict:
    """One row in a fresh process: ``workers`` 0 = the single-process stream."""
    code = CHILD.format(repo=str(REPO), method=args.method if model is None else "upscale_a_video",
                        settings=settings or {}, model=None if model is None else str(model), workers=workers,
                        threads=threads, chunk=chunk, overlap=overlap, src=str(tmp / "in.mkv"),
                        dst=str(tmp / f"{name}.mkv"), cpus=args.cpus, segment=segment)
    result, err = run_child(code)
    if err:
        raise SystemExit(f"{name}: {err}")
    return result


def _levels(a: Path, b: Path) -> int:
    from vsr_core.io import load_video

    x, y = load_video(a)[0], load_video(b)[0]
    return int(((x - y).abs().max() * 255).round())


def throughput(args) -> None:
    hw = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        _clip(tmp / "in.mkv", args.frames, hw)
        rows = [("one process", 0, args.cpus), ("Ray, 1 worker", 1, args.cpus),
                ("Ray, 2 workers", 2, max(1, args.cpus // 2))]
        results = []
        for name, workers, threads in rows:
            r = _run(tmp, name.replace(" ", "_").replace(",", ""), args, workers, threads, chunk=args.chunk,
                     segment=args.segment)
            results.append((name, workers, threads, r))
        print(f"streaming upscale x4 ({args.method}), {args.frames} frames {hw[1]}x{hw[0]} -> {hw[1] * 4}x{hw[0] * 4}, "
              f"segments of {args.segment or 'default'} frames, chunk {args.chunk or 'auto'}")
        print(f"{'run':<16} {'threads':>7} {'s/frame':>8} {'frames/s':>9} {'vs 1 worker':>11} {'driver MiB':>10} "
              f"{'worker MiB':>10} {'max diff':>8}")
        one = next(r for n, w, _, r in results if w == 1)["seconds"]
        ref = tmp / "one_process.mkv"
        for name, workers, threads, r in results:
            fps = args.frames / r["seconds"]
            worker = f"{r['worker_peak_rss'] / 2**20:.0f}" if r["worker_peak_rss"] else "-"
            diff = _levels(ref, tmp / f"{name.replace(' ', '_').replace(',', '')}.mkv")
            print(f"{name:<16} {threads:>7} {r['seconds'] / args.frames:>8.3f} {fps:>9.2f} "
                  f"{one / r['seconds']:>10.2f}x {r['peak_rss'] / 2**20:>10.0f} {worker:>10} {diff:>8}")


def seams(args) -> None:
    import torch

    from vsr_core.flow import DISEngine, estimate_video_flow
    from vsr_core.io import load_video
    from vsr_core.loaders.uav import write_tiny_uav
    from vsr_core.stream import plan_chunks
    from vsr_core.flow.warp import warp

    hw = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        _clip(tmp / "in.mkv", args.frames, hw)
        model = args.model or write_tiny_uav(tmp / "uav")
        kw = dict(model=model, settings={"steps": args.steps}, chunk=6, overlap=2)
        _run(tmp, "single", args, 0, 1, **kw)
        r = _run(tmp, "segmented", args, 2, 1, segment=args.segment, **kw)
        lr = load_video(tmp / "in.mkv")[0]
        up = torch.nn.functional.interpolate(lr.permute(0, 3, 1, 2), scale_factor=4, mode="bicubic")
        flow = estimate_video_flow(up.clamp(0, 1).permute(0, 2, 3, 1), DISEngine("medium"), occlusion_form="mgld")
        from vsr_core.distributed import plan_segments

        segs = plan_segments("upscale_a_video", args.frames, 6, 2, 0, args.segment)
        borders = set()
        for a in segs[:-1]:  # pairs within the crossfaded frames and the ones either side of them
            borders |= set(range(a.stop - a.tail - 1, a.stop))
        what = f"Upscale-A-Video from {args.model}" if args.model else "tiny Upscale-A-Video (random weights)"
        print(f"seams: {what}, {args.frames} frames {hw[1]}x{hw[0]} -> x4, "
              f"{args.steps} steps, chunks {plan_chunks(args.frames, 6, 2)[:2]}..., "
              f"{r['segments']} segments of {args.segment} frames")
        print(f"{'run':<34} {'warp error at borders':>22} {'elsewhere':>10}")
        for name in ("single", "segmented"):
            x = load_video(tmp / f"{name}.mkv")[0].permute(0, 3, 1, 2)
            w = warp(x[1:], flow.forward, convention="mgld")
            keep = 1 - flow.occ_forward
            err = ((x[:-1] - w).abs() * keep).sum(dim=(1, 2, 3)) / (keep.sum(dim=(1, 2, 3)) * 3).clamp_min(1)
            at = [float(err[i]) for i in range(len(err)) if i in borders]
            rest = [float(err[i]) for i in range(len(err)) if i not in borders]
            label = "one process (state carried)" if name == "single" else "segments on Ray (state restarted)"
            print(f"{label:<34} {sum(at) / len(at):>22.4f} {sum(rest) / len(rest):>10.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="input HxW (default 180x320; --seams: 24x32)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--method", default="learned", choices=("learned", "bicubic", "lanczos"))
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--segment", type=int, default=0, help="frames per segment (0 = the default)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster (and threads of one process)")
    ap.add_argument("--seams", action="store_true")
    ap.add_argument("--steps", type=int, default=4, help="--seams: sampling steps")
    ap.add_argument("--model", default=None, help="--seams: an Upscale-A-Video folder (default: tiny random weights)")
    args = ap.parse_args()
    print(machine_line())
    if args.seams:
        args.segment, args.size = args.segment or 8, args.size or "24x32"
        seams(args)
    else:
        args.segment, args.size = args.segment or 12, args.size or "180x320"
        throughput(args)


if __name__ == "__main__":
    main()
