"""Temporal mechanisms combined (issue 18): warping error of each method alone and with each mechanism added.

The clip is synthetic with a known motion (a detailed texture translating one latent pixel per frame),
so the flows are exact and the warping error ``mean |x_i − W(x_{i+1}, F_i)|`` over non-occluded pixels
measures temporal consistency, not flow error (lower = less flicker). The seam column is that error on
the frame pairs that cross a 5-frame segment border / on the others (``sampling.mgld.seam_error``).

* ``toy`` rows replace the network by the analytic denoiser of ``bench/mgld.py`` (x̂0 = the clean latent
  plus a noise-dependent detail 0.5·tanh(2x), what makes independently sampled frames disagree), run by
  ``sample_mgld_latents``: "per-frame" = one loop over the whole clip without guidance (the denoiser
  acts per pixel, so the frames are sampled independently); "MGLD" = its published 5-frame segments with
  motion guidance g = -10.
* ``tiny`` rows run the samplers with the test-size random-weight models (the latent of the clip is
  the model's input; their outputs are noise-like, so only the differences between rows of one method
  mean anything).

Mechanisms: ``+prop`` Latent Propagation at the last three even steps (``-6,-4,-2`` scaled to the run),
``+mg`` Motion Guidance (g = -10), ``+prop+mg`` both, in that order.

    python bench/temporal.py [--frames 15] [--steps 10] [--rows toy,tiny]
"""
from __future__ import annotations

import argparse
import tempfile

from common import machine_line  # also puts the repo on sys.path
from mgld import latent_clip as moving_latents, toy_denoiser  # the toy rows of bench/mgld.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vsr_core.flow import VideoFlow  # noqa: E402
from vsr_core.sampling.mechanisms import MotionGuidanceMechanism, Propagation  # noqa: E402
from vsr_core.sampling.mgld import sample_mgld_latents, seam_error  # noqa: E402


def errors(x: torch.Tensor, flow: VideoFlow, segment: int = 5) -> tuple[float, float, float]:
    """(warping error over all frame pairs, across segment borders, inside segments): ``seam_error``'s
    measure (non-occluded pixels, the flow resized to x's grid)."""
    across, inside = seam_error(x.float(), flow, segment)
    pairs = x.shape[0] - 1
    n_across = sum((i + 1) % segment == 0 for i in range(pairs))
    total = (across * n_across if n_across else 0.0) + inside * (pairs - n_across)
    return total / pairs, across, inside


def mechanisms(flow: VideoFlow, steps: int) -> dict:
    prop_steps = ",".join(str(-k) for k in (6, 4, 2) if k <= steps) or "-1"
    prop = Propagation(flow, prop_steps)
    mg = MotionGuidanceMechanism(flow, -10.0)
    return {"": [], "+prop": [prop], "+mg": [mg], "+prop+mg": [prop, mg]}


def _toy(args) -> list[tuple]:
    den = toy_denoiser(args.steps)
    z, flow = moving_latents(args.frames, 24, 32)
    rows = []
    for name, seg, g in (("per-frame", args.frames, 0.0), ("MGLD (5-frame segments, g -10)", 5, -10.0)):
        for tag, temporal in mechanisms(flow, args.steps).items():
            lat = sample_mgld_latents(den, z, flow, steps=args.steps, seed=42, guidance_scale=g, segment=seg,
                                      segment_mode="official", tile=0, temporal=temporal)
            rows.append(("toy", name + tag, *errors(lat, flow)))
    return rows


def _tiny(args) -> list[tuple]:
    from vsr_core.loaders import load_method_model
    from vsr_core.loaders.mgld import write_tiny_mgld
    from vsr_core.loaders.tiny import write_tiny_sd_x4, write_tiny_stablevsr
    from vsr_core.loaders.uav import write_tiny_uav
    from vsr_core.sampling.mgld import sample_mgld
    from vsr_core.sampling.prompt import prompt_embeddings
    from vsr_core.sampling.stablevsr import sample_stablevsr
    from vsr_core.sampling.uav import sample_uav
    from vsr_core.sampling.x4 import lr_conditioning, sample_per_frame

    root = tempfile.mkdtemp(prefix="vsr_temporal_bench_")
    # an LR clip moving 1 px per frame; the x4 family's latent grid is the LR grid, so its flow is exact there
    tex, flow = moving_latents(args.frames, 16, 24, seed=3, channels=3)
    lr = (tex - tex.min()) / (tex.max() - tex.min())
    frames = lr.permute(0, 2, 3, 1).contiguous()
    rows = []

    def add(method, tag, lat, f=flow):
        rows.append(("tiny", method + tag, *errors(lat, f)))

    x4 = load_method_model("sd_x4", write_tiny_sd_x4(f"{root}/x4"))
    cond = lr_conditioning(x4, frames, 20)
    pos = prompt_embeddings(x4, "")
    for tag, temporal in mechanisms(flow, args.steps).items():
        add("x4 per-frame", tag, sample_per_frame(x4, cond, pos, None, 1.0, args.steps, "ddim", 0, temporal=temporal))

    svr = load_method_model("stablevsr", write_tiny_stablevsr(f"{root}/svr"))
    cond = lr_conditioning(svr, frames, None)
    up = lambda f: F.interpolate(f, scale_factor=4) * 4  # noqa: E731  (StableVSR takes the flow of the x4 frames)
    hr_flow = VideoFlow(up(flow.forward), up(flow.backward))
    pos = prompt_embeddings(svr, "")
    for tag, temporal in mechanisms(flow, args.steps).items():
        add("StableVSR", tag, sample_stablevsr(svr, cond, hr_flow, pos, steps=args.steps, scheduler="ddim", seed=42,
                                               temporal=temporal))

    uav = load_method_model("upscale_a_video", write_tiny_uav(f"{root}/uav"))
    cond = lr_conditioning(uav, frames, 120)
    pos = prompt_embeddings(uav, "")
    for tag, temporal in mechanisms(flow, args.steps).items():
        add("Upscale-A-Video", tag, sample_uav(uav, cond, flow, pos, None, 1.0, args.steps, seed=10,
                                               temporal=temporal))

    write_tiny_mgld(f"{root}/mgld")
    mgld = load_method_model("mgld", f"{root}/mgld")
    x = lr.contiguous()
    for tag, temporal in mechanisms(flow, args.steps).items():
        if "mg" in tag:
            continue  # MGLD's own guidance is on in its published setting
        lat = sample_mgld(mgld, x, flow, steps=args.steps, seed=42, segment=5, segment_mode="official", tile=0,
                          min_side=0, temporal=temporal)
        add("MGLD (published)", tag, lat)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", default="toy,tiny")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    rows = []
    if "toy" in args.rows:
        rows += _toy(args)
    if "tiny" in args.rows:
        rows += _tiny(args)
    print(f"{args.frames} frames, {args.steps} steps; warping error (lower = steadier), seam = error across / inside "
          "5-frame borders")
    print(f"{'':5} {'method + mechanisms':<40} {'warp error':>10} {'vs alone':>9} {'seam across/inside':>20}")
    alone = {}
    for kind, name, err, across, inside in rows:
        base = name.split("+")[0]
        alone.setdefault((kind, base), err)
        print(f"{kind:5} {name:<40} {err:>10.4f} {err / alone[(kind, base)]:>8.2f}x {across:>9.4f}/{inside:<9.4f}")


if __name__ == "__main__":
    main()
