"""Upscale-A-Video sampling speed and memory against the per-frame x4 baseline (random weights).

Each row is a fresh process: build the architecture (``tiny`` = the parity vectors' UNet sizes,
``real`` = the released sizes from ``vsr_core/configs/upscale_a_video/unet.json``: the x4 UNet plus the
temporal layers, ~691 M parameters), warm up, then time one sampling run of T frames (latents only; the
VAE decode is the same chunked decode for every row and is left out). Rows per architecture and device:

* ``per_frame``: the plain x4 UNet (same spatial config) frame by frame (``sample_per_frame``), CFG;
* ``uav``: the video UNet over 8/2 windows with the running merge, CFG (``sample_uav``);
* ``uav_prop``: the same with latent propagation at every second step.

"work MiB" is the peak beyond what the process held before the timed run (RAM on the CPU, allocated
VRAM on CUDA). Compare speeds only within one run of this script (shared machines vary by several
times between runs).

    python bench/uav.py                                   # tiny + real, 10 frames at 16x16 LR, 2 steps
    python bench/uav.py --archs real --frames 20 --lr 64x64 --steps 4 --devices cuda --half
"""
from __future__ import annotations

import argparse

from common import REPO, method_table, resolve_devices, run_child

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from diffusers import UNet2DConditionModel
from diffusers.utils import logging as dlog
dlog.set_verbosity_error()
from vsr_core.flow import VideoFlow
from vsr_core.memory import peak_rss
from vsr_core.models.bundle import VSRModel
from vsr_core.models.uav_unet import UNetVideoModel
from vsr_core.sampling.uav import sample_uav
from vsr_core.sampling.x4 import LRConditioning, sample_per_frame

arch, mode, device = {arch!r}, {mode!r}, torch.device({device!r})
T, h, w, steps, dtype = {frames}, {h}, {w}, {steps}, getattr(torch, {dtype!r})
cfg_dir = {repo!r} + "/vsr_core/configs/upscale_a_video/"
if arch == "tiny":
    ucfg = json.load(open({parity!r})) if os.path.exists({parity!r}) else None
else:
    ucfg = json.load(open(cfg_dir + "unet.json"))
sched = json.load(open(cfg_dir + "scheduler.json"))
lowres = json.load(open(cfg_dir + "low_res_scheduler.json"))
torch.manual_seed(0)
if mode == "per_frame":
    keys = ("sample_size", "in_channels", "out_channels", "layers_per_block", "block_out_channels",
            "cross_attention_dim", "attention_head_dim", "only_cross_attention", "use_linear_projection",
            "num_class_embeds", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift")
    unet = UNet2DConditionModel(**{{k: ucfg[k] for k in keys if k in ucfg}},
                                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                                up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",))
else:
    unet = UNetVideoModel.from_config(ucfg)
    for n, p in unet.named_parameters():  # zero-init temporal outputs cost the same; non-zero keeps it honest
        if p.abs().max() == 0:
            torch.nn.init.normal_(p, std=1e-3)
params = sum(p.numel() for p in unet.parameters())
text = ucfg["cross_attention_dim"]
model = VSRModel("upscale_a_video", unet.eval(), torch.nn.Identity(), scheduler_config=sched,
                 low_res_scheduler_config=lowres, config={{"scaling_factor": 0.08333}},
                 dtype=dtype, device=device, offload_device=device)
g = torch.Generator().manual_seed(1)
lr = torch.rand(T, 3, h, w, generator=g) * 2 - 1
emb, neg = torch.randn(1, 77, text, generator=g), torch.randn(1, 77, text, generator=g)
flow = VideoFlow(torch.randn(T - 1, 2, h, w, generator=g), torch.randn(T - 1, 2, h, w, generator=g))

def run(n_frames, n_steps):
    cond = LRConditioning(lr[:n_frames], 120)
    if mode == "per_frame":
        return sample_per_frame(model, cond, emb, neg, 6.0, n_steps, "ddim", seed=0)
    prop = list(range(0, n_steps, 2)) if mode == "uav_prop" else []
    return sample_uav(model, cond, flow.frames(0, n_frames), emb, neg, 6.0, n_steps, seed=0,
                      propagation_steps=prop, tile={tile})

if {warmup}:
    run(min(2, T), 1)
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
t0 = time.perf_counter()
out = run(T, steps)
if device.type == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
assert torch.isfinite(out).all()
print(json.dumps(dict(seconds=dt, work=max(peak - base, 0), peak=peak, params=params)))
"""

MODES = ("per_frame", "uav", "uav_prop")


def run(arch, mode, device, args):
    h, w = (int(v) for v in args.lr.split("x"))
    code = CHILD.format(repo=str(REPO), threads=args.threads, arch=arch, mode=mode, device=device,
                        frames=args.frames, h=h, w=w, steps=args.steps, tile=args.tile,
                        parity=str(REPO.parent / "shared/parity/uav/tiny_unet_config.json"),
                        dtype="float16" if device == "cuda" and args.half else "float32",
                        warmup=not args.no_warmup)
    return run_child(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="tiny,real")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--lr", default="16x16", help="LR (= latent) HxW; output is 4x")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--devices", default="auto", help="cpu,cuda or auto (cpu, plus cuda when present)")
    ap.add_argument("--tile", type=int, default=0, help="per-step latent tile (0 = off)")
    ap.add_argument("--half", action="store_true", help="UNet in fp16 on CUDA")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    devices = resolve_devices(args.devices)
    print(f"{args.frames} frames, LR {args.lr} (x4 out), {args.steps} DDIM steps, CFG 6, random weights, "
          f"{args.threads} CPU threads, tile {args.tile}")
    method_table(args.archs.split(","), devices, args.modes.split(","),
                 lambda arch, mode, device: run(arch, mode, device, args), args.frames, args.steps)

if __name__ == "__main__":
    main()
