"""The whole official Upscale-A-Video pipeline run (``uav/pipeline_io``) reproduced by ``sample_uav`` +
``decode_uav``: T=10 frames, 3 DDIM steps (667, 334, 1), CFG 6, noise level 120, windows [0,8) and [2,10)
with the running-average merge, propagation at loop index 1, 3-frame video-VAE decode (3/3/3/1).

Two levels:
* replay: a stand-in UNet that checks every call's inputs against the recorded ones (window frames, CFG
  batch, noisy LR, timestep, labels) and returns the recorded output, so the sampling glue (noise order,
  augmentation, windows, merge, CFG, split step, propagation) is tested without the network. Reached:
  inputs to 1e-6, every step's merged v / x̂0 / propagated x̂0 / z_prev to 1e-6 (max diff ~1e-7).
* full: the tiny official weights in our video UNet and video VAE (vsr_core.models.uav_*, H1), end to end
  from the recorded inputs and the seed's noise. Tolerances are stated at the asserts.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vsr_core.flow import VideoFlow
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.uav import decode_uav, sample_uav, uav_initial_noise
from vsr_core.sampling.x4 import LRConditioning

safetensors_torch = pytest.importorskip("safetensors.torch")

DDIM = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
        "set_alpha_to_one": False, "steps_offset": 1}
LOWRES = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
          "beta_schedule": "scaled_linear", "clip_sample": True, "prediction_type": "epsilon",
          "variance_type": "fixed_small"}


def _load(parity_dir, rel):
    path = parity_dir / rel
    if not path.is_file():
        pytest.skip(f"parity file {path} is missing")
    return safetensors_torch.load_file(str(path))


def _frames(x):
    """(1, C, T, h, w) -> (T, C, h, w)."""
    return x[0].transpose(0, 1).contiguous()


def _pairs(f):
    return f[0].transpose(0, 1).contiguous()


class ReplayUNet(nn.Module):
    """Checks each call against the recorded ``unet_call{k}`` and returns its recorded output."""

    def __init__(self, rec):
        super().__init__()
        self.rec, self.k = rec, 0
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, sample, timestep, low_res, encoder_hidden_states=None, class_labels=None):
        r = {n: self.rec[f"unet_call{self.k}.{n}"] for n in ("sample", "low_res", "timestep", "class_labels", "out")}
        torch.testing.assert_close(sample, r["sample"], atol=1e-6, rtol=0, msg=f"call {self.k}: sample")
        torch.testing.assert_close(low_res, r["low_res"], atol=1e-6, rtol=0, msg=f"call {self.k}: low_res")
        assert int(timestep) == int(r["timestep"])
        assert class_labels.tolist() == r["class_labels"].tolist()
        emb = torch.cat([self.rec["in.negative_prompt_embeds"], self.rec["in.prompt_embeds"]])
        torch.testing.assert_close(encoder_hidden_states, emb, atol=0, rtol=0)
        self.k += 1
        return (r["out"],)


def _inputs(t):
    cond = LRConditioning(_frames(t["in.lr"]), int(t["lowres.noise_level"]))
    flow = VideoFlow(_pairs(t["in.flows_forward"]), _pairs(t["in.flows_backward"]))
    return cond, flow


def test_seed_draws_the_recorded_noise(parity_dir):
    """Generator seed 10 (CPU) gives the recorded augmentation noise, the pipeline's first draw. (The
    recording handed its initial latents in, so they come from the file, not from the seed.)"""
    t = _load(parity_dir, "uav/pipeline_io.safetensors")
    noise, lat = uav_initial_noise(10, (16, 24), 10)
    torch.testing.assert_close(noise, _frames(t["lowres.noise"]), atol=0, rtol=0)
    given = _frames(t["in.latents"])
    noise2, lat2 = uav_initial_noise(10, (16, 24), 10, latents=given)
    assert torch.equal(noise2, noise) and lat2 is not None and torch.equal(lat2, given)
    assert lat.shape == given.shape and lat.std() > 0.9


def test_pipeline_glue_with_replayed_unet(parity_dir):
    t = _load(parity_dir, "uav/pipeline_io.safetensors")
    cond, flow = _inputs(t)
    unet = ReplayUNet(t)
    model = VSRModel("upscale_a_video", unet, nn.Identity(), scheduler_config=DDIM, low_res_scheduler_config=LOWRES)
    seen = []

    def cb(done, total, x0):
        seen.append(x0.clone())

    z = sample_uav(model, cond, flow, t["in.prompt_embeds"], t["in.negative_prompt_embeds"], 6.0, 3, seed=10,
                   propagation_steps=[1], latents=_frames(t["in.latents"]), callback=cb)
    assert unet.k == 6  # two windows per step, one CFG batch each
    for i in range(3):
        torch.testing.assert_close(seen[i], _frames(t[f"step{i}.x0_after_propagation"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(z, _frames(t["out.latents"]), atol=1e-6, rtol=0)
    # propagation at step 1 only, and it matters
    assert torch.equal(t["step0.x0"], t["step0.x0_after_propagation"])
    assert (t["step1.x0"] - t["step1.x0_after_propagation"]).abs().max() > 1e-3


def test_pipeline_glue_steps_one_by_one(parity_dir):
    """Every intermediate of each step (merged CFG v, x̂0, propagated x̂0, z_prev) from the recorded z_t."""
    from vsr_core.sampling.propagation import LatentPropagation
    from vsr_core.sampling.schedulers import make_schedule
    from vsr_core.sampling.uav import uav_denoiser
    from vsr_core.sampling.x4 import augment_lr

    t = _load(parity_dir, "uav/pipeline_io.safetensors")
    cond, flow = _inputs(t)
    noisy = augment_lr(cond.lr, LOWRES, 120, _frames(t["lowres.noise"]))
    torch.testing.assert_close(noisy, _frames(t["lowres.noisy_lr"]), atol=1e-6, rtol=0)
    sched = make_schedule(DDIM, "ddim", 3)
    den = uav_denoiser(ReplayUNet(t), noisy, 120, t["in.prompt_embeds"], t["in.negative_prompt_embeds"], 6.0)
    prop = LatentPropagation(flow, [1])
    for i in range(3):
        z = _frames(t[f"step{i}.z_t"])
        v = den(z, sched.timesteps[i], i)
        torch.testing.assert_close(v, _frames(t[f"step{i}.v_merged_cfg"]), atol=1e-6, rtol=0)
        x0, eps = sched.predict(v, z, i)
        torch.testing.assert_close(x0, _frames(t[f"step{i}.x0"]), atol=1e-6, rtol=0)
        x0 = prop.on_x0(x0, z, i)
        torch.testing.assert_close(x0, _frames(t[f"step{i}.x0_after_propagation"]), atol=1e-6, rtol=0)
        torch.testing.assert_close(sched.step(i, z, x0, eps), _frames(t[f"step{i}.z_prev"]), atol=1e-6, rtol=0)


# ---- full: our tiny video UNet + video VAE -------------------------------------------------------------


def _strict_load(module, path):
    from vsr_core.loaders.diffusion import remap_vae_legacy_attention

    sd = remap_vae_legacy_attention(safetensors_torch.load_file(str(path)))
    missing, unexpected = module.load_state_dict(sd, strict=False)
    # the rotary `freqs` are constants our UNet recomputes (methods.md §2.4); everything else is strict
    assert not missing and all(k.endswith("rotary_emb.freqs") for k in unexpected), (missing, unexpected)
    return module.eval()


def _tiny_model(parity_dir):
    uav_unet = pytest.importorskip("vsr_core.models.uav_unet", reason="the UAV UNet (H1) is not available")
    uav_vae = pytest.importorskip("vsr_core.models.uav_vae", reason="the UAV VAE (H1) is not available")
    d = parity_dir / "uav"
    unet = _strict_load(uav_unet.UNetVideoModel.from_config(json.loads((d / "tiny_unet_config.json").read_text())),
                        d / "tiny_weights.safetensors")
    vcfg = json.loads((d / "tiny_vae_video_config.json").read_text())
    vae = _strict_load(uav_vae.AutoencoderKLVideo.from_config(vcfg), d / "tiny_vae_video_weights.safetensors")
    return VSRModel("upscale_a_video", unet, vae, scheduler_config=DDIM, low_res_scheduler_config=LOWRES,
                    config={"scaling_factor": float(vcfg.get("scaling_factor", 0.08333))})


def test_full_pipeline_with_tiny_official_weights(parity_dir):
    t = _load(parity_dir, "uav/pipeline_io.safetensors")
    model = _tiny_model(parity_dir)
    cond, flow = _inputs(t)
    z = sample_uav(model, cond, flow, t["in.prompt_embeds"], t["in.negative_prompt_embeds"], 6.0, 3, seed=10,
                   propagation_steps=[1], latents=_frames(t["in.latents"]))
    ref = _frames(t["out.latents"])
    err = (z - ref).abs().max() / ref.abs().max()
    assert err < 2e-5, f"latents relative max error {err:.2e}"  # reached 5e-6 (4e-5 abs on |z| <= 8)
    video = decode_uav(model, z, cond)
    ref_video = (_frames(t["out.video"]) + 1) / 2
    assert video.shape == ref_video.shape == (10, 3, 64, 96)
    assert (video - ref_video).abs().max() < 1e-4  # reached 1.5e-5 (in [0, 1])
