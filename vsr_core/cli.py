"""Command line: batch work without the ComfyUI graph.

    python -m vsr_core upscale IN OUT --scale 4 [--method learned] [--frames N] [--skip N] [--nth N]
    python -m vsr_core stream IN OUT --method upscale_a_video --model DIR [--chunk N --overlap N --blend flow]
    python -m vsr_core stream IN1 IN2 DIR/ --workers 4 [--ray-address ADDR]   # segments spread over Ray
    python -m vsr_core demo [--out DIR]          # the README's main job on the bundled clip
    python -m vsr_core render IMAGE OUT_LR.mp4   # a clip with known ground truth (virtual camera)
    python -m vsr_core probe IN
    python -m vsr_core convert mgldvsr_unet.ckpt       # one-time safe .ckpt -> .safetensors
    python -m vsr_core train-upscaler [--steps N]      # (re)train the learned upscaler; rerun resumes
    python -m vsr_core train-satec --stage 2 --data CLIPS --base SD2.safetensors [--dry-run]

An existing output is never replaced unless asked: ``--overwrite`` (``-y``), and then only once the new one is
complete. The check runs before any work, so an hour of compute never ends in a refusal.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CLIP = ASSETS / "demo_coffee_lr.mp4"


def _progress_bar(desc: str, unit: str = "frame"):
    """A tqdm bar driven by ``(done, total[, postfix])`` callbacks (plain prints when tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def report(done, total, postfix=None):
            print(f"\r{desc}: {done}/{total} {unit}s", end="" if done < total else "\n", flush=True)
        return report, lambda: None
    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True)

    def report(done, total, postfix: str | None = None):
        bar.total = total
        bar.update(done - bar.n)
        if postfix is not None:
            bar.set_postfix_str(postfix)
    return report, bar.close


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _paths_ok(src: Path, dst: Path) -> bool:
    """The input exists and the output is another file; otherwise say which on stderr."""
    if not src.exists():
        print(f"error: input video not found: {src}", file=sys.stderr)
        return False
    if dst.resolve() == src.resolve():
        print("error: the output path is the input path; choose another output name", file=sys.stderr)
        return False
    return True


def _outputs_free(args, *paths, held: str = "") -> bool:
    """Whether the outputs may be written: each path (None: none) is free, or ``--overwrite`` was given;
    otherwise one line on stderr. ``held``: what the file already holds when that, not its existence, is what
    would be replaced (a SATeCo stage's part)."""
    if args.overwrite:
        return True
    for path in paths:
        if path is not None and os.path.lexists(path):
            print(f"error: {path} already {held or 'exists'}; use --overwrite (-y) to replace it", file=sys.stderr)
            return False
    return True


def _on_exists(args) -> str:
    return "replace" if args.overwrite else "error"


def cmd_upscale(args) -> int:
    from .io import FrameSelection, format_for_path
    from .upscale import upscale_file

    src, dst = Path(args.input), Path(args.output)
    if not _paths_ok(src, dst) or not _outputs_free(args, dst, args.compare):
        return 2
    sel = FrameSelection(skip_first=args.skip, nth=args.nth, cap=args.frames)
    report, close = _progress_bar(f"upscale x{args.scale} ({args.method})")
    t0 = time.perf_counter()
    try:
        out = upscale_file(src, dst, scale=args.scale, method=args.method, selection=sel, chunk=args.chunk,
                           fmt=args.format or format_for_path(dst), crf=args.crf, pix_fmt=args.pix_fmt, device=_resolve_device(args.device),
                           compare_png=args.compare, keep_audio=not args.no_audio, progress=report,
                           weights=getattr(args, "weights", None), tile=getattr(args, "tile", 0),
                           on_exists=_on_exists(args))
    finally:
        close()
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s" + (f"; comparison: {args.compare}" if args.compare else ""))
    return 0


def _stream_pairs(args) -> list[tuple[Path, Path]] | None:
    """(input, output) pairs of ``stream IN [IN ...] OUT``: one file to one file, or many files (or a folder
    of videos) into the folder OUT as ``NAME_x4.EXT``; None after saying on stderr what is wrong."""
    from .io import OUTPUT_FORMATS, VIDEO_EXTENSIONS
    from .stream import UPSCALER_METHODS

    *inputs, out = [Path(p) for p in args.paths]
    if not inputs:
        print("error: give an input video and an output path", file=sys.stderr)
        return None
    if len(inputs) == 1 and not inputs[0].is_dir():
        return [(inputs[0], out)] if _paths_ok(inputs[0], out) else None
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_EXTENSIONS)
        elif _paths_ok(p, out / p.name):
            files.append(p)
        else:
            return None
    if not files:
        print(f"error: no video files in {', '.join(map(str, inputs))}", file=sys.stderr)
        return None
    if out.exists() and not out.is_dir():
        print(f"error: with several inputs the output must be a folder, and {out} is a file", file=sys.stderr)
        return None
    ext = OUTPUT_FORMATS[args.format][0] if args.format else ".mp4"
    scale = args.scale if args.method in UPSCALER_METHODS else 4
    pairs = [(f, out / f"{f.stem}_x{scale}{ext}") for f in files]
    names = [d.name for _, d in pairs]
    if len(set(names)) != len(names):
        print("error: two inputs have the same name; they would be written to the same output", file=sys.stderr)
        return None
    return pairs


def cmd_stream(args) -> int:
    """The streaming path of the VSR_StreamUpscaleVideo node: chunk by chunk, bounded memory; with
    ``--workers``/``--ray-address``, segments of the video(s) spread over a Ray cluster."""
    from .io import FrameSelection, format_for_path
    from .stream import DIFFUSION_METHODS, PipelineSpec, stream_video

    pairs = _stream_pairs(args)
    if pairs is None or not _outputs_free(args, *(dst for _, dst in pairs)):
        return 2
    settings = {}
    if args.method in DIFFUSION_METHODS:
        if not args.model:
            print(f"error: --method {args.method} needs --model (the method's official folder)", file=sys.stderr)
            return 2
        try:
            settings = json.loads(args.settings) if args.settings else {}
        except json.JSONDecodeError as e:
            print(f"error: --settings is not valid JSON ({e})", file=sys.stderr)
            return 2
        for key in ("steps", "seed"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
    # absolute paths: a Ray worker does not run in this folder
    absolute = lambda p: None if p is None else Path(p).resolve()  # noqa: E731
    spec = PipelineSpec.make(args.method, settings, model=absolute(args.model), weights=absolute(args.weights),
                             raft=absolute(args.raft), dtype=args.dtype, tile=args.tile, speed=args.speed,
                             dis_preset=args.dis_preset)
    sel = FrameSelection(skip_first=args.skip, nth=args.nth, cap=args.frames)
    common = dict(selection=sel, scale=args.scale, chunk=args.chunk, overlap=args.overlap, blend=args.blend,
                  crf=args.crf, pix_fmt=args.pix_fmt, keep_audio=not args.no_audio)
    t0 = time.perf_counter()
    if args.workers or args.ray_address:
        return _stream_distributed(args, spec, pairs, common, t0)
    device = _resolve_device(args.device)
    pipe = spec.build(device)
    for src, dst in pairs:
        report, close = _progress_bar(f"stream x{args.scale} ({args.method}) {src.name}")
        try:
            out = stream_video(src, dst, pipe, fmt=args.format or format_for_path(dst), progress=report,
                               device=device, on_exists=_on_exists(args), **common)
        finally:
            close()
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _stream_distributed(args, spec, pairs, common, t0) -> int:
    from .distributed import StreamJob, run_distributed
    from .io import format_for_path

    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: --workers and --ray-address need Ray: pip install 'ray>=2.9' (the node pack does not)",
              file=sys.stderr)
        return 2
    jobs = [StreamJob(str(src.resolve()), str(dst.resolve()), spec, fmt=args.format or format_for_path(dst), **common)
            for src, dst in pairs]
    bar, close = _progress_bar(f"stream x{args.scale} ({args.method}) on Ray")

    def report(status) -> None:  # all frames, and each worker's rate
        bar(status.done, status.total, " ".join(f"{w} {r:.2f}/s" for w, r in status.rates.items()))
    try:
        outs = run_distributed(jobs, workers=args.workers, address=args.ray_address,
                               segment_frames=args.segment_frames, device=args.device, threads=args.threads_per_worker,
                               retries=args.retries, progress=report, on_exists=_on_exists(args))
    finally:
        close()
    for out in outs:
        print(f"wrote {out}")
    print(f"{len(outs)} file(s) in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_demo(args) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ns = argparse.Namespace(input=str(DEMO_CLIP), output=str(out_dir / "demo_x4.mp4"), scale=4, method=args.method,
                            frames=0, skip=0, nth=1, chunk=0, format=None, crf=17, pix_fmt=None,
                            device=args.device, compare=str(out_dir / "demo_compare.png"), no_audio=False,
                            weights=None, tile=0, overwrite=args.overwrite)
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
    if not _outputs_free(args, args.output, args.hr):
        return 2
    h, w = (int(v) for v in args.size.lower().split("x"))
    hr, lr = make_clip(img[..., ::-1].copy(), args.frames, (h, w), args.scale, args.motion, args.amplitude, args.seed)
    save_video(lr, args.output, args.fps, fmt=format_for_path(args.output), crf=args.crf, on_exists=_on_exists(args))
    if args.hr:
        save_video(hr, args.hr, args.fps, fmt=format_for_path(args.hr), crf=args.crf, on_exists=_on_exists(args))
    print(f"wrote {args.output} ({lr.shape[0]} frames, {lr.shape[2]}x{lr.shape[1]})")
    return 0


def cmd_convert(args) -> int:
    from .loaders.mgld import convert_to_safetensors

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_suffix(".safetensors")
    if out.resolve() != src.resolve() and not _outputs_free(args, out):  # the same path: convert's own error
        return 2
    out = convert_to_safetensors(src, out, on_exists=_on_exists(args))
    print(f"wrote {out} (tensors only; the loaders prefer it to the pickle beside it)")
    return 0


def cmd_train_upscaler(args) -> int:
    from .training.upscaler import config_from_args, train

    cfg = config_from_args(args)
    if not _outputs_free(args, cfg.out_path):
        return 2
    train(cfg, restart=args.restart, on_exists=_on_exists(args))
    return 0


def cmd_train_satec(args) -> int:
    import numpy as np

    from .training.satec import config_from_args, dry_run, existing_export, train_stage

    cfg = config_from_args(args)
    if args.dry_run:
        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    held = "" if cfg.stage == 1 else f"holds stage {cfg.stage} ({cfg.part})"
    if not _outputs_free(args, existing_export(cfg), held=held):
        return 2
    report = train_stage(cfg, restart=args.restart, on_exists=_on_exists(args))
    print(f"stage {cfg.stage} ({cfg.part}): {report['steps']} steps, final loss "
          f"{np.mean(report['losses'][-50:]):.4f} -> {report['file']}")
    return 0


def cmd_probe(args) -> int:
    from .io import probe

    print(json.dumps(probe(args.input).to_dict(), indent=2))
    return 0


def _overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--overwrite", action="store_true",
                   help="replace an existing output (atomically: the old one stays until the new one is complete)")


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
    _overwrite_flag(u)
    u.set_defaults(func=cmd_upscale)

    from .speed import SPEED_PRESETS
    from .stream import BLEND_MODES, STREAM_METHODS

    SPEED_CHOICES = ("as loaded", "auto", *sorted(SPEED_PRESETS))

    st = sub.add_parser("stream", help="upscale a video file chunk by chunk with any method (diffusion too): "
                        "bounded memory, overlapping chunks crossfaded, temporal state carried across chunks")
    st.add_argument("paths", nargs="+", metavar="IN [IN ...] OUT",
                    help="one video and the output file, or several videos / folders of videos and an output folder")
    st.add_argument("--method", default="learned", choices=STREAM_METHODS)
    st.add_argument("--model", default=None, help="the diffusion method's official folder (StableVSR/x4 diffusers "
                    "folder or x4 single file; Upscale-A-Video folder; MGLD folder)")
    st.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    st.add_argument("--speed", default="as loaded", choices=SPEED_CHOICES,
                    help="diffusion networks: as loaded (--dtype), or auto (fp16 on CUDA; bf16 autocast on CPUs with "
                    "native bf16 that measures faster, else fp32) / fp16 / bf16 / bf16-autocast / fp16-compile / fp32, + channels-last")
    st.add_argument("--steps", type=int, default=None, help="denoising steps (default: the method's published)")
    st.add_argument("--seed", type=int, default=None)
    st.add_argument("--settings", default="", help='more sampler settings as JSON, e.g. \'{"propagation_steps": '
                    '[-6, -4, -2]}\'')
    st.add_argument("--scale", type=int, default=4, choices=(2, 4), help="upscalers only (diffusion is x4)")
    st.add_argument("--weights", default=None, help="learned: a weights file of your own")
    st.add_argument("--tile", type=int, default=0, help="learned: LR tile side (0 = whole frames)")
    st.add_argument("--chunk", type=int, default=0, help="frames per chunk (0 = auto)")
    st.add_argument("--overlap", type=int, default=-1, help="frames shared by neighbouring chunks (-1 = auto)")
    st.add_argument("--blend", default="flow", choices=BLEND_MODES)
    st.add_argument("--dis-preset", dest="dis_preset", default="medium", choices=("ultrafast", "fast", "medium"))
    st.add_argument("--raft", default=None, help="a RAFT weights file to use instead of DIS")
    st.add_argument("--frames", type=int, default=0, help="frame_load_cap (0 = all)")
    st.add_argument("--skip", type=int, default=0)
    st.add_argument("--nth", type=int, default=1)
    st.add_argument("--format", default=None, choices=list(OUTPUT_FORMATS))
    st.add_argument("--crf", type=int, default=17)
    st.add_argument("--pix-fmt", dest="pix_fmt", default=None)
    st.add_argument("--device", default="auto")
    st.add_argument("--no-audio", action="store_true")
    rg = st.add_argument_group("on a Ray cluster (pip install 'ray>=2.9'; see the README, 'Many GPUs and hosts')")
    rg.add_argument("--workers", type=int, default=0,
                    help="segments upscaled at once on Ray (0 = this process alone, unless --ray-address is given)")
    rg.add_argument("--ray-address", dest="ray_address", default=None,
                    help="a running cluster ('auto', 'HOST:6379', 'ray://HOST:10001'); without it --workers starts "
                    "a local one")
    rg.add_argument("--segment-frames", dest="segment_frames", type=int, default=0,
                    help="frames per segment (whole chunks; 0 = 64 for the exact methods, 240 for diffusion, whose "
                    "segment borders restart the carried state)")
    rg.add_argument("--threads-per-worker", dest="threads_per_worker", type=int, default=0,
                    help="torch threads of a CPU worker (0 = the cluster's CPUs shared among the workers)")
    rg.add_argument("--retries", type=int, default=3, help="times a segment is rerun when its worker dies")
    _overwrite_flag(st)
    st.set_defaults(func=cmd_stream)

    d = sub.add_parser("demo", help="upscale the bundled demo clip x4 (mp4 + comparison PNG)")
    d.add_argument("--out", default="out")
    d.add_argument("--method", default="learned", choices=UPSCALE_METHODS)
    d.add_argument("--device", default="auto")
    _overwrite_flag(d)
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
    _overwrite_flag(r)
    r.set_defaults(func=cmd_render)

    cv = sub.add_parser("convert", help="convert a Lightning .ckpt (MGLD) to .safetensors, once, safely")
    cv.add_argument("input")
    cv.add_argument("output", nargs="?", default=None, help="default: the input name with .safetensors")
    _overwrite_flag(cv)
    cv.set_defaults(func=cmd_convert)

    t = sub.add_parser("train-upscaler", help="train the learned video upscaler (resumable; see vsr_core/training)")
    from .training.upscaler import add_arguments
    add_arguments(t)
    _overwrite_flag(t)
    t.set_defaults(func=cmd_train_upscaler)

    ts = sub.add_parser("train-satec", help="train one SATeCo stage on a folder of HR clips (resumable; --dry-run "
                        "checks data and memory first)")
    from .training.satec import add_arguments as satec_arguments
    satec_arguments(ts)
    _overwrite_flag(ts)
    ts.set_defaults(func=cmd_train_satec)

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
