"""Training of the pack's own learned models (the video upscaler)."""
