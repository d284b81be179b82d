"""Our samplers against the unmodified official code, side by side, on the same full-size random weights.

Nothing of the official code is in this repository: fetch it yourself and give its folder and the python of
an environment where it runs (its own requirements). StableVSR:

    git clone https://github.com/claudiom4sir/StableVSR /work/official/StableVSR
    python -m venv /work/svsr_venv && /work/svsr_venv/bin/pip install torch torchvision diffusers==0.21.1 \\
        transformers==4.33.1 accelerate==0.23.0 huggingface_hub==0.24.6 "numpy<2" einops omegaconf Pillow safetensors
    python bench/vs_official.py stablevsr --official /work/official/StableVSR --python /work/svsr_venv/bin/python

What it does: builds the released architecture from ``vsr_core/configs`` with random weights (every layer,
zero-initialised ones included, made non-zero) and saves it as the official diffusers folder (official key
names, plus a random torchvision ``raft_large`` for the flows), which our loaders load strictly and the
official code loads with ``from_pretrained``. Both sides get the same LR frames, the same text embedding
of the empty prompt, seed 42, DDPM. Each run is a fresh process; the official run and ours (fp32, and with
``--speed``, default ``auto``) alternate ``--repeat`` times. Printed per row: seconds per step (min and
median over the repeats: the sampling loop's time, flows and the guidance decodes included, divided by the
steps), end to end (load + flows + sampling + final decode), process peak RSS, and the output's PSNR
against the official fp32 output; then PASS/FAIL against the goal of issue 17 (end to end at least 2×
faster, at most ½ of the official peak RSS, above 40 dB).

``uav`` and ``mgld`` are not in this script yet (their official code needs older diffusers / PyTorch
Lightning environments of their own); the script says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine_line

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
opts = None if {speed!r} == "fp32" else speed_options({speed!r}, "cpu")
# weights are read straight into the dtype they compute in (never an fp32 copy first)
stored = opts.precision if opts is not None and opts.precision in ("bf16", "fp16") else "fp32"
model = load_method_model("stablevsr", {folder!r}, dtype=stored)
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


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def run(code: str, python: str, cwd: str | None = None) -> dict:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise SystemExit(f"a run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stablevsr(args) -> None:
    import numpy as np
    import torch

    from vsr_core.loaders.clip import EmptyPromptTokenizer

    work = Path(args.work or tempfile.mkdtemp(prefix="vs_official_"))
    folder, raft = work / "StableVSR", work / "raft_large.pth"
    if not (folder / "unet").is_dir():
        print(f"writing full-size random StableVSR weights to {folder} ...", flush=True)
        write_stablevsr(folder, raft, args.python)
    g = torch.Generator().manual_seed(3)
    lr = torch.nn.functional.interpolate(torch.rand(args.frames, 3, args.lr // 8, args.lr // 8, generator=g),
                                         size=(args.lr, args.lr), mode="bicubic").clamp(0, 1)
    np.save(work / "lr.npy", lr.permute(0, 2, 3, 1).contiguous().numpy())
    np.save(work / "ids.npy", EmptyPromptTokenizer.from_config()("").numpy().astype(np.int64))
    common = dict(folder=str(folder), raft=str(raft), lr=str(work / "lr.npy"), steps=args.steps, threads=args.threads)
    rows = {"official (fp32)": [], "ours (fp32)": [], f"ours ({args.speed})": []}
    for r in range(args.repeat):
        order = list(rows) if r % 2 == 0 else list(reversed(rows))
        for name in order:
            out = str(work / f"{name.split()[0]}_{name.split()[1][1:-1]}.npy")
            if name.startswith("official"):
                code = OFFICIAL_STABLEVSR.format(official=args.official, ids=str(work / "ids.npy"), out=out, **common)
                rows[name].append(run(code, args.python, cwd=args.official))
            else:
                speed = "fp32" if name == "ours (fp32)" else args.speed
                code = OURS_STABLEVSR.format(repo=str(REPO), speed=speed, out=out, **common)
                rows[name].append(run(code, sys.executable))
            print(f"  {name}: {rows[name][-1]}", flush=True)
    ref = np.load(work / "official_fp32.npy")
    print(f"StableVSR, {args.frames} frames LR {args.lr}x{args.lr} -> x4, {args.steps} DDPM steps, TCM + guidance "
          f"decodes, {args.threads} threads, {args.repeat} runs each")
    print(f"{'run':<26} {'s/step min':>10} {'median':>8} {'end to end':>10} {'vs official':>11} {'peak RSS':>10} "
          f"{'vs official':>11} {'PSNR':>8}")
    base_e2e = statistics.median(x["run"] for x in rows["official (fp32)"])
    base_rss = max(x["peak_rss"] for x in rows["official (fp32)"])
    for name, runs in rows.items():
        steps = [x["sampling"] / args.steps for x in runs]
        e2e = statistics.median(x["run"] for x in runs)
        rss = max(x["peak_rss"] for x in runs)
        out = np.load(work / f"{name.split()[0]}_{name.split()[1][1:-1]}.npy")
        db = psnr(out, ref) if out.shape == ref.shape else float("nan")
        verdict = ""
        if not name.startswith("official"):
            ok = base_e2e / e2e >= 2 and rss <= base_rss / 2 and db >= 40
            verdict = "PASS" if ok else "FAIL"
        print(f"{name:<26} {min(steps):>10.2f} {statistics.median(steps):>8.2f} {e2e:>9.1f}s {e2e / base_e2e:>10.2f}x "
              f"{rss / 2**30:>8.2f}GB {rss / base_rss:>10.2f}x {db:>7.1f}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=("stablevsr", "uav", "mgld"))
    ap.add_argument("--official", required=True, help="the folder of the official repository")
    ap.add_argument("--python", required=True, help="the python of the official code's environment")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--lr", type=int, default=64, help="LR side (the HR frame is 4x)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", default="auto", help="our speed option for the second row of ours")
    ap.add_argument("--work", default=None, help="folder for the weights and outputs (kept; reused when present)")
    args = ap.parse_args()
    print(machine_line())
    if args.method != "stablevsr":
        print(f"{args.method}: not measured by this script yet (its official code needs an environment of its own; "
              "see bench/README.md)", file=sys.stderr)
        raise SystemExit(2)
    stablevsr(args)


if __name__ == "__main__":
    main()
