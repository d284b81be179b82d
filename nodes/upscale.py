"""VSR_VideoUpscaler (the first stage: learned, classical or the user's image model) and VSR_VideoMetrics."""
from __future__ import annotations

from vsr_core.upscale import UPSCALE_METHODS, image_model_upscaler, make_upscaler, upscale_frames

from . import comfy_adapter as comfy
from .common import CATEGORY, compare_ui

EMBEDDED = "embedded (ships with the pack)"


def _learned_model(weights: str):
    from vsr_core.loaders.video_upscaler import DEFAULT_WEIGHTS, load_video_upscaler

    path = DEFAULT_WEIGHTS if weights == EMBEDDED else comfy.model_path("upscaler", weights)
    return comfy.cached_model(("video_upscaler", str(path)), path, lambda: load_video_upscaler(path))


class VSR_VideoUpscaler:
    DESCRIPTION = ("Upscale frames x2 or x4 without diffusion weights. 'learned' is the pack's own multi-frame "
                   "upscaler (weights embedded, no download): it looks at 3 frames each side and is sharper than "
                   "bicubic. bicubic/lanczos are the classic kernels. Connect an UPSCALE_MODEL (core's 'Load "
                   "Upscale Model': ESRGAN, SPAN, SwinIR ...) to use your favourite image upscaler instead, frame "
                   "by frame in tiles. Use it as the quick path, as the reference a diffusion result is compared "
                   "against, or as SATeCo's first stage.")
    CATEGORY = f"{CATEGORY}/upscale"
    FUNCTION = "upscale"
    FILE_COMBOS = ("weights",)
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Upscaled frames, [frames, scale*height, scale*width, 3].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "Low-resolution frames."}),
                "scale": ("INT", {"default": 4, "min": 2, "max": 4, "step": 2, "tooltip": "Upscale factor: 2 or 4."}),
                "method": (list(UPSCALE_METHODS), {"default": "learned",
                                                   "tooltip": "learned: the pack's multi-frame upscaler (sharpest, "
                                                              "~0.4 s per 320x180 frame on a CPU). bicubic: smooth, "
                                                              "the classic reference. lanczos: sharper edges, slight "
                                                              "ringing. Ignored when an upscale_model is connected."}),
                "frames_per_chunk": ("INT", {"default": 16, "min": 1, "max": 256,
                                             "tooltip": "Frames processed at once: lower it if memory is short. "
                                                        "The result does not depend on it."}),
            },
            "optional": {
                "upscale_model": ("UPSCALE_MODEL", {"tooltip": "An image upscaler from core's 'Load Upscale Model' "
                                                               "(ESRGAN, SPAN, SwinIR ...), applied per frame in "
                                                               "tiles and resized to 'scale' if its own differs."}),
                "weights": ([EMBEDDED] + comfy.list_models("upscaler"),
                            {"default": EMBEDDED, "tooltip": "Learned-upscaler weights: the embedded file, or one "
                                                             "you trained (python -m vsr_core train-upscaler) and "
                                                             "put in models/vsr/upscaler/."}),
                "tile": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 32,
                                 "tooltip": "Tile side in input pixels (0 = whole frames for 'learned', 512 for an "
                                            "upscale_model). Lower it if memory is short; for 'learned' the result "
                                            "is identical."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def upscale(self, frames, scale=4, method="learned", frames_per_chunk=16, upscale_model=None, weights=EMBEDDED,
                tile=0, unique_id=None):
        if scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {scale}")
        bar = comfy.Progress(frames.shape[0], unique_id)
        device = comfy.get_device()
        if upscale_model is not None:
            return (self._with_image_model(frames, scale, upscale_model, frames_per_chunk, tile, device, bar),)
        if method == "learned":
            from vsr_core.upscale import LearnedUpscaler

            model = _learned_model(weights)
            try:
                fn = LearnedUpscaler(model, scale, device, tile)
                return (upscale_frames(frames, scale, fn, chunk=frames_per_chunk, progress=bar),)
            finally:
                model.to("cpu")
                comfy.soft_empty_cache()
        if method == "lanczos":
            device = "cpu"  # OpenCV
        return (upscale_frames(frames, scale, make_upscaler(method, scale, device), chunk=frames_per_chunk,
                               progress=bar),)

    @staticmethod
    def _with_image_model(frames, scale, upscale_model, chunk, tile, device, bar):
        model_scale = int(round(float(getattr(upscale_model, "scale", 0) or 0)))
        if model_scale < 1:
            raise ValueError("the connected upscale_model does not say its scale; connect the output of core's "
                             "'Load Upscale Model'")
        comfy.make_room(2 * 1024 ** 3, device)
        upscale_model.to(device)
        dtype = getattr(upscale_model, "dtype", None)

        def call(x):
            return upscale_model(x.to(dtype) if dtype is not None else x)
        try:
            fn = image_model_upscaler(call, model_scale, scale, device, tile=tile or 512)
            return upscale_frames(frames, scale, fn, chunk=chunk, progress=bar)
        finally:
            upscale_model.to("cpu")
            comfy.soft_empty_cache()


class VSR_VideoMetrics:
    DESCRIPTION = ("Compare a result with a reference clip of the same size (e.g. ground truth rendered by "
                   "'python -m vsr_core render', or a clip you downscaled yourself): PSNR and SSIM on RGB and "
                   "on luma (Y), and with a VSR_FLOW of the reference, the warping error (flicker) next to the "
                   "reference's own. The figures show on the node, with a slider comparing the result and the "
                   "reference, and come out as text.")
    CATEGORY = f"{CATEGORY}/evaluate"
    FUNCTION = "measure"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report", "psnr_y", "ssim_y")
    OUTPUT_TOOLTIPS = ("All figures as text.", "Mean luma PSNR in dB.", "Mean luma SSIM.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "The result to score."}),
                "reference": ("IMAGE", {"tooltip": "The ground truth: same frame count and size as the result."}),
                "border": ("INT", {"default": 0, "min": 0, "max": 64,
                                   "tooltip": "Pixels cropped from every border before PSNR/SSIM (the VSR "
                                              "literature often crops the scale factor or 8)."}),
            },
            "optional": {
                "reference_flow": ("VSR_FLOW", {"tooltip": "Flow of the reference (Flow Guidance on the reference "
                                                           "frames) for the warping error; leave empty to skip."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def measure(self, frames, reference, border=0, reference_flow=None, unique_id=None):
        from vsr_core.metrics import format_metrics, video_metrics

        m = video_metrics(frames, reference, crop=border, flow=reference_flow)
        text = format_metrics(m)
        ui = {"text": [text], "vsr_compare": compare_ui(reference, frames, ("reference", "result"), unique_id)}
        return {"ui": ui, "result": (text, float(m["psnr_y"]), float(m["ssim_y"]))}


NODE_CLASS_MAPPINGS = {"VSR_VideoUpscaler": VSR_VideoUpscaler, "VSR_VideoMetrics": VSR_VideoMetrics}
NODE_DISPLAY_NAME_MAPPINGS = {"VSR_VideoUpscaler": "Video Upscaler (VSR)", "VSR_VideoMetrics": "Video Metrics (VSR)"}
