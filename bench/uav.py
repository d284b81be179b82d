"""Upscale-A-Video sampling: seconds per frame and peak memory of (a) the per-frame x4 upscaler, (b) UAV as
published, (c) UAV with our speed options, on the released architecture with random weights.

Each row is a fresh process: build the architecture (``real`` = ``vsr_core/configs/upscale_a_video/unet.json``,
the x4 UNet plus the temporal layers, 691 M parameters; ``tiny`` = the test sizes), warm up, then time
one sampling run of T frames (latents only: the VAE decode is the same chunked decode for every
configuration and is left out). (b): the video UNet over 8/2 windows with the running merge, CFG 6 with
uncond and cond in one batch (as the official pipeline), noise level 120, DDIM, fp32. (c): the same
call under ``vsr_core.speed`` (see bench/common.py). "work MiB" is the peak beyond what the process held
before the timed run (RAM on the CPU, allocated VRAM on CUDA). Compare speeds only within one run of
this script (shared machines vary by several times between runs).

Measured here (2-core AVX2 CPU, no native bf16, torch 2.13, 3 frames at 16x16 LR, 2 steps):

    row arch device configuration                           params M  s/frame  vs (a)  vs (b)  peak MiB  PSNR dB
    (a) real cpu    sd_x4 per-frame (CFG 9, fp32)                473.4   16.438   1.00x       -      2364        -
    (b) real cpu    UAV published (CFG 6 batched, fp32)          691.0   11.433   0.70x   1.00x      3350        -
    (c) real cpu    UAV + fp32+channels-last (auto here)         691.0   10.404   0.63x   0.91x      3236    120.4  PASS
    (c) forced bf16-autocast, 2 frames: 2.86x slower than (b), 48.6 dB (PASS), +1.0 GiB peak

  The machine was shared (load ~5 on 2 cores): rows vary by 30 % between runs. Details: bench/README.md.

    python bench/uav.py                                    # real, 3 frames at 16x16 LR, 2 steps (~4 min here)
    python bench/uav.py --speed bf16-autocast --frames 2   # force bf16 autocast on the CPU (slow without AMX)
    python bench/uav.py --frames 20 --lr 64x64 --steps 4 --devices cuda --compile
"""
from __future__ import annotations

import argparse

from common import Row, add_common_args, describe, speed_table, x4_row

UAV_CHILD = r"""
from vsr_core.flow import VideoFlow
from vsr_core.models.bundle import VSRModel
from vsr_core.models.uav_unet import UNetVideoModel
from vsr_core.sampling.uav import sample_uav
from vsr_core.sampling.x4 import LRConditioning
PROPAGATION = {propagation}
torch.manual_seed(0)
if arch == "tiny":
    from vsr_core.loaders.uav import TINY_UAV_UNET as ucfg
else:
    ucfg = config("upscale_a_video/unet.json")
unet = UNetVideoModel.from_config(dict(ucfg)).eval()
random_init_(unet)
model = apply_speed(VSRModel("upscale_a_video", unet, torch.nn.Identity(),
                             scheduler_config=config("upscale_a_video/scheduler.json"),
                             low_res_scheduler_config=config("upscale_a_video/low_res_scheduler.json"),
                             config={"scaling_factor": 0.08333}, device=device, offload_device=device), opts)
g = torch.Generator().manual_seed(1)
lr = torch.rand(T, 3, h, w, generator=g) * 2 - 1
text = unet.config.cross_attention_dim
emb, neg = torch.randn(1, 77, text, generator=g), torch.randn(1, 77, text, generator=g)
flow = VideoFlow(torch.randn(T - 1, 2, h, w, generator=g), torch.randn(T - 1, 2, h, w, generator=g))

def run(n_frames, n_steps):  # the official CLI: noise level 120, CFG 6, 8/2 windows, running merge
    prop = list(range(0, n_steps, 2)) if PROPAGATION else []
    return sample_uav(model, LRConditioning(lr[:n_frames], 120), flow.frames(0, n_frames), emb, neg, 6.0, n_steps,
                      seed=0, propagation_steps=prop)

child_report(run, device, opts, sum(p.numel() for p in unet.parameters()), T, steps, {warmup}, {save!r}, REPEAT)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, frames=3, lr="16x16", steps=2)
    ap.add_argument("--propagation", action="store_true", help="(b) and (c) propagate x̂0 at every second step")
    args = ap.parse_args()
    lr = tuple(int(v) for v in args.lr.split("x"))
    body = UAV_CHILD.replace("{propagation}", str(args.propagation))
    prop = ", propagation" if args.propagation else ""

    def rows(arch, c_opts):
        return [x4_row(lr),
                Row("b", f"UAV published (CFG 6 batched{prop}, fp32)", body, {"precision": "fp32"}, lr),
                Row("c", f"UAV + {describe(c_opts)}", body, c_opts, lr)]

    speed_table(f"Upscale-A-Video, LR {args.lr} -> x4", rows, args)


if __name__ == "__main__":
    main()
