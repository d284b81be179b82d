"""The smoke model set: tiny random-weight checkpoints in each official layout, at the paths the shipped
workflows name, so every workflow runs end to end on a CPU in seconds (``tests/test_workflows.py``
in-process, ``tests/e2e/`` in a real ComfyUI).

    python tests/smoke_models.py ComfyUI/models        # writes models/vsr/{stablevsr,upscale_a_video,mgld}/...
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# workflow name -> (folder under models/, writer)
SMOKE_MODELS = {
    "StableVSR": ("vsr/stablevsr/StableVSR", "vsr_core.loaders.tiny:write_tiny_stablevsr"),
    "UpscaleAVideo": ("vsr/upscale_a_video/upscale_a_video", "vsr_core.loaders.uav:write_tiny_uav"),
    "MGLD": ("vsr/mgld/MGLD", "vsr_core.loaders.mgld:write_tiny_mgld"),
}

# widget overrides that keep a smoke run short (sampler steps; MGLD's minimum side)
FAST = {"VSR_StableVSRSampler": {"steps": 2}, "VSR_UpscaleAVideoSampler": {"steps": 2, "propagation_steps": "1"},
        "VSR_MGLDSampler": {"steps": 2, "min_side": 0}}


def write_smoke_models(models: Path, names=None) -> list[Path]:
    """Write the tiny checkpoints of ``names`` (default: every workflow's) under ``models``."""
    import importlib

    out = []
    for name in names if names is not None else SMOKE_MODELS:
        if name not in SMOKE_MODELS:
            continue  # a workflow without weights (QuickStart)
        folder, writer = SMOKE_MODELS[name]
        module, func = writer.split(":")
        target = Path(models) / folder
        getattr(importlib.import_module(module), func)(target)
        out.append(target)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(REPO))
    for p in write_smoke_models(Path(sys.argv[1])):
        print("wrote", p)
