"""The sampling loop, once (architecture.md "The sampling loop, once"; k-diffusion style).

    for i, t in enumerate(schedule.timesteps):
        out = denoise(x, t, i)                 # the method's model wrapper
        x0, eps = schedule.predict(out, x, i)
        x0 = hook.on_x0(x0, ...)               # edits of the predicted clean latent
        x = schedule.step(i, x, x0, eps, noise(i, shape), state)
        x = hook.on_step(x, ...)               # edits of the next latent
        callback(i + 1, N, x0)                 # progress / preview; may raise to cancel

Every method's sampler is a denoiser wrapper plus a set of hooks handed to ``sample``. Randomness
enters only through the ``noise`` callable, so tests inject recorded noise and a seed gives the same
result on every device (``seeded_noise`` draws on the CPU).
"""
from __future__ import annotations

import traceback
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .schedulers import Schedule

__all__ = ["Hook", "NoiseFn", "seeded_noise", "sample", "call_releasing"]

NoiseFn = Callable[[int, tuple], Tensor]
"""``noise(step_index, shape) -> Tensor`` of N(0, I) values (any device; moved to the latent's)."""


class Hook(Protocol):
    """A temporal mechanism acting inside the loop. Both methods are optional.

    on_x0(x0, x_t, i, schedule) -> x0: edit the predicted clean latent before the update.
    on_step(x_prev, x0, i, schedule) -> x_prev: edit the latent the update produced.
    """

    def on_x0(self, x0: Tensor, x_t: Tensor, i: int, schedule: Schedule) -> Tensor: ...

    def on_step(self, x_prev: Tensor, x0: Tensor, i: int, schedule: Schedule) -> Tensor: ...


def seeded_noise(seed: int) -> NoiseFn:
    """N(0, I) noise drawn in call order from one ``torch.Generator`` on the CPU, seeded with ``seed``.

    Float32 on the CPU whatever the compute device, so a seed reproduces across CPU and GPU runs (and
    equals what diffusers' pipelines draw from a CPU generator).
    """
    gen = torch.Generator("cpu").manual_seed(int(seed))

    def draw(_i: int, shape: tuple) -> Tensor:
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)

    return draw


def sample(
    denoise: Callable[[Tensor, Tensor, int], Tensor | tuple[Tensor, Tensor]],
    x: Tensor,
    schedule: Schedule,
    hooks: Sequence[object] = (),
    noise: NoiseFn | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    start: int = 0,
) -> Tensor:
    """Run ``schedule`` from step ``start`` on the latent ``x`` and return the final latent.

    denoise(x_t, t, i): the model output at step i (in ``schedule.prediction_type``) for latents
    ``x_t`` (any shape, e.g. ``[T, 4, h, w]`` for a clip), ``t`` the 0-d int64 timestep; it may instead
    return ``(x0, eps)`` when it computed them itself.
    hooks: objects with ``on_x0`` / ``on_step`` (see ``Hook``), applied in order.
    noise: ``noise(i, shape)`` for the ancestral steps (``schedule.needs_noise(i)``); default
    ``seeded_noise(0)``. callback(done, total, x0): after every step; an exception raised there
    (e.g. ComfyUI's interrupt) propagates and stops the run.
    x keeps its device and dtype; the multistep solver's history lives in a per-call state.
    """
    noise = seeded_noise(0) if noise is None else noise
    state: dict = {}
    n = len(schedule)
    on_x0 = [h.on_x0 for h in hooks if hasattr(h, "on_x0")]
    on_step = [h.on_step for h in hooks if hasattr(h, "on_step")]
    for i in range(start, n):
        out = denoise(x, schedule.timesteps[i], i)
        x0, eps = out if isinstance(out, tuple) else schedule.predict(out, x, i)
        del out
        for f in on_x0:
            x0 = f(x0, x, i, schedule)
        z = noise(i, tuple(x.shape)).to(x.device, x.dtype) if schedule.needs_noise(i) else None
        x = schedule.step(i, x, x0, eps, z, state)
        del z, eps
        for f in on_step:
            x = f(x, x0, i, schedule)
        if callback is not None:
            callback(i + 1, n, x0)
        del x0
    return x


def call_releasing(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``; when it raises (an interrupt from a callback, an OOM), the frames the
    exception came through drop their locals before it propagates, so the caller that catches it does
    not keep the run's latents and activations alive through ``exc.__traceback__``."""
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        raise
