"""Train the learned video upscaler: ``python -m vsr_core train-upscaler`` (one command, resumable).

The run fetches the photographs if needed (:func:`vsr_core.training.data.fetch_images`), trains on
random windows rendered from the training photographs (x4 three steps out of four, x2 the fourth, both
heads share the trunk), checkpoints every ``save_every`` steps to ``workdir/checkpoint.pt`` (weights,
optimiser, step; a rerun of the same command continues from there), and ends by exporting the weights
and a report on the held-out clips (Y-PSNR of the model vs bicubic, x4 and x2). The exported weights are
the run's output: an existing file there is replaced only when asked (``on_exists="replace"``, the CLI's
``--overwrite``), and only once the new file is complete; the checkpoint and report are the work directory's.
SATeCo trains its upscaler with a Charbonnier loss (§3.3, stage 1); so does this, and ``--loss mse`` (the
squared error, what PSNR measures) serves a last fine-tuning stage.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io.video import OutputExistsError, write_file
from ..models.video_upscaler import VideoUpscaler, VideoUpscalerConfig
from .data import HELDOUT_IMAGES, TRAIN_IMAGES, WindowSampler, fetch_images, heldout_clips, load_images


@dataclass
class TrainConfig:
    images: str = "train_data/images"
    workdir: str = "runs/video_upscaler"
    out: str = ""  # default: workdir/video_upscaler.safetensors
    steps: int = 2400
    batch: int = 16
    lr_patch: int = 48
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    degradation: str = "bicubic"
    max_motion: float = 3.0
    max_zoom: float = 0.01  # the camera's largest zoom per frame (a fraction)
    max_rotation: float = 0.5  # and rotation per frame (degrees)
    resample: float = 0.0  # the fraction of clips seen through a resampled (turned, scaled, shifted) view
    save_every: int = 100
    channels: int = 32
    blocks: int = 6
    radius: int = 2
    window: int = 3
    align: str = "none"  # stage 1 of the shipped recipe; stages 2-4 are "dis" (aligned neighbours + sub-pixel phase)
    flow_preset: str = "medium"
    flow_finest_scale: int | None = None  # DIS's finest pyramid level (0: full resolution); None: the preset's
    init: str = ""  # start from these weights (same architecture) instead of random ones
    fetch: bool = True
    threads: int = 0
    precision: str = "fp32"  # "bf16": the forward pass under CPU autocast (weights and optimiser stay fp32)
    loss: str = "charbonnier"  # or "mse"
    synthetic: int = 0  # drawings of man-made structure added to the photographs (synthetic.structures_image)
    eval_frames: int = 16

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out else Path(self.workdir) / "video_upscaler.safetensors"

    def model_config(self) -> VideoUpscalerConfig:
        return VideoUpscalerConfig(channels=self.channels, num_blocks=self.blocks, radius=self.radius,
                                   window=self.window, attn_channels=max(8, self.channels // 2),
                                   heads=2, scales=(2, 4), align=self.align, flow_preset=self.flow_preset,
                                   flow_finest_scale=self.flow_finest_scale)


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).mean()


LOSSES = {"charbonnier": charbonnier, "mse": mse}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 1% of ``cfg.lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def scale_at(step: int) -> int:
    return 2 if step % 4 == 3 else 4


def _save_checkpoint(path: Path, model, opt, step: int, cfg: TrainConfig, losses: list[float]) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": asdict(cfg),
                "losses": losses}, tmp)
    os.replace(tmp, path)


def export_file(path: Path, write, on_exists: str = "error") -> Path:
    """Write a run's final file with ``write(tmp)`` beside ``path``, then move it into place once complete:
    replacing what is there (``"replace"``; the old file stays intact until then) or only while the name is
    free (``"error"``). Nothing partial is left behind."""
    try:
        return write_file(path, write, on_exists)
    except FileExistsError:
        raise OutputExistsError(f"{path} appeared while training and was left as it was; the checkpoint is kept, "
                                "so a rerun that asks to replace it exports at once") from None


def _resumable(saved: dict, cfg: TrainConfig) -> None:
    keep = ("steps", "batch", "lr_patch", "lr", "warmup", "seed", "degradation", "max_motion", "max_zoom",
            "max_rotation", "resample", "channels", "blocks", "radius", "window", "align", "flow_preset",
            "flow_finest_scale", "init", "precision", "loss", "synthetic")
    was = {k: saved["config"].get(k, getattr(TrainConfig, k)) for k in keep}  # a key added later: its default
    diff = {k: (was[k], getattr(cfg, k)) for k in keep if was[k] != getattr(cfg, k)}
    if diff:
        raise ValueError(f"the checkpoint in the work directory was made with other settings {diff}: use the same "
                         "settings to resume, or another --workdir (or --restart) to start over")


def _initialise(model: VideoUpscaler, path: str) -> dict:
    """Copy the weights of ``path`` into ``model``; returns that file's own training recipe, which the new
    file carries as ``init_recipe``.

    The architecture must match except for the alignment setting, the temporal radius (no weight depends
    on it: the same attention then reaches more or fewer frames) and the number of residual blocks: a
    deeper ``model`` gets the file's blocks first and its extra blocks start as the identity (their second
    convolution zeroed), and a file without alignment gives the phase inputs of ``align="dis"`` zero
    weights, so training starts from the file's function (on the aligned frames)."""
    from ..loaders.video_upscaler import load_video_upscaler, read_metadata

    source = load_video_upscaler(path)
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    free = ("align", "flow_preset", "flow_finest_scale", "num_blocks", "radius")
    differ = {k: (theirs[k], mine[k]) for k in mine
              if (mine[k] != theirs[k] and k not in free) or (k == "num_blocks" and mine[k] < theirs[k])}
    if differ:
        raise ValueError(f"--init {path}: its architecture differs from this run's {differ}; give the same "
                         "--channels/--window and at least as many --blocks, or start from random weights")
    with torch.no_grad():
        for block in model.body[theirs["num_blocks"]:]:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
    state = source.state_dict()
    w = state["conv_in.weight"]
    if w.shape[1] > model.in_channels:
        raise ValueError(f"--init {path}: it was trained with --align {source.config.align}, which this run leaves "
                         "out; give --align the same value")
    if w.shape[1] < model.in_channels:  # a file without alignment: the phase channels start at zero
        state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], model.in_channels - w.shape[1],
                                                            *w.shape[2:])], 1)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("body.") for k in missing):
        raise ValueError(f"--init {path}: keys do not fit (missing {missing[:4]}, unexpected {unexpected[:4]})")
    recipe = read_metadata(path).get("vsr_training")
    return json.loads(recipe) if recipe else {"note": f"{Path(path).name} carries no training recipe"}


def evaluate(model: VideoUpscaler, images: dict, scales=(4, 2), num_frames: int = 16) -> dict:
    """Mean Y-PSNR (dB, 8-pixel border cropped) over the held-out clips for bicubic and the model."""
    from ..metrics import psnr
    from ..upscale import LearnedUpscaler, bicubic, upscale_frames

    report = {}
    for s in scales:
        rows = {"bicubic": [], "learned": []}
        for _name, hr, lr in heldout_clips(images, s, num_frames):
            up = upscale_frames(lr, s, LearnedUpscaler(model, s), chunk=8)
            rows["learned"].append(psnr(up, hr, y_channel=True, crop=8).mean().item())
            rows["bicubic"].append(psnr(bicubic(lr, s), hr, y_channel=True, crop=8).mean().item())
        report[f"x{s}"] = {k: sum(v) / len(v) for k, v in rows.items()}
    return report


def train(cfg: TrainConfig, restart: bool = False, progress: bool = True, on_exists: str = "error") -> dict:
    """Run (or resume) a training run; returns the final report (also written to ``workdir/report.json``).
    on_exists: ``"error"`` (an existing ``cfg.out_path`` is left as it was) or ``"replace"``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = cfg.out_path
    image_dir = Path(cfg.images)
    users_own = image_dir.is_dir() and any(image_dir.iterdir()) and not (image_dir / ".wheel").exists()
    if cfg.fetch and not users_own:  # an empty or earlier-fetched folder gets (the rest of) the photographs
        fetch_images(image_dir)
    available = {p.name for p in image_dir.iterdir()} if image_dir.is_dir() else set()
    train_names = [n for n in TRAIN_IMAGES if n in available] or sorted(
        n for n in available if n not in HELDOUT_IMAGES and not n.startswith("."))
    held_names = [n for n in HELDOUT_IMAGES if n in available]
    train_images = load_images(image_dir, train_names)
    held_images = load_images(image_dir, held_names) if held_names else {}
    if cfg.synthetic:
        from ..synthetic import structures_image

        drawn = {f"structures_{i}": structures_image(i) for i in range(cfg.synthetic)}
        train_images.update(drawn)
        train_names = train_names + list(drawn)

    torch.manual_seed(cfg.seed)
    model = VideoUpscaler(cfg.model_config())
    init_recipe = _initialise(model, cfg.init) if cfg.init else None
    model.to(memory_format=torch.channels_last)  # oneDNN's convolutions and their gradients are faster so on a CPU
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    ckpt_path = workdir / "checkpoint.pt"
    step, losses = 0, []
    if ckpt_path.is_file() and not restart:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _resumable(saved, cfg)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        step, losses = saved["step"], list(saved["losses"])
        print(f"resuming from step {step} ({ckpt_path})")
    loss_fn = LOSSES[cfg.loss]
    sampler = WindowSampler(train_images, cfg.radius, cfg.lr_patch, cfg.max_motion, cfg.degradation, cfg.seed,
                            max_zoom=cfg.max_zoom, max_rotation=cfg.max_rotation, resample=cfg.resample)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train-upscaler", unit="step", dynamic_ncols=True)
    t0 = time.time()
    model.train()
    try:
        while step < cfg.steps:
            scale = scale_at(step)
            lr_frames, hr = sampler.batch(step, cfg.batch, scale)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            with torch.autocast(lr_frames.device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                pred = model(lr_frames, scale)[:, 0]
            loss = loss_fn(pred.float(), hr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", scale=f"x{scale}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                _save_checkpoint(ckpt_path, model, opt, step, cfg, losses)
    except KeyboardInterrupt:
        _save_checkpoint(ckpt_path, model, opt, step, cfg, losses)
        print(f"\ninterrupted at step {step}: checkpoint saved; run the same command to resume")
        raise
    finally:
        if bar is not None:
            bar.close()
    model.eval()

    from ..loaders.video_upscaler import save_video_upscaler

    report = {"steps": step, "train_seconds_this_run": round(time.time() - t0, 1),
              "train_images": train_names, "heldout_images": held_names, "config": asdict(cfg)}
    if init_recipe is not None:
        report["init_recipe"] = init_recipe
    if held_images:
        with torch.no_grad():
            report["heldout_y_psnr"] = evaluate(model, held_images, num_frames=cfg.eval_frames)
    recipe = {k: v for k, v in report.items() if k != "train_seconds_this_run"}
    recipe["config"] = {k: v for k, v in report["config"].items() if k not in ("images", "workdir", "out")}
    meta = {"vsr_training": json.dumps(recipe)}  # the recipe travels with the weights; local paths do not
    export_file(out, lambda tmp: save_video_upscaler(model, tmp, meta), on_exists)
    report["weights"] = str(out)
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [f"trained {report['steps']} steps; weights: {report.get('weights', '?')}"]
    for s, row in report.get("heldout_y_psnr", {}).items():
        gain = row["learned"] - row["bicubic"]
        lines.append(f"held-out {s}: Y-PSNR bicubic {row['bicubic']:.2f} dB, learned {row['learned']:.2f} dB "
                     f"({gain:+.2f} dB)")
    return "\n".join(lines)


def add_arguments(p) -> None:
    d = TrainConfig()
    p.add_argument("--images", default=d.images, help="folder of training photographs (fetched if missing)")
    p.add_argument("--workdir", default=d.workdir, help="checkpoints and report go here; rerun to resume")
    p.add_argument("--out", default=d.out, help="weights file to write (default: WORKDIR/video_upscaler.safetensors)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr-patch", dest="lr_patch", type=int, default=d.lr_patch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--degradation", default=d.degradation, choices=("bicubic", "mix"))
    p.add_argument("--max-motion", dest="max_motion", type=float, default=d.max_motion,
                   help="largest camera motion, LR pixels per frame")
    p.add_argument("--max-zoom", dest="max_zoom", type=float, default=d.max_zoom,
                   help="largest camera zoom per frame, a fraction (0.01 = 1%%)")
    p.add_argument("--max-rotation", dest="max_rotation", type=float, default=d.max_rotation,
                   help="largest camera rotation per frame, degrees")
    p.add_argument("--resample", type=float, default=d.resample,
                   help="fraction of training clips whose truth is a resampled view (turned up to 5 degrees, "
                        "magnified 0.9-1.1x, shifted sub-pixel) rather than the photograph's own pixel grid")
    p.add_argument("--save-every", dest="save_every", type=int, default=d.save_every)
    p.add_argument("--channels", type=int, default=d.channels)
    p.add_argument("--blocks", type=int, default=d.blocks)
    p.add_argument("--radius", type=int, default=d.radius, help="neighbour frames each side (window 2r+1)")
    p.add_argument("--window", type=int, default=d.window, help="attention neighbourhood side (odd)")
    p.add_argument("--align", default=d.align, choices=("dis", "none"),
                   help="dis: move the neighbours onto the centre frame by the whole-pixel DIS flow and hand the "
                        "sub-pixel remainder to the network; none: leave them (stage 1 of the shipped recipe; "
                        "the shipped weights use dis)")
    p.add_argument("--flow-preset", dest="flow_preset", default=d.flow_preset, choices=("ultrafast", "fast", "medium"))
    p.add_argument("--flow-finest-scale", dest="flow_finest_scale", type=int, default=d.flow_finest_scale,
                   help="DIS's finest pyramid level: 0 = full resolution (more precise sub-pixel phases, ~3x the "
                        "flow time); default: the preset's own")
    p.add_argument("--init", default=d.init, help="start from these learned-upscaler weights (same architecture)")
    p.add_argument("--no-fetch", dest="fetch", action="store_false", help="never download the photographs")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0 = default)")
    p.add_argument("--precision", default=d.precision, choices=("fp32", "bf16"),
                   help="bf16: train the forward pass under autocast (about 1.4x faster on a CPU with AVX512-BF16)")
    p.add_argument("--loss", default=d.loss, choices=tuple(LOSSES),
                   help="training loss: charbonnier (robust, the earlier stages) or mse (what PSNR measures)")
    p.add_argument("--synthetic", type=int, default=d.synthetic,
                   help="add this many drawings of man-made structure (thin lines, trusses, text; made here, "
                        "vsr_core.synthetic.structures_image seeds 0..N-1) to the training photographs")
    p.add_argument("--eval-frames", dest="eval_frames", type=int, default=d.eval_frames)
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint in the work directory")


def config_from_args(args) -> TrainConfig:
    names = {f for f in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
