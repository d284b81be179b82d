"""StableVSR sampling speed and memory against the per-frame x4 baseline (random weights).

Each row is a fresh process: build the architecture (``tiny`` = the parity vectors' sizes, ``real`` =
the released StableVSR sizes: x4 UNet 473 M, ControlNet 208 M, VAE 55 M parameters), warm up, then time
one run of T frames. Rows per architecture and device:

* ``per_frame``: the x4 UNet frame by frame (``sample_per_frame``, no ControlNet, no guidance decode);
* ``stablevsr``: the TCM + bidirectional sampler (UNet + ControlNet + one HR VAE decode per frame);
* ``stablevsr_offload``: the same with ``keep_on_cpu=True``.

"work MiB" is the peak beyond what the process held before the timed run (weights, inputs): RAM on
the CPU, allocated VRAM on CUDA. Compare speeds only within one run of this script (shared machines
vary by several times between runs).

    python bench/stablevsr.py                                   # tiny + real, 3 frames at 32x32 LR, 2 steps
    python bench/stablevsr.py --archs tiny --frames 8 --lr 64x64 --steps 4 --devices cpu,cuda
"""
from __future__ import annotations

import argparse

from common import REPO, method_table, resolve_devices, run_child

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.utils import logging as dlog
dlog.set_verbosity_error()
from vsr_core.flow import VideoFlow
from vsr_core.memory import peak_rss
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.stablevsr import sample_stablevsr
from vsr_core.sampling.x4 import LRConditioning, sample_per_frame

arch, mode, device = {arch!r}, {mode!r}, torch.device({device!r})
T, h, w, steps, dtype = {frames}, {h}, {w}, {steps}, getattr(torch, {dtype!r})
if arch == "tiny":
    blocks, heads, layers, text = (32, 64, 64, 64), (2, 2, 1, 1), 1, 32
    cond_ch, vae_blocks, vae_layers = (16, 32, 32), (32, 32, 64), 1
else:  # the released x4 / StableVSR sizes (methods.md §2.1, §3.1-3.2)
    blocks, heads, layers, text = (256, 512, 512, 1024), 8, 2, 1024
    cond_ch, vae_blocks, vae_layers = (64, 128, 256), (128, 256, 512), 2
torch.manual_seed(0)
with torch.device("cpu"):
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, layers_per_block=layers, block_out_channels=blocks,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), cross_attention_dim=text,
        attention_head_dim=heads, only_cross_attention=(True, True, True, False), use_linear_projection=True,
        num_class_embeds=None)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond_ch) if mode != "per_frame" else None
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_blocks,
                        layers_per_block=vae_layers, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=0.08333)
    if cn is not None:  # zero-initialised ControlNet outputs cost the same; non-zero keeps the numbers honest
        for m in list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(m.weight, std=1e-3)
nets = (("unet", unet), ("controlnet", cn), ("vae", vae))
params = {{n: sum(p.numel() for p in m.parameters()) for n, m in nets if m is not None}}
sched = {{"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
         "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
         "set_alpha_to_one": False, "steps_offset": 1}}
model = VSRModel("stablevsr", unet.eval(), vae.eval(), controlnet=None if cn is None else cn.eval(),
                 scheduler_config=sched, config={{"scaling_factor": 0.08333, "vae_scale_factor": 4}},
                 dtype=dtype, vae_dtype=torch.float32, device=device, offload_device=device)
g = torch.Generator().manual_seed(1)
lr = torch.rand(T, 3, h, w, generator=g) * 2 - 1
emb = torch.randn(1, 77, text, generator=g)
flow = VideoFlow(torch.randn(T - 1, 2, 4 * h, 4 * w, generator=g), torch.randn(T - 1, 2, 4 * h, 4 * w, generator=g))

def run(n_frames, n_steps):
    cond = LRConditioning(lr[:n_frames])
    if mode == "per_frame":
        return sample_per_frame(model, cond, emb, None, 0.0, n_steps, "ddpm", seed=0)
    return sample_stablevsr(model, cond, flow.frames(0, n_frames), emb, n_steps, "ddpm", seed=0,
                            keep_on_cpu=mode == "stablevsr_offload", guidance_tile={tile})

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

MODES = ("per_frame", "stablevsr", "stablevsr_offload")


def run(arch, mode, device, args):
    h, w = (int(v) for v in args.lr.split("x"))
    code = CHILD.format(repo=str(REPO), threads=args.threads, arch=arch, mode=mode, device=device,
                        frames=args.frames, h=h, w=w, steps=args.steps, tile=args.guidance_tile,
                        dtype="float16" if device == "cuda" and args.half else "float32",
                        warmup=not args.no_warmup)
    return run_child(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="tiny,real")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--lr", default="32x32", help="LR (= latent) HxW; output is 4x")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--devices", default="auto", help="cpu,cuda or auto (cpu, plus cuda when present)")
    ap.add_argument("--guidance-tile", type=int, default=0, help="latent tile of the guidance decode (0 = off)")
    ap.add_argument("--half", action="store_true", help="UNet/ControlNet in fp16 on CUDA (VAE stays fp32)")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    devices = resolve_devices(args.devices)
    print(f"{args.frames} frames, LR {args.lr} (x4 out), {args.steps} DDPM steps, random weights, "
          f"{args.threads} CPU threads, guidance tile {args.guidance_tile}")
    method_table(args.archs.split(","), devices, args.modes.split(","),
                 lambda arch, mode, device: run(arch, mode, device, args), args.frames, args.steps)

if __name__ == "__main__":
    main()
