"""The per-frame x4 baseline against diffusers' ``StableDiffusionUpscalePipeline`` on tiny weights.

Same weights, prompt embeddings, seed and scheduler; the pipeline is called frame after frame with one
CPU generator (or a fresh one per frame). Reached: latents max abs diff <= 1e-5 and decoded frames
<= 1e-5 (float32, CPU) for ddim, ddpm and dpmpp_2m with CFG and noise augmentation.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)

from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.decode import decode_latents
from vsr_core.sampling.loop import sample, seeded_noise
from vsr_core.sampling.schedulers import make_schedule
from vsr_core.sampling.x4 import (
    LRConditioning,
    augment_lr,
    lr_conditioning,
    prepare_lr,
    sample_per_frame,
    x4_denoiser,
)

X4_SCHED = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
            "set_alpha_to_one": False, "steps_offset": 1}
LOW_RES = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
           "beta_schedule": "scaled_linear", "clip_sample": True, "prediction_type": "epsilon",
           "variance_type": "fixed_small"}
ATOL = 1e-5


def tiny_x4(class_labels: bool = True) -> VSRModel:
    """A tiny x4-structured bundle (in 7 = 4 latent + 3 LR, class embedding for the noise level)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32, use_linear_projection=True,
        only_cross_attention=(True, False), num_class_embeds=1000 if class_labels else None,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16, scaling_factor=0.08333,
    ).eval()
    return VSRModel("sd_x4", unet, vae, scheduler_config=dict(X4_SCHED),
                    low_res_scheduler_config=dict(LOW_RES) if class_labels else None,
                    config={"scaling_factor": 0.08333, "vae_scale_factor": 4})


def _frames(T=2, H=12, W=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, H, W, 3, generator=g)


def _embeds():
    g = torch.Generator().manual_seed(5)
    return torch.randn(1, 7, 32, generator=g), torch.randn(1, 7, 32, generator=g)


def _pipeline(model: VSRModel, name: str) -> StableDiffusionUpscalePipeline:
    sched = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}.get(name)
    sched = (sched.from_config(model.scheduler_config) if sched else
             DPMSolverMultistepScheduler.from_config(model.scheduler_config, algorithm_type="dpmsolver++"))
    pipe = StableDiffusionUpscalePipeline(vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
                                          low_res_scheduler=DDPMScheduler.from_config(LOW_RES), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, frames, pos, neg, steps, guidance, level, seed, output_type, reseed=False):
    g = torch.Generator().manual_seed(seed)
    outs = []
    for k in range(frames.shape[0]):
        if reseed:
            g = torch.Generator().manual_seed(seed)
        img = frames[k:k + 1].permute(0, 3, 1, 2)  # [1, 3, H, W] in 0..1, as the pipeline takes tensors
        r = pipe(image=img, prompt_embeds=pos, negative_prompt_embeds=neg, guidance_scale=guidance,
                 num_inference_steps=steps, noise_level=level, generator=g, output_type=output_type)
        outs.append(r.images)
    return torch.cat(outs)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp_2m"])
def test_per_frame_equals_diffusers_upscale_pipeline(name):
    model = tiny_x4()
    frames, (pos, neg) = _frames(), _embeds()
    pipe = _pipeline(model, name)
    steps, guidance, level, seed = 3, 5.0, 20, 11
    ref = _run_pipeline(pipe, frames, pos, neg, steps, guidance, level, seed, "latent")
    cond = lr_conditioning(model, frames, noise_level=level)
    ours = sample_per_frame(model, cond, pos, neg, guidance, steps, name, seed)
    assert ours.shape == (2, 4, 12, 16) and ours.device.type == "cpu"
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)

    if name == "ddim":  # decoded frames too: the pipeline's own decode against decode_latents
        ref_px = _run_pipeline(pipe, frames, pos, neg, steps, guidance, level, seed, "pt")
        px = decode_latents(model.vae, ours, model.scaling_factor)
        assert px.shape == (2, 3, 48, 64) and 0 <= px.min() and px.max() <= 1
        torch.testing.assert_close(px, ref_px, atol=ATOL, rtol=0)


def test_reseed_per_frame_equals_fresh_generator_per_frame():
    model = tiny_x4()
    frames, (pos, neg) = _frames(), _embeds()
    ref = _run_pipeline(_pipeline(model, "ddpm"), frames, pos, neg, 2, 1.0, 50, 4, "latent", reseed=True)
    cond = lr_conditioning(model, frames, noise_level=50)
    ours = sample_per_frame(model, cond, pos, None, 1.0, 2, "ddpm", 4, reseed_per_frame=True)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    shared = sample_per_frame(model, cond, pos, None, 1.0, 2, "ddpm", 4)
    assert (shared - ours).abs().max() > 1e-3  # a shared generator gives frame 1 other noise


def test_determinism_and_seed_sensitivity():
    model = tiny_x4()
    cond = lr_conditioning(model, _frames(), noise_level=20)
    pos, neg = _embeds()
    a = sample_per_frame(model, cond, pos, neg, 3.0, 2, "ddpm", seed=1)
    b = sample_per_frame(model, cond, pos, neg, 3.0, 2, "ddpm", seed=1)
    c = sample_per_frame(model, cond, pos, neg, 3.0, 2, "ddpm", seed=2)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_prepare_lr_rounds_down_to_the_vae_factor():
    frames = torch.rand(2, 18, 27, 3)
    lr = prepare_lr(frames, 4)
    assert lr.shape == (2, 3, 16, 24) and lr.min() >= -1 and lr.max() <= 1
    exact = prepare_lr(frames[:, :16, :24], 4)
    torch.testing.assert_close(exact, frames[:, :16, :24].permute(0, 3, 1, 2) * 2 - 1)
    u8 = prepare_lr((frames[:, :16, :24] * 255).round().to(torch.uint8), 4)
    assert (u8 - exact).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        prepare_lr(torch.rand(2, 3, 16, 16))


def test_conditioning_validation_and_stablevsr_mode():
    with pytest.raises(ValueError, match="noise_level"):
        LRConditioning(torch.zeros(1, 3, 8, 8), noise_level=351)
    with pytest.raises(ValueError, match=r"\[T, 3, h, w\]"):
        LRConditioning(torch.zeros(1, 4, 8, 8))
    c = LRConditioning(torch.zeros(3, 3, 8, 8), 20)
    assert c.class_labels.tolist() == [20] and c.frames(1, 3).num_frames == 2
    # a model without a low-res scheduler (StableVSR) keeps the LR clean and has no label
    sv = tiny_x4(class_labels=False)
    assert lr_conditioning(sv, _frames(), 20).noise_level is None
    # a UNet with a class embedding cannot run without a noise level
    with pytest.raises(ValueError, match="class label"):
        sample_per_frame(tiny_x4(), LRConditioning(torch.zeros(1, 3, 8, 8)), _embeds()[0], steps=1)
    with pytest.raises(ValueError, match="negative_embeds"):
        sample_per_frame(tiny_x4(), LRConditioning(torch.zeros(1, 3, 8, 8), 20), _embeds()[0],
                         guidance_scale=7.5, steps=1)


def test_augmentation_uses_recorded_noise_and_low_res_scheduler():
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    n = torch.randn(2, 3, 8, 8)
    ref = DDPMScheduler.from_config(LOW_RES).add_noise(lr, n, torch.tensor([120]))
    torch.testing.assert_close(augment_lr(lr, LOW_RES, 120, n), ref, atol=1e-6, rtol=0)


def test_generic_loop_with_hooks_and_recorded_noise():
    """loop.sample: hooks see every step, injected noise replaces the seed, a callback raise stops it."""
    model = tiny_x4(class_labels=False)
    pos, _ = _embeds()
    lr = prepare_lr(_frames(T=1), 4)
    sched = make_schedule(X4_SCHED, "ddpm", 3)
    den = x4_denoiser(model.unet, lr, pos)
    x = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    seen = []

    class Rec:
        def on_x0(self, x0, x_t, i, schedule):
            seen.append(("x0", i))
            return x0

        def on_step(self, x_prev, x0, i, schedule):
            seen.append(("step", i))
            return x_prev

    recorded = torch.randn(3, 1, 4, 12, 16, generator=torch.Generator().manual_seed(100))
    with torch.no_grad():
        a = sample(den, x, sched, hooks=[Rec()], noise=seeded_noise(9))
        b = sample(den, x, sched, noise=lambda i, shape: recorded[i])
        c = sample(den, x, sched, noise=seeded_noise(9))
    assert seen == [("x0", 0), ("step", 0), ("x0", 1), ("step", 1), ("x0", 2), ("step", 2)]
    assert torch.equal(a, c) and (a - b).abs().max() > 1e-3

    class Zero:  # a hook that replaces x̂0 changes the result: the update really uses the edited x̂0
        def on_x0(self, x0, x_t, i, schedule):
            return torch.zeros_like(x0)

    with torch.no_grad():
        z = sample(den, x, make_schedule(X4_SCHED, "ddim", 2), hooks=[Zero()])
        plain = sample(den, x, make_schedule(X4_SCHED, "ddim", 2))
    assert (z - plain).abs().max() > 1e-3

    calls = []

    def cb(done, total, x0):
        calls.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), torch.no_grad():
        sample(den, x, sched, callback=cb)
    assert calls == [(1, 3), (2, 3)]
