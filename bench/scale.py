"""Peak host RAM of the streaming path against clip length: it must not grow with the video.

For each method and each length, a fresh process streams the same synthetic clip (repeated to the
length) file to file with ``vsr_core.stream.stream_video``, the path of the ``VSR_StreamUpscaleVideo``
node and of ``python -m vsr_core stream``, and reports its peak RSS. Methods:

* ``learned``: the pack's learned video upscaler (embedded weights), x4;
* ``upscale_a_video``: Upscale-A-Video on tiny random weights (the smoke-test sizes), 1 DDIM step with
  latent propagation (no CFG), video-VAE decode, 16-frame chunks overlapping by 4, flow-aligned
  crossfade, DIS flows.

The last column is the peak RSS relative to the shortest clip; the acceptance bound is 1.2 at 800 frames.

    python bench/scale.py                          # 50, 200, 800 frames at 16x24 LR (~6 min on 2 cores)
    python bench/scale.py --frames 50,200 --methods learned --lr 270x480

Measured here (2-core CPU shared with other jobs, so s/frame is noisy; torch 2.13, 16x24 LR -> 64x96,
2026-11-22):

    method             frames   s/frame  peak RSS MiB  vs 50 frames
    learned                50     0.041           284          1.00
    learned               200     0.025           287          1.01
    learned               800     0.007           288          1.02
    upscale_a_video        50     1.593           642          1.00
    upscale_a_video       200     0.596           679          1.06
    upscale_a_video       800     1.827           707          1.10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import REPO, machine_line, run_child

sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from vsr_core.memory import peak_rss
from vsr_core.stream import StreamPipeline, stream_video
method = {method!r}
model = None
settings = {{}}
if method == "upscale_a_video":
    from vsr_core.loaders.uav import load_uav_model
    model = load_uav_model({model_dir!r})
    settings = dict(steps=1, propagation_steps=[0], guidance_scale=1.0)
pipe = StreamPipeline(method, model, None, settings)
t0 = time.perf_counter()
stream_video({src!r}, {dst!r}, pipe, chunk={chunk}, overlap={overlap}, fmt="mp4 (h264)")
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_rss": peak_rss()}}))
"""


def make_clip(path: Path, frames: int, hw: tuple[int, int]) -> None:
    """A camera pan over a texture: 25 distinct frames, looped (encoding stays cheap)."""
    import torch

    from vsr_core.io import VideoWriter
    from vsr_core.synthetic import camera_path, render_views, smooth_texture

    views = torch.from_numpy(render_views(smooth_texture(hw[0] * 2, hw[1] * 2, seed=1), hw,
                                          camera_path(25, "mixed")))
    with VideoWriter(path, 24, fmt="mp4 (h264)", crf=18) as w:
        for s in range(0, frames, 25):
            w.write(views[:min(25, frames - s)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="50,200,800", help="comma-separated clip lengths")
    ap.add_argument("--methods", default="learned,upscale_a_video")
    ap.add_argument("--lr", default="16x24", help="input HxW")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4, help="diffusion methods (the upscalers need none)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(machine_line())
    hw = tuple(int(v) for v in args.lr.split("x"))
    lengths = [int(v) for v in args.frames.split(",")]
    print(f"streaming x4, input {hw[1]}x{hw[0]}, chunk {args.chunk}, CPU {args.threads} threads")
    print(f"{'method':<18} {'frames':>6} {'s/frame':>9} {'peak RSS MiB':>13} {'vs ' + str(lengths[0]) + ' frames':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "uav"
        for method in args.methods.split(","):
            if method == "upscale_a_video" and not model_dir.exists():
                from vsr_core.loaders.uav import write_tiny_uav

                write_tiny_uav(model_dir)
            base = None
            for n in lengths:
                src, dst = tmp / f"in_{n}.mp4", tmp / f"out_{method}_{n}.mp4"
                if not src.exists():
                    make_clip(src, n, hw)
                code = CHILD.format(repo=str(REPO), threads=args.threads, method=method, model_dir=str(model_dir),
                                    src=str(src), dst=str(dst), chunk=args.chunk,
                                    overlap=args.overlap if method not in ("learned", "bicubic", "lanczos") else 0)
                r, err = run_child(code)
                if r is None:
                    print(f"{method:<18} {n:>6} failed: {err}")
                    continue
                rss = r["peak_rss"] / 2**20
                base = base or rss
                print(f"{method:<18} {n:>6} {r['seconds'] / n:>9.3f} {rss:>13.0f} {rss / base:>13.2f}")


if __name__ == "__main__":
    main()
