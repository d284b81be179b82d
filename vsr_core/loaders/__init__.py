"""Model loading: official file formats, key remaps, safe checkpoint reading."""

METHOD_KINDS = ("stablevsr", "sd_x4", "upscale_a_video", "mgld")


def load_method_model(kind: str, path, **opts):
    """The ``VSRModel`` of method ``kind`` from its official folder/file at ``path`` (``opts``: dtype,
    device, offload_device). StableVSR / x4: the diffusers folder (or the x4 single file);
    Upscale-A-Video: its official folder; MGLD: a folder holding mgldvsr_unet and video_vae_cfw."""
    from pathlib import Path

    path = Path(path)
    if kind == "upscale_a_video":
        from .uav import load_uav_model

        return load_uav_model(path, **opts)
    if kind == "mgld":
        from .mgld import find_mgld_files, load_mgld_model

        unet, vae, configs = find_mgld_files(path)
        return load_mgld_model(unet, vae, configs=configs, **opts)
    if kind in ("stablevsr", "sd_x4"):
        from .diffusion import load_diffusion_model

        return load_diffusion_model(path, method=kind, **opts)
    raise ValueError(f"unknown method {kind!r}; choose one of {METHOD_KINDS}")
