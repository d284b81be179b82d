"""Streaming upscale: seconds per frame and peak RAM for clips of growing length.

Each run is a fresh process (so peak RSS is its own), upscaling a synthetic clip file to a file with
the CLI's streaming path. Peak RAM must stay flat as the clip gets longer.

    python bench/stream.py [--size 270x480] [--frames 96,384] [--scale 4] [--method bicubic]

The encoder (x264 lookahead) and the allocator warm up over the first ~100 frames; after that the
resident memory is flat (measured: 1268 MiB from frame 105 to frame 231 of a 240-frame 1080p output).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from vsr_core.memory import peak_rss
from vsr_core.upscale import upscale_file
t0 = time.perf_counter()
upscale_file({src!r}, {dst!r}, scale={scale}, method={method!r}, chunk={chunk})
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_rss": peak_rss()}}))
"""


def make_clip(path: Path, frames: int, hw: tuple[int, int]) -> None:
    import torch

    from vsr_core.io import VideoWriter
    from vsr_core.synthetic import camera_path, render_views, smooth_texture

    tex = smooth_texture(hw[0] * 2, hw[1] * 2, seed=1)
    with VideoWriter(path, 24, fmt="mp4 (h264)", crf=18) as w:
        for s in range(0, frames, 16):
            n = min(16, frames - s)
            views = render_views(tex, hw, camera_path(frames, "mixed")[s:s + n])
            w.write(torch.from_numpy(views))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="270x480", help="input HxW")
    ap.add_argument("--frames", default="96,384", help="comma-separated clip lengths")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--method", default="bicubic")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from common import machine_line

    print(machine_line())
    hw = tuple(int(v) for v in args.size.split("x"))
    lengths = [int(v) for v in args.frames.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            src, dst = Path(tmp) / f"in_{n}.mp4", Path(tmp) / f"out_{n}.mp4"
            make_clip(src, n, hw)
            code = CHILD.format(repo=str(REPO), src=str(src), dst=str(dst), scale=args.scale, method=args.method,
                                chunk=args.chunk, threads=args.threads)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((n, r["seconds"] / n, r["peak_rss"] / 2**20))
    base = rows[0][2]
    print(f"streaming upscale x{args.scale} ({args.method}), input {hw[1]}x{hw[0]} -> "
          f"{hw[1] * args.scale}x{hw[0] * args.scale}, CPU, {args.threads} threads")
    print(f"{'frames':>7} {'s/frame':>9} {'peak RAM MiB':>13} {'RAM vs first':>13}")
    for n, spf, rss in rows:
        print(f"{n:>7} {spf:>9.3f} {rss:>13.0f} {rss / base:>13.2f}")


if __name__ == "__main__":
    main()
