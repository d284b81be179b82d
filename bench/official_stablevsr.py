"""StableVSR for ``vs_official.py``: the official ``StableVSRPipeline`` and ours on the same full-size random weights
in the official diffusers layout (see ``vs_official.py`` for how to fetch the official code and make its
environment).

The released architecture from ``vsr_core/configs`` with random weights (every layer, zero-initialised ones
included, made non-zero), saved as the official diffusers folder (official key names, the text encoder with
its ``text_model.*`` keys), plus a random torchvision ``raft_large`` for the flows; our loaders load it strictly,
the official code with ``from_pretrained``. Both sides get the same LR frames, the same text embedding of the
empty prompt, seed 42, DDPM (the official ``test.py``'s).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

OFFICIAL_STABLEVSR = r"""
import json, sys, time, resource
sys.path.insert(0, {official!r})
import numpy as np, torch
torch.set_num_threads({threads})
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel
from torchvision.models.optical_flow import raft_large
from pipeline.stablevsr_pipeline import StableVSRPipeline
t0 = time.perf_counter()
root = {folder!r}
unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
controlnet = ControlNetModel.from_pretrained(root, subfolder="controlnet")
vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
of_model = raft_large(weights=None)
of_model.load_state_dict(torch.load({raft!r}))
of_model.requires_grad_(False).eval()
pipe = StableVSRPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, controlnet=controlnet,
                         scheduler=scheduler, safety_checker=None, feature_extractor=None,
                         requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
ids = torch.from_numpy(np.load({ids!r}))
lr = torch.from_numpy(np.load({lr!r}))  # [T, H, W, 3] in [0, 1]
load = time.perf_counter() - t0
with torch.no_grad():
    embeds = text_encoder(ids)[0]
images = [f.permute(2, 0, 1)[None] for f in lr]
ticks = []
torch.manual_seed(42)  # test.py: set_seed(42), no generator
t1 = time.perf_counter()
with torch.no_grad():
    out = pipe(prompt=None, images=images, num_inference_steps={steps}, guidance_scale=0, prompt_embeds=embeds,
               generator=None, of_model=of_model, output_type="pt",
               callback=lambda i, t, x: ticks.append(time.perf_counter()))
total = time.perf_counter() - t1
frames = torch.cat([im if im.dim() == 4 else im[None] for im in out.images]).float()
np.save({out!r}, frames.numpy())
print(json.dumps({{"load": load, "run": total, "sampling": ticks[-1] - t1 if ticks else total,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""

OURS_STABLEVSR = r"""
import json, sys, time, resource
sys.path.insert(0, {repo!r})
import numpy as np, torch
import torch.nn.functional as F
torch.set_num_threads({threads})
from vsr_core.flow import estimate_video_flow
from vsr_core.flow.raft import RAFTEngine
from vsr_core.loaders import load_method_model
from vsr_core.loaders.raft import load_raft
from vsr_core.sampling.decode import decode_latents
from vsr_core.sampling.prompt import prompt_embeddings
from vsr_core.sampling.stablevsr import sample_stablevsr
from vsr_core.sampling.x4 import lr_conditioning
from vsr_core.speed import apply_speed, compute_context, speed_options
import contextlib
t0 = time.perf_counter()
opts = None if {speed!r} in ("fp32", "as loaded") else speed_options({speed!r}, "cpu")
# the loader's dtype: "auto" reads the weights straight into bf16 on a CPU with native bf16
model = load_method_model("stablevsr", {folder!r}, dtype={dtype!r})
engine = RAFTEngine.for_method(load_raft({raft!r}), "stablevsr")
if opts is not None:
    model = apply_speed(model, opts)
lr = torch.from_numpy(np.load({lr!r}))
load = time.perf_counter() - t0
ticks = []
t1 = time.perf_counter()
with torch.no_grad(), (compute_context(model.device, opts) if opts is not None else contextlib.nullcontext()):
    up = F.interpolate(lr.permute(0, 3, 1, 2), scale_factor=4, mode="bicubic").permute(0, 2, 3, 1)
    flow = estimate_video_flow(up, engine)
    cond = lr_conditioning(model, lr, None)
    embeds = prompt_embeddings(model, "")
    z = sample_stablevsr(model, cond, flow, embeds, steps={steps}, scheduler="ddpm", seed=42,
                         callback=lambda done, total, x0: ticks.append(time.perf_counter()))
    sampled = time.perf_counter()
    frames = decode_latents(model.vae, z, model.scaling_factor)
total = time.perf_counter() - t1
np.save({out!r}, frames.float().numpy())
print(json.dumps({{"load": load, "run": total, "sampling": sampled - t1,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def write_stablevsr(folder: Path, raft_path: Path, official_python: str) -> Path:
    """Full-size random StableVSR as the official diffusers folder, and a random torchvision raft_large."""
    import torch

    from common import random_init_

    from vsr_core.loaders.diffusion import shipped_config as component_config

    torch.manual_seed(0)
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = {"unet": UNet2DConditionModel.from_config(component_config("stablevsr", "unet")),
             "controlnet": ControlNetModel.from_config(component_config("stablevsr", "controlnet")),
             "vae": AutoencoderKL.from_config(component_config("stablevsr", "vae"))}
    random_init_(*parts.values())
    for name, module in parts.items():
        module.save_pretrained(folder / name, safe_serialization=True)
        del module
    te = CLIPTextModel(CLIPTextConfig.from_dict(component_config("stablevsr", "text_encoder")))
    random_init_(te)
    # the released file's key names (``text_model.*``), whatever this transformers' save_pretrained writes
    from safetensors.torch import save_file

    (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
    te.config.to_json_file(str(folder / "text_encoder" / "config.json"))
    save_file({(k if k.startswith("text_model.") else f"text_model.{k}"): v.contiguous()
               for k, v in te.state_dict().items()}, str(folder / "text_encoder" / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(component_config("stablevsr", "scheduler")))
    # no tokenizer/: our loader then encodes the empty prompt with its known ids, the official run gets the ids
    # torchvision's RAFT, built where torchvision is (the official environment), random weights
    code = ("import torch; from torchvision.models.optical_flow import raft_large; torch.manual_seed(1); "
            f"torch.save(raft_large(weights=None).state_dict(), {str(raft_path)!r})")
    subprocess.run([official_python, "-c", code], check=True)
    return folder



# ------------------------------------------------------------------------------------ for vs_official.py
def add_args(ap) -> None:
    pass


def prepare(args, work: Path) -> dict:
    """Writes the weights (once) and the inputs; returns the template fields both sides share."""
    import numpy as np
    import torch

    from vsr_core.loaders.clip import EmptyPromptTokenizer

    folder, raft = work / "StableVSR", work / "raft_large.pth"
    if not (folder / "unet").is_dir():
        print(f"writing full-size random StableVSR weights to {folder} ...", flush=True)
        write_stablevsr(folder, raft, args.python)
    g = torch.Generator().manual_seed(3)
    lr = torch.nn.functional.interpolate(torch.rand(args.frames, 3, args.lr // 8, args.lr // 8, generator=g),
                                         size=(args.lr, args.lr), mode="bicubic").clamp(0, 1)
    np.save(work / "lr.npy", lr.permute(0, 2, 3, 1).contiguous().numpy())
    np.save(work / "ids.npy", EmptyPromptTokenizer.from_config()("").numpy().astype(np.int64))
    return dict(folder=str(folder), raft=str(raft), lr=str(work / "lr.npy"), ids=str(work / "ids.npy"),
                steps=args.steps, threads=args.threads)


def title(args, common: dict) -> str:
    return (f"StableVSR, {args.frames} frames LR {args.lr}x{args.lr} -> x4, {args.steps} DDPM steps, TCM + guidance "
            "decodes, RAFT flows")


def official_code(args, common: dict, out: str) -> str:
    return OFFICIAL_STABLEVSR.format(official=args.official, out=out, **common)


def ours_code(args, common: dict, out: str, speed: str, dtype: str, repo: str) -> str:
    fields = {k: v for k, v in common.items() if k != "ids"}
    return OURS_STABLEVSR.format(repo=repo, speed=speed, dtype=dtype, out=out, **fields)
