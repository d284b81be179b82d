"""MGLD sampling: (default) seconds per frame and peak memory of (a) the per-frame x4 upscaler, (b) MGLD
as published, (c) MGLD with our speed options, on the released architecture with random weights; with
``--seams``, the segment seam of the published 5-frame segments against our overlapping segments.

Speed table (see bench/common.py): each row is a fresh process. ``real`` = ``vsr_core/configs/mgld``
(the SD 2.1 UNet with SPADE and temporal layers, 935 M, plus the structure encoder); ``tiny`` = the
test sizes. (b): ``sample_mgld_latents`` as the official script (5-frame segments, 64/32 latent
canvas tiles, motion guidance g = -10 on an exact 1-latent-pixel shift, respaced DDPM, fp32) from
random LR latents (the VAE encode/decode are left out, as for every row). (c): the same call under
``vsr_core.speed``. MGLD has no classifier-free guidance (the empty prompt only), so there is no CFG
batch to merge.

Measured here (2-core AVX2 CPU, no native bf16, torch 2.13, 5 frames at 16x16 LR, 2 steps):

    row arch device configuration                           params M  s/frame  vs (a)  vs (b)  peak MiB  PSNR dB
    (a) real cpu    sd_x4 per-frame (CFG 9, fp32)                473.4   12.578   1.00x       -      2366        -
    (b) real cpu    MGLD published (segments, guidance, fp32)    987.8    6.083   0.48x   1.00x      4404        -
    (c) real cpu    MGLD + fp32+channels-last, 4 tiles/call      987.8    5.188   0.41x   0.85x      4398    130.2  PASS
    (c) forced bf16-autocast: 1.59x slower than (b), 56.9 dB (PASS), +1.7 GiB peak

  The machine was shared (load ~5 on 2 cores): rows vary by 30 % between runs. Details: bench/README.md.

Seams (``--seams``): the clip is synthetic with a known motion (a smooth texture translating 2 LR px per
frame, so the flows are exact and the warping error measures temporal consistency, not flow error).
Seam = mean warping error |x_i − W(x_{i+1}, F_i)| over non-occluded pixels, on pairs that cross a 5-frame
border vs pairs inside a segment (``seam_error``), on the latents and on the decoded frames.
``--unet``/``--vae`` load the released checkpoints (``load_mgld_model``); without them a tiny random
MGLD (``write_tiny_mgld``) is used. ``toy`` rows replace the network by an analytic denoiser whose x̂0
carries noise-dependent detail (what makes independent segments disagree), on a detailed latent
texture moving one latent pixel per frame.

    python bench/mgld.py                                   # speed: real, 5 frames at 16x16 LR, 2 steps
    python bench/mgld.py --speed bf16-autocast              # force bf16 autocast on the CPU
    python bench/mgld.py --seams                           # tiny + toy, 15 frames of 96x128 LR, 10 steps
    python bench/mgld.py --seams --frames 20 --lr 64x64 --steps 50 --device cuda --unet U.ckpt --vae V.ckpt
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

from common import Row, add_common_args, describe, speed_table, x4_row  # also puts the repo on sys.path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vsr_core.flow import VideoFlow  # noqa: E402
from vsr_core.memory import peak_rss  # noqa: E402
from vsr_core.sampling.mgld import (  # noqa: E402
    decode_mgld,
    encode_lr,
    mgld_schedule,
    prepare_mgld_input,
    sample_mgld_latents,
    model_denoiser,
    seam_error,
)


def synthetic_clip(frames: int, h: int, w: int, shift: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tex = torch.rand(1, 3, h // 4 + 1, (w + shift * frames) // 4 + 1, generator=g)
    tex = F.interpolate(tex, size=(h, w + shift * frames), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    off = shift * frames
    lr = torch.stack([tex[:, :, off - shift * i: off - shift * i + w] for i in range(frames)])
    fwd = torch.zeros(frames - 1, 2, h, w)
    fwd[:, 0] = float(shift)  # frame i's pixel p is at p + shift in frame i+1
    return lr, VideoFlow(fwd, -fwd, frame_size=(h, w), engine="exact")


def latent_clip(frames: int, h: int, w: int, seed: int = 0, channels: int = 4):
    """A detailed latent texture moving 1 latent px per frame, with its exact flow (the toy rows)."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, channels, h, w + frames, generator=g), 3, 1, 1)[0]
    z = torch.stack([base[:, :, frames - i: frames - i + w] for i in range(frames)])
    fwd = torch.zeros(frames - 1, 2, h, w)
    fwd[:, 0] = 1.0
    return z, VideoFlow(fwd, -fwd, frame_size=(h, w), engine="exact")


def toy_denoiser(steps: int):
    ac = mgld_schedule(steps).train_alphas_cumprod

    def den(x, z, t):
        a = ac[int(t.reshape(-1)[0])].to(x.device)
        return (x - a.sqrt() * (z + 0.5 * torch.tanh(2 * x))) / (1 - a).sqrt()

    return den


def measure(label, fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss() or 0
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(0, (peak_rss() or 0) - base)
    return out, time.perf_counter() - t0, peak / 2 ** 20


MGLD_CHILD = r"""
from vsr_core.flow import VideoFlow
from vsr_core.loaders.mgld import shipped_mgld_configs, tiny_mgld_configs
from vsr_core.models.bundle import VSRModel
from vsr_core.models.mgld_unet import MGLDUNet, StructEncoder
from vsr_core.sampling.mgld import (MGLD_SEGMENT, MGLD_TILE, MGLD_TILE_OVERLAP, model_denoiser, prepare_mgld_input,
                                    sample_mgld_latents)
torch.manual_seed(0)
cfg = tiny_mgld_configs() if arch == "tiny" else shipped_mgld_configs()
unet = MGLDUNet.from_config(cfg["unet"]).eval()
struct = StructEncoder.from_config(cfg["struct_encoder"]).eval()
random_init_(unet, struct)
params = {"unet": sum(p.numel() for p in unet.parameters()), "struct_encoder": sum(p.numel() for p in struct.parameters())}
model = apply_speed(VSRModel("mgld", unet, torch.nn.Identity(), struct_encoder=struct, device=device,
                             offload_device=device), opts)
lh, lw = prepare_mgld_input(torch.zeros(1, 3, h, w), 4, min_side=0).latent_size
g = torch.Generator().manual_seed(1)
z_lr = torch.randn(T, 4, lh, lw, generator=g)
ctx = torch.randn(1, 77, cfg["unet"]["context_dim"], generator=g)
fwd = torch.zeros(T - 1, 2, lh, lw)
fwd[:, 0] = 1.0
flow = VideoFlow(fwd, -fwd, frame_size=(lh, lw), engine="exact")

def run(n_frames, n_steps):  # the official script: 5-frame segments, 64/32 canvas tiles one by one, g = -10
    with model.on_device("unet", "struct_encoder"):
        return sample_mgld_latents(model_denoiser(model, ctx, MGLD_SEGMENT), z_lr[:n_frames], flow.frames(0, n_frames),
                                   steps=n_steps, seed=42, segment_mode="official", tile=MGLD_TILE,
                                   tile_overlap=MGLD_TILE_OVERLAP, tile_batch={tile_batch}, device=device)

child_report(run, device, opts, params, T, steps, {warmup}, {save!r}, REPEAT)
"""


def speed_main(argv) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, frames=5, lr="16x16", steps=2)
    ap.add_argument("--tile-batch", type=int, default=4,
                    help="(c): canvas tiles per UNet call (the same tiles; 1 = official; no effect while the "
                         "latent fits one 64-px tile, i.e. LR up to 128 px)")
    ap.add_argument("--seams", action="store_true")
    args = ap.parse_args(argv)
    lr = tuple(int(v) for v in args.lr.split("x"))

    def rows(arch, c_opts):
        tb = f", {args.tile_batch} tiles/call" if args.tile_batch > 1 else ""
        return [x4_row(lr),
                Row("b", "MGLD published (segments, guidance, fp32)", MGLD_CHILD.replace("{tile_batch}", "1"),
                    {"precision": "fp32"}, lr),
                Row("c", f"MGLD + {describe(c_opts)}{tb}", MGLD_CHILD.replace("{tile_batch}", str(args.tile_batch)),
                    c_opts, lr)]

    speed_table(f"MGLD, LR {args.lr} -> x4", rows, args)


def main() -> None:
    if "--seams" not in sys.argv[1:]:
        speed_main(sys.argv[1:])
    else:
        seams_main([a for a in sys.argv[1:] if a != "--seams"])


def seams_main(argv) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--lr", default="96x128", help="LR HxW (frames are upsampled x4, latents are LR/2)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--unet", help="mgldvsr_unet.ckpt (default: tiny random MGLD)")
    ap.add_argument("--vae", help="video_vae_cfw.ckpt")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--tile-batch", type=int, default=1)
    ap.add_argument("--overlap", type=int, default=2, help="segment overlap of the overlap mode")
    ap.add_argument("--rows", default="toy,model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (int(v) for v in args.lr.lower().split("x"))
    lr, flow = synthetic_clip(args.frames, h, w)
    prep = prepare_mgld_input(lr, 4, min_side=0)

    model = None
    if "model" in args.rows:
        from vsr_core.loaders.mgld import load_mgld_model, write_tiny_mgld

        if args.unet:
            model = load_mgld_model(args.unet, args.vae, device=device, offload_device=device)
        else:
            paths = write_tiny_mgld(tempfile.mkdtemp(prefix="mgld_bench_"), text_encoder=False)
            model = load_mgld_model(paths["unet"], paths["video_vae"], configs=paths["configs"], dtype="fp32",
                                    device=device, offload_device=device, text_encoder=False)
    print(f"{args.frames} frames, LR {h}x{w} -> latent {prep.latent_size}, {args.steps} steps, {device}")
    print(f"{'row':<18}{'s/frame':>9}{'work MiB':>10}{'latent seam b/i':>20}{'frame seam b/i':>20}")
    for row in args.rows.split(","):
        if row == "model" and model is None:
            continue
        row_flow = flow
        if row == "toy":
            den = toy_denoiser(args.steps)
            z, row_flow = latent_clip(args.frames, *prep.latent_size)
        else:
            ctx = torch.zeros(1, 7, model.unet.config["context_dim"]) if model.text_encoder is None else None
            den = model_denoiser(model, ctx)
            z = encode_lr(model, prep.x_up, torch.Generator().manual_seed(42))
        for mode in ("official", "overlap"):
            def run():
                with torch.no_grad():
                    return sample_mgld_latents(den, z.to(device), row_flow.to(device), steps=args.steps, seed=42,
                                               segment_mode=mode, segment_overlap=args.overlap, tile=args.tile,
                                               tile_batch=args.tile_batch, device=device)
            lat, sec, mib = measure(f"{row}/{mode}", run, device)
            lb, li = seam_error(lat, row_flow)
            fs = "-"
            if row == "model":
                frames = decode_mgld(model, lat, lr, dec_w=1.0, color_fix="adain", upscale=4, min_side=0)
                fb, fi = seam_error(frames, flow)
                fs = f"{fb:.4f}/{fi:.4f}"
            print(f"{row + '/' + mode:<18}{sec / args.frames:>9.3f}{mib:>10.0f}{f'{lb:.4f}/{li:.4f}':>20}{fs:>20}")


if __name__ == "__main__":
    main()
