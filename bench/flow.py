"""Optical flow speed and memory: DIS and RAFT-large (random weights), CPU and CUDA when present.

Each row is a fresh process estimating the bidirectional flows (+ occlusion) of a synthetic panning
clip. "work MiB" is the peak memory beyond the clip and the flows themselves (which any caller must
hold): it must stay flat as the clip gets longer, since pairs are processed in chunks.

    python bench/flow.py                          # 64 frames at 320x180 and 640x360 (+16 for the memory check)
    python bench/flow.py --frames 16,64 --sizes 180x320 --engines dis,raft --devices cpu
"""
from __future__ import annotations

import argparse

from common import REPO, machine_line, resolve_devices, run_child

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from vsr_core.flow import DISEngine, RAFT, RAFT_LARGE, RAFTEngine, estimate_video_flow
from vsr_core.memory import peak_rss
from vsr_core.synthetic import camera_path, render_views, smooth_texture
T, H, W, device = {frames}, {h}, {w}, torch.device({device!r})
tex = smooth_texture(H + 64, W + 256, seed=0)
params = camera_path(T, "pan", amplitude=2.0)
frames = torch.from_numpy(render_views(tex, (H, W), params)).float() / 255
if {engine!r} == "dis":
    engine = DISEngine("medium")
else:
    torch.manual_seed(0)
    engine = RAFTEngine.for_method(RAFT(RAFT_LARGE), "mgld", iters={iters}, device=device,
                                   half=device.type == "cuda")
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
estimate_video_flow(frames[:2], engine, chunk={chunk}, device=device)  # warm-up (allocator, cudnn)
base = peak_rss()
t0 = time.perf_counter()
flow = estimate_video_flow(frames, engine, chunk={chunk}, device=device)
if device.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
held = frames.numel() * 4 + sum(t.numel() * t.element_size() for t in
                                (flow.forward, flow.backward, flow.occ_forward, flow.occ_backward))
vram = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
print(json.dumps(dict(pairs=T - 1, seconds=dt, peak=peak_rss(), held=held, vram=vram)))
"""


def run(engine, device, frames, h, w, args):
    code = CHILD.format(repo=str(REPO), threads=args.threads, frames=frames, h=h, w=w, device=device,
                        engine=engine, iters=args.iters, chunk=args.chunk)
    return run_child(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="16,64")
    ap.add_argument("--sizes", default="180x320,360x640", help="HxW list")
    ap.add_argument("--engines", default="dis,raft")
    ap.add_argument("--devices", default="auto", help="cpu,cuda or auto (cpu, plus cuda when present)")
    ap.add_argument("--iters", type=int, default=10, help="RAFT iterations (MGLD's 10)")
    ap.add_argument("--chunk", type=int, default=8, help="pairs per engine call")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(machine_line())
    devices = resolve_devices(args.devices)
    print(f"bidirectional flow + occlusion, pan clip, chunk {args.chunk} pairs, RAFT-large random weights "
          f"{args.iters} iters, {args.threads} CPU threads")
    print(f"{'engine':<6} {'device':<6} {'size':>9} {'frames':>6} {'pairs/s':>8} {'s/frame':>8} "
          f"{'peak RAM MiB':>12} {'work MiB':>9} {'work vs first':>13} {'peak VRAM MiB':>13}")
    for engine in args.engines.split(","):
        for device in devices:
            for size in args.sizes.split(","):
                h, w = (int(v) for v in size.split("x"))
                first = None
                for frames in (int(v) for v in args.frames.split(",")):
                    r, err = run(engine, device, frames, h, w, args)
                    if r is None:
                        print(f"{engine:<6} {device:<6} {w}x{h:>4} {frames:>6}  failed: {err}")
                        continue
                    work = max(r["peak"] - r["held"], 0) / 2**20
                    first = first or work
                    print(f"{engine:<6} {device:<6} {w:>4}x{h:<4} {frames:>6} {r['pairs'] * 2 / r['seconds']:>8.2f} "
                          f"{r['seconds'] / frames:>8.3f} {r['peak'] / 2**20:>12.0f} {work:>9.0f} "
                          f"{work / first:>13.2f} {r['vram'] / 2**20:>13.0f}")


if __name__ == "__main__":
    main()
