"""MGLD sampler mechanics with a cheap analytic denoiser: segments, the overlap option, seams,
noise/seed handling, input preparation and errors (the network parity is in
test_mgld_sampling_parity.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vsr_core.flow import VideoFlow
from vsr_core.sampling.mgld import (
    mgld_schedule,
    prepare_mgld_input,
    sample_mgld_latents,
    seam_error,
)

AC = mgld_schedule(10).train_alphas_cumprod


def toy_denoiser(x, z_lr, t):
    """An ε that makes x̂0 = z_LR + a detail that depends on the current noise (so independently
    sampled segments disagree, as a real model's hallucinated texture does)."""
    a = AC[int(t.reshape(-1)[0])]
    target = z_lr + 0.5 * torch.tanh(2 * x)
    return (x - a.sqrt() * target) / (1 - a).sqrt()


def moving_clip(t=15, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, 4, h, w + t, generator=g), 3, 1, 1)[0]
    z = torch.stack([base[:, :, t - i: t - i + w] for i in range(t)])  # content moves +1 px per frame
    fwd = torch.zeros(t - 1, 2, h, w)
    fwd[:, 0] = 1.0
    return z, VideoFlow(fwd, -fwd)


def test_official_segments_are_independent_and_padded():
    z, vf = moving_clip(t=7, h=16, w=16)
    out = sample_mgld_latents(toy_denoiser, z, vf, steps=4, seed=3, tile=0)
    assert out.shape == z.shape and torch.isfinite(out).all()
    # no information crosses a segment border: frames 0-4 equal a run on those frames alone
    alone = sample_mgld_latents(toy_denoiser, z[:5], vf.frames(0, 5), steps=4, seed=3, tile=0)
    torch.testing.assert_close(out[:5], alone, rtol=0, atol=1e-6)


def test_official_mode_reseeds_every_segment():
    # a static clip of identical frames: every segment starts from the same noise (seed_everything per
    # segment in the script), so both segments come out identical
    z = torch.randn(1, 4, 8, 8).repeat(10, 1, 1, 1)
    vf = VideoFlow(torch.zeros(9, 2, 8, 8), torch.zeros(9, 2, 8, 8))
    out = sample_mgld_latents(toy_denoiser, z, vf, steps=3, seed=5, tile=0)
    torch.testing.assert_close(out[:5], out[5:], rtol=0, atol=0)
    other = sample_mgld_latents(toy_denoiser, z, vf, steps=3, seed=6, tile=0)
    assert not torch.equal(out, other)


def test_overlap_mode_removes_the_seam():
    z, vf = moving_clip()
    off_b, off_i = seam_error(sample_mgld_latents(toy_denoiser, z, vf, steps=10, seed=1, tile=0), vf)
    ov_b, ov_i = seam_error(sample_mgld_latents(toy_denoiser, z, vf, steps=10, seed=1, tile=0,
                                                segment_mode="overlap", segment_overlap=2), vf)
    assert off_b > 1.08 * off_i, (off_b, off_i)     # the published layout leaves a seam
    assert ov_b < 1.03 * ov_i, (ov_b, ov_i)         # the overlap option has none
    assert ov_b < 0.92 * off_b


def test_guidance_makes_segments_temporally_consistent():
    z, vf = moving_clip()
    _, with_g = seam_error(sample_mgld_latents(toy_denoiser, z, vf, steps=10, seed=1, tile=0), vf)
    _, without = seam_error(sample_mgld_latents(toy_denoiser, z, vf, steps=10, seed=1, tile=0,
                                                guidance_scale=0.0), vf)
    assert with_g < 0.9 * without
    none = sample_mgld_latents(toy_denoiser, z, None, steps=10, seed=1, tile=0)
    zero = sample_mgld_latents(toy_denoiser, z, vf, steps=10, seed=1, tile=0, guidance_scale=0.0)
    torch.testing.assert_close(none, zero, rtol=0, atol=0)


def test_tiling_callback_and_injected_noise():
    z, vf = moving_clip(t=5, h=24, w=40)
    calls = []
    out = sample_mgld_latents(toy_denoiser, z, vf, steps=5, tile=16, tile_overlap=8,
                              callback=lambda d, n, x0: calls.append((d, n)))
    assert calls[-1] == (5, 5) and len(calls) == 5
    # this denoiser acts per pixel, so the Gaussian-weighted canvas equals the untiled run
    flat = sample_mgld_latents(toy_denoiser, z, vf, steps=5, tile=0)
    torch.testing.assert_close(out, flat, rtol=1e-5, atol=1e-5)
    xt = torch.randn(5, 4, 24, 40)
    steps = [torch.randn(5, 4, 24, 40) for _ in range(5)]
    a = sample_mgld_latents(toy_denoiser, z, vf, steps=5, tile=0, x_T_noise=xt, noise=steps, seed=1)
    b = sample_mgld_latents(toy_denoiser, z, vf, steps=5, tile=0, x_T_noise=xt, noise=steps, seed=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # all randomness injected: the seed is unused


def test_bad_arguments():
    z, vf = moving_clip(t=5, h=8, w=8)
    with pytest.raises(ValueError, match="segment_mode"):
        sample_mgld_latents(toy_denoiser, z, vf, steps=2, segment_mode="blend")
    with pytest.raises(ValueError, match="frames"):
        sample_mgld_latents(toy_denoiser, z[:4], vf, steps=2)
    with pytest.raises(ValueError, match="segment_overlap"):
        sample_mgld_latents(toy_denoiser, torch.cat([z, z]), None, steps=2, segment_mode="overlap",
                            segment_overlap=5)


def test_prepare_input_upsamples_and_pads():
    lr = torch.rand(2, 3, 12, 20)
    p = prepare_mgld_input(lr, upscale=4, min_side=0)
    # below the official 512 short side, padding goes to 64 px so the latent is divisible by 8
    assert p.size == (48, 80) and tuple(p.x_up.shape) == (2, 3, 64, 128) and p.latent_size == (8, 16)
    assert p.x_up.min() >= -1 and p.x_up.max() <= 1
    # the script's rule s = max(512 / min(h, w), 4)
    q = prepare_mgld_input(torch.rand(1, 3, 64, 96))
    assert q.scale == 8.0 and q.size == (512, 768) and q.out_size == (256, 384)
    assert tuple(q.x_up.shape) == (1, 3, 512, 768)  # the official path keeps its 32-px padding rule
    r = prepare_mgld_input(torch.rand(1, 3, 130, 150))
    assert r.size == (520, 600) and tuple(r.x_up.shape) == (1, 3, 544, 608)
    with pytest.raises(ValueError):
        prepare_mgld_input(torch.rand(3, 12, 20))


def test_posterior_then_x_T_then_steps_from_one_stream_per_segment():
    """The script, per segment: seed_everything(seed), the LR posterior sample, x_T's noise, then one draw
    per step, all from that one stream. Given the posterior, the sampler draws in that order (so x_T's
    noise is not the posterior's noise again)."""
    from vsr_core.sampling.mgld import LatentPosterior

    z, vf = moving_clip(t=10, h=16, w=16)
    std = 0.3 + 0.1 * torch.rand_like(z)
    out = sample_mgld_latents(toy_denoiser, LatentPosterior(z, std), vf, steps=4, seed=3, tile=0)
    for s, e in ((0, 5), (5, 10)):
        g = torch.Generator().manual_seed(3)  # re-seeded for every segment
        z_s = z[s:e] + std[s:e] * torch.randn(z[s:e].shape, generator=g)
        xt = torch.randn(z_s.shape, generator=g)
        ref = sample_mgld_latents(toy_denoiser, z_s, vf.frames(s, e), steps=4, seed=3, tile=0, x_T_noise=xt,
                                  noise=lambda k, shape: torch.randn(shape, generator=g))
        torch.testing.assert_close(out[s:e], ref, rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(3)
    first = torch.randn(z[:5].shape, generator=g)
    same = sample_mgld_latents(toy_denoiser, z[:5] + std[:5] * first, vf.frames(0, 5), steps=4, seed=3, tile=0,
                               x_T_noise=first)
    assert not torch.allclose(out[:5], same, atol=1e-3)  # x_T's noise is its own draw
