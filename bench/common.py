"""What the bench scripts share: running a measurement in a fresh process, choosing devices, and the
speed table every sampler bench prints.

Each measurement runs in its own Python process so that its peak memory is its own.

The sampler benches (``stablevsr.py``, ``uav.py``, ``mgld.py``, ``satec.py``) print one table per method:

* (a) the per-frame x4 upscaler (``sample_per_frame``, its published settings: CFG 9, noise level 20,
  fp32), the baseline every method is compared with;
* (b) the method in its published configuration (fp32);
* (c) the same run with ``vsr_core.speed`` options (``--speed``, default "auto": fp16 on CUDA; on a CPU
  bf16-autocast where bf16 is native, else fp32; channels-last; ``--compile`` adds torch.compile).

Every row saves its output latents; the parent compares (c) with (b) (max |Δ| and PSNR over (b)'s range,
``vsr_core.speed.agreement``) and prints PASS/FAIL against ``vsr_core.speed.TOLERANCE_DB``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine_line() -> str:
    """What the numbers were measured on, printed above every bench table: the CPU's model and which bf16
    paths it has in hardware (machines differ: bf16 is 2-3x faster than fp32 with AVX512-BF16/AMX and
    5-80x slower without), torch's version, and the GPU when there is one."""
    import platform

    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    present = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    from vsr_core.speed import bf16_flags_cpu, bf16_forced, native_bf16_cpu

    if native_bf16_cpu():
        bf16 = "native bf16"
    elif bf16_forced() is False:
        bf16 = "bf16 off (VSR_CPU_BF16=0)"
    elif bf16_flags_cpu():
        bf16 = "bf16 instructions, but bf16 measured slower than fp32 here: auto is fp32"
    else:
        bf16 = "no native bf16 (emulated)"
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    return (f"machine: {model} ({os.cpu_count()} CPUs; flags {' '.join(present) or 'none of avx2/avx512/amx'}; "
            f"{bf16}); torch {torch.__version__}{gpu}")


def run_child(code: str) -> tuple[dict | None, str | None]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last. Returns (result, None) or
    (None, the last line of its error)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def resolve_devices(spec: str) -> list[str]:
    """"cpu,cuda" as given, or "auto": the CPU, plus CUDA when present."""
    if spec != "auto":
        return spec.split(",")
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---- the child side ---------------------------------------------------------------------------------

PRELUDE = r"""
import json, os, sys, time
sys.path[:0] = [{repo!r}, {bench!r}]
import torch
torch.set_num_threads({threads})
from diffusers.utils import logging as _dlog
_dlog.set_verbosity_error()
from common import child_report, random_init_
from vsr_core.speed import SpeedOptions, apply_speed
device = torch.device({device!r})
opts = SpeedOptions(**{options!r})
arch, T, h, w, steps, REPEAT = {arch!r}, {frames}, {h}, {w}, {steps}, {repeat}
configs = {repo!r} + "/vsr_core/configs/"
def config(path):
    with open(configs + path) as f:
        return json.load(f)
"""
"""Prepended to every child: imports, threads, ``device``, ``opts`` (the row's ``SpeedOptions``), the
sizes, and ``config(path)`` reading a shipped config."""


def random_init_(*modules) -> None:
    """Zero-initialised layers (ControlNet zero convs, temporal outputs) cost the same as others but
    would make branches no-ops: give them small random values so the outputs depend on every branch."""
    import torch

    with torch.no_grad():
        for module in modules:
            if module is None:
                continue
            for p in module.parameters():
                if p.numel() and p.abs().max() == 0:
                    p.normal_(std=1e-3)


def child_report(run: Callable[[int, int], object], device, options, params, frames: int, steps: int,
                 warmup: bool = True, save: str | None = None, repeat: int = 1) -> None:
    """In a child: warm up with ``run(min(2, frames), 1)``, time ``run(frames, steps)`` (both inside
    ``compute_context``; the fastest of ``repeat`` runs, which shrugs off other load on a shared
    machine), record peak memory, save the output latents to ``save`` and print the JSON line
    ``run_child`` reads."""
    import torch

    from vsr_core.memory import peak_rss
    from vsr_core.speed import compute_context

    with compute_context(device, options):
        if warmup:
            run(min(2, frames), 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/statm") as f:
                base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        dt = float("inf")
        for _ in range(max(1, int(repeat))):
            t0 = time.perf_counter()
            out = run(frames, steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = min(dt, time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
    out = out.float().cpu()
    if save:
        torch.save(out, save)
    print(json.dumps(dict(seconds=dt, work=max(peak - base, 0), peak=peak, params=params,
                          finite=bool(torch.isfinite(out).all()))))


def child_code(body: str, *, device: str, options: dict, arch: str, frames: int, h: int, w: int, steps: int,
               threads: int, repeat: int = 1) -> str:
    """``PRELUDE`` + ``body`` (the row's model and ``run``, ending with ``child_report``)."""
    return PRELUDE.format(repo=str(REPO), bench=str(BENCH), threads=threads, device=device, options=options,
                          arch=arch, frames=frames, h=h, w=w, steps=steps, repeat=repeat) + body


# ---- row (a): the per-frame x4 upscaler -------------------------------------------------------------

X4_CHILD = r"""
from diffusers import UNet2DConditionModel
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.x4 import LRConditioning, sample_per_frame
torch.manual_seed(0)
if arch == "tiny":
    from vsr_core.loaders.tiny import TINY_X4_UNET as ucfg
else:
    ucfg = config("sd_x4/unet.json")
unet = UNet2DConditionModel.from_config(ucfg).eval()
model = apply_speed(VSRModel("sd_x4", unet, torch.nn.Identity(), scheduler_config=config("sd_x4/scheduler.json"),
                             low_res_scheduler_config=config("sd_x4/low_res_scheduler.json"),
                             device=device, offload_device=device), opts)
g = torch.Generator().manual_seed(1)
lr = torch.rand(T, 3, h, w, generator=g) * 2 - 1
text = unet.config.cross_attention_dim
emb, neg = torch.randn(1, 77, text, generator=g), torch.randn(1, 77, text, generator=g)

def run(n_frames, n_steps):  # the x4 pipeline's defaults: CFG 9, noise level 20, DDIM
    return sample_per_frame(model, LRConditioning(lr[:n_frames], 20), emb, neg, 9.0, n_steps, "ddim", seed=0)

child_report(run, device, opts, sum(p.numel() for p in unet.parameters()), T, steps, {warmup}, {save!r}, REPEAT)
"""


# ---- the parent side --------------------------------------------------------------------------------

@dataclass
class Row:
    """One row of a speed table. ``body``: the child code after ``PRELUDE`` (formatted with ``warmup``
    and ``save``); ``options``: ``SpeedOptions`` fields as a dict; ``lr``: the row's LR size (h, w)."""

    key: str
    label: str
    body: str
    options: dict
    lr: tuple[int, int]


def speed_options_dict(name: str, device: str, compile: bool) -> dict:
    """The (c) row's ``SpeedOptions`` fields for ``--speed name`` on ``device``."""
    from vsr_core.speed import speed_options

    o = speed_options(name, device, compile=compile or None)
    return {"precision": o.precision, "channels_last": o.channels_last, "compile": o.compile, "vae_bf16": o.vae_bf16}


def describe(options: dict) -> str:
    from vsr_core.speed import SpeedOptions

    return SpeedOptions(**options).describe()


def add_common_args(ap, frames: int, lr: str, steps: int) -> None:
    ap.add_argument("--archs", default="real", help="real (shipped configs) and/or tiny (test sizes), comma-separated")
    ap.add_argument("--frames", type=int, default=frames)
    ap.add_argument("--lr", default=lr, help="LR HxW; outputs are 4x")
    ap.add_argument("--steps", type=int, default=steps, help="sampler steps that run")
    ap.add_argument("--devices", default="auto", help="cpu,cuda or auto (cpu, plus cuda when present)")
    ap.add_argument("--speed", default="auto", help="(c)'s options: auto, a preset of vsr_core.speed.SPEED_PRESETS "
                                                    "(fp16, bf16, bf16-autocast, ...) or a precision")
    ap.add_argument("--compile", action="store_true", help="(c) also torch.compiles the UNet/ControlNet")
    ap.add_argument("--rows", default="a,b,c")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per row; the fastest counts")
    ap.add_argument("--threads", type=int, default=2)


def x4_row(lr: tuple[int, int]) -> Row:
    return Row("a", "sd_x4 per-frame (CFG 9, fp32)", X4_CHILD, {"precision": "fp32"}, lr)


def speed_table(title: str, rows_for: Callable[[str, dict], list[Row]], args) -> None:
    """Run the rows of every (arch, device) in fresh processes and print the table of one method.

    rows_for(arch, c_options) -> [Row (a), Row (b), Row (c)] (those named in ``args.rows``)."""
    import torch

    from vsr_core.speed import TOLERANCE_DB, agreement

    wanted = args.rows.split(",")
    devices = resolve_devices(args.devices)
    print(machine_line())
    print(f"== {title}: {args.frames} frames, {args.steps} steps, random weights, {args.threads} CPU threads; "
          f"(c) vs (b): PASS when final-latent PSNR >= {TOLERANCE_DB:.0f} dB")
    head = (f"{'row':<4}{'arch':<5}{'device':<7}{'configuration':<44}{'params M':>9}{'s/frame':>9}{'vs (a)':>8}"
            f"{'vs (b)':>8}{'work MiB':>9}{'peak MiB':>9}{'max|Δ|':>10}{'PSNR dB':>9}  tol")
    print(head)
    with tempfile.TemporaryDirectory(prefix="vsr_bench_") as tmp:
        for arch in args.archs.split(","):
            for device in devices:
                c_opts = speed_options_dict(args.speed, device, args.compile)
                spf, saved = {}, {}
                for row in rows_for(arch, c_opts):
                    if row.key not in wanted:
                        continue
                    save = os.path.join(tmp, f"{arch}_{device}_{row.key}.pt")
                    body = row.body.replace("{warmup}", str(not args.no_warmup)).replace("{save!r}", repr(save))
                    code = child_code(body, device=device, options=row.options, arch=arch, frames=args.frames,
                                      h=row.lr[0], w=row.lr[1], steps=args.steps, threads=args.threads,
                                      repeat=args.repeat)
                    t0 = time.perf_counter()
                    r, err = run_child(code)
                    label = f"({row.key})"
                    if r is None:
                        print(f"{label:<4}{arch:<5}{device:<7}{row.label:<44} failed: {err}")
                        continue
                    params = sum(r["params"].values()) if isinstance(r["params"], dict) else r["params"]
                    spf[row.key] = r["seconds"] / args.frames
                    saved[row.key] = save
                    rel_a = f"{spf[row.key] / spf['a']:.2f}x" if "a" in spf else "-"
                    rel_b = f"{spf[row.key] / spf['b']:.2f}x" if "b" in spf and row.key != "a" else "-"
                    diff = f"{'-':>10}{'-':>9}  -"
                    if row.key == "c" and "b" in saved:
                        a = agreement(torch.load(save), torch.load(saved["b"]))
                        ok = a["finite"] and a["psnr_db"] >= TOLERANCE_DB
                        diff = f"{a['max_abs']:>10.2e}{a['psnr_db']:>9.1f}  {'PASS' if ok else 'FAIL'}"
                    print(f"{label:<4}{arch:<5}{device:<7}{row.label:<44}{params / 1e6:>9.1f}{spf[row.key]:>9.3f}"
                          f"{rel_a:>8}{rel_b:>8}{r['work'] / 2**20:>9.0f}{r['peak'] / 2**20:>9.0f}{diff}"
                          f"   [{time.perf_counter() - t0:.0f} s]", flush=True)
