"""StableVSR sampling: seconds per frame and peak memory of (a) the per-frame x4 upscaler, (b) StableVSR as
published, (c) StableVSR with our speed options, on the released architecture with random weights.

Each row is a fresh process: build the architecture (``real`` = ``vsr_core/configs/stablevsr/*.json``: x4
UNet 473 M, ControlNet (Temporal Conditioning Module) 208 M, VAE 55 M parameters; ``tiny`` = the test
sizes), warm up, then time one run of T frames. (b): the TCM + bidirectional sampler as published (DDPM,
no CFG, UNet + ControlNet + one HR VAE decode of the previous frame's x̂0 per frame per step, fp32).
(c): the same call under ``vsr_core.speed`` (see bench/common.py; the VAE stays fp32 in every
configuration). "work MiB" is the peak beyond what the process held before the timed run (weights,
inputs): RAM on the CPU, allocated VRAM on CUDA. Compare speeds only within one run of this script.

Measured here (2-core AVX2 CPU, no native bf16, torch 2.13, 3 frames at 16x16 LR, 2 steps):

    row arch device configuration                           params M  s/frame  vs (a)  vs (b)  peak MiB  PSNR dB
    (a) real cpu    sd_x4 per-frame (CFG 9, fp32)                473.4   12.216   1.00x       -      2376        -
    (b) real cpu    StableVSR published (DDPM, TCM, fp32)        735.4   12.520   1.02x   1.00x      3316        -
    (c) real cpu    StableVSR + fp32+channels-last (auto here)   735.4   12.857   1.05x   1.03x      3310    133.2  PASS
    (c) forced bf16-autocast, 2 frames: 1.15-1.59x slower than (b), 62.9 dB (PASS), +1.2 GiB peak

  The machine was shared (load ~5 on 2 cores): rows vary by 30 % between runs. Details: bench/README.md.

    python bench/stablevsr.py                                  # real, 3 frames at 16x16 LR, 2 steps (~4 min here)
    python bench/stablevsr.py --speed bf16-autocast             # force bf16 autocast on the CPU
    python bench/stablevsr.py --frames 8 --lr 64x64 --steps 4 --devices cuda --compile
"""
from __future__ import annotations

import argparse

from common import Row, add_common_args, describe, speed_table, x4_row

STABLEVSR_CHILD = r"""
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from vsr_core.flow import VideoFlow
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.stablevsr import sample_stablevsr
from vsr_core.sampling.x4 import LRConditioning
torch.manual_seed(0)
if arch == "tiny":
    from vsr_core.loaders.tiny import TINY_STABLEVSR_CONTROLNET as ccfg, TINY_STABLEVSR_UNET as ucfg, TINY_VAE as vcfg
else:
    ucfg, ccfg, vcfg = (config(f"stablevsr/{n}.json") for n in ("unet", "controlnet", "vae"))
unet = UNet2DConditionModel.from_config(ucfg).eval()
cn = ControlNetModel.from_config(ccfg).eval()
vae = AutoencoderKL.from_config(vcfg).eval()
random_init_(cn)
params = {"unet": 0, "controlnet": 0, "vae": 0}
for n, m in (("unet", unet), ("controlnet", cn), ("vae", vae)):
    params[n] = sum(p.numel() for p in m.parameters())
model = apply_speed(VSRModel("stablevsr", unet, vae, controlnet=cn, scheduler_config=config("stablevsr/scheduler.json"),
                             config={"scaling_factor": 0.08333, "vae_scale_factor": 4},
                             device=device, offload_device=device), opts)
g = torch.Generator().manual_seed(1)
lr = torch.rand(T, 3, h, w, generator=g) * 2 - 1
emb = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
flow = VideoFlow(torch.randn(T - 1, 2, 4 * h, 4 * w, generator=g), torch.randn(T - 1, 2, 4 * h, 4 * w, generator=g))

def run(n_frames, n_steps):  # StableVSR's test.py: DDPM, the empty prompt, no CFG, TCM, bidirectional
    return sample_stablevsr(model, LRConditioning(lr[:n_frames]), flow.frames(0, n_frames), emb, n_steps, "ddpm",
                            seed=0, keep_on_cpu={keep_on_cpu})

child_report(run, device, opts, params, T, steps, {warmup}, {save!r}, REPEAT)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, frames=3, lr="16x16", steps=2)
    ap.add_argument("--keep-on-cpu", action="store_true", help="(b) and (c) keep per-frame state on the CPU")
    args = ap.parse_args()
    lr = tuple(int(v) for v in args.lr.split("x"))
    body = STABLEVSR_CHILD.replace("{keep_on_cpu}", str(args.keep_on_cpu))

    def rows(arch, c_opts):
        return [x4_row(lr),
                Row("b", "StableVSR published (DDPM, TCM, fp32)", body, {"precision": "fp32"}, lr),
                Row("c", f"StableVSR + {describe(c_opts)}", body, c_opts, lr)]

    speed_table(f"StableVSR, LR {args.lr} -> x4", rows, args)


if __name__ == "__main__":
    main()
