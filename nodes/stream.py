"""VSR_StreamUpscaleVideo: a video file to an upscaled video file, chunk by chunk (long videos in bounded RAM)."""
from __future__ import annotations

import json
import os

from vsr_core.io import OUTPUT_FORMATS, FrameSelection
from vsr_core.stream import BLEND_MODES, METHOD_SETTINGS, UPSCALER_METHODS, raft_convention

from . import budget
from . import comfy_adapter as comfy
from .common import CATEGORY, UNCONNECTED, video_ui
from .flow import DIS_ENGINE, _raft_engine
from .video import VIDEO_EXTENSIONS, existing_source, path_problem

MODEL_METHOD = "the connected model"
METHODS = [MODEL_METHOD, *UPSCALER_METHODS]


def _settings(text: str, method: str, steps: int, seed: int, prompt: str, negative_prompt: str) -> dict:
    """The sampler settings: the JSON of ``settings`` plus the widgets that apply to ``method``."""
    try:
        extra = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"settings must be a JSON object such as {{\"guidance_scale\": 6, \"propagation_steps\": "
                         f"[-6, -4, -2]}}; it does not parse: {e}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"settings must be a JSON object ({{...}}), got {type(extra).__name__}")
    known = METHOD_SETTINGS[method]
    out = dict(extra)
    if steps > 0:
        out["steps"] = steps
    out["seed"] = seed
    if "prompt" in known and prompt.strip():
        out["prompt"] = prompt
    if "negative_prompt" in known and negative_prompt.strip():
        out["negative_prompt"] = negative_prompt
    return out


class VSR_StreamUpscaleVideo:
    DESCRIPTION = ("Upscale a whole video file straight to a new video file, a chunk of frames at a time, so RAM "
                   "stays flat however long the video is (the frames never all sit in memory, unlike "
                   "Load Video Frames -> sampler -> Save Video). Takes the connected diffusion model (StableVSR, "
                   "x4 upscaler, Upscale-A-Video, MGLD) with its published sampler settings, or a model-free "
                   "upscaler. Neighbouring chunks overlap and are crossfaded (flow-aligned or Hann); the sampling "
                   "state (UAV latent propagation, StableVSR's previous-frame guidance) is carried from chunk to "
                   "chunk. Nothing is written under the final name until the whole video is done.")
    CATEGORY = f"{CATEGORY}/io"
    FUNCTION = "run"
    OUTPUT_NODE = True
    FILE_COMBOS = ("flow_engine",)
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("Full path of the written video (or PNG folder).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "method": (METHODS, {"default": MODEL_METHOD,
                                     "tooltip": "the connected model: its method (connect Load Diffusion VSR "
                                                "Model). learned / bicubic / lanczos: no diffusion model needed."}),
                "video": (comfy.list_input_files(VIDEO_EXTENSIONS) or [""],
                          {"tooltip": "A video in ComfyUI's input folder (the upload button adds one). Ignored when "
                                      "path is typed or video_info is connected."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                                  "tooltip": "Denoising steps; 0 = the method's published count."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Same seed, same result (noise is drawn per video frame, so it does "
                                            "not depend on the chunking)."}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "x4 / Upscale-A-Video: what the video shows (empty = the "
                                                 "method's default)."}),
                "negative_prompt": ("STRING", {"default": "", "multiline": True,
                                               "tooltip": "x4 / Upscale-A-Video: what to avoid (empty = default)."}),
                "settings": ("STRING", {"default": "", "multiline": True,
                                        "tooltip": "More sampler/decoder settings as JSON, e.g. "
                                                   "{\"guidance_scale\": 6, \"propagation_steps\": [-6, -4, -2], "
                                                   "\"noise_level\": 120, \"color_fix\": \"wavelet\"}. Unknown keys "
                                                   "are refused with the list of known ones."}),
                "flow_engine": ([DIS_ENGINE] + comfy.list_models("flow"),
                                {"default": DIS_ENGINE, "tooltip": "Flow for the method's temporal guidance and "
                                                                   "the flow-aligned crossfade. DIS needs no "
                                                                   "weights; RAFT files come from models/vsr/flow/."}),
                "chunk_frames": ("INT", {"default": 0, "min": 0, "max": 1024,
                                         "tooltip": "Frames per chunk; 0 = chosen from the frame size and free "
                                                    "RAM. Longer chunks = fewer borders, more memory."}),
                "chunk_overlap": ("INT", {"default": -1, "min": -1, "max": 64,
                                          "tooltip": "Frames neighbouring chunks share and crossfade; -1 = auto "
                                                     "(4 for temporal methods, 0 where chunking cannot change "
                                                     "the result)."}),
                "blend": (list(BLEND_MODES), {"default": "flow",
                                              "tooltip": "flow: flow-aligned crossfade (details that moved "
                                                         "between the chunks' versions slide, no double edges); "
                                                         "hann: plain raised-cosine crossfade."}),
                "scale": ([4, 2], {"default": 4, "tooltip": "learned/bicubic/lanczos only (diffusion is x4)."}),
                "filename_prefix": ("STRING", {"default": "VSR/stream",
                                               "tooltip": "Subfolder/name in the output folder; a counter is added."}),
                "format": (list(OUTPUT_FORMATS), {"default": "mp4 (h264)",
                                                   "tooltip": "mp4 (h264) plays everywhere; h265 is smaller; ffv1 mkv "
                                                              "is lossless; png sequence writes one file per frame."}),
                "crf": ("INT", {"default": 17, "min": 0, "max": 51,
                                "tooltip": "h264/h265 quality: lower is better and larger."}),
            },
            "optional": {
                "speed": budget.SPEED_INPUT,
                "path": ("STRING", {"default": "", "tooltip": "A path to read instead (inside ComfyUI's input/"
                                                              "output/temp folders or VSR_ALLOWED_DIRS)."}),
                "model": ("VSR_MODEL", {"tooltip": "A diffusion VSR model (for method = the connected model)."}),
                "video_info": ("VSR_VIDEO_INFO", {"tooltip": "From Load Video Frames: re-reads the same file with "
                                                             "the same frame selection and resize. (The loader "
                                                             "holds its frames in RAM: for a long video choose "
                                                             "the file here instead.)"}),
            },
            "hidden": {"prompt_graph": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, path="", video_info=UNCONNECTED):
        # as the loader's: a typed path is checked here (once: only `path` carries the message), `video` by
        # ComfyUI against the file list. A connected video_info (it arrives as None) replaces both.
        if video_info is not UNCONNECTED:
            return True
        return path_problem(path) or True

    def run(self, method, video="", steps=0, seed=42, prompt="", negative_prompt="", settings="",
            flow_engine=DIS_ENGINE, chunk_frames=0, chunk_overlap=-1, blend="flow", scale=4,
            filename_prefix="VSR/stream", format="mp4 (h264)", crf=17, speed="as loaded", path="", model=None,
            video_info=None,
            prompt_graph=None, extra_pnginfo=None, unique_id=None):
        from vsr_core.flow import DISEngine
        from vsr_core.io import probe
        from vsr_core.stream import StreamPipeline, stream_video

        size = None
        if video_info is not None:
            src = str(comfy.resolve_user_path(video_info.path))
            selection = FrameSelection(**{k: v for k, v in video_info.selection.items()
                                          if k in ("skip_first", "nth", "cap")})
            if video_info.loaded_size and tuple(video_info.loaded_size) != (video_info.height, video_info.width) \
                    and min(video_info.loaded_size) > 0:
                size = tuple(int(v) for v in video_info.loaded_size)
            if not os.path.isfile(src):
                raise FileNotFoundError(f"video file not found: {comfy.display_path(src)}")
        else:
            if not (video or (path and path.strip())):
                raise ValueError("no video: choose or upload one, type a path, or connect Load Video Frames' "
                                 "video_info")
            src, selection = existing_source(video, path), FrameSelection()
        device = comfy.get_device()
        if method == MODEL_METHOD:
            if model is None:
                raise ValueError("method is 'the connected model' but no model is connected: connect Load "
                                 "Diffusion VSR Model, or pick learned / bicubic / lanczos")
            if model.method not in METHOD_SETTINGS:
                raise ValueError(f"streaming supports StableVSR, x4, Upscale-A-Video and MGLD models, not "
                                 f"{model.method} (SATeCo: use its sampler nodes)")
            kind = model.method
            opts = _settings(settings, kind, steps, seed, prompt, negative_prompt)
            if scale != 4:
                raise ValueError(f"{kind} upscales x4: set scale to 4")
        else:
            kind, opts = method, {}
        if flow_engine == DIS_ENGINE:
            engine = DISEngine("medium")
        else:  # RAFT called the way the method's official code calls it
            engine = _raft_engine(flow_engine, raft_convention(kind), 0, device)
        pipe = StreamPipeline(kind, model if kind in METHOD_SETTINGS else None, engine, opts, speed=speed)
        info = probe(src)
        width = (size[1] if size else info.width) * scale
        height = (size[0] if size else info.height) * scale
        ext = OUTPUT_FORMATS[format][0]
        target, subfolder, next_name = comfy.new_output(filename_prefix, ext, width, height)
        metadata = {"prompt": prompt_graph} if prompt_graph is not None else {}
        if extra_pnginfo:
            metadata.update(extra_pnginfo)
        total = max(selection.count(info.num_frames), 1)
        bar = comfy.Progress(total, unique_id)
        path = stream_video(src, target, pipe, selection, scale=scale, on_exists=next_name,
                            chunk=chunk_frames, overlap=chunk_overlap, blend=blend, fmt=format, crf=crf,
                            device=device, metadata=metadata, size=size, progress=bar)
        comfy.soft_empty_cache()
        return {"ui": video_ui(path, subfolder, bool(ext)), "result": (str(path),)}


NODE_CLASS_MAPPINGS = {"VSR_StreamUpscaleVideo": VSR_StreamUpscaleVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"VSR_StreamUpscaleVideo": "Stream Upscale Video File (VSR)"}
