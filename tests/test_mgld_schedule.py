"""MGLD's respaced 50-step DDPM (methods.md §4.3 step 1) against the official buffers
(parity/mgld/schedule.safetensors): reached bit-exact (max abs diff 0.0) for every coefficient."""
from __future__ import annotations

import math

import pytest
import torch

from vsr_core.sampling.mgld import MGLDSchedule, mgld_schedule, space_timesteps
from vsr_core.sampling.motion_guidance import guidance_step_size, posterior_log_variance

RESPACED = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2")


def _load(parity_dir):
    from safetensors.torch import load_file

    path = parity_dir / "mgld/schedule.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return load_file(str(path))


def test_respaced_indices_are_the_published_ones():
    ts = space_timesteps(1000, 50)
    assert len(ts) == 50 and ts[:4] == [0, 20, 41, 61] and ts[-2:] == [979, 999]
    assert space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError):
        space_timesteps(10, 11)


def test_schedule_matches_official_buffers(parity_dir):
    t = _load(parity_dir)
    s = mgld_schedule(50)
    assert torch.equal(s.ori_timesteps, t["respaced.ori_timesteps"])
    for name in RESPACED:
        torch.testing.assert_close(getattr(s, name), t[f"respaced.{name}"], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(s.train_alphas_cumprod, t["orig.alphas_cumprod"], rtol=0, atol=0)
    torch.testing.assert_close(s.train_sqrt_alphas_cumprod, t["orig.sqrt_alphas_cumprod"], rtol=0, atol=0)
    torch.testing.assert_close(s.train_sqrt_one_minus_alphas_cumprod,
                               t["orig.sqrt_one_minus_alphas_cumprod"], rtol=0, atol=0)


def test_posterior_is_a_proper_ddpm_posterior():
    s = mgld_schedule(50)
    # respaced ᾱ equal the original ᾱ at the kept timesteps
    torch.testing.assert_close(s.alphas_cumprod, s.train_alphas_cumprod[s.ori_timesteps], rtol=1e-5, atol=0)
    # coef1 + coef2·√(ᾱ/ᾱ_prev)... x0 = z, noise-free: the posterior mean of x_t = √ᾱ x0 is √ᾱ_prev x0
    x0 = torch.randn(3, 4, 5, 5)
    for k in (0, 25, 49):
        i = s.index(k)
        xt = s.alphas_cumprod[i].sqrt() * x0
        mean = s.step(k, xt, x0, noise=torch.zeros_like(x0))
        torch.testing.assert_close(mean, s.alphas_cumprod_prev[i].sqrt().float() * x0, rtol=1e-4, atol=1e-5)
    assert s.posterior_variance[0] == 0 and s.posterior_log_variance_clipped[0] == pytest.approx(math.log(1e-20))


def test_step_size_schedule_is_ten_times_abs_log_variance():
    s = mgld_schedule(50)
    got = {i: guidance_step_size(s.posterior_log_variance_clipped[i]) for i in (49, 40, 30, 20, 10, 5, 2, 1, 0)}
    want = {49: 15.5, 40: 17.8, 30: 21.5, 20: 26.4, 10: 33.2, 5: 38.9, 2: 46.1, 1: 71.2, 0: 460.5}
    for i in want:
        assert got[i] == pytest.approx(want[i], abs=0.06), i
    # the generic formula (used for diffusers schedules) agrees with the respaced buffers
    for i in (1, 10, 49):
        lv = posterior_log_variance(s.alphas_cumprod[i], s.alphas_cumprod_prev[i])
        assert float(lv) == pytest.approx(float(s.posterior_log_variance_clipped[i]), rel=1e-4)


def test_loop_order_and_noise_start():
    s = mgld_schedule(50)
    assert isinstance(s, MGLDSchedule) and len(s) == 50
    assert int(s.timesteps[0]) == 999 and int(s.timesteps[-1]) == 0
    assert s.needs_noise(0) and not s.needs_noise(49)
    z = torch.ones(1, 4, 2, 2)
    xt = s.noise_lr_latent(z, torch.zeros_like(z))
    assert float(xt.mean()) == pytest.approx(0.0683, abs=1e-4)  # √ᾱ_999 (§4.3 step 5)
    with pytest.raises(ValueError):
        s.step(0, z, z)  # a noisy step without noise
