"""Temporal mechanisms as pieces: each one small object that a sampler runs inside its loop (``VSR_TEMPORAL``).

The four methods differ in how frames talk to each other. Taken out of their samplers, each way is a
:class:`Mechanism`: it says whether it can act on a sampler (:meth:`Mechanism.refusal`), and gives the
``loop.sample`` hooks (``on_x0`` / ``on_step``) or the sampler settings (:meth:`Mechanism.settings`) that
make it act. A sampler given a list of mechanisms runs them in list order after its own published
mechanisms; an empty list is the method as published, bit for bit.

Every mechanism needs the whole clip inside one sampling loop (``Site.clip_loop``); the per-frame x4
sampler switches to such a loop when it is given any (``x4.sample_per_frame(temporal=...)``, frame by
frame through the UNet, so the numbers stay those of the per-frame loop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


from ..flow.types import VideoFlow
from .propagation import PROPAGATION_MODES

__all__ = ["Site", "Mechanism", "Propagation", "MotionGuidanceMechanism", "FlowWarpedConditioning", "WindowMerge",
           "check_mechanisms", "mechanism_hooks", "mechanism_settings", "MECHANISM_METHODS", "PROPAGATION_MODES",
           "WINDOW_MERGES"]

MECHANISM_METHODS = ("sd_x4", "stablevsr", "upscale_a_video", "mgld", "satec")


@dataclass(frozen=True)
class Site:
    """Where mechanisms are attached: the sampler's method, the frames its loop sees at once (``frames``,
    starting at clip frame ``offset``), the steps of its schedule, and what its model has."""

    method: str
    num_frames: int
    steps: int
    frames: int = 0          # frames one loop sees (0 = num_frames); MGLD's official segments see fewer
    offset: int = 0          # clip index of the first of them
    has_controlnet: bool = False
    clip_loop: bool = True

    @property
    def loop_frames(self) -> int:
        return self.frames or self.num_frames


def _flow_for(flow: VideoFlow, site: Site, what: str) -> VideoFlow:
    """The part of ``flow`` covering the frames the loop sees (the last frame repeated past the clip's end,
    as MGLD pads its last segment)."""
    if flow.num_frames != site.num_frames:
        raise ValueError(f"{what}: the flow covers {flow.num_frames} frames but the clip has {site.num_frames}; "
                         "compute both from the same clip")
    stop = site.offset + site.loop_frames
    if stop <= flow.num_frames:
        return flow if (site.offset, stop) == (0, flow.num_frames) else flow.frames(site.offset, stop)
    from .mgld import _pad_flow

    return _pad_flow(flow, stop).frames(site.offset, stop)


class Mechanism:
    """A temporal mechanism. ``name`` is what messages call it; ``paper`` where it comes from."""

    name = "mechanism"
    paper = ""

    def refusal(self, site: Site) -> str | None:
        """Why it cannot act on ``site`` (None = it can)."""
        if not site.clip_loop:
            return f"{self.name} needs the whole clip in one sampling loop, which this sampler does not run"
        return None

    def hooks(self, site: Site) -> list:
        """``loop.sample`` hooks for one loop over ``site``'s frames."""
        return []

    def settings(self, site: Site) -> dict:
        """Sampler settings it sets (a sampler applies them over its own)."""
        return {}


@dataclass
class Propagation(Mechanism):
    """Training-free recurrent latent propagation (Upscale-A-Video, Zhou et al. CVPR 2024, §3.3).

    At the chosen steps the predicted clean latent of every frame is carried along the flow, backward
    then forward through the clip: for each hop ``x̂0_i ← m·(s·W(x̂0_j, F_j→i) + (1−s)·x̂0_i) + (1−m)·x̂0_i``
    with W a nearest (or bilinear) warp, s = ``fuse_scale`` (0.5) and m the forward–backward check
    ``|F + W(F')|² < α1(|F|² + |F'|²) + α2``. steps: step numbers, negative counting from the end
    (``-6,-4,-2`` = 24, 26, 28 of 30). flow: the LR frames' flow.
    """

    flow: VideoFlow
    steps: str | Sequence[int] = "-6,-4,-2"
    interpolation: str = "nearest"
    mode: str = "fuse"
    fuse_scale: float = 0.5
    alpha1: float = 0.001
    alpha2: float = 0.05
    name = "Latent Propagation"
    paper = "Upscale-A-Video (arXiv 2312.06640)"

    def loop_steps(self, steps: int) -> list[int]:
        from .propagation import resolve_propagation_steps

        return resolve_propagation_steps(self.steps, steps)

    def hooks(self, site: Site) -> list:
        from .propagation import LatentPropagation

        steps = self.loop_steps(site.steps)
        if not steps:
            return []
        return [LatentPropagation(_flow_for(self.flow, site, self.name), steps, self.interpolation, self.mode,
                                  self.fuse_scale, self.alpha1, self.alpha2)]


@dataclass
class MotionGuidanceMechanism(Mechanism):
    """Motion guidance (MGLD, Yang et al. ECCV 2024, §3.2).

    After every update, one gradient step on the latents: ``x ← x − g·|logσ²_t|·∇x L`` with
    ``L = Σ_i ‖(1 − O_i)·(x_i − W(x_{i+1}, F_i→i+1))‖₁`` over neighbouring frames (O: the occlusion mask
    of the flow's forward–backward check), g = ``scale`` (−10 published; the step shrinks with the
    noise). pairing: ``"official"`` (MGLD's loss as published, with its pairing quirks) or ``"aligned"``
    (each frame pair with its own flow and mask); start / end: the fraction of the run it acts in;
    occlusion: ``"mgld"`` (O from the check, as published) or ``"none"`` (O = 0). flow: the LR frames' flow.
    """

    flow: VideoFlow
    scale: float = -10.0
    pairing: str = "official"
    start: float = 0.0
    end: float = 1.0
    occlusion: str = "mgld"
    name = "Motion Guidance"
    paper = "MGLD (arXiv 2312.00853)"

    def hooks(self, site: Site) -> list:
        from .motion_guidance import MotionGuidance

        if self.scale == 0:
            return []
        return [MotionGuidance(_flow_for(self.flow, site, self.name), self.scale, self.pairing, self.start,
                               self.end, occlusion=self.occlusion)]


@dataclass
class FlowWarpedConditioning(Mechanism):
    """Flow-warped conditioning, StableVSR's Temporal Conditioning Module (Rota et al. ECCV 2024, §3.2).

    At every step the neighbouring frame's x̂0 is decoded, warped onto the current frame with the flow
    (``W(D(x̂0_{i∓1}), F)``) and fed to a ControlNet whose residuals steer the UNet; the frame order is
    reversed every step (``bidirectional``). Only a model with that ControlNet takes it (StableVSR's);
    scale multiplies the residuals (1 published).
    """

    scale: float = 1.0
    bidirectional: bool = True
    name = "Flow-Warped Conditioning"
    paper = "StableVSR (arXiv 2311.15908)"

    def refusal(self, site: Site) -> str | None:
        if site.method != "stablevsr":
            return (f"{self.name} feeds the neighbour's warped prediction to a Temporal Conditioning Module (a "
                    f"ControlNet trained for it), which only the StableVSR sampler runs; the {site.method} sampler "
                    "has none. Use it with the StableVSR sampler, or take it out of the chain")
        if not site.has_controlnet:
            return (f"{self.name} needs the model's Temporal Conditioning Module (a ControlNet), and this model has "
                    "none: load a StableVSR folder")
        return None

    def settings(self, site: Site) -> dict:
        return {"tcm": True, "conditioning_scale": float(self.scale), "bidirectional": bool(self.bidirectional)}


WINDOW_MERGES = ("running", "uniform", "hann", "segments")


@dataclass
class WindowMerge(Mechanism):
    """How windows of frames denoised at once are merged where they overlap.

    ``running``: Upscale-A-Video's running average; ``uniform``: equal weights; ``hann``: a raised-cosine
    crossfade across each overlap; ``segments``: no overlap, separate segments (MGLD's published mode).
    Upscale-A-Video takes running / uniform / hann; MGLD takes segments (official) or hann (its
    overlapping windows, always Hann-merged).
    """

    mode: str = "hann"
    name = "Window Merge"
    paper = "Upscale-A-Video (arXiv 2312.06640) and MGLD (arXiv 2312.00853)"

    def __post_init__(self) -> None:
        if self.mode not in WINDOW_MERGES:
            raise ValueError(f"window merge must be one of {WINDOW_MERGES}, got {self.mode!r}")

    def refusal(self, site: Site) -> str | None:
        if site.method == "upscale_a_video" and self.mode == "segments":
            return "Upscale-A-Video's windows always overlap: choose running, uniform or hann"
        if site.method == "mgld" and self.mode in ("running", "uniform"):
            return "MGLD merges its overlapping windows with hann (or runs separate segments): choose hann or segments"
        if site.method not in ("upscale_a_video", "mgld"):
            return (f"{self.name} sets how overlapping windows are merged, and the {site.method} sampler has no "
                    "windows (it sees the whole clip): use it with the Upscale-A-Video or MGLD sampler")
        return None

    def settings(self, site: Site) -> dict:
        if site.method == "upscale_a_video":
            return {"merge": self.mode}
        return {"segment_mode": "official" if self.mode == "segments" else "overlap"}


def check_mechanisms(temporal: Sequence[Mechanism] | None, site: Site) -> None:
    """Refuse, with the reason, any mechanism of ``temporal`` that cannot act on ``site``."""
    for k, m in enumerate(temporal or ()):
        if not isinstance(m, Mechanism):
            raise TypeError(f"temporal[{k}] is a {type(m).__name__}, not a temporal mechanism")
        why = m.refusal(site)
        if why:
            raise ValueError(f"{m.name} (temporal mechanism {k + 1}) cannot be used here: {why}.")


def mechanism_settings(temporal: Sequence[Mechanism] | None, site: Site) -> dict:
    """The sampler settings the mechanisms set, later ones over earlier ones."""
    out: dict = {}
    for m in temporal or ():
        out.update(m.settings(site))
    return out


def mechanism_hooks(temporal: Sequence[Mechanism] | None, site: Site) -> list:
    """The hooks of every mechanism for one loop over ``site``'s frames, in list order."""
    return [h for m in temporal or () for h in m.hooks(site)]
