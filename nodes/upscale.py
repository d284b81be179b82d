"""VSR_VideoUpscaler: the weight-free first stage (and SATeCo's video-upscaler stage)."""
from __future__ import annotations

from vsr_core.upscale import UPSCALE_METHODS, upscale_frames

from . import comfy_adapter as comfy
from .common import CATEGORY


class VSR_VideoUpscaler:
    DESCRIPTION = ("Upscale frames x2 or x4 without diffusion weights (bicubic or Lanczos). Use it as the quick "
                   "path, as the reference a diffusion result is compared against, or as SATeCo's first stage.")
    CATEGORY = f"{CATEGORY}/upscale"
    FUNCTION = "upscale"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Upscaled frames, [frames, scale*height, scale*width, 3].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "Low-resolution frames."}),
                "scale": ("INT", {"default": 4, "min": 2, "max": 4, "step": 2, "tooltip": "Upscale factor: 2 or 4."}),
                "method": (list(UPSCALE_METHODS), {"default": "bicubic",
                                                   "tooltip": "bicubic: smooth, the classic reference. lanczos: "
                                                              "sharper edges, slight ringing."}),
                "frames_per_chunk": ("INT", {"default": 16, "min": 1, "max": 256,
                                             "tooltip": "Frames processed at once: lower it if memory is short."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def upscale(self, frames, scale=4, method="bicubic", frames_per_chunk=16, unique_id=None):
        if scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {scale}")
        bar = comfy.Progress(frames.shape[0], unique_id)
        device = comfy.get_device() if method == "bicubic" else "cpu"
        return (upscale_frames(frames, scale, method, chunk=frames_per_chunk, device=device, progress=bar),)


NODE_CLASS_MAPPINGS = {"VSR_VideoUpscaler": VSR_VideoUpscaler}
NODE_DISPLAY_NAME_MAPPINGS = {"VSR_VideoUpscaler": "Video Upscaler (VSR)"}
