"""Our split schedulers (predict -> [edit x̂0] -> step) against diffusers' ``scheduler.step``.

Reached: every step of ddpm / ddim / dpmpp_2m equal to diffusers within 1e-6 (float32) over whole
runs, for v- and ε-prediction; the split DDIM step with an edited x̂0 equals Upscale-A-Video's
official ``step_vt`` (parity vectors) within 1e-6.
"""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from vsr_core.sampling.schedulers import (
    SCHEDULERS,
    add_noise,
    from_x0_eps,
    make_schedule,
    scheduler_name_for,
    to_x0_eps,
)

# the x4 upscaler's scheduler config (methods.md §2.1); StableVSR ships the same one
X4_CONFIG = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None, "timestep_spacing": "leading",
}
LOW_RES_CONFIG = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                  "beta_end": 0.02, "beta_schedule": "scaled_linear", "clip_sample": True,
                  "prediction_type": "epsilon", "variance_type": "fixed_small"}
TOL = dict(atol=1e-6, rtol=1e-6)


def _diffusers(name, cfg):
    if name == "ddpm":
        return DDPMScheduler.from_config(cfg)
    if name == "ddim":
        return DDIMScheduler.from_config(cfg)
    return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("steps", [2, 7, 50])
def test_timesteps_match_diffusers(name, steps):
    ours = make_schedule(X4_CONFIG, name, steps)
    ref = _diffusers(name, X4_CONFIG)
    ref.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps.long())
    assert len(ours) == steps


def test_stablevsr_published_timesteps():
    """DDPM on the x4 config with 50 'leading' steps: t = 981, 961, ..., 1 (methods.md §3.1)."""
    s = make_schedule(X4_CONFIG, "ddpm", 50)
    assert s.timesteps[0] == 981 and s.timesteps[-1] == 1 and s.needs_noise(49)
    assert float(s.alpha_prod_prev[-1]) == 1.0
    assert s.variance_type == "fixed_small" and s.prediction_type == "v_prediction"


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_whole_run_matches_diffusers_step(name, prediction_type):
    cfg = dict(X4_CONFIG, prediction_type=prediction_type)
    steps = 6
    ours = make_schedule(cfg, name, steps)
    ref = _diffusers(name, cfg)
    ref.set_timesteps(steps)
    gen_out = torch.Generator().manual_seed(1)
    x0_ref = torch.randn(2, 4, 8, 8, generator=gen_out)
    x_ours = torch.randn(2, 4, 8, 8, generator=gen_out)
    x_ref = x_ours.clone()
    g_ref, g_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    state: dict = {}
    for i, t in enumerate(ref.timesteps):
        # a model output that depends on the state, so errors would compound over the run
        res = ref.step(0.5 * torch.tanh(x_ref) + 0.3 * x0_ref, t, x_ref, generator=g_ref)
        x0, eps = ours.predict(0.5 * torch.tanh(x_ours) + 0.3 * x0_ref, x_ours, i)
        noise = torch.randn(x_ours.shape, generator=g_ours) if ours.needs_noise(i) else None
        x_ours = ours.step(i, x_ours, x0, eps, noise, state)
        if hasattr(res, "pred_original_sample"):
            torch.testing.assert_close(x0, res.pred_original_sample, **TOL)
        torch.testing.assert_close(x_ours, res.prev_sample, **TOL)
        x_ref = res.prev_sample  # both runs continue from their own state: errors would compound
    assert not torch.isnan(x_ref).any()


def test_dpmpp_uses_second_order_and_state_is_per_sample():
    s = make_schedule(X4_CONFIG, "dpmpp_2m", 5)
    x = torch.randn(1, 4, 4, 4)
    a, b = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    st_a, st_b = {}, {}
    s.step(0, x, a, None, None, st_a)
    s.step(0, x, b, None, None, st_b)  # a second sample's state must not leak into the first's
    fresh = s.step(1, x, b, None, None, {})
    # history a != current b: the midpoint correction is applied
    assert (s.step(1, x, b, None, None, st_a) - fresh).abs().max() > 1e-3
    # history equal to the current x̂0: the correction term vanishes
    torch.testing.assert_close(s.step(1, x, b, None, None, st_b), fresh, atol=1e-6, rtol=0)
    # the final step goes to sigma = 0 and returns x̂0 itself, whatever the history
    torch.testing.assert_close(s.step(4, x, a, None, None, st_b), a)


def test_split_step_with_edited_x0_matches_uav_official(parity_dir):
    """UAV's ``step_v0`` / ``step_vt(x0=...)``: x̂0 from v, then DDIM with an edited x̂0 and the original ε̂."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = parity_dir / "uav" / "scheduler_io.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    t = safetensors_torch.load_file(str(path))
    cfg = json.loads((parity_dir / "stablevsr" / "scheduler_config.json").read_text())
    s = make_schedule(cfg, "ddim", 30)
    torch.testing.assert_close(s.alphas_cumprod, t["alphas_cumprod"], atol=0, rtol=0)
    assert torch.equal(s.timesteps, t["timesteps_30"])
    assert torch.equal(make_schedule(cfg, "ddim", 3).timesteps, t["timesteps_3"])
    for ts in (958, 496, 34, 1):
        i = int((s.timesteps == ts).nonzero()[0, 0])
        x0, eps = s.predict(t["model_output_v"], t["sample"], i)
        torch.testing.assert_close(x0, t[f"t{ts}.step_v0.x0"], **TOL)
        torch.testing.assert_close(s.step(i, t["sample"], x0, eps), t[f"t{ts}.step.prev"], **TOL)
        torch.testing.assert_close(s.step(i, t["sample"], t["x0_override"], eps),
                                   t[f"t{ts}.step_vt(x0=x0_override).prev"], **TOL)
    low = make_schedule(dict(cfg, prediction_type="epsilon"), "ddpm", 1).alphas_cumprod
    torch.testing.assert_close(add_noise(t["lowres.image"], t["lowres.noise"], low, 120),
                               t["lowres.add_noise_120"], **TOL)


def test_add_noise_matches_diffusers_low_res_scheduler():
    ref = DDPMScheduler.from_config(LOW_RES_CONFIG)
    x, n = torch.rand(3, 3, 5, 6) * 2 - 1, torch.randn(3, 3, 5, 6)
    ours = make_schedule(LOW_RES_CONFIG, "ddpm", 10).alphas_cumprod
    for level in (0, 20, 350):
        torch.testing.assert_close(add_noise(x, n, ours, level), ref.add_noise(x, n, torch.tensor([level])), **TOL)


@pytest.mark.parametrize("pred", ["v_prediction", "epsilon", "sample"])
def test_prediction_conversions_round_trip(pred):
    a = torch.tensor(0.6) ** 0.5
    s = (1 - torch.tensor(0.6)) ** 0.5
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    x_t = a * x0 + s * eps
    out = from_x0_eps(x0, eps, a, s, pred)
    x0b, epsb = to_x0_eps(out, x_t, a, s, pred)
    torch.testing.assert_close(x0b, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(epsb, eps, atol=1e-5, rtol=1e-5)


def test_clip_sample_default_follows_diffusers():
    """A config without clip_sample gets diffusers' default (True for DDPM): x̂0 is clamped to ±1."""
    cfg = {k: v for k, v in X4_CONFIG.items() if k != "clip_sample"}
    s = make_schedule(cfg, "ddpm", 4)
    x0, _ = s.predict(torch.full((1, 1, 2, 2), 50.0), torch.zeros(1, 1, 2, 2), 0)
    assert x0.abs().max() <= 1.0
    assert make_schedule(X4_CONFIG, "ddpm", 4).clip_sample is None


def test_errors_and_names():
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_schedule(X4_CONFIG, "euler", 10)
    with pytest.raises(ValueError, match="steps"):
        make_schedule(X4_CONFIG, "ddim", 0)
    s = make_schedule(X4_CONFIG, "ddpm", 3)
    with pytest.raises(ValueError, match="noise"):
        s.step(0, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), None)
    with pytest.raises(NotImplementedError):
        make_schedule(dict(X4_CONFIG, thresholding=True), "ddim", 3)
    assert scheduler_name_for(X4_CONFIG) == "ddim"
    assert scheduler_name_for({"_class_name": "DDPMScheduler"}) == "ddpm"
    assert scheduler_name_for({}, default="ddpm") == "ddpm"
