"""The ComfyUI node layer: thin V1 classes over vsr_core, grouped by role.

Each module is imported on its own: a module that fails (a broken optional dependency, say) is
reported in the log with the reason, and every other node still registers.
"""
from __future__ import annotations

import importlib
import logging

from . import comfy_adapter

log = logging.getLogger("diffusion_vsr")

NODE_MODULES = ("video", "upscale", "flow", "diffusion", "temporal", "satec", "stream")
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
IMPORT_ERRORS: dict[str, str] = {}

for _name in NODE_MODULES:
    try:
        _mod = importlib.import_module(f".{_name}", __name__)
    except Exception as e:  # keep the rest of the pack usable, say exactly what broke
        IMPORT_ERRORS[_name] = f"{type(e).__name__}: {e}"
        log.error("[Diffusion VSR] nodes/%s.py failed to import (%s); its nodes are unavailable.", _name, e)
        continue
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

comfy_adapter.register_model_folders()
comfy_adapter.provide_example_input(comfy_adapter.PACK_ROOT / "vsr_core" / "assets" / "demo_coffee_lr.mp4")
comfy_adapter.install_device_manager()  # sub-models load through ComfyUI's model management
if "temporal" not in IMPORT_ERRORS:  # mechanism chains a sampler cannot run are refused when queued
    from .temporal import check_prompt

    comfy_adapter.add_prompt_check(check_prompt)
if "video" not in IMPORT_ERRORS:  # the loader's "preview the selected frames" request (js/vsr_video.js)
    from .video import preview_selection

    comfy_adapter.add_file_route("/vsr/preview", preview_selection)
