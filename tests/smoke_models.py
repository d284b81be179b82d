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
    "SATeCo": (".", "smoke_models:write_satec_smoke"),
    "Combine": ("vsr/sd_x4/stable-diffusion-x4-upscaler", "vsr_core.loaders.tiny:write_tiny_sd_x4"),
}
SATECO_BASE = "v2-1_768-ema-pruned.safetensors"  # in models/checkpoints/, as the workflow names it
SATECO_ADAPTERS = "satec.safetensors"              # in models/vsr/satec/
# sizes of the smoke set's SATeCo parts (the tests' tiny configuration)
SATECO_TINY = dict(latent_guide_channels=16, pixel_guide_channels=8, sfa_hidden=16, tubelet=[3, 4, 4], max_inner=32,
                   head_dim=16, refiner_channels=16)

# widget overrides that keep a smoke run short (sampler steps; MGLD's minimum side)
FAST = {"VSR_StableVSRSampler": {"steps": 2}, "VSR_UpscaleAVideoSampler": {"steps": 2, "propagation_steps": "1"},
        "VSR_MGLDSampler": {"steps": 2, "min_side": 0}, "VSR_SATeCoSampler": {"steps": 2},
        "VSR_X4PerFrameSampler": {"steps": 2}, "VSR_TemporalLatentPropagation": {"steps": "-1"}}


def write_satec_smoke(models: Path) -> Path:
    """A tiny SD 2.x checkpoint in models/checkpoints/ and tiny random "trained" SATeCo parts for it."""
    import torch

    from vsr_core.loaders.satec import load_sd_base, new_parts, save_satec
    from vsr_core.loaders.tiny import randomize_, write_tiny_sd2_single_file
    from vsr_core.models.satec import SATeCoConfig

    base_file = write_tiny_sd2_single_file(Path(models) / "checkpoints" / SATECO_BASE)
    base = load_sd_base(base_file, text_encoder=False)
    parts = new_parts(SATeCoConfig.from_dict({**SATeCoConfig().to_dict(), **SATECO_TINY}), base)
    with torch.no_grad():
        for i, m in enumerate(parts.modules().values()):
            randomize_(m, i)
            for p in m.parameters():
                p.mul_(0.1)  # gentle: the smoke outputs stay in range
    parts.trained = {"unet", "vae", "refiner"}
    return save_satec(Path(models) / "vsr" / "satec" / SATECO_ADAPTERS, parts)


def write_smoke_models(models: Path, names=None) -> list[Path]:
    """Write the tiny checkpoints of ``names`` (default: every workflow's) under ``models``."""
    import importlib

    out = []
    for name in names if names is not None else SMOKE_MODELS:
        if name not in SMOKE_MODELS:
            continue  # a workflow without weights (QuickStart)
        folder, writer = SMOKE_MODELS[name]
        module, func = writer.split(":")
        if module == "smoke_models":
            module = __name__
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
