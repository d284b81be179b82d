"""Training-free recurrent latent propagation (Upscale-A-Video, methods.md §2.3 step 6e).

At chosen sampling steps the predicted clean latent x̂0 of the whole clip is smoothed along the optical
flow: a backward sweep (frame T−1 down to 0) carries each frame's latent onto its predecessor, then a
forward sweep (0 up to T−1) runs over the backward sweep's output carrying each frame onto its
successor. At every hop the carried latent is nearest-warped onto the current frame, blended 50/50 with
it, and kept only where the UAV forward–backward check says the flow pair is consistent; elsewhere
(occlusions, flow errors) the current frame is left untouched. Information therefore travels across the
whole clip with a 0.5ᵏ decay inside consistently-tracked regions.

``propagate_latents`` is the pure function; ``LatentPropagation`` wraps it as an ``on_x0`` hook for
``sampling.loop.sample`` (latents ``[T, C, h, w]``, frames along dim 0), so any clip-level sampler can use
it with a ``VideoFlow`` from the flow nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from torch import Tensor

from ..flow.occlusion import fb_consistency_uav
from ..flow.types import VideoFlow
from ..flow.warp import resize_flow, warp

__all__ = ["PROPAGATION_MODES", "UAV_STEPS", "parse_step_numbers", "resolve_propagation_steps", "uav_latent_flows",
           "propagation_validity", "propagate_latents", "LatentPropagation"]

PROPAGATION_MODES = ("fuse", "copy")

# The pipeline's call (pipeline_upscale_a_video.py, step 6e): nearest warp, 0.5 fuse, squared-norm
# check thresholds α1 = 0.001, α2 = 0.05 (the Propagation module's own defaults are bilinear / 0.01 / 0.5).
UAV_PIPELINE_ARGS = dict(interpolation="nearest", mode="fuse", fuse_scale=0.5, alpha1=0.001, alpha2=0.05)


# The official CLI runs 30 DDIM steps and propagates at 24, 26, 28 (= -6, -4, -2 counted from the end).
UAV_STEPS = 30


def parse_step_numbers(values: str | int | Iterable[int]) -> list[int]:
    """Step numbers as given: ``"-6, -4, -2"`` (commas, semicolons or spaces), an int or a list of ints."""
    example = "e.g. '-6,-4,-2' (counted from the end) or '24,26,28'"
    if isinstance(values, str):
        tokens = values.replace(";", ",").replace(" ", ",").split(",")
        try:
            return [int(v) for v in tokens if v.strip()]
        except ValueError:
            raise ValueError(f"propagation_steps must be step numbers separated by commas, {example}; "
                             f"got {values!r}") from None
    items = [values] if isinstance(values, int) else list(values)
    out = []
    for v in items:
        if not (isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()):
            raise ValueError(f"propagation_steps must be whole step numbers, {example}; got {values!r}")
        out.append(int(v))
    return out


def resolve_propagation_steps(values: str | int | Iterable[int], steps: int) -> list[int]:
    """The 0-based loop indices of the propagation steps ``values`` for a ``steps``-step schedule.

    Numbers >= 0 are loop indices; negative numbers count from the end, as Python indexes a list
    (-1 = the last step), so ``-6, -4, -2`` is the published ``24, 26, 28`` at 30 steps and stays the
    last steps when ``steps`` changes. Sorted, duplicates dropped; numbers outside the schedule are
    refused with a message that gives the valid range and the from-the-end form.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    given = parse_step_numbers(values)
    bad = [v for v in given if not -steps <= v < steps]
    if bad:
        listed = ", ".join(str(v) for v in bad)
        msg = (f"propagation_steps {listed} {'is' if len(bad) == 1 else 'are'} outside 0..{steps - 1} "
               f"(or -{steps}..-1 counted from the end) for steps = {steps}")
        # indices written for a longer schedule (the published one, or one just long enough): the same
        # distances from its end
        longer = max(UAV_STEPS, max(given) + 1)
        suggested = sorted({v - longer if v >= 0 else v for v in given})
        if any(v >= 0 for v in bad) and all(-steps <= v for v in suggested):
            msg += (f"; count from the end instead: {','.join(str(v) for v in suggested)} (the last steps "
                    "whatever the step count)")
        elif any(v >= 0 for v in bad):
            msg += "; count from the end instead, e.g. -1 for the last step"
        raise ValueError(msg)
    return sorted({v % steps for v in given})


def uav_latent_flows(flow: VideoFlow, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(forward, backward)`` ``[T−1, 2, h, w]`` flows on the latent grid ``size``, resized the UAV way.

    Upscale-A-Video area-resamples the flow field to the latent grid and multiplies both components by
    ``w / w_flow`` (one factor, from the widths). The latent grid equals the LR grid for the x4 VAE,
    so this is the identity for flows computed on the LR frames.
    """
    if (flow.grid_size[0], flow.grid_size[1]) == tuple(size):
        return flow.forward.float(), flow.backward.float()
    f = resize_flow(flow.forward, size, mode="area", scale="width")
    b = resize_flow(flow.backward, size, mode="area", scale="width")
    return f, b


def propagation_validity(forward: Tensor, backward: Tensor, alpha1: float = 0.001,
                         alpha2: float = 0.05) -> tuple[Tensor, Tensor]:
    """Validity masks ``[T−1, 1, h, w]`` (1 = consistent) of both sweeps.

    valid_back[i]: frame i+1 carried onto frame i by ``forward[i]``, checked against ``backward[i]``;
    valid_fwd[i]: frame i carried onto frame i+1 by ``backward[i]``, checked against ``forward[i]``.
    """
    if forward.shape[0] == 0:
        empty = forward.new_zeros((0, 1, *forward.shape[-2:]))
        return empty, empty
    return fb_consistency_uav(forward, backward, alpha1, alpha2), fb_consistency_uav(backward, forward, alpha1, alpha2)


def _hop(prop: Tensor, cur: Tensor, flow: Tensor, valid: Tensor, interpolation: str, mode: str,
         fuse_scale: float) -> Tensor:
    warped = warp(prop, flow, mode=interpolation, convention="uav")
    if mode == "fuse":
        warped = warped * fuse_scale + cur * (1 - fuse_scale)
    # same expression as the official blend, so the result is bit-identical
    return valid * warped + (1 - valid) * cur


def propagate_latents(
    x: Tensor,
    forward: Tensor,
    backward: Tensor,
    interpolation: str = "nearest",
    mode: str = "fuse",
    fuse_scale: float = 0.5,
    alpha1: float = 0.001,
    alpha2: float = 0.05,
    valid: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Bidirectional recurrent propagation of a clip's latents (UAV ``Propagation(learnable=False)``).

    x: ``[T, C, h, w]`` (any float dtype/device; frames along dim 0). forward / backward: ``[T−1, 2, h, w]``
    flows on x's grid (``forward[i]`` = i → i+1, ``backward[i]`` = i+1 → i, pixels; see ``VideoFlow``).
    interpolation: warp mode (``"nearest"`` in the pipeline, ``"bilinear"``); mode: ``"fuse"``
    (``fuse_scale``·warped + (1−fuse_scale)·current) or ``"copy"`` (warped replaces current);
    alpha1 / alpha2: the squared-norm consistency thresholds. valid: precomputed
    ``propagation_validity(forward, backward, alpha1, alpha2)`` (e.g. cached across steps).
    Returns a new ``[T, C, h, w]`` tensor (the forward sweep's output); x is not modified. Work is one
    frame pair at a time on x's device.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [T, C, h, w], got {tuple(x.shape)}")
    if mode not in PROPAGATION_MODES:
        raise ValueError(f"propagation mode must be one of {PROPAGATION_MODES}, got {mode!r}")
    t = x.shape[0]
    want = (t - 1, 2, *x.shape[-2:])
    for name, f in (("forward", forward), ("backward", backward)):
        if tuple(f.shape) != want:
            raise ValueError(f"{name} flows must be {list(want)} for latents {tuple(x.shape)}, got {tuple(f.shape)}"
                             " (resize them with uav_latent_flows)")
    out = x.clone()
    if t < 2:
        return out
    dev = x.device
    if valid is None:
        vb = vf = None
    else:
        vb, vf = valid
    # Backward sweep, in place: out[i+1] already holds its propagated value, out[i] still the input.
    for i in range(t - 2, -1, -1):
        f, b = forward[i:i + 1].to(dev), backward[i:i + 1].to(dev)
        m = vb[i:i + 1].to(dev) if vb is not None else fb_consistency_uav(f, b, alpha1, alpha2)
        out[i:i + 1] = _hop(out[i + 1:i + 2], out[i:i + 1], f, m.to(x.dtype), interpolation, mode, fuse_scale)
    # Forward sweep over the backward sweep's output.
    for i in range(1, t):
        f, b = forward[i - 1:i].to(dev), backward[i - 1:i].to(dev)
        m = vf[i - 1:i].to(dev) if vf is not None else fb_consistency_uav(b, f, alpha1, alpha2)
        out[i:i + 1] = _hop(out[i - 1:i], out[i:i + 1], b, m.to(x.dtype), interpolation, mode, fuse_scale)
    return out


@dataclass
class LatentPropagation:
    """``on_x0`` hook: UAV latent propagation of x̂0 at the loop indices in ``steps``.

    flow: the clip's ``VideoFlow`` (any grid; resized to the latent grid the UAV way and cached, with
    the validity masks, on first use). steps: 0-based sampling-loop indices (the official
    ``propagation_steps``; with 30 steps ``24, 26, 28`` ↔ t = 166, 100, 34; ``resolve_propagation_steps``
    turns the from-the-end form into these); empty = off.
    x̂0 given to the hook is ``[T, C, h, w]`` with T = ``flow.num_frames``.
    """

    flow: VideoFlow
    steps: Sequence[int] = ()
    interpolation: str = "nearest"
    mode: str = "fuse"
    fuse_scale: float = 0.5
    alpha1: float = 0.001
    alpha2: float = 0.05
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.flow, VideoFlow):
            raise TypeError(f"LatentPropagation.flow must be a VideoFlow, got {type(self.flow).__name__}")
        if self.mode not in PROPAGATION_MODES:
            raise ValueError(f"propagation mode must be one of {PROPAGATION_MODES}, got {self.mode!r}")
        self.steps = tuple(sorted({int(s) for s in self.steps}))

    def flows_for(self, size: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """(forward, backward, validity) on the latent grid ``size`` (computed once per size)."""
        key = tuple(int(s) for s in size)
        if key not in self._cache:
            f, b = uav_latent_flows(self.flow, key)
            self._cache[key] = (f, b, propagation_validity(f, b, self.alpha1, self.alpha2))
        return self._cache[key]

    def __call__(self, x0: Tensor) -> Tensor:
        """Propagate ``x0`` ``[T, C, h, w]`` (whatever the step)."""
        if x0.shape[0] != self.flow.num_frames:
            raise ValueError(f"x̂0 has {x0.shape[0]} frames but the flow describes {self.flow.num_frames}")
        f, b, valid = self.flows_for(x0.shape[-2:])
        return propagate_latents(x0, f, b, self.interpolation, self.mode, self.fuse_scale, self.alpha1,
                                 self.alpha2, valid)

    def on_x0(self, x0: Tensor, x_t: Tensor, i: int, schedule=None) -> Tensor:
        return self(x0) if i in self.steps else x0
