"""Video in and out of the graph: VSR_LoadVideoFrames and VSR_SaveVideo."""
from __future__ import annotations

import os
from pathlib import Path

from vsr_core.io import (OUTPUT_FORMATS, PIXEL_FORMATS, VIDEO_EXTENSIONS, FrameSelection, load_audio, load_video,
                         probe, save_video, target_size)
from vsr_core.io.frames import check_image
from vsr_core.io.preview import selection_preview

from . import comfy_adapter as comfy
from .common import CATEGORY, compare_ui, video_ui

RESIZE_MODES = ["none", "multiple_of_8", "custom"]
NO_VIDEO = "no video chosen: upload one (or put it in ComfyUI's input folder) or type a path"


def _source_path(video: str, path: str) -> str:
    """The file a load reads: the typed path when given (checked against the allowed folders), else the
    chosen input-folder file."""
    if path and path.strip():
        return str(comfy.resolve_user_path(path))
    if not video:
        raise ValueError(NO_VIDEO)
    return str(comfy.resolve_user_path(video))


def _int_arg(query: dict, name: str, default: int) -> int:
    try:
        return int(query.get(name, default) or default)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {query.get(name)!r}") from None


def existing_source(video: str, path: str) -> str:
    """``_source_path`` of a file that exists (else FileNotFoundError naming it as the user knows it)."""
    src = _source_path(video, path)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"video file not found: {comfy.display_path(src)}")
    return src


def path_problem(path) -> str | None:
    """What is wrong with the file a typed ``path`` names, as a queue-time message (None: nothing, or no
    path typed: ComfyUI checks `video` against its file list; a path linked from another node arrives as
    None and is checked when the node runs)."""
    if path is None or not str(path).strip():
        return None
    try:
        existing_source("", path)
    except (ValueError, OSError) as e:
        return str(e)
    return None


def preview_selection(query: dict):
    """GET /vsr/preview?video=&path=&skip=&cap=&nth= : an mp4 of exactly the frames the loader would
    select (first PREVIEW_MAX_FRAMES of them, downscaled), and what was selected (the node shows it).
    Errors name files as the user knows them, never by the server's absolute paths."""
    src = existing_source(query.get("video", ""), query.get("path", ""))
    selection = FrameSelection(skip_first=_int_arg(query, "skip", 0), nth=_int_arg(query, "nth", 1),
                               cap=_int_arg(query, "cap", 0))
    try:
        return selection_preview(src, selection, Path(comfy.temp_dir()) / "vsr_preview")
    except (ValueError, OSError, RuntimeError) as e:  # a decoder's message may carry the absolute path
        msg = str(e).replace(src, comfy.display_path(src))
        raise (type(e) if type(e) in (ValueError, FileNotFoundError, RuntimeError) else RuntimeError)(msg) from None


class VSR_LoadVideoFrames:
    DESCRIPTION = ("Load a video as frames (IMAGE), streaming: only the selected frames are kept in memory, and a "
                   "request that would not fit in free RAM is refused before decoding. The node previews exactly the "
                   "selected frames (skip, every n-th, cap) before you run. "
                   "Outputs the frame count, the "
                   "frame rate of the loaded frames, the audio of the same span, and a VSR_VIDEO_INFO record that "
                   "streaming nodes use to re-read the file.")
    CATEGORY = f"{CATEGORY}/io"
    FUNCTION = "load"
    FILE_COMBOS = ("video",)  # options are the user's files: workflow validators skip them
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT", "AUDIO", "VSR_VIDEO_INFO")
    RETURN_NAMES = ("frames", "frame_count", "fps", "audio", "video_info")
    OUTPUT_TOOLTIPS = ("The selected frames, [frames, height, width, 3] float in 0..1.",
                       "Number of frames loaded.",
                       "Frame rate of the loaded frames (source fps / select_every_nth).",
                       "The audio of the loaded span, or None when the file has no sound.",
                       "Source path, size, fps, frame count and the selection used.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": (comfy.list_input_files(VIDEO_EXTENSIONS) or [""],
                          {"tooltip": "A video in ComfyUI's input folder (the upload button adds one). The node "
                                      "previews exactly the frames the settings below select."}),
                "frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "step": 1,
                                           "tooltip": "At most this many frames are returned (0 = all). Use it to "
                                                      "try settings on a short piece first."}),
                "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "step": 1,
                                              "tooltip": "Frames skipped at the start of the video."}),
                "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 1000, "step": 1,
                                             "tooltip": "Keep one frame in n (after skipping); the fps output is "
                                                        "divided by n so playback speed is unchanged."}),
                "resize": (RESIZE_MODES, {"default": "none",
                                          "tooltip": "none: source size. multiple_of_8: nearest size divisible by 8 "
                                                     "(what latent models need). custom: custom_width x "
                                                     "custom_height (0 keeps the aspect ratio)."}),
                "custom_width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8,
                                         "tooltip": "Width for resize=custom (0 = from height and aspect ratio)."}),
                "custom_height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8,
                                          "tooltip": "Height for resize=custom (0 = from width and aspect ratio)."}),
            },
            "optional": {
                "path": ("STRING", {"default": "", "tooltip": "A path to read instead of the chosen file (inside "
                                                              "ComfyUI's input/output/temp folders or VSR_ALLOWED_DIRS)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, video="", path="", **kwargs):
        try:
            src = _source_path(video, path)
            st = os.stat(src)
            return f"{src}:{st.st_mtime_ns}:{st.st_size}"
        except Exception:
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, path=""):
        # ComfyUI reports a message from here once for every input named in this signature, so only `path` is
        # named: a typed path is checked here, and `video` by ComfyUI's own check against the file list
        # (which lists only files the node may read). A path linked from another node arrives as None.
        return path_problem(path) or True

    def load(self, video, frame_load_cap=0, skip_first_frames=0, select_every_nth=1, resize="none",
             custom_width=0, custom_height=0, path="", unique_id=None):
        src = existing_source(video, path)
        info = probe(src)
        selection = FrameSelection(skip_first=skip_first_frames, nth=select_every_nth, cap=frame_load_cap)
        size = target_size(info.width, info.height, resize, custom_width, custom_height)
        bar = comfy.Progress(max(selection.count(info.num_frames), 1), unique_id)
        frames, info = load_video(src, selection, size=size, progress=bar)
        audio = None
        if info.has_audio:
            start = skip_first_frames / info.fps if info.fps else 0.0
            audio = load_audio(src, start=start, duration=frames.shape[0] / info.loaded_fps)
        return (frames, frames.shape[0], float(info.loaded_fps), audio, info)


class VSR_SaveVideo:
    DESCRIPTION = ("Save frames as a video (H.264/H.265 mp4, lossless FFV1 mkv, or a PNG sequence) in ComfyUI's "
                   "output folder with the usual prefix counter, with optional audio, and show it on the node "
                   "(with compare_with connected, also a slider between the input and the result). "
                   "The file is written under a temporary name and renamed when complete, so a cancelled or failed "
                   "run never leaves a half-written file.")
    CATEGORY = f"{CATEGORY}/io"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("Full path of the written video (or PNG folder).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames to encode."}),
                "fps": ("FLOAT", {"default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.01,
                                  "tooltip": "Frame rate; connect the loader's fps output to keep the source rate."}),
                "filename_prefix": ("STRING", {"default": "VSR/video",
                                               "tooltip": "Subfolder/name in the output folder; a counter is added."}),
                "format": (list(OUTPUT_FORMATS), {"default": "mp4 (h264)",
                                                   "tooltip": "mp4 (h264) plays everywhere; h265 is smaller; ffv1 mkv "
                                                              "is lossless (large); png sequence writes one file per "
                                                              "frame."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 51, "step": 1,
                                "tooltip": "Quality for h264/h265: lower is better and larger (17-23 is typical)."}),
                "pix_fmt": (list(PIXEL_FORMATS), {"default": "yuv420p",
                                                  "tooltip": "yuv420p plays everywhere; yuv444p keeps full colour "
                                                             "resolution; yuv420p10le keeps 10-bit precision."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Sound to mux (e.g. the loader's audio output)."}),
                "compare_with": ("IMAGE", {"tooltip": "Optional: the input frames (e.g. the loader's output). "
                                                      "After the run a slider on the node compares them "
                                                      "(bicubic-resized to the output size) with the saved video."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    def save(self, images, fps, filename_prefix="VSR/video", format="mp4 (h264)", crf=19, pix_fmt="yuv420p",
             audio=None, compare_with=None, prompt=None, extra_pnginfo=None, unique_id=None):
        images = check_image(images)
        T, H, W, _ = images.shape
        ext = OUTPUT_FORMATS[format][0]
        target, subfolder, next_name = comfy.new_output(filename_prefix, ext, W, H)
        metadata = {}
        if prompt is not None:
            metadata["prompt"] = prompt
        if extra_pnginfo:
            metadata.update(extra_pnginfo)
        bar = comfy.Progress(T, unique_id)
        path = save_video(images, target, fps, fmt=format, crf=crf, pix_fmt=pix_fmt, audio=audio,
                          metadata=metadata, progress=bar, on_exists=next_name)
        ui = video_ui(path, subfolder, bool(ext))
        if compare_with is not None:
            ui["vsr_compare"] = compare_ui(check_image(compare_with, "compare_with"), images, ("input", "output"),
                                           unique_id)
        return {"ui": ui, "result": (str(path),)}


NODE_CLASS_MAPPINGS = {"VSR_LoadVideoFrames": VSR_LoadVideoFrames, "VSR_SaveVideo": VSR_SaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"VSR_LoadVideoFrames": "Load Video Frames (VSR)", "VSR_SaveVideo": "Save Video (VSR)"}
