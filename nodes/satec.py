"""SATeCo nodes: load the SD 2.x base with the adapters this pack trains, sample, refine.

Decoding with SFA/TFA is the "satec SFA/TFA" mode of VSR_TemporalVAEDecode (nodes/diffusion.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from vsr_core.io.frames import check_image, image_to_nchw, nchw_to_image

from . import budget
from . import comfy_adapter as comfy
from .common import CATEGORY, UNCONNECTED
from .temporal import SAMPLER_INPUT, refuse_early, validate_temporal
from .diffusion import DTYPE_CHOICES, LATENT_KEY, OFFLOAD_CHOICES, SCHEDULERS, _make_room

NO_ADAPTERS = "none (untrained: train them first)"


def base_choices() -> list[str]:
    """SD 2.x bases: checkpoint files ("checkpoints/<file>") and diffusers folders in models/vsr/satec/."""
    return ([f"checkpoints/{f}" for f in comfy.list_checkpoints()]
            + [f"satec/{d}" for d in comfy.list_model_dirs("satec", "unet")])


def _base_path(choice: str) -> Path:
    where, _, name = choice.partition("/")
    folders = comfy.checkpoint_folders() if where == "checkpoints" else comfy.model_folders("satec")
    for folder in folders:
        if (Path(folder) / name).exists():
            return Path(folder) / name
    raise FileNotFoundError(f"SD 2.x base {choice!r} not found in {folders}: put an SD 2.x checkpoint (e.g. "
                            "v2-1_768-ema-pruned.safetensors from huggingface.co/stabilityai/stable-diffusion-2-1) in "
                            "ComfyUI/models/checkpoints/, or its diffusers folder in ComfyUI/models/vsr/satec/")


class VSR_LoadSATeCo:
    DESCRIPTION = ("Load SATeCo: a frozen Stable Diffusion 2.x (the checkpoint you already have in models/checkpoints, "
                   "or a diffusers folder) plus the SFA/TFA adapters and video refiner from models/vsr/satec/. SATeCo "
                   "has no published weights: train them with `python -m vsr_core train-satec` (see the README). "
                   "Without adapters the sampler refuses and says how to train them.")
    CATEGORY = f"{CATEGORY}/models"
    FUNCTION = "load"
    FILE_COMBOS = ("base", "adapters")
    RETURN_TYPES = ("VSR_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The SD 2.x base with SATeCo's trained parts.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base": (base_choices(), {"tooltip": "The frozen SD 2.x base the adapters were trained on."}),
                "adapters": ([NO_ADAPTERS] + [f for f in comfy.list_models("satec") if f.endswith(".safetensors")],
                             {"tooltip": "satec.safetensors written by the training stages (models/vsr/satec/)."}),
                "prediction": (["auto", "epsilon", "v_prediction"],
                               {"default": "auto", "tooltip": "What the base predicts; auto reads it from the weights "
                                                              "(768-v models: v_prediction, 512 base: epsilon)."}),
                "dtype": (DTYPE_CHOICES, {"default": "auto",
                                          "tooltip": "UNet precision. auto: fp16 on a GPU; on a CPU bf16 where it "
                                                     "computes bf16 natively and faster (a one-time probe), else fp32. "
                                                     "The VAE is fp32, or bf16 beside a bf16 UNet where bf16 is "
                                                     "native."}),
                "offload": (OFFLOAD_CHOICES, {"default": "auto",
                                              "tooltip": "Where weights rest between uses."}),
            },
        }

    def load(self, base, adapters=NO_ADAPTERS, prediction="auto", dtype="auto", offload="auto"):
        from vsr_core.loaders.satec import check_base, load_satec, load_sd_base, new_parts

        path = _base_path(base)
        device = comfy.get_device()
        rest = {"keep on GPU": device, "offload to CPU": torch.device("cpu")}.get(offload, comfy.offload_device())
        stamp = path / "unet" if path.is_dir() else path
        model = comfy.cached_model(("satec", str(path), prediction, dtype, str(device), str(rest)), stamp,
                                   lambda: load_sd_base(path, prediction=prediction, dtype=dtype, device=device,
                                                        offload_device=rest), keep=1)
        if adapters == NO_ADAPTERS:
            parts = new_parts(base=model)
        else:
            parts = load_satec(comfy.model_path("satec", adapters))
            check_base(parts, model)
        from dataclasses import replace

        return (replace(model, satec=parts),)


def _satec_model(model):
    if getattr(model, "method", None) != "satec" or model.satec is None:
        raise ValueError("connect the output of 'Load SATeCo (VSR)'")
    return model


class VSR_SATeCoSampler:
    DESCRIPTION = ("SATeCo: the VAE latent of the upscaled video (from Video Upscaler, learned) is noised to "
                   "'strength' and denoised by the frozen SD 2.x UNet with SFA (per-pixel affine from LR features) "
                   "and TFA (attention inside 6-frame 8x8 tubelets and to the LR tubelet) in every decoder block, "
                   "clip by clip. Decode with Temporal VAE Decode (mode satec), then blend with the Video Refiner.")
    CATEGORY = f"{CATEGORY}/samplers"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Denoised latents, with the upscaled frames the decoder and refiner need.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "From Load SATeCo (VSR)."}),
                "upscaled": ("IMAGE", {"tooltip": "X_u: the video upscaled by Video Upscaler (learned), at the "
                                                  "output size (a multiple of 8)."}),
                "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "How far the latent of X_u is noised before denoising: higher "
                                                  "adds more detail, lower stays closer to X_u."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000,
                                  "tooltip": "Steps of the full schedule; strength x steps of them run."}),
                "scheduler": (SCHEDULERS, {"default": "ddim", "tooltip": "ddim / dpmpp_2m: deterministic."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Same seed, same result."}),
                "clip_length": ("INT", {"default": 6, "min": 1, "max": 64,
                                        "tooltip": "Frames denoised together (the tubelet length; 6 as trained)."}),
            },
            "optional": {"speed": budget.SPEED_INPUT, "temporal": SAMPLER_INPUT},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, temporal=UNCONNECTED):
        return validate_temporal(temporal)  # a chain the prompt check refused (nodes/temporal.py)

    def sample(self, model, upscaled, strength=0.5, steps=20, scheduler="ddim", seed=0, clip_length=6,
               speed="as loaded", temporal=None, unique_id=None):
        from vsr_core.sampling.satec import sample_satec_latents

        model = _satec_model(model)
        frames = check_image(upscaled, "upscaled")
        H, W = frames.shape[1:3]
        f = model.vae_scale_factor
        if H % f or W % f:
            raise ValueError(f"the upscaled frames are {W}x{H}; SATeCo needs sides divisible by {f}: resize the input "
                             "with the loader's multiple_of_8 option (x4 of a multiple of 2 is enough)")
        model.satec.require("unet", "The SATeCo sampler")
        refuse_early(temporal, "satec", frames.shape[0], steps, model)
        x_u = image_to_nchw(frames) * 2 - 1
        model, speed_ctx = budget.speeded(model, speed)
        _make_room(model, "unet", "vae")
        run = budget.SamplerRun(model, "satec", (H // f, W // f), num_frames=frames.shape[0],
                                steps=max(int(round(steps * strength)), 1), frames=min(clip_length, frames.shape[0]),
                                unique_id=unique_id, what="the SATeCo sampler",
                                hint="Lower clip_length (frames denoised at once) or the resolution (this sampler "
                                     "does not tile), load the base with dtype fp16 and offload 'offload to CPU', "
                                     "or close other models (ComfyUI --lowvram).")
        bar = comfy.Progress(1, unique_id, unit="step")  # the sampler reports steps x clips and their total
        with speed_ctx:
            z = run(lambda _tile: sample_satec_latents(model, model.satec, x_u, strength=strength, steps=steps, seed=seed,
                                                       clip_length=clip_length, scheduler=scheduler, progress=bar,
                                                       temporal=temporal or ()))
        comfy.soft_empty_cache()
        return run.output(({"samples": z, LATENT_KEY: x_u, "vsr_clip_length": int(clip_length)},))


class VSR_VideoRefiner:
    DESCRIPTION = ("SATeCo's video refiner: X_H = w·X_u + (1 − w)·X_d + ResBlock([X_u, X_d]), blending the "
                   "upscaler's output X_u with the decoded diffusion output X_d (w = 0.5 as published; lower keeps "
                   "more generated detail, higher more fidelity).")
    CATEGORY = f"{CATEGORY}/samplers"
    FUNCTION = "refine"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The refined frames X_H.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "From Load SATeCo (VSR): its trained refiner."}),
                "upscaled": ("IMAGE", {"tooltip": "X_u, the frames the sampler started from."}),
                "decoded": ("IMAGE", {"tooltip": "X_d, from Temporal VAE Decode (mode satec)."}),
                "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                     "tooltip": "w: the share of X_u in the blend."}),
            },
        }

    def refine(self, model, upscaled, decoded, weight=0.5):
        from vsr_core.sampling.satec import refine

        model = _satec_model(model)
        x_u, x_d = (image_to_nchw(check_image(x, n)) * 2 - 1 for x, n in ((upscaled, "upscaled"), (decoded, "decoded")))
        out = refine(model.satec, x_u, x_d, weight, device=comfy.get_device())
        return (nchw_to_image(out / 2 + 0.5),)


NODE_CLASS_MAPPINGS = {"VSR_LoadSATeCo": VSR_LoadSATeCo, "VSR_SATeCoSampler": VSR_SATeCoSampler,
                       "VSR_VideoRefiner": VSR_VideoRefiner}
NODE_DISPLAY_NAME_MAPPINGS = {"VSR_LoadSATeCo": "Load SATeCo (VSR)", "VSR_SATeCoSampler": "SATeCo Sampler (VSR)",
                              "VSR_VideoRefiner": "Video Refiner (VSR)"}
