"""What several node modules share."""
from __future__ import annotations

import time
from pathlib import Path

from vsr_core.io.preview import compare_stills

from . import comfy_adapter as comfy

CATEGORY = "Diffusion VSR"
# VALIDATE_INPUTS' default for an optional input: ComfyUI passes a connected (linked) input as None and
# leaves an unconnected one out, so a node sees which it is
UNCONNECTED = object()


def video_ui(path: Path, subfolder: str, animated: bool) -> dict:
    """The ``ui`` of a node that wrote a video (or, not ``animated``, a PNG-sequence folder, shown by its
    first frame) into the output folder's ``subfolder``."""
    if animated:
        shown = {"filename": path.name, "subfolder": subfolder, "type": "output"}
    else:
        shown = {"filename": "frame_000001.png", "subfolder": "/".join(filter(None, [subfolder, path.name])),
                 "type": "output"}
    return {"images": [shown], "animated": (animated,)}


def compare_ui(a, b, labels: tuple[str, str], node_id=None) -> list[dict]:
    """The ``vsr_compare`` UI entry: evenly spaced frame pairs (a resized to b's size) in the temp folder,
    for the compare slider the pack's frontend draws on the node."""
    prefix = f"cmp_{node_id or 'node'}_{time.time_ns():x}"
    pairs = compare_stills(a, b, Path(comfy.temp_dir()) / "vsr_compare", prefix)

    def item(name):
        return {"filename": name, "subfolder": "vsr_compare", "type": "temp"}
    return [{"index": p["index"], "a": item(p["a"]), "b": item(p["b"]), "labels": list(labels),
             "frames": int(b.shape[0])} for p in pairs]
