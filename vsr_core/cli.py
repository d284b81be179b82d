"""Command line: batch work without the ComfyUI graph.

    python -m vsr_core upscale IN OUT --scale 4 [--method learned] [--frames N] [--skip N] [--nth N]
    python -m vsr_core demo [--out DIR]          # the README's main job on the bundled clip
    python -m vsr_core render IMAGE OUT_LR.mp4   # a clip with known ground truth (virtual camera)
    python -m vsr_core probe IN
    python -m vsr_core convert mgldvsr_unet.ckpt       # one-time safe .ckpt -> .safetensors
    python -m vsr_core train-upscaler [--steps N]      # (re)train the learned upscaler; rerun resumes
    python -m vsr_core train-satec --stage 2 --data CLIPS --base SD2.safetensors [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CLIP = ASSETS / "demo_coffee_lr.mp4"


def _progress_bar(desc: str, unit: str = "frame"):
    """A tqdm bar driven by ``(done, total)`` callbacks (plain prints when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def report(done, total):
            print(f"\r{desc}: {done}/{total} {unit}s", end="" if done < total else "\n", flush=True)
        return report, lambda: None
    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True)

    def report(done, total):
        bar.total = total
        bar.update(done - bar.n)
    return report, bar.close


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cmd_upscale(args) -> int:
    from .io import FrameSelection, format_for_path
    from .upscale import upscale_file

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        print(f"error: input video not found: {src}", file=sys.stderr)
        return 2
    if dst.resolve() == src.resolve():
        print("error: the output path is the input path; choose another output name", file=sys.stderr)
        return 2
    sel = FrameSelection(skip_first=args.skip, nth=args.nth, cap=args.frames)
    report, close = _progress_bar(f"upscale x{args.scale} ({args.method})")
    t0 = time.perf_counter()
    try:
        out = upscale_file(src, dst, scale=args.scale, method=args.method, selection=sel, chunk=args.chunk,
                           fmt=args.format or format_for_path(dst), crf=args.crf, pix_fmt=args.pix_fmt, device=_resolve_device(args.device),
                           compare_png=args.compare, keep_audio=not args.no_audio, progress=report,
                           weights=getattr(args, "weights", None), tile=getattr(args, "tile", 0))
    finally:
        close()
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s" + (f"; comparison: {args.compare}" if args.compare else ""))
    return 0


def cmd_demo(args) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(input=str(DEMO_CLIP), output=str(out_dir / "demo_x4.mp4"), scale=4, method=args.method,
                            frames=0, skip=0, nth=1, chunk=0, format=None, crf=17, pix_fmt=None,
                            device=args.device, compare=str(out_dir / "demo_compare.png"), no_audio=False,
                            weights=None, tile=0)
    print(f"Upscaling the bundled clip {DEMO_CLIP.name} x4 with '{args.method}' -> {out_dir}/")
    return cmd_upscale(ns)


def cmd_render(args) -> int:
    import cv2

    from .io import format_for_path, save_video
    from .synthetic import make_clip

    img = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if img is None:
        print(f"error: cannot read image {args.image}", file=sys.stderr)
        return 2
    h, w = (int(v) for v in args.size.lower().split("x"))
    hr, lr = make_clip(img[..., ::-1].copy(), args.frames, (h, w), args.scale, args.motion, args.amplitude, args.seed)
    save_video(lr, args.output, args.fps, fmt=format_for_path(args.output), crf=args.crf)
    if args.hr:
        save_video(hr, args.hr, args.fps, fmt=format_for_path(args.hr), crf=args.crf)
    print(f"wrote {args.output} ({lr.shape[0]} frames, {lr.shape[2]}x{lr.shape[1]})")
    return 0


def cmd_convert(args) -> int:
    from .loaders.mgld import convert_to_safetensors

    out = convert_to_safetensors(args.input, args.output)
    print(f"wrote {out} (tensors only; the loaders prefer it to the pickle beside it)")
    return 0


def cmd_probe(args) -> int:
    from .io import probe

    print(json.dumps(probe(args.input).to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .io import OUTPUT_FORMATS
    from .upscale import UPSCALE_METHODS

    p = argparse.ArgumentParser(prog="python -m vsr_core", description="Diffusion VSR core: video upscaling CLI")
    sub = p.add_subparsers(dest="command", required=True)

    u = sub.add_parser("upscale", help="upscale a video file (streams in chunks: bounded memory)")
    u.add_argument("input")
    u.add_argument("output")
    u.add_argument("--scale", type=int, default=4, choices=(2, 4))
    u.add_argument("--method", default="learned", choices=UPSCALE_METHODS,
                   help="learned (default: the pack's multi-frame upscaler, weights embedded), bicubic or lanczos")
    u.add_argument("--weights", default=None, help="a learned-upscaler file of your own (default: the embedded one)")
    u.add_argument("--tile", type=int, default=0, help="learned: LR tile side to bound memory (0 = whole frames)")
    u.add_argument("--frames", type=int, default=0, help="frame_load_cap: at most this many frames (0 = all)")
    u.add_argument("--skip", type=int, default=0, help="skip_first_frames")
    u.add_argument("--nth", type=int, default=1, help="select_every_nth")
    u.add_argument("--chunk", type=int, default=0, help="frames per chunk (0 = auto from the output size)")
    u.add_argument("--format", default=None, choices=list(OUTPUT_FORMATS),
                   help="default: from the output name (.mp4 -> h264, .mkv -> lossless ffv1, no extension -> PNGs)")
    u.add_argument("--crf", type=int, default=17)
    u.add_argument("--pix-fmt", dest="pix_fmt", default=None)
    u.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    u.add_argument("--compare", default=None, help="also write a 'bicubic | result' PNG of the middle frame")
    u.add_argument("--no-audio", action="store_true")
    u.set_defaults(func=cmd_upscale)

    d = sub.add_parser("demo", help="upscale the bundled demo clip x4 (mp4 + comparison PNG)")
    d.add_argument("--out", default="out")
    d.add_argument("--method", default="learned", choices=UPSCALE_METHODS)
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("render", help="render a clip with known ground truth: a virtual camera over a photo")
    r.add_argument("image")
    r.add_argument("output", help="low-resolution clip to write (.mp4)")
    r.add_argument("--hr", default=None, help="also write the high-resolution ground truth here")
    r.add_argument("--frames", type=int, default=48)
    r.add_argument("--size", default="360x480", help="HR size HxW (divisible by the scale)")
    r.add_argument("--scale", type=int, default=4)
    r.add_argument("--motion", default="mixed", choices=("pan", "zoom", "rotate", "mixed"))
    r.add_argument("--amplitude", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fps", type=float, default=24.0)
    r.add_argument("--crf", type=int, default=10)
    r.set_defaults(func=cmd_render)

    cv = sub.add_parser("convert", help="convert a Lightning .ckpt (MGLD) to .safetensors, once, safely")
    cv.add_argument("input")
    cv.add_argument("output", nargs="?", default=None, help="default: the input name with .safetensors")
    cv.set_defaults(func=cmd_convert)

    t = sub.add_parser("train-upscaler", help="train the learned video upscaler (resumable; see vsr_core/training)")
    from .training.upscaler import add_arguments, main_from_args
    add_arguments(t)
    t.set_defaults(func=main_from_args)

    ts = sub.add_parser("train-satec", help="train one SATeCo stage on a folder of HR clips (resumable; --dry-run "
                        "checks data and memory first)")
    from .training.satec import add_arguments as satec_arguments, main_from_args as satec_main
    satec_arguments(ts)
    ts.set_defaults(func=satec_main)

    pr = sub.add_parser("probe", help="print a video's metadata as JSON")
    pr.add_argument("input")
    pr.set_defaults(func=cmd_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted: no partial output was left under the final name", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
