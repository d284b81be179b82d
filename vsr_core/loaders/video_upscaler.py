"""The learned video upscaler's weights: one safetensors file, its config in the file's metadata.

The pack embeds a trained file (``vsr_core/weights/video_upscaler.safetensors``, made by
``python -m vsr_core train-upscaler``); users may train their own and put it in ``models/vsr/upscaler/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..models.video_upscaler import VideoUpscaler, VideoUpscalerConfig
from .common import key_mismatches, mismatch_message

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "video_upscaler.safetensors"
CONFIG_KEY = "vsr_video_upscaler_config"


def save_video_upscaler(model: VideoUpscaler, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write the weights (fp32) and config atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {CONFIG_KEY: json.dumps(model.config.to_dict())}
    meta.update(extra or {})
    tmp = path.with_name(f".{path.name}.partial")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)  # a shipped file must be readable by everyone, whatever umask safetensors used
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def load_video_upscaler(path: str | os.PathLike | None = None) -> VideoUpscaler:
    """The upscaler in ``path`` (default: the one embedded in the pack), loaded strictly, in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        where = ("the pack's embedded weights are missing: reinstall the pack" if path == DEFAULT_WEIGHTS
                 else "put a file made by `python -m vsr_core train-upscaler` in models/vsr/upscaler/")
        raise FileNotFoundError(f"video upscaler weights not found: {path} ({where})")
    meta = read_metadata(path)
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path.name} is not a VSR video upscaler file (no '{CONFIG_KEY}' in its metadata); "
                         "image upscalers such as ESRGAN or SPAN go through ComfyUI's 'Load Upscale Model' "
                         "and the upscale_model input instead")
    model = VideoUpscaler(VideoUpscalerConfig.from_dict(json.loads(meta[CONFIG_KEY])))
    state = load_file(str(path))
    message = mismatch_message(f"{path.name} does not match its own config:", *key_mismatches(model.state_dict(), state))
    if message:
        raise ValueError(message)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
