"""VSR_FlowGuidance: optical flow of a clip, shared by every sampler, and what it looks like."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vsr_core.flow import DIS_PRESETS, DISEngine, estimate_video_flow, flow_to_rgb
from vsr_core.io.frames import check_image

from . import comfy_adapter as comfy
from .common import CATEGORY

DIS_ENGINE = "DIS (OpenCV, no weights)"
RAFT_PRESETS = ["stablevsr", "uav", "mgld"]
RESOLUTIONS = {"full": 1, "1/2": 2, "1/4": 4}


def _raft_model(name: str):
    """The RAFT network in models/vsr/flow/``name`` (cached; it rests on the CPU)."""
    from vsr_core.loaders.raft import load_raft

    path = comfy.model_path("flow", name)
    return comfy.cached_model(("raft", str(path)), path, lambda: load_raft(path))


def _raft_engine(name: str, preset: str, iters: int, device):
    from vsr_core.flow.raft import RAFTEngine

    model = _raft_model(name)
    overrides = {"iters": iters} if iters > 0 else {}
    if preset == "stablevsr":  # its official call needs sizes divisible by 8; users' clips are not
        overrides["pad_mode"] = "replicate"
    return RAFTEngine.for_method(model, preset, device=device, half=device.type == "cuda", **overrides)


class VSR_FlowGuidance:
    DESCRIPTION = ("Estimate the optical flow between neighbouring frames (both directions) and the occlusion masks, "
                   "once, as a VSR_FLOW that every VSR sampler accepts. The flow image (colour wheel: hue = direction, "
                   "saturation = speed) and the occlusion mask show what the temporal guidance will see. DIS needs no "
                   "weights; RAFT (models/vsr/flow/) is more accurate on large or complex motion.")
    CATEGORY = f"{CATEGORY}/flow"
    FUNCTION = "estimate"
    FILE_COMBOS = ("engine",)
    RETURN_TYPES = ("VSR_FLOW", "IMAGE", "MASK")
    RETURN_NAMES = ("flow", "flow_image", "occlusion")
    OUTPUT_TOOLTIPS = ("Forward/backward flows, occlusion masks and the grid they live on.",
                       "Forward flow (frame i -> i+1) as colours, one image per neighbouring pair, at frame size.",
                       "Forward occlusion mask per pair (1 = no match in the next frame), at frame size.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "The clip (low-resolution or upscaled frames, as the sampler expects)."}),
                "engine": ([DIS_ENGINE] + comfy.list_models("flow"),
                           {"default": DIS_ENGINE, "tooltip": "DIS runs anywhere without weights. A RAFT file "
                                                              "(raft-things.pth or torchvision raft_large) from "
                                                              "models/vsr/flow/ is more accurate."}),
                "dis_preset": (list(DIS_PRESETS), {"default": "medium",
                                                   "tooltip": "DIS speed/quality: medium is accurate, ultrafast "
                                                              "is several times faster."}),
                "raft_convention": (RAFT_PRESETS, {"default": "stablevsr",
                                                   "tooltip": "Input range, padding and iterations of the method "
                                                              "whose official RAFT call to follow."}),
                "raft_iterations": ("INT", {"default": 0, "min": 0, "max": 64,
                                            "tooltip": "RAFT refinement steps (0 = the convention's: StableVSR 12, "
                                                       "UAV 20, MGLD 10)."}),
                "compute_resolution": (list(RESOLUTIONS), {"default": "full",
                                                           "tooltip": "Estimate on downscaled frames (faster, less "
                                                                      "memory); samplers rescale the flow to their "
                                                                      "grid."}),
                "occlusion": (["mgld", "uav"], {"default": "mgld",
                                                "tooltip": "Forward-backward check: MGLD's L2 form (0.01, 0.5) or "
                                                           "UAV's squared form (0.001, 0.05)."}),
                "pairs_per_chunk": ("INT", {"default": 8, "min": 1, "max": 256,
                                            "tooltip": "Frame pairs sent to the engine at once: lower it if "
                                                       "memory is short."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def estimate(self, frames, engine=DIS_ENGINE, dis_preset="medium", raft_convention="stablevsr",
                 raft_iterations=0, compute_resolution="full", occlusion="mgld", pairs_per_chunk=8, unique_id=None):
        frames = check_image(frames)
        T, H, W, _ = frames.shape
        if T < 2:
            raise ValueError("flow needs at least 2 frames; this clip has 1 (raise frame_load_cap on the loader)")
        factor = RESOLUTIONS[compute_resolution]
        size = None if factor == 1 else (max(8, H // factor), max(8, W // factor))
        device = comfy.get_device()
        bar = comfy.Progress(T - 1, unique_id)
        options = dict(chunk=pairs_per_chunk, compute_size=size, occlusion_form=occlusion, progress=bar, device=device)
        if engine == DIS_ENGINE:
            flow = estimate_video_flow(frames, DISEngine(dis_preset), **options)
        else:
            from vsr_core.models.bundle import borrow

            # the network visits the device only while it runs (through ComfyUI's model management there)
            with borrow([(_raft_model(engine), None)], device, "cpu"):
                flow = estimate_video_flow(frames, _raft_engine(engine, raft_convention, raft_iterations, device),
                                           **options)
            comfy.soft_empty_cache()
        image = flow_to_rgb(flow.forward).permute(0, 3, 1, 2)
        mask = flow.occ_forward
        if (H, W) != flow.grid_size:
            image = F.interpolate(image, size=(H, W), mode="bilinear", align_corners=False)
            mask = F.interpolate(mask, size=(H, W), mode="nearest")
        image = image.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
        return (flow, image, mask[:, 0].to(torch.float32).contiguous())


NODE_CLASS_MAPPINGS = {"VSR_FlowGuidance": VSR_FlowGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"VSR_FlowGuidance": "Flow Guidance (VSR)"}
