"""Optical flow for video super-resolution: engines, clip-level estimation, warping, occlusion.

Conventions (fixed for the whole package): a flow is ``[N, 2, H, W]`` float32, channel 0 = dx,
channel 1 = dy, in pixels of its grid; ``flow_src_to_dst`` satisfies ``src(p) ~ dst(p + flow(p))``, so
``warp(dst, flow_src_to_dst)`` lands on ``src``'s grid. A clip's flows live in a ``VideoFlow``
(``forward[i]`` = i -> i+1, ``backward[i]`` = i+1 -> i). Engines: ``DISEngine`` (no weights) and
``RAFTEngine`` (our RAFT-large; weights loaded by ``vsr_core.loaders.raft``).
"""
from .dis import DIS_PRESETS, DISEngine
from .estimate import FlowEngine, estimate_video_flow
from .raft import RAFT, RAFT_LARGE, RAFT_PRESETS, RAFT_TINY, RAFTConfig, RAFTEngine
from .occlusion import OCCLUSION_FORMS, fb_consistency_mgld, fb_consistency_uav, occlusion_masks
from .types import VideoFlow
from .visualize import color_wheel, flow_to_rgb
from .warp import WARP_CONVENTIONS, WarpConvention, flow_to_grid, resize_flow, warp

__all__ = [
    "DIS_PRESETS",
    "DISEngine",
    "FlowEngine",
    "OCCLUSION_FORMS",
    "RAFT",
    "RAFTConfig",
    "RAFTEngine",
    "RAFT_LARGE",
    "RAFT_PRESETS",
    "RAFT_TINY",
    "VideoFlow",
    "WARP_CONVENTIONS",
    "WarpConvention",
    "color_wheel",
    "estimate_video_flow",
    "fb_consistency_mgld",
    "fb_consistency_uav",
    "flow_to_grid",
    "flow_to_rgb",
    "occlusion_masks",
    "resize_flow",
    "warp",
]
