"""vsr_core: a ComfyUI-free, device-agnostic torch library for diffusion video super-resolution.

Nothing in this package imports ``comfy``: the node pack (``nodes/``) reaches ComfyUI through one
adapter, and the CLI (``python -m vsr_core``) uses the same functions without ComfyUI.
"""

__version__ = "0.1.0"
