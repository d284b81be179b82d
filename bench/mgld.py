"""MGLD sampling: seconds per frame, peak memory, and the segment seam, for the published 5-frame
segments (``official``) and the overlapping segments with cross-faded ε̂ and clip-wide guidance
(``overlap``).

The clip is synthetic with a known motion (a smooth texture translating 2 LR px per frame, so the flows
are exact and the warping error measures temporal consistency, not flow error). Seam = mean warping
error |x_i − W(x_{i+1}, F_i)| over non-occluded pixels, on pairs that cross a 5-frame border vs pairs
inside a segment (``seam_error``), on the latents and on the decoded frames.

Models: ``--unet``/``--vae`` load the released checkpoints (``load_mgld_model``); without them a tiny
random MGLD (``write_tiny_mgld``) is used, so speed/memory rows describe the code path, not the real
network, and seams reflect the sampler. ``toy`` rows replace the network by an analytic denoiser whose
x̂0 carries noise-dependent detail (what makes independent segments disagree), on a detailed latent
texture moving one latent pixel per frame.

    python bench/mgld.py                                   # tiny + toy, 15 frames of 96x128 LR, 10 steps
    python bench/mgld.py --frames 20 --lr 64x64 --steps 50 --device cuda --unet U.ckpt --vae V.ckpt
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


def latent_clip(frames: int, h: int, w: int, seed: int = 0):
    """A detailed latent texture moving 1 latent px per frame, with its exact flow (the toy rows)."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, 4, h, w + frames, generator=g), 3, 1, 1)[0]
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


def main() -> None:
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
    args = ap.parse_args()
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
