"""Our samplers against the unmodified official code, side by side, on the same full-size random weights.

Nothing of the official code is in this repository: fetch it yourself and give its folder and the python of
an environment where it runs (its own requirements, on a CPU):

    # StableVSR (github.com/claudiom4sir/StableVSR)
    python -m venv /work/svsr_venv && /work/svsr_venv/bin/pip install torch torchvision diffusers==0.21.1 \\
        transformers==4.33.1 accelerate==0.23.0 huggingface_hub==0.24.6 "numpy<2" einops omegaconf Pillow safetensors
    python bench/vs_official.py stablevsr --official /work/official/StableVSR --python /work/svsr_venv/bin/python

    # Upscale-A-Video (github.com/sczhou/Upscale-A-Video; no xformers, no LLaVA needed)
    python -m venv /work/uav_venv && /work/uav_venv/bin/pip install torch torchvision diffusers==0.16.0 \\
        transformers==4.28.1 accelerate==0.18.0 "huggingface_hub<0.26" "numpy<2" einops rotary-embedding-torch==0.2.3 \\
        omegaconf opencv-python-headless safetensors scipy tqdm imageio==2.25.0 "setuptools<70"
    python bench/vs_official.py uav --official /work/official/Upscale-A-Video --python /work/uav_venv/bin/python \\
        --vocab ComfyUI/comfy/sd1_tokenizer

    # MGLD (github.com/IanYeung/MGLD-VSR): see official_mgld.py

(torch 2.14.1 + torchvision 0.29.1 on this project's machines.) What it does: ``official_<method>.py`` builds
the released architecture with random weights (every layer, zero-initialised ones included, made non-zero) and
saves it in the official release layout and key names, which our loaders load strictly and the official code
loads its own way. Both sides get the same inputs and seeds. Each run is a fresh process; the official run and
ours (fp32, and with the loader's ``--dtype`` and ``--speed``, default ``auto`` both: bf16 weights and bf16
autocast on a CPU with native bf16, fp16 on CUDA) alternate ``--repeat`` times. Printed per row: load time,
seconds per step (min and median over the repeats: the sampling loop's time divided by the steps), end to end
(sampling + final decode; the load is its own column), process peak RSS, and the output's PSNR against the
official fp32 output; then PASS/FAIL against the goal of issue 17 (end to end at least 2x faster, at most 1/2 of
the official peak RSS, above 40 dB).
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine_line

METHODS = {"stablevsr": "official_stablevsr", "uav": "official_uav", "mgld": "official_mgld"}


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def run(code: str, python: str, cwd: str | None = None) -> dict:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise SystemExit(f"a run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args, part) -> None:
    import numpy as np

    work = Path(args.work or tempfile.mkdtemp(prefix=f"vs_official_{args.method}_"))
    work.mkdir(parents=True, exist_ok=True)
    common = part.prepare(args, work)
    rows = {"official (fp32)": []}
    if not args.no_fp32:
        rows["ours (fp32)"] = []
    if args.speed != "none":
        rows[f"ours ({args.speed})"] = []
    files = {name: str(work / f"{name.split()[0]}_{name.split()[1][1:-1]}.npy") for name in rows}
    for r in range(args.repeat):
        for name in (list(rows) if r % 2 == 0 else list(reversed(rows))):
            if name.startswith("official"):
                rows[name].append(run(part.official_code(args, common, files[name]), args.python, cwd=args.official))
            else:
                fp32 = name == "ours (fp32)"
                code = part.ours_code(args, common, files[name], "fp32" if fp32 else args.speed,
                                      "fp32" if fp32 else args.dtype, str(REPO))
                rows[name].append(run(code, sys.executable))
            print(f"  {name}: {rows[name][-1]}", flush=True)
    ref = np.load(files["official (fp32)"])
    print(f"{part.title(args, common)}; {args.threads} threads, {args.repeat} runs each")
    print(f"{'run':<26} {'load':>7} {'s/step min':>10} {'median':>8} {'end to end':>10} {'vs official':>11} "
          f"{'peak RSS':>10} {'vs official':>11} {'PSNR':>8}")
    base_e2e = statistics.median(x["run"] for x in rows["official (fp32)"])
    base_rss = max(x["peak_rss"] for x in rows["official (fp32)"])
    for name, runs in rows.items():
        steps = [x["sampling"] / args.steps for x in runs]
        e2e = statistics.median(x["run"] for x in runs)
        rss = max(x["peak_rss"] for x in runs)
        out = np.load(files[name])
        db = psnr(out, ref) if out.shape == ref.shape else float("nan")
        verdict = ""
        if not name.startswith("official"):
            verdict = "PASS" if base_e2e / e2e >= 2 and rss <= base_rss / 2 and db >= 40 else "FAIL"
        print(f"{name:<26} {statistics.median(x['load'] for x in runs):>6.1f}s {min(steps):>10.2f} "
              f"{statistics.median(steps):>8.2f} {e2e:>9.1f}s {e2e / base_e2e:>10.2f}x {rss / 2**30:>7.2f}GiB "
              f"{rss / base_rss:>10.2f}x {db:>7.1f}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=tuple(METHODS))
    ap.add_argument("--official", required=True, help="the folder of the official repository")
    ap.add_argument("--python", required=True, help="the python of the official code's environment")
    ap.add_argument("--frames", type=int, default=None, help="frames (default: stablevsr 2, uav 8, mgld 5)")
    ap.add_argument("--lr", type=int, default=None, help="LR side, the HR frame is 4x (default: stablevsr 64, "
                                                         "uav 32, mgld 64)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", default="auto", help="our speed option for the third row ('none': no third row)")
    ap.add_argument("--dtype", default="auto", help="our loader's dtype for the third row (auto: bf16 weights on a "
                                                    "CPU with native bf16, else fp32)")
    ap.add_argument("--no-fp32", action="store_true", help="leave out our fp32 row (saves time on MGLD)")
    ap.add_argument("--work", default=None, help="folder for the weights and outputs (kept; reused when present)")
    parts = {name: importlib.import_module(module) for name, module in METHODS.items()}
    for part in parts.values():
        part.add_args(ap)
    args = ap.parse_args()
    defaults = {"stablevsr": (2, 64), "uav": (8, 32), "mgld": (5, 64)}[args.method]
    args.frames = args.frames or defaults[0]
    args.lr = args.lr or defaults[1]
    print(machine_line())
    compare(args, parts[args.method])


if __name__ == "__main__":
    main()
