"""Diffusion nodes of the x4 family: model loader, LR encoder, samplers (StableVSR, per-frame x4), decode."""
from __future__ import annotations

from pathlib import Path

import torch

from vsr_core.io.frames import check_image, nchw_to_image

from . import budget
from . import comfy_adapter as comfy
from .common import CATEGORY, UNCONNECTED
from .temporal import SAMPLER_INPUT, refuse_early, validate_temporal

DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]
OFFLOAD_CHOICES = ["auto", "keep on GPU", "offload to CPU"]
SCHEDULERS = ["ddpm", "ddim", "dpmpp_2m"]
# models/vsr/<kind>/ folders holding the layouts the loader accepts, and the file that marks a model folder
MODEL_KINDS = ("stablevsr", "sd_x4", "upscale_a_video", "mgld")
_FOLDER_MARKERS = {"stablevsr": "unet", "sd_x4": "unet", "upscale_a_video": "unet"}
LATENT_KEY = "vsr_lr"
MGLD_MIN_SIDE_KEY = "vsr_mgld_min_side"


def model_choices() -> list[str]:
    """"<kind>/<folder or file>" for every StableVSR / SD x4 model the user has installed."""
    out = []
    for kind in MODEL_KINDS:
        if kind == "mgld":  # a folder holding mgldvsr_unet + video_vae_cfw
            dirs = {str(Path(f).parent) for f in comfy.list_models(kind) if "unet" in Path(f).name.lower()}
            out += [f"{kind}/{d}" for d in sorted(dirs)]
            continue
        out += [f"{kind}/{d}" for d in comfy.list_model_dirs(kind, _FOLDER_MARKERS[kind])]
        if kind == "sd_x4":
            out += [f"{kind}/{f}" for f in comfy.list_models(kind) if "/" not in f]
    return out


def _resolve_model(choice: str):
    kind, _, name = choice.partition("/")
    if kind not in MODEL_KINDS or not name:
        raise ValueError(f"unknown model choice {choice!r}: expected one of {model_choices() or 'none installed'}")
    for folder in comfy.model_folders(kind):
        p = Path(folder) / name
        if p.exists():
            return kind, p
    raise FileNotFoundError(
        f"{name!r} not found in {comfy.model_folders(kind)}. StableVSR: download the diffusers folder of "
        "huggingface.co/claudiom4sir/StableVSR into ComfyUI/models/vsr/stablevsr/StableVSR/. SD x4 upscaler: the "
        "stabilityai/stable-diffusion-x4-upscaler folder, or its x4-upscaler-ema.safetensors, into "
        "ComfyUI/models/vsr/sd_x4/. Upscale-A-Video: its official folder (unet/, vae/, ...) into "
        "ComfyUI/models/vsr/upscale_a_video/<name>/. MGLD: mgldvsr_unet.ckpt and video_vae_cfw.ckpt into "
        "ComfyUI/models/vsr/mgld/<name>/.")


def _lr_of(latent: dict):
    cond = latent.get(LATENT_KEY) if isinstance(latent, dict) else None
    if cond is None:
        raise ValueError("this LATENT carries no LR conditioning: connect the output of "
                         "'LR Latent Encoder (VSR)' (VSR_LatentEncoderLR)")
    return cond


def _make_room(model, *names: str) -> None:
    """Before a run: let ComfyUI unload other models until the named sub-models fit on the device
    (their weights plus the same again for activations). Inside ComfyUI the device manager does this
    when it loads them, with the sampler's activation estimate."""
    if comfy.manages_models():
        return
    nbytes = sum(p.numel() * p.element_size() for n in names if getattr(model, n, None) is not None
                 for p in getattr(model, n).parameters())
    comfy.make_room(2 * nbytes, model.device)


def _latent_out(samples: torch.Tensor, cond) -> dict:
    return {"samples": samples.float().cpu(), LATENT_KEY: cond}


class VSR_LoadDiffusionModel:
    DESCRIPTION = ("Load a diffusion VSR model from ComfyUI/models/vsr/: StableVSR (its diffusers folder: unet, "
                   "controlnet, vae, text_encoder, tokenizer, scheduler), the Stable Diffusion x4 upscaler (its "
                   "diffusers folder or the single x4-upscaler-ema file), Upscale-A-Video (its official folder) or "
                   "MGLD (a folder with mgldvsr_unet and video_vae_cfw). Weights load strictly; a missing or wrong file "
                   "is named in the error with where to get it. Networks rest on the CPU and visit the GPU only while "
                   "they run.")
    CATEGORY = f"{CATEGORY}/models"
    FUNCTION = "load"
    FILE_COMBOS = ("model",)
    RETURN_TYPES = ("VSR_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The method's networks, schedulers and settings.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_choices(), {"tooltip": "<method>/<folder or file> under ComfyUI/models/vsr/: "
                                                       "stablevsr, sd_x4, upscale_a_video or mgld."}),
                "dtype": (DTYPE_CHOICES, {"default": "auto",
                                          "tooltip": "Weights and compute precision of the UNet/ControlNet. auto: "
                                                     "fp16 on a GPU; on a CPU bf16 where it computes bf16 natively "
                                                     "(AVX512-BF16/AMX, and a one-time probe finds it faster: about twice as "
                                                     "fast, half the memory), else fp32. "
                                                     "The VAEs are fp32, or bf16 beside a bf16 UNet where bf16 is "
                                                     "native; never fp16 (they overflow there)."}),
                "offload": (OFFLOAD_CHOICES, {"default": "auto",
                                              "tooltip": "Where weights rest between uses. auto follows ComfyUI "
                                                         "(CPU unless --gpu-only/--highvram)."}),
            },
        }

    def load(self, model, dtype="auto", offload="auto"):
        from vsr_core.loaders.diffusion import load_diffusion_model

        kind, path = _resolve_model(model)
        device = comfy.get_device()
        if offload == "keep on GPU":
            rest = device
        elif offload == "offload to CPU":
            rest = torch.device("cpu")
        else:
            rest = comfy.offload_device()
        key = ("diffusion", str(path), kind, dtype, str(device), str(rest))
        opts = dict(dtype=dtype, device=device, offload_device=rest)
        if kind == "upscale_a_video":
            from vsr_core.loaders.uav import load_uav_model

            stamp, load = path / "unet", lambda: load_uav_model(path, **opts)
        elif kind == "mgld":
            from vsr_core.loaders.mgld import find_mgld_files, load_mgld_model

            unet, vae, configs = find_mgld_files(path)
            stamp, load = unet, lambda: load_mgld_model(unet, vae, configs=configs, **opts)
        else:
            stamp = path / "unet" if path.is_dir() else path
            load = lambda: load_diffusion_model(path, method=kind, **opts)  # noqa: E731
        return (comfy.cached_model(key, stamp, load, keep=1),)


class VSR_LatentEncoderLR:
    DESCRIPTION = ("Turn low-resolution frames into the x4 family's LR conditioning: the frames in [-1, 1] on the "
                   "latent grid (the x4 latent has the LR size), plus the noise augmentation level of the x4 upscaler "
                   "(ignored for StableVSR, which uses the clean LR). Outputs a LATENT whose 'samples' are the empty "
                   "latent of the right size, so core latent nodes still compose.")
    CATEGORY = f"{CATEGORY}/latent"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("lr_latent",)
    OUTPUT_TOOLTIPS = ("LATENT with the LR conditioning (key 'vsr_lr') for the VSR samplers.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "Low-resolution frames (sizes are rounded down to a multiple of 4)."}),
                "model": ("VSR_MODEL", {"tooltip": "The model the conditioning is for (its VAE factor and "
                                                   "low-res scheduler)."}),
                "noise_level": ("INT", {"default": 20, "min": 0, "max": 350,
                                        "tooltip": "x4 upscaler noise augmentation (0-350): higher hides "
                                                   "compression artefacts but invents more. Not used by StableVSR."}),
            },
        }

    def encode(self, frames, model, noise_level=20):
        from vsr_core.sampling.x4 import lr_conditioning

        cond = lr_conditioning(model, check_image(frames), noise_level)
        h, w = cond.latent_size
        samples = torch.zeros(cond.num_frames, int(model.config.get("latent_channels", 4)), h, w)
        return (_latent_out(samples, cond),)


DECODE_MODES = ["auto", "per-frame", "uav video VAE", "mgld CFW", "satec SFA/TFA"]
COLOR_FIXES = ["auto", "none", "adain", "wavelet", "lab"]


def _decode_mode(model, mode: str) -> str:
    if mode != "auto":
        return mode
    return {"upscale_a_video": "uav video VAE", "mgld": "mgld CFW", "satec": "satec SFA/TFA"}.get(model.method,
                                                                                                   "per-frame")


class VSR_TemporalVAEDecode:
    DESCRIPTION = ("Decode VSR latents to frames. per-frame: the x4 VAE frame by frame in chunks and blended tiles "
                   "(a 4K output decodes on 8 GB). uav video VAE: Upscale-A-Video's temporal decoder, 3-frame "
                   "chunks conditioned on the LR frames (vae_weight = w_lr). mgld CFW: MGLD's temporal-aware "
                   "sequence decoder with controllable feature wrapping (vae_weight = dec_w). auto picks the "
                   "model's own. satec: the SD 2.x VAE with SATeCo's SFA/TFA guided by the upscaled frames. An "
                   "optional colour fix matches the colours of the bicubic-upscaled input.")
    CATEGORY = f"{CATEGORY}/latent"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Decoded frames, [frames, H, W, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "The model whose VAE decodes the latents."}),
                "latent": ("LATENT", {"tooltip": "Latents from a VSR sampler."}),
                "mode": (DECODE_MODES, {"default": "auto", "tooltip": "Which decoder; auto = the model's own."}),
                "vae_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                         "tooltip": "uav: w_lr, how much the LR frames steer the decoder; mgld: "
                                                    "dec_w, fidelity (1) vs generated detail (0)."}),
                "color_fix": (COLOR_FIXES, {"default": "auto",
                                            "tooltip": "Match colours to the bicubic-upscaled input: adain, wavelet "
                                                       "(keeps more detail), lab. auto = the method's published "
                                                       "setting (MGLD: adain; the others: none)."}),
                "frames_per_chunk": ("INT", {"default": 1, "min": 1, "max": 64,
                                             "tooltip": "per-frame mode: frames decoded at once (more is faster, "
                                                        "uses more memory). The temporal decoders use their "
                                                        "own chunks (UAV 3, MGLD 5)."}),
                "tile_size": ("INT", {"default": 128, "min": budget.AUTO, "max": 1024, "step": 8,
                                      "tooltip": "per-frame mode: decode in tiles of this many latent pixels when "
                                                 "the frame is larger; 0 = whole frames; " + budget.AUTO_TIP +
                                                 ". 128 keeps 4K within 8 GB. Out of memory: retried with "
                                                 "smaller tiles."}),
                "tile_overlap": ("INT", {"default": 16, "min": 0, "max": 128, "step": 2,
                                         "tooltip": "Latent pixels shared by neighbouring tiles, crossfaded."}),
            },
            "optional": {"speed": budget.DECODE_SPEED_INPUT},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def decode(self, model, latent, mode="auto", vae_weight=1.0, color_fix="auto", frames_per_chunk=1,
               tile_size=128, tile_overlap=16, speed="as loaded", unique_id=None):
        z = latent["samples"]
        if z.ndim != 4:
            raise ValueError(f"expected latents [frames, channels, h, w], got {tuple(z.shape)}")
        model, speed_ctx = budget.speeded(model, speed)
        with speed_ctx:
            return self._decode(model, latent, z, mode, vae_weight, color_fix, frames_per_chunk, tile_size,
                                tile_overlap, unique_id)

    def _decode(self, model, latent, z, mode, vae_weight, color_fix, frames_per_chunk, tile_size, tile_overlap,
                unique_id):
        bar = comfy.Progress(z.shape[0], unique_id)
        mode = _decode_mode(model, mode)
        if color_fix == "auto":
            color_fix = "adain" if model.method == "mgld" else "none"
        cond = latent.get(LATENT_KEY)
        if mode == "uav video VAE":
            from vsr_core.sampling.uav import decode_uav

            if cond is None:
                raise ValueError("the UAV video VAE needs the LR frames: decode the LATENT of a VSR sampler")
            _make_room(model, "vae")
            frames = decode_uav(model, z, cond, w_lr=vae_weight, color=color_fix, progress=bar)
        elif mode == "mgld CFW":
            from vsr_core.sampling.mgld import decode_mgld

            if cond is None or model.video_vae is None:
                raise ValueError("the MGLD CFW decoder needs an MGLD model and the LATENT of the MGLD sampler")
            _make_room(model, "video_vae")
            frames = decode_mgld(model, z, cond, dec_w=vae_weight, color_fix=color_fix,
                                 min_side=latent.get(MGLD_MIN_SIDE_KEY, 512))
            bar(z.shape[0], z.shape[0])
        elif mode == "satec SFA/TFA":
            from vsr_core.sampling.satec import decode_satec

            if cond is None or getattr(model, "satec", None) is None:
                raise ValueError("SATeCo decoding needs a model from 'Load SATeCo (VSR)' and the LATENT of the "
                                 "SATeCo sampler (it carries the upscaled frames that guide the decoder)")
            _make_room(model, "vae")
            frames = (decode_satec(model, model.satec, z, cond, clip_length=latent.get("vsr_clip_length", 6),
                                   progress=bar) / 2 + 0.5).clamp(0, 1)
            if color_fix != "none":
                frames = _color_fix(frames, cond, color_fix)
        else:
            from vsr_core.sampling.decode import decode_latents

            _make_room(model, "vae")
            run = budget.SamplerRun(model, "vae_decode", z.shape[-2:], num_frames=z.shape[0], steps=1,
                                    frames=min(frames_per_chunk, z.shape[0]), tile=tile_size, unique_id=unique_id,
                                    what="the per-frame VAE decode",
                                    hint="Lower tile_size or frames_per_chunk, or decode fewer frames at a time.")

            def decode(tile):
                with model.on_device("vae") as (vae,):
                    return decode_latents(vae, z, model.scaling_factor, chunk=frames_per_chunk, tile=tile,
                                          overlap=tile_overlap, progress=bar)
            frames = run(decode)
            if color_fix != "none":
                frames = _color_fix(frames, cond, color_fix)
        comfy.soft_empty_cache()
        return (nchw_to_image(frames),)


def _color_fix(frames: torch.Tensor, cond, mode: str) -> torch.Tensor:
    from vsr_core.color import color_fix

    if cond is None:
        raise ValueError("colour fix needs the LR frames: decode the LATENT of a VSR sampler")
    lr = (cond.lr if hasattr(cond, "lr") else cond).float()
    return color_fix(frames, (lr + 1) / 2, mode)


def _sampler_progress(total: int, unique_id, per_step: int = 0):
    bar = comfy.Progress(total, unique_id, unit="step", per_step=per_step)
    return lambda done, total, x0=None: bar(done, total)


class VSR_StableVSRSampler:
    DESCRIPTION = ("StableVSR (Rota et al., ECCV 2024): the x4 diffusion upscaler steered by its Temporal Conditioning "
                   "Module, a ControlNet fed the previous frame's prediction decoded and warped onto the current frame "
                   "with optical flow, with frame-wise bidirectional sampling (the frame order is reversed every step). "
                   "Give it the flow of the bicubic x4 frames (Flow Guidance on the upscaled clip), as published.")
    CATEGORY = f"{CATEGORY}/samplers"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Denoised latents, one per frame; decode with Temporal VAE Decode (VSR).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "A StableVSR model (its folder has a controlnet/)."}),
                "lr": ("LATENT", {"tooltip": "From LR Latent Encoder (VSR)."}),
                "flow": ("VSR_FLOW", {"tooltip": "Flow of the bicubic x4 frames (Flow Guidance on the upscaled "
                                                 "clip); any grid is rescaled."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Denoising steps: 50 as published (DDPM); ~20 with dpmpp_2m."}),
                "scheduler": (SCHEDULERS, {"default": "ddpm",
                                           "tooltip": "ddpm: as published. ddim / dpmpp_2m: deterministic and "
                                                      "good with fewer steps."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Same seed, same result."}),
                "temporal_conditioning": ("BOOLEAN", {"default": True,
                                                      "tooltip": "Use the Temporal Conditioning Module (off = the "
                                                                 "fine-tuned x4 UNet per frame, for comparison)."}),
                "bidirectional": ("BOOLEAN", {"default": True,
                                              "tooltip": "Reverse the frame order every step, as published, so "
                                                         "information flows both ways in time."}),
                "keep_on_cpu": ("BOOLEAN", {"default": True,
                                            "tooltip": "Keep per-frame latents on the CPU between uses: identical "
                                                       "result, GPU memory independent of the clip length."}),
                "guidance_tile": ("INT", {"default": 0, "min": budget.AUTO, "max": 1024, "step": 8,
                                          "tooltip": "Decode the previous-frame guidance in tiles of this many "
                                                     "latent pixels (0 = whole frame; " + budget.AUTO_TIP + "); "
                                                     "use 96-128 for large frames on small GPUs. Out of memory: "
                                                     "retried with smaller tiles."}),
            },
            "optional": {"speed": budget.SPEED_INPUT, "temporal": SAMPLER_INPUT},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, temporal=UNCONNECTED):
        return validate_temporal(temporal)  # a chain the prompt check refused (nodes/temporal.py)

    def sample(self, model, lr, flow, steps=50, scheduler="ddpm", seed=42, temporal_conditioning=True,
               bidirectional=True, keep_on_cpu=True, guidance_tile=0, speed="as loaded", temporal=None,
               unique_id=None):
        from vsr_core.sampling.prompt import prompt_embeddings
        from vsr_core.sampling.stablevsr import sample_stablevsr

        if model.controlnet is None and temporal_conditioning:
            raise ValueError(f"this {model.method} model has no ControlNet (Temporal Conditioning Module): load a "
                             "StableVSR folder, or turn temporal_conditioning off")
        cond = _lr_of(lr)
        refuse_early(temporal, "stablevsr", cond.num_frames, steps, model)
        if flow is not None and flow.num_frames != cond.num_frames:
            raise ValueError(f"the flow covers {flow.num_frames} frames but the LR latent has {cond.num_frames}: "
                             "compute both from the same clip")
        embeds = prompt_embeddings(model, "")
        model, speed_ctx = budget.speeded(model, speed)
        _make_room(model, "unet", "controlnet", "vae")
        run = budget.SamplerRun(model, "stablevsr", cond.latent_size, num_frames=cond.num_frames, steps=steps,
                                tile=guidance_tile, unique_id=unique_id, what="the StableVSR sampler",
                                modules=("unet", "controlnet", "vae") if temporal_conditioning else ("unet",),
                                hint="Lower guidance_tile or the resolution (process a smaller clip), load the "
                                     "model with dtype fp16 and offload 'offload to CPU', keep keep_on_cpu on, "
                                     "or close other models (ComfyUI --lowvram).")

        def sample(tile):
            callback = _sampler_progress(steps * cond.num_frames, unique_id, cond.num_frames)
            return sample_stablevsr(model, cond, flow, embeds, steps=steps, scheduler=scheduler, seed=seed,
                                    tcm=temporal_conditioning, bidirectional=bidirectional, keep_on_cpu=keep_on_cpu,
                                    guidance_tile=tile, callback=callback, temporal=temporal or ())
        with speed_ctx:
            z = run(sample)
        comfy.soft_empty_cache()
        return run.output((_latent_out(z, cond),))


class VSR_X4PerFrameSampler:
    DESCRIPTION = ("The Stable Diffusion x4 upscaler applied to each frame on its own (what diffusers' "
                   "StableDiffusionUpscalePipeline does): the baseline every temporal method is compared against. "
                   "Works with the x4 upscaler and with StableVSR's UNet (temporal conditioning off).")
    CATEGORY = f"{CATEGORY}/samplers"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Denoised latents, one per frame; decode with Temporal VAE Decode (VSR).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "SD x4 upscaler (or StableVSR, whose UNet is an x4 UNet)."}),
                "lr": ("LATENT", {"tooltip": "From LR Latent Encoder (VSR); its noise level applies."}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "What the frames show; leave empty for StableVSR."}),
                "negative_prompt": ("STRING", {"default": "", "multiline": True,
                                               "tooltip": "What to avoid (used when guidance_scale > 1)."}),
                "guidance_scale": ("FLOAT", {"default": 9.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                             "tooltip": "Classifier-free guidance; 9 is diffusers' default for the "
                                                        "x4 upscaler, <= 1 turns it off (faster)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Denoising steps."}),
                "scheduler": (SCHEDULERS, {"default": "ddim", "tooltip": "ddim is the x4 upscaler's own."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Same seed, same result."}),
            },
            "optional": {"speed": budget.SPEED_INPUT, "temporal": SAMPLER_INPUT},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, temporal=UNCONNECTED):
        return validate_temporal(temporal)  # a chain the prompt check refused (nodes/temporal.py)

    def sample(self, model, lr, prompt="", negative_prompt="", guidance_scale=9.0, steps=50, scheduler="ddim",
               seed=0, speed="as loaded", temporal=None, unique_id=None):
        from vsr_core.sampling.prompt import prompt_embeddings
        from vsr_core.sampling.x4 import sample_per_frame

        cond = _lr_of(lr)
        refuse_early(temporal, "sd_x4", cond.num_frames, steps, model)
        embeds = prompt_embeddings(model, prompt)
        negative = prompt_embeddings(model, negative_prompt) if guidance_scale > 1 else None
        model, speed_ctx = budget.speeded(model, speed)
        _make_room(model, "unet")
        run = budget.SamplerRun(model, "sd_x4", cond.latent_size, num_frames=cond.num_frames, steps=steps,
                                cfg=guidance_scale > 1, unique_id=unique_id, what="the x4 per-frame sampler",
                                hint="Lower the resolution (this sampler does not tile), set guidance_scale <= 1 "
                                     "(halves the batch), load the model with dtype fp16 and offload 'offload to "
                                     "CPU', or close other models (ComfyUI --lowvram).")
        callback = _sampler_progress(steps * cond.num_frames, unique_id, cond.num_frames)
        with speed_ctx:
            z = run(lambda _tile: sample_per_frame(model, cond, embeds, negative, guidance_scale=guidance_scale,
                                                   steps=steps, scheduler=scheduler, seed=seed, callback=callback,
                                                   temporal=temporal or ()))
        comfy.soft_empty_cache()
        return run.output((_latent_out(z, cond),))


_NO_FLOW = ("propagation_steps are set but no flow is connected: add Flow Guidance on the LR frames, or clear "
            "propagation_steps")


class VSR_UpscaleAVideoSampler:
    DESCRIPTION = ("Upscale-A-Video (Zhou et al., CVPR 2024): the x4 diffusion upscaler inflated with temporal "
                   "layers, denoising 8-frame windows that overlap and are merged every step, with a text prompt, "
                   "a noise level (restoration vs generation) and training-free recurrent latent propagation "
                   "(flow-warped fusion of the predicted clean latents over the whole clip) at chosen steps. "
                   "Give it the flow of the LR frames.")
    CATEGORY = f"{CATEGORY}/samplers"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Denoised latents, one per frame; decode with Temporal VAE Decode (VSR), uav mode.",)

    @classmethod
    def INPUT_TYPES(cls):
        from vsr_core.sampling.uav import UAV_A_PROMPT, UAV_MERGES, UAV_N_PROMPT, UAV_TILE_MERGES

        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "An Upscale-A-Video model (models/vsr/upscale_a_video/)."}),
                "lr": ("LATENT", {"tooltip": "From LR Latent Encoder (VSR); its noise_level (UAV: 120, 0-350) "
                                             "trades restoration (low) for generated detail (high)."}),
                "prompt": ("STRING", {"default": UAV_A_PROMPT, "multiline": True,
                                      "tooltip": "Describe the video; UAV appends 'best quality, extremely "
                                                 "detailed' to a caption."}),
                "negative_prompt": ("STRING", {"default": UAV_N_PROMPT, "multiline": True,
                                               "tooltip": "What to avoid."}),
                "guidance_scale": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                             "tooltip": "Classifier-free guidance (UAV: 6; <= 1 turns it off and "
                                                        "halves the work)."}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": "DDIM steps (UAV: 30)."}),
                "seed": ("INT", {"default": 10, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Same seed, same result."}),
                "propagation_steps": ("STRING", {"default": "",
                                                 "tooltip": "Steps at which latents are propagated along the "
                                                            "flow (empty = off, the official default). Negative "
                                                            "numbers count from the end: '-6,-4,-2' are the "
                                                            "published 24,26,28 of 30 steps and stay the last "
                                                            "steps when you change steps; 0 is the first step. "
                                                            "Needs the flow input."}),
                "window": ("INT", {"default": 8, "min": 1, "max": 64,
                                   "tooltip": "Frames the UNet sees at once (UAV: 8)."}),
                "overlap": ("INT", {"default": 2, "min": 0, "max": 63,
                                    "tooltip": "Frames shared by neighbouring windows (UAV: 2)."}),
                "window_merge": (list(UAV_MERGES), {"default": "running",
                                                    "tooltip": "running: the official running average; uniform: "
                                                               "equal weights; hann: crossfade across overlaps."}),
                "tile_size": ("INT", {"default": 0, "min": budget.AUTO, "max": 1024, "step": 8,
                                      "tooltip": "Latent tile size for large frames (0 = whole frame; "
                                                 + budget.AUTO_TIP + "; the official code tiles 256-pixel LR "
                                                 "frames). Out of memory: retried with smaller tiles."}),
                "tile_overlap": ("INT", {"default": 16, "min": 0, "max": 256, "step": 2,
                                         "tooltip": "Latent pixels shared by neighbouring tiles."}),
                "tile_merge": (list(UAV_TILE_MERGES), {"default": "hann",
                                                       "tooltip": "hann: predictions blended every step (no seams); "
                                                                  "hard: the official hard paste."}),
            },
            "optional": {
                "speed": budget.SPEED_INPUT,
                "flow": ("VSR_FLOW", {"tooltip": "Flow of the LR frames (needed by propagation)."}),
                "temporal": SAMPLER_INPUT,
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, steps=30, propagation_steps="", flow=UNCONNECTED, temporal=UNCONNECTED):
        # Queue time, before upstream nodes run. Naming an input here turns ComfyUI's own range check of it
        # off (steps is re-checked); a linked input arrives as None and is checked at run time.
        refused = validate_temporal(temporal)  # a chain the prompt check refused (nodes/temporal.py)
        if refused is not True:
            return refused
        if steps is not None:
            spec = cls.INPUT_TYPES()["required"]["steps"][1]
            if isinstance(steps, bool) or not isinstance(steps, int) or not spec["min"] <= steps <= spec["max"]:
                return f"steps must be a whole number in {spec['min']}..{spec['max']}, got {steps!r}"
        if propagation_steps is None:
            return True
        from vsr_core.sampling.propagation import parse_step_numbers, resolve_propagation_steps

        try:
            prop = resolve_propagation_steps(propagation_steps, steps) if steps is not None \
                else parse_step_numbers(propagation_steps)
        except ValueError as e:
            return str(e)
        if prop and flow is UNCONNECTED:
            return _NO_FLOW
        return True

    def sample(self, model, lr, prompt="", negative_prompt="", guidance_scale=6.0, steps=30, seed=10,
               propagation_steps="", window=8, overlap=2, window_merge="running", tile_size=0, tile_overlap=16,
               tile_merge="hann", flow=None, speed="as loaded", temporal=None, unique_id=None):
        from vsr_core.sampling.prompt import prompt_embeddings
        from vsr_core.sampling.uav import sample_uav

        if model.method != "upscale_a_video":
            raise ValueError(f"this sampler needs an Upscale-A-Video model, got {model.method}")
        cond = _lr_of(lr)
        from vsr_core.sampling.propagation import resolve_propagation_steps

        refuse_early(temporal, "upscale_a_video", cond.num_frames, steps, model)
        prop = resolve_propagation_steps(propagation_steps, steps)  # "-6,-4,-2" counts from the end
        if prop and flow is None:
            raise ValueError(_NO_FLOW)
        if flow is not None and flow.num_frames != cond.num_frames:
            raise ValueError(f"the flow covers {flow.num_frames} frames but the LR latent has {cond.num_frames}: "
                             "compute both from the same clip")
        embeds = prompt_embeddings(model, prompt)
        negative = prompt_embeddings(model, negative_prompt) if guidance_scale > 1 else None
        model, speed_ctx = budget.speeded(model, speed)
        _make_room(model, "unet")
        run = budget.SamplerRun(model, "upscale_a_video", cond.latent_size, num_frames=cond.num_frames, steps=steps,
                                frames=min(window, cond.num_frames), cfg=guidance_scale > 1, tile=tile_size,
                                unique_id=unique_id, what="the Upscale-A-Video sampler",
                                hint="Lower tile_size, window (frames denoised at once) or the resolution, set "
                                     "guidance_scale <= 1 (halves the batch), load the model with dtype fp16 and "
                                     "offload 'offload to CPU', or close other models (ComfyUI --lowvram).")

        def sample(tile):
            callback = _sampler_progress(steps, unique_id)
            return sample_uav(model, cond, flow, embeds, negative, guidance_scale=guidance_scale, steps=steps,
                              seed=seed, propagation_steps=prop, window=window, overlap=overlap, merge=window_merge,
                              tile=tile, tile_overlap=tile_overlap, tile_merge=tile_merge, callback=callback,
                              temporal=temporal or ())
        with speed_ctx:
            z = run(sample)
        comfy.soft_empty_cache()
        return run.output((_latent_out(z, cond),))


class VSR_MGLDSampler:
    DESCRIPTION = ("MGLD (Yang et al., ECCV 2024): motion-guided latent diffusion. A StableSR-style UNet (SPADE "
                   "structure conditioning, temporal layers in its middle block) denoises the latents of the upscaled "
                   "frames from the noised LR latent, and every step takes a gradient step that lowers the flow-warped, "
                   "occlusion-masked difference between neighbouring frames. Frames go in 5-frame segments "
                   "(official) or overlapping windows denoised together (no seams between segments). Give it the "
                   "flow of the LR frames; decode with the CFW decoder.")
    CATEGORY = f"{CATEGORY}/samplers"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Denoised latents; decode with Temporal VAE Decode (VSR), mgld CFW mode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VSR_MODEL", {"tooltip": "An MGLD model (models/vsr/mgld/<folder>)."}),
                "frames": ("IMAGE", {"tooltip": "Low-resolution frames."}),
                "flow": ("VSR_FLOW", {"tooltip": "Flow of the LR frames (Flow Guidance, mgld convention); "
                                                 "rescaled to the latent grid."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Respaced DDPM steps (MGLD: 50)."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Same seed, same result."}),
                "guidance_scale": ("FLOAT", {"default": -10.0, "min": -100.0, "max": 100.0, "step": 0.5,
                                             "tooltip": "Motion guidance scale (MGLD: -10; 0 turns it off). The "
                                                        "step also scales with the noise level (10|log var|)."}),
                "segment": ("INT", {"default": 5, "min": 1, "max": 64,
                                    "tooltip": "Frames denoised together (MGLD: 5, what its temporal layers saw in "
                                               "training)."}),
                "segment_mode": (["official", "overlap"], {"default": "overlap",
                                                           "tooltip": "official: separate 5-frame segments (seams "
                                                                      "at their borders); overlap: overlapping "
                                                                      "windows denoised in lockstep, guidance "
                                                                      "across borders (no seams)."}),
                "segment_overlap": ("INT", {"default": 2, "min": 0, "max": 63,
                                            "tooltip": "overlap mode: frames shared by neighbouring windows "
                                                       "(less than segment)."}),
                "tile_size": ("INT", {"default": 64, "min": budget.AUTO, "max": 1024, "step": 8,
                                      "tooltip": "Latent canvas tile (MGLD: 64), Gaussian-blended every step; 0 = "
                                                 "whole frame; " + budget.AUTO_TIP + ". Out of memory: retried "
                                                 "with smaller tiles."}),
                "tile_overlap": ("INT", {"default": 32, "min": 0, "max": 512, "step": 8,
                                         "tooltip": "Latent tile overlap (MGLD: 32)."}),
                "min_side": ("INT", {"default": 512, "min": 0, "max": 4096, "step": 8,
                                     "tooltip": "MGLD works on frames upscaled to at least this short side "
                                                "(official: 512; the result is resized back to x4). 0 = exactly x4 "
                                                "(faster on small inputs)."}),
            },
            "optional": {"speed": budget.SPEED_INPUT, "temporal": SAMPLER_INPUT},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, temporal=UNCONNECTED):
        return validate_temporal(temporal)  # a chain the prompt check refused (nodes/temporal.py)

    def sample(self, model, frames, flow, steps=50, seed=42, guidance_scale=-10.0, segment=5,
               segment_mode="overlap", segment_overlap=2, tile_size=64, tile_overlap=32, min_side=512,
               speed="as loaded", temporal=None, unique_id=None):
        from vsr_core.sampling.mgld import sample_mgld

        if model.method != "mgld":
            raise ValueError(f"this sampler needs an MGLD model, got {model.method}")
        if segment_mode == "overlap" and not 0 <= segment_overlap < segment:
            raise ValueError(f"segment_overlap ({segment_overlap}) must be smaller than segment ({segment})")
        lr = check_image(frames).permute(0, 3, 1, 2).contiguous()
        refuse_early(temporal, "mgld", lr.shape[0], steps, model)
        if flow is not None and flow.num_frames != lr.shape[0]:
            raise ValueError(f"the flow covers {flow.num_frames} frames but there are {lr.shape[0]}: "
                             "compute both from the same clip")
        model, speed_ctx = budget.speeded(model, speed)
        _make_room(model, "unet", "struct_encoder", "vae")
        run = budget.SamplerRun(model, "mgld", _mgld_latent_size(lr.shape[-2:], min_side), num_frames=lr.shape[0],
                                steps=steps, frames=segment, tile=tile_size, floor=16, unique_id=unique_id,
                                what="the MGLD sampler",
                                hint="Lower tile_size, segment (frames denoised at once), min_side or the "
                                     "resolution, load the model with dtype fp16 and offload 'offload to CPU', or "
                                     "close other models (ComfyUI --lowvram).")

        def sample(tile):
            callback = _sampler_progress(steps, unique_id)
            # a tile smaller than the one asked for (auto, or a retry) keeps less than half of itself shared
            overlap = tile_overlap if tile == tile_size else min(tile_overlap, tile // 2)
            return sample_mgld(model, lr, flow, steps=steps, seed=seed, guidance_scale=guidance_scale,
                               segment=segment, segment_mode=segment_mode, tile=tile, tile_overlap=overlap,
                               callback=callback, min_side=min_side, segment_overlap=segment_overlap,
                               temporal=temporal or ())
        with speed_ctx:
            z = run(sample)
        comfy.soft_empty_cache()
        out = _latent_out(z, lr)
        out[MGLD_MIN_SIDE_KEY] = min_side  # the decoder must undo the same upsampling
        return run.output((out,))


def _mgld_latent_size(lr_size, min_side: int) -> tuple[int, int]:
    """The MGLD latent grid for LR frames of ``lr_size``: upscaled by max(min_side / short side, 4) and
    padded as ``prepare_mgld_input`` does (to 32 px, 64 below 512), over 8."""
    h, w = (int(v) for v in lr_size)
    s = max(min_side / min(h, w), 4.0)
    size = (int(h * s), int(w * s))
    multiple = 32 if min(size) >= 512 else 64
    return tuple(-(-v // multiple) * multiple // 8 for v in size)


NODE_CLASS_MAPPINGS = {
    "VSR_LoadDiffusionModel": VSR_LoadDiffusionModel,
    "VSR_LatentEncoderLR": VSR_LatentEncoderLR,
    "VSR_TemporalVAEDecode": VSR_TemporalVAEDecode,
    "VSR_StableVSRSampler": VSR_StableVSRSampler,
    "VSR_X4PerFrameSampler": VSR_X4PerFrameSampler,
    "VSR_UpscaleAVideoSampler": VSR_UpscaleAVideoSampler,
    "VSR_MGLDSampler": VSR_MGLDSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VSR_LoadDiffusionModel": "Load Diffusion VSR Model (VSR)",
    "VSR_LatentEncoderLR": "LR Latent Encoder (VSR)",
    "VSR_TemporalVAEDecode": "Temporal VAE Decode (VSR)",
    "VSR_StableVSRSampler": "StableVSR Sampler (VSR)",
    "VSR_X4PerFrameSampler": "x4 Per-Frame Sampler (VSR)",
    "VSR_UpscaleAVideoSampler": "Upscale-A-Video Sampler (VSR)",
    "VSR_MGLDSampler": "MGLD Sampler (VSR)",
}
