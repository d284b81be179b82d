"""Training SATeCo, the only way to get its weights (the paper released none): four stages on a frozen
Stable Diffusion 2.x base (methods.md §5.3).

1. ``upscaler``: the learned video upscaler (X_L → X_u), Charbonnier loss against the HR frames.
2. ``unet``: E_z + SFA/TFA in the UNet decoder, the standard diffusion loss (ε or v, as the base predicts)
   on latents of the HR clip, guided by the latent of X_u.
3. ``vae``: SFA/TFA in the VAE decoder, MSE reconstruction of the HR clip from its fixed HR latents,
   guided by X_u.
4. ``refiner``: the video refiner on (X_u, X_d) with X_d from the trained stages 2-3 (a short sampling
   run per batch), Charbonnier loss; all else frozen.

Data: any folder of HR clips — video files, or folders of frames (REDS ``train_sharp/000/00000000.png``,
Vimeo-90K ``sequences/00001/0001/im1.png`` … are found as frame folders; Vimeo's ``sep_trainlist.txt`` is
honoured). LR frames are made on the fly (×4 bicubic, or ``mix``: blur, noise and JPEG on top).

Each stage: a JSON (or YAML, when PyYAML is installed) config over the defaults of ``StageConfig``; AdamW
at 5e-5 as published; mixed precision (``amp``); gradient checkpointing of the adapters and the base;
a checkpoint written atomically every ``save_every`` steps that the same command resumes; a tqdm bar with
the loss; the trained part is added to ``<out>/satec.safetensors`` (stage 1 writes ``upscaler.safetensors``).
The export replaces an earlier one (stage 1's file, or this stage's part of ``satec.safetensors``) only when
asked (``on_exists="replace"``, the CLI's ``--overwrite``); adding a part keeps the other stages' parts.
``--dry-run`` checks the data and measures one training step's peak memory before hours are spent.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import VIDEO_EXTENSIONS, FrameSelection, OutputExistsError, iter_frames, probe
from .data import Degradation
from .upscaler import charbonnier, export_file

__all__ = ["STAGES", "StageConfig", "ClipFolder", "train_stage", "dry_run", "existing_export", "add_arguments",
           "config_from_args", "load_config_file"]

STAGES = {1: "upscaler", 2: "unet", 3: "vae", 4: "refiner"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class StageConfig:
    """One stage's settings (every field can come from the config file or the command line)."""

    stage: int = 2
    data: str = ""
    base: str = ""                # SD 2.x checkpoint or diffusers folder (stages 2-4)
    out: str = "runs/satec"
    steps: int = 2000
    batch_size: int = 1
    clip_length: int = 6          # frames per clip (the tubelet length L)
    crop: int = 256               # HR crop side (a multiple of 8 x the scale)
    scale: int = 4
    lr: float = 5e-5              # AdamW, as published
    degradation: str = "bicubic"  # or "mix"
    amp: str = "auto"             # auto (bf16 on CUDA with bf16, else none) | none | bf16 | fp16
    grad_checkpointing: bool = True
    save_every: int = 200
    seed: int = 0
    prediction: str = "auto"
    upscaler: str = ""            # X_u comes from this learned-upscaler file (stage 1's); "" = the embedded one
    refiner_steps: int = 4        # stage 4: sampling steps that make X_d
    refiner_strength: float = 0.5
    satec: dict = field(default_factory=dict)  # SATeCoConfig overrides (sizes of the trainable parts)
    device: str = "auto"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)} ({STAGES}), got {self.stage}")
        if self.crop % (8 * self.scale):
            raise ValueError(f"crop must be a multiple of {8 * self.scale} (8 x scale), got {self.crop}")
        if self.degradation not in ("bicubic", "mix"):
            raise ValueError(f"degradation must be 'bicubic' or 'mix', got {self.degradation!r}")
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, none, bf16 or fp16, got {self.amp!r}")

    @property
    def part(self) -> str:
        return STAGES[self.stage]


def load_config_file(path: str | os.PathLike) -> dict:
    """A stage config file: JSON, or YAML when PyYAML is installed (``.yaml`` / ``.yml``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the config as JSON") from e
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a stage config is a mapping of settings, got {type(data).__name__}")
    known = {f.name for f in fields(StageConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
    return data


# ------------------------------------------------------------------------------------------------- data

class ClipFolder:
    """The HR clips under ``root``: frame folders (any folder holding at least ``min_frames`` images,
    REDS and Vimeo-90K included) and video files, found recursively."""

    def __init__(self, root: str | os.PathLike, min_frames: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training data folder not found: {self.root}")
        self.layout = "generic"
        listed = self.root / "sep_trainlist.txt"
        self.clips: list[tuple[str, object, int]] = []
        if (self.root / "sequences").is_dir():
            self.layout = "vimeo90k"
        if listed.is_file():
            for line in listed.read_text().split():
                folder = self.root / "sequences" / line
                ims = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
                if len(ims) >= min_frames:
                    self.clips.append(("frames", ims, len(ims)))
        else:
            for dirpath, _dirs, files in os.walk(self.root):
                ims = sorted(Path(dirpath) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
                if len(ims) >= min_frames:
                    self.clips.append(("frames", ims, len(ims)))
                for f in sorted(files):
                    if Path(f).suffix.lower() in VIDEO_EXTENSIONS:
                        n = probe(Path(dirpath) / f).num_frames
                        if n >= min_frames:
                            self.clips.append(("video", Path(dirpath) / f, n))
            if any("train_sharp" in str(c[1][0] if c[0] == "frames" else c[1]) for c in self.clips):
                self.layout = "reds"
        self.clips.sort(key=lambda c: str(c[1][0] if c[0] == "frames" else c[1]))
        if not self.clips:
            raise ValueError(f"{self.root}: no clip of at least {min_frames} frames (folders of images, or video "
                             f"files {', '.join(VIDEO_EXTENSIONS[:4])} …)")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def frames(self) -> int:
        return sum(c[2] for c in self.clips)

    def read(self, index: int, start: int, length: int) -> torch.Tensor:
        """Frames ``[length, H, W, 3]`` float in [0, 1] of clip ``index`` from ``start``."""
        kind, src, _n = self.clips[index]
        if kind == "video":
            return torch.cat(list(iter_frames(src, FrameSelection(skip_first=start, cap=length))))
        import cv2

        out = []
        for p in src[start:start + length]:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"could not read the image {p}")
            out.append(torch.from_numpy(img[..., ::-1].copy()).float() / 255)
        return torch.stack(out)

    def sample(self, rng: random.Random, length: int, crop: int) -> torch.Tensor:
        """A random HR clip ``[length, 3, crop, crop]`` in [0, 1]: random clip, start, crop position, flips
        and time direction; frames smaller than ``crop`` are enlarged to cover it."""
        index = rng.randrange(len(self.clips))
        start = rng.randrange(self.clips[index][2] - length + 1)
        x = self.read(index, start, length).permute(0, 3, 1, 2)
        H, W = x.shape[-2:]
        if min(H, W) < crop:
            s = crop / min(H, W)
            x = F.interpolate(x, size=(max(crop, math.ceil(H * s)), max(crop, math.ceil(W * s))), mode="bicubic",
                              align_corners=False).clamp(0, 1)
            H, W = x.shape[-2:]
        top, left = rng.randrange(H - crop + 1), rng.randrange(W - crop + 1)
        x = x[..., top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            x = x.flip(-1)
        if rng.random() < 0.5:
            x = x.flip(0)
        return x.contiguous()


# --------------------------------------------------------------------------------------------- the stages

def _device(cfg: StageConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(cfg: StageConfig, device: torch.device):
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if amp == "none":
        return torch.autocast(device.type, enabled=False), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" and device.type == "cuda" else None
    return torch.autocast(device.type, dtype=dtype), scaler


class _Stage:
    """What one stage needs: the frozen base and upscaler, the parts, the trained module and its loss."""

    def __init__(self, cfg: StageConfig, device: torch.device):
        from ..loaders.satec import load_satec, new_parts
        from ..models.satec import SATeCoConfig

        self.cfg, self.device = cfg, device
        self.out = Path(cfg.out)
        self.adapters_file = self.out / "satec.safetensors"
        self.degrade = Degradation(cfg.degradation)
        if cfg.stage == 1:
            from ..loaders.video_upscaler import DEFAULT_WEIGHTS, load_video_upscaler

            self.model = load_video_upscaler(cfg.upscaler or DEFAULT_WEIGHTS).to(device).train().requires_grad_(True)
            self.trainable = self.model
            return
        from ..loaders.satec import load_sd_base

        if not cfg.base:
            raise ValueError(f"stage {cfg.stage} needs the SD 2.x base: --base PATH (a checkpoint file or diffusers "
                             "folder)")
        self.base = load_sd_base(cfg.base, prediction=cfg.prediction, dtype="fp32", device=device,
                                 offload_device=device)
        if self.adapters_file.is_file():
            self.parts = load_satec(self.adapters_file)
        else:
            with torch.random.fork_rng(devices=[]):  # the same initial weights for the same seed
                torch.manual_seed(cfg.seed)
                self.parts = new_parts(SATeCoConfig.from_dict({**SATeCoConfig().to_dict(), **cfg.satec}), self.base)
        from ..loaders.satec import check_base

        check_base(self.parts, self.base)
        for m in self.parts.modules().values():
            m.to(device).eval().requires_grad_(False)
        if cfg.part == "refiner":
            missing = {"unet", "vae"} - self.parts.trained
            if missing:
                raise ValueError(f"stage 4 (refiner) learns from the output of the trained stages 2 and 3; "
                                 f"{self.adapters_file} lacks {sorted(missing)}: run those stages first")
        self.trainable = self.parts.modules()[cfg.part]
        self.trainable.train().requires_grad_(True)
        if cfg.part in ("unet", "vae"):
            self.trainable.checkpointing = cfg.grad_checkpointing
        if cfg.grad_checkpointing and cfg.part == "unet":
            # the UNet checkpoints inside its blocks, where the SFA/TFA hooks are not; the VAE decoder would
            # checkpoint whole up-blocks, hooks included, and recompute them after the guidance is gone
            self.base.unet.enable_gradient_checkpointing()
            self.base.unet.train()  # diffusers checkpoints only in train mode; SD's UNet uses no dropout
        self._handles = []
        if cfg.part in ("unet", "refiner"):
            self._handles += self.parts.unet.attach(self.base.unet)
        if cfg.part in ("vae", "refiner"):
            self._handles += self.parts.vae.attach(self.base.vae)
        from ..sampling.prompt import prompt_embeddings
        from ..sampling.schedulers import make_schedule
        from ..upscale import make_upscaler

        self.context = prompt_embeddings(self.base, "").to(device)
        self.alphas_cumprod = make_schedule(self.base.scheduler_config, "ddim", 10).alphas_cumprod.to(device)  # ᾱ_t
        self.upscaler = make_upscaler("learned", cfg.scale, device, cfg.upscaler or None)

    # -- batches
    def batch(self, data: ClipFolder, rng: random.Random):
        """(hr, lr, x_u) ``[B, T, 3, ...]`` in [0, 1]; x_u only for stages 2-4."""
        hrs, lrs = [], []
        nrng = np.random.default_rng(rng.randrange(2 ** 31))
        for _ in range(self.cfg.batch_size):
            hr = data.sample(rng, self.cfg.clip_length, self.cfg.crop)
            hrs.append(hr)
            lrs.append(self.degrade(hr.permute(0, 2, 3, 1), self.cfg.scale, nrng).permute(0, 3, 1, 2))
        hr, lr = torch.stack(hrs), torch.stack(lrs)
        if self.cfg.stage == 1:
            return hr, lr, None
        from ..upscale import upscale_frames

        with torch.no_grad():
            x_u = torch.stack([upscale_frames(c.permute(0, 2, 3, 1), self.cfg.scale, self.upscaler, chunk=16)
                               .permute(0, 3, 1, 2) for c in lr])
        return hr, lr, x_u.clamp(0, 1)

    # -- losses
    def loss(self, hr, lr, x_u, gen: torch.Generator) -> torch.Tensor:
        cfg, dev = self.cfg, self.device
        B, T = hr.shape[:2]
        if cfg.stage == 1:
            r = self.model.radius
            lr_p = torch.cat([lr[:, :1].expand(-1, r, -1, -1, -1), lr, lr[:, -1:].expand(-1, r, -1, -1, -1)], 1)
            pred = self.model(lr_p.to(dev), cfg.scale)
            return charbonnier(pred, hr.to(dev))
        flat = lambda x: (x.flatten(0, 1).to(dev) * 2 - 1)  # noqa: E731 - [B*T, 3, H, W] in [-1, 1]
        hr_n, xu_n = flat(hr), flat(x_u)
        base = self.base
        from ..sampling.satec import encode_frames

        with torch.no_grad():
            z_hr = encode_frames(base.vae, hr_n, base.scaling_factor)
        if cfg.stage == 2:
            with torch.no_grad():
                z_u = encode_frames(base.vae, xu_n, base.scaling_factor)
            return self._diffusion_loss(z_hr, z_u, T, gen)
        if cfg.stage == 3:
            with self.parts.vae.guidance(xu_n, frames=T):
                rec = base.vae.decode(z_hr / base.scaling_factor).sample
            return F.mse_loss(rec, hr_n)
        with torch.no_grad():
            x_d = self._sample_xd(xu_n, T, gen)
        out = self.parts.refiner(xu_n, x_d)
        return charbonnier(out, hr_n)

    def _diffusion_loss(self, z0, z_u, T, gen):
        from ..sampling.satec import unet_output

        ac = self.alphas_cumprod.to(z0)
        N = z0.shape[0]
        t = torch.randint(0, ac.shape[0], (N // T,), generator=gen).repeat_interleave(T).to(z0.device)
        eps = torch.randn(z0.shape, generator=gen).to(z0)
        a = ac[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet_output(self.base, self.parts, x_t, t, z_u, T, self.context)
        target = eps if self.base.scheduler_config.get("prediction_type") == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        return F.mse_loss(pred.float(), target.float())

    def _sample_xd(self, xu_n, T, gen):
        from ..sampling.loop import sample
        from ..sampling.satec import _decode_clip, encode_frames, unet_output
        from ..sampling.schedulers import add_noise, make_schedule

        base, parts = self.base, self.parts
        sched = make_schedule(base.scheduler_config, "ddim", self.cfg.refiner_steps)
        run = max(1, int(round(len(sched) * self.cfg.refiner_strength)))
        z_u = encode_frames(base.vae, xu_n, base.scaling_factor)
        x = add_noise(z_u, torch.randn(z_u.shape, generator=gen).to(z_u), sched.alphas_cumprod,
                      int(sched.timesteps[len(sched) - run]))
        x = sample(lambda x_t, t, i: unet_output(base, parts, x_t, t, z_u, T, self.context), x, sched,
                   start=len(sched) - run)
        return _decode_clip(base, parts, base.vae, x, xu_n)

    # -- saving
    def export(self, step: int, losses: list[float], on_exists: str = "error") -> Path:
        meta = {"vsr_training": {"stage": self.cfg.stage, "steps": step, "data": Path(self.cfg.data).name,
                                 "final_loss": float(np.mean(losses[-50:])) if losses else None,
                                 "degradation": self.cfg.degradation, "scale": self.cfg.scale}}
        if self.cfg.stage == 1:
            from ..loaders.video_upscaler import save_video_upscaler

            return export_file(export_path(self.cfg), lambda tmp: save_video_upscaler(
                self.model.eval(), tmp, {k: json.dumps(v) for k, v in meta.items()}), on_exists)
        from ..loaders.satec import save_satec

        if on_exists != "replace" and existing_export(self.cfg):
            raise OutputExistsError(f"{self.adapters_file} gained a trained {self.cfg.part} while this stage ran and "
                                    "was left as it was; the checkpoint is kept, so a rerun that asks to replace it "
                                    "exports at once")
        self.parts.trained.add(self.cfg.part)
        return save_satec(self.adapters_file, self.parts, which={self.cfg.part}, metadata=meta)

    def close(self):
        for h in getattr(self, "_handles", []):
            h.remove()


def export_path(cfg: StageConfig) -> Path:
    """Stage 1's ``upscaler.safetensors``; for the others ``satec.safetensors``, which each adds its part to."""
    return Path(cfg.out) / ("upscaler.safetensors" if cfg.stage == 1 else "satec.safetensors")


def existing_export(cfg: StageConfig) -> Path | None:
    """The export that this stage would replace, if any: stage 1's file, or ``satec.safetensors`` when it holds
    this stage's part already (adding another stage's part to it replaces nothing)."""
    path = export_path(cfg)
    if cfg.stage == 1 or not path.is_file():
        return path if os.path.lexists(path) else None
    from safetensors import safe_open

    from ..loaders.satec import META_PARTS

    with safe_open(str(path), "pt") as f:
        held = (f.metadata() or {}).get(META_PARTS, "").split(",")
    return path if cfg.part in held else None


def _checkpoint_path(cfg: StageConfig) -> Path:
    return Path(cfg.out) / f"stage{cfg.stage}_{cfg.part}.ckpt.pt"


def _settings(cfg: StageConfig) -> dict:
    d = asdict(cfg)
    for k in ("steps", "save_every", "out", "data", "device"):
        d.pop(k)
    return d


def train_stage(cfg: StageConfig, progress: bool = True, restart: bool = False, stop_after: int | None = None,
                on_exists: str = "error") -> dict:
    """Run (or resume) one stage; returns {"steps", "losses", "file"}. ``stop_after``: return after this
    many steps of this call without exporting (a test's stand-in for an interrupted run). on_exists:
    ``"error"`` (an earlier export, see :func:`existing_export`, is left as it was) or ``"replace"``."""
    device = _device(cfg)
    data = ClipFolder(cfg.data, cfg.clip_length)
    stage = _Stage(cfg, device)
    try:
        params = [p for p in stage.trainable.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        ctx, scaler = _autocast(cfg, device)
        ckpt = _checkpoint_path(cfg)
        step, losses = 0, []
        if ckpt.is_file() and not restart:
            saved = torch.load(ckpt, map_location="cpu", weights_only=False)
            if saved["settings"] != _settings(cfg):
                diff = {k: (saved["settings"].get(k), v) for k, v in _settings(cfg).items() if saved["settings"].get(k) != v}
                raise ValueError(f"{ckpt} was made with other settings {diff}: use the same settings to resume, or "
                                 "--restart to start this stage over")
            stage.trainable.load_state_dict(saved["trainable"])
            opt.load_state_dict(saved["opt"])
            step, losses = saved["step"], saved["losses"]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc=f"SATeCo stage {cfg.stage} ({cfg.part})", dynamic_ncols=True)
        done_here = 0
        while step < cfg.steps:
            # randomness drawn per step from (seed, step): a resumed run draws what an uninterrupted one would
            rng = random.Random(cfg.seed * 1_000_003 + step)
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
            hr, lr, x_u = stage.batch(data, rng)
            with ctx:
                loss = stage.loss(hr, lr, x_u, gen)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            step += 1
            done_here += 1
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if step % cfg.save_every == 0 or step == cfg.steps or (stop_after and done_here >= stop_after):
                _save_ckpt(ckpt, stage, opt, step, losses, cfg)
            if stop_after and done_here >= stop_after and step < cfg.steps:
                return {"steps": step, "losses": losses, "file": None}
        if bar is not None:
            bar.close()
        path = stage.export(step, losses, on_exists)
        return {"steps": step, "losses": losses, "file": str(path)}
    finally:
        stage.close()


def _save_ckpt(path: Path, stage: _Stage, opt, step: int, losses: list[float], cfg: StageConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save({"trainable": stage.trainable.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses,
                "settings": _settings(cfg)}, tmp)
    os.replace(tmp, path)


def dry_run(cfg: StageConfig) -> dict:
    """Check the data and measure one training step: clips found, layout, trainable parameters, peak
    memory (CUDA: allocated; CPU: resident set growth) and seconds per step; nothing is written."""
    device = _device(cfg)
    data = ClipFolder(cfg.data, cfg.clip_length)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _rss()
    stage = _Stage(cfg, device)
    try:
        rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
        t0 = time.perf_counter()
        hr, lr, x_u = stage.batch(data, rng)
        ctx, _ = _autocast(cfg, device)
        with ctx:
            loss = stage.loss(hr, lr, x_u, gen)
        loss.backward()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else max(_peak_rss() - rss0, 0)
        trainable = sum(p.numel() for p in stage.trainable.parameters() if p.requires_grad)
    finally:
        stage.close()
    return {"stage": cfg.stage, "part": cfg.part, "layout": data.layout, "clips": len(data), "frames": data.frames,
            "trainable_parameters": trainable, "loss": float(loss.detach()), "seconds_per_step": round(seconds, 2),
            "peak_memory_gb": round(peak / 1024 ** 3, 3), "device": str(device),
            "estimated_hours": round(seconds * (cfg.steps) / 3600, 2)}


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--stage", type=int, choices=sorted(STAGES), help="1 upscaler, 2 unet, 3 vae, 4 refiner")
    p.add_argument("--config", help="a JSON (or YAML) file of this stage's settings; flags override it")
    types = {"int": int, "float": float, "str": str}
    for f in fields(StageConfig):
        if f.name in ("stage", "satec"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=None,
                           help=f"true/false (default {f.default})")
        else:
            p.add_argument(flag, dest=f.name, type=types[f.type], default=None, help=f"default {f.default!r}")
    p.add_argument("--dry-run", action="store_true", help="check the data and one step's memory/time, then stop")
    p.add_argument("--restart", action="store_true", help="ignore this stage's checkpoint and start over")


def config_from_args(args) -> StageConfig:
    settings = load_config_file(args.config) if args.config else {}
    for f in fields(StageConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            settings[f.name] = v
    cfg = StageConfig(**settings)
    if not cfg.data:
        raise ValueError("--data FOLDER (HR clips: video files or folders of frames) is required")
    return cfg
