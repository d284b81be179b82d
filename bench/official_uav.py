"""Upscale-A-Video for ``vs_official.py``: the official ``VideoUpscalePipeline`` and ours on the same full-size
random weights in the release layout (see ``vs_official.py`` for how to fetch the official code and make its
environment).

* ``write_uav`` builds the released architecture with the official classes, in the official environment, from
  our shipped configs (``vsr_core/configs/upscale_a_video``, the x4 text encoder), every all-zero parameter
  refilled as ``common.random_init_`` does, and saves the release layout: ``unet/unet_video.bin`` (rotary
  ``freqs`` copies included), ``vae/vae_video.bin``, ``text_encoder/`` (``text_model.*`` keys), ``tokenizer/``
  (the CLIP BPE vocabulary from ``--vocab``, pad "!", 77 tokens, as the x4 upscaler's), ``scheduler/``,
  ``low_res_scheduler/``, ``model_index.json`` (what ``VideoUpscalePipeline.from_pretrained`` reads) and a
  random ``propagator/raft-things.pth`` (princeton RAFT, ``module.`` keys). Our ``load_uav_model`` loads it
  strictly; the official code as ``inference_upscale_a_video.py`` does. Only ``vae_video`` is written: the
  comparison is the script's ``--use_video_vae`` path (LR-conditioned decoder, ``w_lr`` 1).
* Both sides get the same LR frames (a smooth texture moving one LR pixel per frame), the script's prompts
  (caption "" + ``--a_prompt``, ``--n_prompt``), each encoded by its own side, generator seed 10 on the CPU,
  CFG 6, noise level 120, 8-frame windows overlapping by 2 with the running merge, the 3-frame video-VAE decode
  with ``w_lr`` 1, no tiling (the script tiles from 384x384 LR), no colour fix. Flows (``--flow``): ``given``
  hands both the same flows (the texture's motion plus a smooth wobble of a few tenths of a pixel); ``raft``
  lets each side compute its own from the propagator file (bit-identical at LR >= 128; below 128 px the
  official RAFT gives NaN (64) or raises (32), while ours pads).
* Propagation (``--propagation``) at the given loop indices (default every step of the short run; the script's
  default is none, its published runs use 24, 26, 28 of 30).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

A_PROMPT = "best quality, extremely detailed"  # the script's --a_prompt (caption "" + this)
N_PROMPT = "blur, worst quality"  # --n_prompt
SEED, GUIDANCE, NOISE_LEVEL = 10, 6, 120  # the script's generator seed, -g and -n defaults

OFFICIAL_UAV = r"""
import json, sys, time, resource, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {official!r})
import numpy as np, torch
torch.set_num_threads({threads})
import transformers
transformers.logging.set_verbosity_error()
from einops import rearrange
from models_video.RAFT.raft_bi import RAFT_bi
from models_video.propagation_module import Propagation
from models_video.autoencoder_kl_cond_video import AutoencoderKLVideo
from models_video.unet_video import UNetVideoModel
from models_video.pipeline_upscale_a_video import VideoUpscalePipeline
from models_video.scheduling_ddim import DDIMScheduler
root = {folder!r}
prop_steps = {propagation!r}
t0 = time.perf_counter()
# inference_upscale_a_video.py, "load models", with fp32 for torch_dtype=torch.float16 / unet.half() (CPU parity)
pipeline = VideoUpscalePipeline.from_pretrained(root)
pipeline.vae = AutoencoderKLVideo.from_config(root + "/vae/vae_video_config.json")  # --use_video_vae
pipeline.vae.load_state_dict(torch.load(root + "/vae/vae_video.bin", map_location="cpu"))
pipeline.unet = UNetVideoModel.from_config(root + "/unet/unet_video_config.json")
pipeline.unet.load_state_dict(torch.load(root + "/unet/unet_video.bin", map_location="cpu"), strict=True)
pipeline.unet.eval()
pipeline.scheduler = DDIMScheduler.from_config(root + "/scheduler/scheduler_config.json")
if prop_steps and {flow!r} == "raft":
    raft = RAFT_bi(root + "/propagator/raft-things.pth", device="cpu")
else:
    raft = None
pipeline.propagator = Propagation(4, learnable=False) if prop_steps else None
pipeline = pipeline.to("cpu")
pipeline.set_progress_bar_config(disable=True)
lr = torch.from_numpy(np.load({lr!r}))  # [T, H, W, 3] in [0, 1] (uint8 / 255)
load = time.perf_counter() - t0
# observation only: record when each DDIM step and the prompt encoding end
ticks, prompt_time = [], []
_step_vt, _encode = pipeline.scheduler.step_vt, pipeline._encode_prompt
def step_vt(*a, **k):
    out = _step_vt(*a, **k)
    ticks.append(time.perf_counter())
    return out
def encode_prompt(*a, **k):
    s = time.perf_counter()
    out = _encode(*a, **k)
    prompt_time.append(time.perf_counter() - s)
    return out
pipeline.scheduler.step_vt, pipeline._encode_prompt = step_vt, encode_prompt
t1 = time.perf_counter()
with torch.no_grad():
    vframes = (lr.permute(0, 3, 1, 2).contiguous() - 0.5) * 2  # the script: (vframes/255. - 0.5) * 2, T C H W
    vframes = rearrange(vframes.unsqueeze(0), 'b t c h w -> b c t h w').contiguous()
    if raft is not None:
        flows_forward, flows_backward = raft.forward_slicing(vframes)
        flows_bi = [flows_forward, flows_backward]
    elif prop_steps:
        f = np.load({flows!r})
        flows_bi = [torch.from_numpy(f["forward"]).permute(1, 0, 2, 3)[None].contiguous(),
                    torch.from_numpy(f["backward"]).permute(1, 0, 2, 3)[None].contiguous()]
    else:
        flows_bi = None
    generator = torch.Generator(device="cpu").manual_seed({seed})
    output = pipeline({a_prompt!r}, image=vframes, flows_bi=flows_bi, generator=generator,
                      num_inference_steps={steps}, guidance_scale={guidance}, noise_level={noise_level},
                      negative_prompt={n_prompt!r}, propagation_steps=prop_steps).images  # C T H W [-1, 1]
    output = rearrange(output.squeeze(0), 'c t h w -> t c h w').contiguous()
    frames = (output / 2 + 0.5).clamp(0, 1)  # the script's saved video
total = time.perf_counter() - t1
np.save({out!r}, frames.permute(0, 2, 3, 1).float().numpy())
print(json.dumps({{"load": load, "run": total, "sampling": ticks[-1] - t1, "prompt": sum(prompt_time),
                  "steps": len(ticks), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""

OURS_UAV = r"""
import json, sys, time, resource, contextlib
sys.path.insert(0, {repo!r})
import numpy as np, torch
torch.set_num_threads({threads})
from vsr_core.flow import VideoFlow, estimate_video_flow
from vsr_core.flow.raft import RAFTEngine
from vsr_core.loaders.raft import load_raft
from vsr_core.loaders.uav import load_uav_model
from vsr_core.sampling.prompt import prompt_embeddings
from vsr_core.sampling.uav import decode_uav, sample_uav
from vsr_core.sampling.x4 import lr_conditioning
from vsr_core.speed import apply_speed, compute_context, speed_options
prop_steps = {propagation!r}
t0 = time.perf_counter()
opts = None if {speed!r} in ("fp32", "as loaded") else speed_options({speed!r}, "cpu")
# the loader's dtype: "auto" reads the weights straight into bf16 on a CPU with native bf16
model = load_uav_model({folder!r}, dtype={dtype!r}, vae="video")
engine = None
if prop_steps and {flow!r} == "raft":
    engine = RAFTEngine.for_method(load_raft(model.config["raft_path"]), "uav")
if opts is not None:
    model = apply_speed(model, opts)
lr = torch.from_numpy(np.load({lr!r}))  # [T, H, W, 3] in [0, 1]
load = time.perf_counter() - t0
ticks = []
t1 = time.perf_counter()
with torch.no_grad(), (compute_context(model.device, opts) if opts is not None else contextlib.nullcontext()):
    if engine is not None:
        flow = estimate_video_flow(lr, engine, with_occlusion=False)  # on the LR frames, as the official script
    elif prop_steps:
        f = np.load({flows!r})
        flow = VideoFlow(torch.from_numpy(f["forward"]), torch.from_numpy(f["backward"]))
    else:
        flow = None
    cond = lr_conditioning(model, lr, {noise_level})
    embeds, negative = prompt_embeddings(model, {a_prompt!r}), prompt_embeddings(model, {n_prompt!r})
    z = sample_uav(model, cond, flow, embeds, negative, guidance_scale={guidance}, steps={steps}, seed={seed},
                   propagation_steps=prop_steps, window=8, overlap=2, merge="running", tile=0,
                   callback=lambda done, total, x0: ticks.append(time.perf_counter()))
    sampled = time.perf_counter()
    frames = decode_uav(model, z, cond, chunk=3, w_lr=1.0)  # [T, 3, H, W] in [0, 1]
total = time.perf_counter() - t1
np.save({out!r}, frames.permute(0, 2, 3, 1).float().numpy())
print(json.dumps({{"load": load, "run": total, "sampling": sampled - t1, "steps": len(ticks),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""

# Run with the official environment's python, cwd the official folder: the release folder, built with the official
# classes from our shipped configs. Each network is built, randomised, saved and dropped before the next.
WRITE_UAV = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {official!r})
from pathlib import Path
import torch
torch.set_num_threads({threads})
root = Path({folder!r})
configs = json.loads({configs!r})  # our shipped configs (or the tiny test sizes), by part

def random_init_(module):  # bench/common.py random_init_: zero-initialised parameters get small random values
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and p.abs().max() == 0:
                p.normal_(std=1e-3)

def public(cfg):
    return {{k: v for k, v in cfg.items() if not (k.startswith("_") and k != "_class_name")}}

def write_json(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")

def read(name):
    return configs[name]

params = {{}}
# the video UNet (UNetVideoModel, configs/unet_video_config.json)
from models_video.unet_video import UNetVideoModel
torch.manual_seed(0)
write_json(public(read("unet")), root / "unet" / "unet_video_config.json")
net = UNetVideoModel.from_config(str(root / "unet" / "unet_video_config.json"))
random_init_(net)
params["unet"] = sum(p.numel() for p in net.parameters())
torch.save(net.state_dict(), str(root / "unet" / "unet_video.bin"))
del net
# the video VAE (AutoencoderKLVideo with UpDecoderBlock3D_plus, LR-conditioned)
from models_video.autoencoder_kl_cond_video import AutoencoderKLVideo
torch.manual_seed(1)
write_json(public(read("vae_video")), root / "vae" / "vae_video_config.json")
net = AutoencoderKLVideo.from_config(str(root / "vae" / "vae_video_config.json"))
random_init_(net)
params["vae_video"] = sum(p.numel() for p in net.parameters())
torch.save(net.state_dict(), str(root / "vae" / "vae_video.bin"))
del net
# the x4 upscaler's text encoder (OpenCLIP ViT-H text tower as transformers CLIPTextModel), keys text_model.*
from transformers import CLIPTextConfig, CLIPTextModel
torch.manual_seed(2)
net = CLIPTextModel(CLIPTextConfig.from_dict(public(read("text_encoder"))))
random_init_(net)
params["text_encoder"] = sum(p.numel() for p in net.parameters())
net.save_pretrained(str(root / "text_encoder"), safe_serialization=True)
del net
# schedulers
write_json(public(read("scheduler")), root / "scheduler" / "scheduler_config.json")
write_json(public(read("low_res_scheduler")), root / "low_res_scheduler" / "scheduler_config.json")
# what VideoUpscalePipeline.from_pretrained loads itself (the script sets vae, unet, scheduler, propagator after)
write_json({{"_class_name": "VideoUpscalePipeline", "_diffusers_version": "0.16.0", "max_noise_level": 350,
            "low_res_scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"]}}, root / "model_index.json")
# the propagator's RAFT (princeton RAFT-large, saved from DataParallel: module.* keys)
import argparse
from models_video.RAFT.raft import RAFT
torch.manual_seed(3)
a = argparse.Namespace(small=False, mixed_precision=False, alternate_corr=False)
net = RAFT(a)
random_init_(net)
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)
params["raft"] = sum(p.numel() for p in net.parameters())
(root / "propagator").mkdir(parents=True, exist_ok=True)
torch.save({{"module." + k: v for k, v in net.state_dict().items()}}, {raft!r})
print(json.dumps(params))
"""

SPECIAL_TOKENS = {  # the x4 upscaler's tokenizer: pads with "!" (id 0), 77 tokens
    name: {"content": text, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    for name, text in (("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                       ("unk_token", "<|endoftext|>"))}
SPECIAL_TOKENS["pad_token"] = "!"


def write_tokenizer(folder: Path, vocab_dir: Path) -> None:
    """tokenizer/ as the x4 upscaler ships it: the CLIP BPE vocabulary (``vocab.json``, ``merges.txt``), pad "!",
    77 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(vocab_dir / name, folder / name)
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2))
    added = {k: ({"__type": "AddedToken", **v} if isinstance(v, dict) else v) for k, v in SPECIAL_TOKENS.items()}
    config = {**added, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
              "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def uav_configs(tiny: bool = False) -> dict:
    """The configs ``write_uav`` builds from: our shipped ones (the released sizes), or the parity vectors'
    tiny sizes (``tiny``: checks the harness in seconds) with a 2-layer 32-wide text encoder."""
    from common import REPO

    from vsr_core.loaders.diffusion import shipped_config

    cfg = {part: shipped_config("upscale_a_video", part)
           for part in ("unet", "vae_video", "scheduler", "low_res_scheduler")}
    cfg["text_encoder"] = json.loads((REPO / "vsr_core" / "configs" / "sd_x4" / "text_encoder.json").read_text())
    if tiny:
        from vsr_core.loaders.uav import TINY_UAV_UNET, TINY_UAV_VAE_VIDEO

        cfg["unet"], cfg["vae_video"] = dict(TINY_UAV_UNET), dict(TINY_UAV_VAE_VIDEO)
        cfg["text_encoder"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   projection_dim=32)
    return cfg


def find_vocab(given: str | None) -> Path:
    """The CLIP BPE vocabulary folder (vocab.json + merges.txt): ``--vocab``, else ComfyUI's copy
    (``$VSR_COMFYUI_DIR/comfy/sd1_tokenizer``, the same vocabulary as the x4 upscaler's tokenizer)."""
    import os

    candidates = [Path(given)] if given else []
    if os.environ.get("VSR_COMFYUI_DIR"):
        candidates.append(Path(os.environ["VSR_COMFYUI_DIR"]) / "comfy" / "sd1_tokenizer")
    for c in candidates:
        if (c / "vocab.json").is_file() and (c / "merges.txt").is_file():
            return c
    raise SystemExit("uav needs the CLIP BPE vocabulary (vocab.json + merges.txt) for its prompts: give --vocab DIR "
                     "(e.g. ComfyUI/comfy/sd1_tokenizer, or the x4 upscaler's tokenizer/ folder) or set VSR_COMFYUI_DIR")


def write_uav(folder: Path, official_python: str, official: str, vocab_dir: Path, threads: int,
              tiny: bool = False) -> None:
    """Random Upscale-A-Video in the official release layout (see the module doc), written by the official
    classes in the official environment."""
    folder.mkdir(parents=True, exist_ok=True)
    code = WRITE_UAV.format(official=official, folder=str(folder), configs=json.dumps(uav_configs(tiny)),
                            raft=str(folder / "propagator" / "raft-things.pth"), threads=threads)
    out = subprocess.run([official_python, "-c", code], capture_output=True, text=True, cwd=official or None)
    if out.returncode != 0:
        raise SystemExit(f"writing the weights failed:\n{out.stderr[-3000:]}")
    print(f"  parameters: {out.stdout.strip().splitlines()[-1]}", flush=True)
    write_tokenizer(folder / "tokenizer", vocab_dir)


def make_inputs(work: Path, frames: int, side: int, seed: int = 3, shift=(1, 1)) -> tuple[Path, Path]:
    """LR frames [T, H, W, 3] (uint8/255 values) of a smooth random texture moving by ``shift`` (dx, dy) pixels
    per frame, and the flows of that motion ([T-1, 2, H, W] pixels, forward +shift, backward -shift) plus a
    smooth wobble of a few tenths of a pixel, so that the nearest warp and the consistency check both matter."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    dx, dy = shift
    pad = side + frames * max(abs(dx), abs(dy)) + 8
    tex = F.interpolate(torch.rand(1, 3, pad // 4, pad // 4, generator=g), size=(pad, pad), mode="bicubic",
                        align_corners=False).clamp(0, 1)[0]
    o = frames * max(abs(dx), abs(dy)) + 4  # frame k(p) = tex(p - k * shift)
    lr = torch.stack([tex[:, o - k * dy:o - k * dy + side, o - k * dx:o - k * dx + side] for k in range(frames)])
    lr = (lr * 255).round() / 255

    def wobble():
        return F.interpolate(torch.randn(frames - 1, 2, 4, 4, generator=g), size=(side, side), mode="bicubic",
                             align_corners=False) * 0.3

    base = torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1)
    np.save(work / "lr.npy", lr.permute(0, 2, 3, 1).contiguous().float().numpy())
    np.savez(work / "flows.npz", forward=(base + wobble()).float().numpy(),
             backward=(-base + wobble()).float().numpy())
    return work / "lr.npy", work / "flows.npz"


# ------------------------------------------------------------------------------------ for vs_official.py
def add_args(ap) -> None:
    ap.add_argument("--flow", choices=("given", "raft"), default="given",
                    help="uav: the same flows handed to both (given) or each side's RAFT from the propagator file "
                         "(raft: needs --lr >= 128, a multiple of 8)")
    ap.add_argument("--propagation", default="all",
                    help="uav: loop indices that propagate x̂0 ('all', '' = off, or e.g. 24,26,28)")
    ap.add_argument("--vocab", default=None, help="uav: the CLIP BPE vocabulary folder (vocab.json, merges.txt)")
    ap.add_argument("--tiny", action="store_true", help="uav: the parity vectors' tiny sizes (checks the harness)")


def prepare(args, work: Path) -> dict:
    """Writes the weights (once) and the inputs; returns the template fields both sides share."""
    folder = work / ("upscale_a_video_tiny" if args.tiny else "upscale_a_video")
    if not (folder / "unet" / "unet_video.bin").is_file():
        print(f"writing {'tiny' if args.tiny else 'full-size'} random Upscale-A-Video weights to {folder} ...",
              flush=True)
        write_uav(folder, args.python, args.official, find_vocab(args.vocab), args.threads, args.tiny)
    if args.flow == "raft" and (args.lr < 128 or args.lr % 8):
        raise SystemExit("--flow raft needs --lr >= 128 and a multiple of 8 (RAFT-large's pyramid)")
    lr, flows = make_inputs(work, args.frames, args.lr)
    if args.propagation == "all":
        prop = list(range(args.steps))
    else:
        prop = sorted({int(s) % args.steps for s in args.propagation.split(",") if s.strip()})
    return dict(folder=str(folder), lr=str(lr), flows=str(flows), flow=args.flow, steps=args.steps,
                threads=args.threads, propagation=prop, seed=SEED, guidance=GUIDANCE, noise_level=NOISE_LEVEL,
                a_prompt=A_PROMPT, n_prompt=N_PROMPT)


def title(args, common: dict) -> str:
    return (f"Upscale-A-Video, {args.frames} frames LR {args.lr}x{args.lr} -> x4, {args.steps} DDIM steps, CFG "
            f"{GUIDANCE}, noise {NOISE_LEVEL}, windows 8/2, propagation at {common['propagation']} ({args.flow} "
            f"flows), video VAE")


def official_code(args, common: dict, out: str) -> str:
    return OFFICIAL_UAV.format(official=args.official, out=out, **common)


def ours_code(args, common: dict, out: str, speed: str, dtype: str, repo: str) -> str:
    return OURS_UAV.format(repo=repo, speed=speed, dtype=dtype, out=out, **common)
