"""Diffusion VSR for ComfyUI: diffusion-based video super-resolution nodes.

ComfyUI imports this folder as a package. ``vsr_core`` (the ComfyUI-free library, also the CLI
``python -m vsr_core``) is a top-level package of this folder, so the folder goes on ``sys.path``;
the node layer is imported relatively because ComfyUI already owns a top-level ``nodes`` module.
Importing touches no GPU and downloads nothing.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    # appended, not prepended: ComfyUI's own top-level modules (e.g. `nodes`) must keep winning
    sys.path.append(_HERE)

if __package__:  # ComfyUI (and tests/pack.py) import this folder as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:
    # Imported as a plain module: pytest does that to a checkout whose folder name is not a valid
    # package name (e.g. /tmp/tmp.X1y2), where relative imports cannot work. Nothing to register then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
