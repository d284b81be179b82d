"""Around a sampler call: the pre-run VRAM and time estimate shown on the node, the "auto" tile, the
retry with smaller tiles when the GPU runs out of memory, and the timing record the next estimate uses.

The maths lives in ``vsr_core.memory`` (estimates, auto tile, OOM retry) and ``vsr_core.timings``;
this module only wires them to the node (progress text, ``ui`` text, ComfyUI's user folder).
"""
from __future__ import annotations

import logging
import time

from vsr_core import memory
from vsr_core.models.bundle import reserve_memory
from vsr_core.timings import TimingRecord, describe_time, device_name, work_units

from . import comfy_adapter as comfy

log = logging.getLogger("diffusion_vsr")

AUTO = -1
"""A tile widget's "auto": the largest tile the estimate says fits in free memory (0 if the frame does)."""
AUTO_TIP = "-1 = auto (the largest tile that fits in free GPU memory)"

_record: TimingRecord | None = None


def timing_record() -> TimingRecord:
    """The process's timing record, kept in ComfyUI's user folder (in memory without ComfyUI)."""
    global _record
    if _record is None:
        _record = TimingRecord(comfy.user_file("diffusion_vsr/timings.json"))
    return _record


SPEED_CHOICES = ["as loaded", "auto", "fp16", "bf16", "bf16-autocast", "fp16-compile", "fp32"]
SPEED_INPUT = (SPEED_CHOICES, {"default": "as loaded",
                               "tooltip": "Compute precision of the networks for this run. as loaded: the loader's "
                                          "dtype (VAEs fp32). auto: fp16 on a GPU; on a CPU bf16 autocast where it "
                                          "has native bf16 that measures faster than fp32, else fp32; both "
                                          "channels-last. With a reduced precision the VAEs compute in bf16 "
                                          "where the device does bf16 natively "
                                          "(never fp16, where they overflow), else fp32. fp16-compile adds "
                                          "torch.compile (minutes to compile once). Results stay within 30 dB "
                                          "PSNR of fp32 (bench/)."})
DECODE_SPEED_INPUT = (SPEED_CHOICES, {"default": "as loaded",
                                      "tooltip": "as loaded: the VAE in fp32. A reduced precision (auto, bf16, "
                                                 "bf16-autocast, fp16) decodes in bf16 where the device computes "
                                                 "bf16 natively (a recent GPU, an AVX512-BF16/AMX CPU), else fp32; "
                                                 "channels-last. Never fp16: the VAEs overflow there."})


def speeded(model, speed: str):
    """``(model, context)`` for a sampler's ``speed`` widget: the bundle set up for the option set (the
    same networks, in place) and the autocast context to sample in; "as loaded" changes nothing."""
    import contextlib

    from vsr_core.speed import apply_speed, compute_context, speed_options

    if speed in ("as loaded", "", None):
        return model, contextlib.nullcontext()
    opts = speed_options(speed, model.device)
    return apply_speed(model, opts), compute_context(model.device, opts)


def _tile_text(tile: int) -> str:
    return "whole frame" if tile <= 0 else f"tile {tile}"


class SamplerRun:
    """One sampler call with its estimate, tile choice and OOM retry.

    ``run = SamplerRun(model, "upscale_a_video", latent_size, num_frames=T, steps=30, frames=8, cfg=True,
    tile=tile_size, unique_id=uid)``; ``z = run(lambda tile: sample_uav(..., tile=tile))``; return
    ``run.output((latent,))``. tile: the widget's value (``AUTO`` = -1 picks one, 0 = whole frame) or
    None when the node has no tile (then an OOM is reported, not retried). frames: frames per network
    call; num_frames / steps: the clip, for the time estimate. floor: the smallest tile retried.
    """

    def __init__(self, model, method: str, latent_size, *, num_frames: int, steps: int, frames: int | None = None,
                 cfg: bool = False, tile: int | None = None, floor: int = 32, tile_batch: int = 1,
                 modules=None, unique_id=None, what: str = "the sampler", hint: str | None = None):
        self.model, self.method = model, method
        self.latent_size = tuple(int(v) for v in latent_size)
        self.num_frames, self.steps, self.cfg = int(num_frames), int(steps), bool(cfg)
        self.frames = frames
        self.tile, self.floor, self.tile_batch, self.modules = tile, int(floor), int(tile_batch), modules
        self.unique_id, self.what, self.hint = unique_id, what, hint
        self.lines: list[str] = []
        self.tile_used = 0
        self.seconds: float | None = None
        self.device_label = device_name(model.device)

    def estimate(self, tile: int) -> memory.VRAMEstimate:
        return memory.estimate_vram(self.method, self.latent_size, model=self.model, frames=self.frames,
                                    cfg=self.cfg, tile=tile, tile_batch=self.tile_batch, modules=self.modules)

    @property
    def units(self) -> float:
        return work_units(self.num_frames, self.steps, self.latent_size, self.cfg)

    def plan(self) -> int:
        """Resolve the tile ("auto" after letting ComfyUI make room) and show the estimate on the node."""
        tile = 0 if self.tile is None else int(self.tile)
        auto = tile < 0
        if auto:
            # ComfyUI can unload other models first: then the free memory the tile is chosen for is real
            comfy.make_room(self.estimate(0).needed, self.model.device)
            tile = memory.auto_tile(self.method, self.latent_size, model=self.model, frames=self.frames,
                                    cfg=self.cfg, tile_batch=self.tile_batch, modules=self.modules, floor=self.floor)
        est = self.estimate(tile)
        free = memory.free_vram(self.model.device)
        where = "RAM" if self.model.device.type == "cpu" else "VRAM"
        parts = [f"est. peak {where} {est.describe()}"]
        if free is not None:
            parts.append(f"{memory.format_bytes(free)} free")
        if self.tile is not None:
            parts.append(_tile_text(tile) + (" (auto)" if auto else ""))
        seconds = timing_record().estimate(self.device_label, self.method, self.model.dtype, self.units)
        parts.append(describe_time(seconds, self.num_frames, self.device_label))
        self._say(" · ".join(parts))
        return tile

    def __call__(self, fn):
        """``fn(tile)`` with the estimate shown first, retried with smaller tiles on out-of-memory."""
        import torch

        tile = self.plan()
        device = self.model.device
        cuda = device.type == "cuda" and torch.cuda.is_available()

        def attempt(t: int):
            self.tile_used = t
            est = self.estimate(t)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            with reserve_memory(est.activations + memory.OVERHEAD_BYTES):
                t0 = time.monotonic()
                out = fn(t)
                self.seconds = time.monotonic() - t0
            return out

        def retry(old: int, new: int, error: str) -> None:
            log.warning("[Diffusion VSR] %s ran out of memory (%s) at %s; retrying with tile %d",
                        self.what, error, _tile_text(old), new)
            self._say(f"out of GPU memory at {_tile_text(old)}: retrying with tile {new}")

        out = memory.run_with_oom_retry(
            attempt, tile, floor=self.floor, latent_size=self.latent_size if self.tile is not None else None,
            what=self.what, hint=self.hint, on_retry=retry, estimate=self.estimate,
            free=lambda: memory.free_vram(device))
        done = [f"took {self.seconds:.1f} s ({self.seconds / max(self.num_frames, 1):.2f} s/frame)"]
        if self.tile is not None:
            done.append(_tile_text(self.tile_used))
        if cuda:
            done.append(f"measured peak {memory.format_bytes(torch.cuda.max_memory_allocated(device))}")
        self.lines.append(" · ".join(done))
        timing_record().update(self.device_label, self.method, self.model.dtype, self.units, self.seconds)
        return out

    def output(self, result: tuple) -> dict:
        """The V1 node return value: ``result`` plus the estimate and outcome as ``ui`` text."""
        return {"ui": {"text": ["\n".join(self.lines)]}, "result": tuple(result)}

    def _say(self, text: str) -> None:
        self.lines.append(text)
        comfy.show_text(self.unique_id, text)
