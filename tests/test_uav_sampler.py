"""``sample_uav`` / ``decode_uav`` behaviour with stand-in networks (fast; the official numbers are in
test_uav_pipeline_parity.py): window merge weights, CFG batching, bounded per-window device memory,
per-step tiling (exact for local networks, seamless blending vs the official hard paste), argument
errors, seeded determinism, 3-frame chunked decoding with the LR and colour fix.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vsr_core.flow import VideoFlow
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.uav import decode_uav, sample_uav, uav_denoiser
from vsr_core.sampling.x4 import LRConditioning

DDIM = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.02,
        "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
LOWRES = {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.02}
EMB = torch.ones(1, 3, 8)
NEG = torch.zeros(1, 3, 8)


class FakeUNet(nn.Module):
    """Records calls; output = fn(sample, low_res, context, call_index)."""

    def __init__(self, fn=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.fn = fn or (lambda s, lr, ctx, k: 0.1 * s)
        self.calls = []

    def forward(self, sample, timestep, low_res, encoder_hidden_states=None, class_labels=None):
        self.calls.append(dict(frames=sample.shape[2], batch=sample.shape[0], device=sample.device,
                               labels=class_labels.tolist() if class_labels.device.type != "meta" else None))
        return self.fn(sample, low_res, encoder_hidden_states, len(self.calls) - 1)


def _model(unet, **kw):
    return VSRModel("upscale_a_video", unet, nn.Identity(), scheduler_config=DDIM, low_res_scheduler_config=LOWRES,
                    **kw)


def _cond(t=10, h=8, w=12, level=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LRConditioning(torch.rand(t, 3, h, w, generator=g) * 2 - 1, level)


def test_running_merge_weights_follow_the_official_window_list():
    # T=20, 8/2: windows (0,8) (6,14) (12,20) and (12,20) again (the official loop revisits it)
    unet = FakeUNet(lambda s, lr, ctx, k: torch.full_like(s, 10.0 ** k))
    den = uav_denoiser(unet, torch.zeros(20, 3, 4, 4), 120, EMB, guidance_scale=1.0)
    v = den(torch.zeros(20, 4, 4, 4), torch.tensor(500), 0)
    assert [c["frames"] for c in unet.calls] == [8, 8, 8]  # the repeat is merged, not re-run
    per_frame = v[:, 0, 0, 0]
    expect = [1.0] * 6 + [0.5 * 1 + 0.5 * 10] * 2 + [10.0] * 4 + [0.25 * 10 + 0.75 * 100] * 2 + [100.0] * 6
    torch.testing.assert_close(per_frame, torch.tensor(expect))


def test_a_frame_covered_three_times_gets_quarter_quarter_half():
    unet = FakeUNet(lambda s, lr, ctx, k: torch.full_like(s, 10.0 ** k))
    # window 6 / overlap 4: frame 4 is in (0,6), (2,8), (4,10), in that order
    den = uav_denoiser(unet, torch.zeros(12, 3, 4, 4), 120, EMB, guidance_scale=1.0, window=6, overlap=4)
    v = den(torch.zeros(12, 4, 4, 4), torch.tensor(500), 0)
    assert v[4, 0, 0, 0] == pytest.approx(0.25 * 1 + 0.25 * 10 + 0.5 * 100)
    # the order-independent alternatives are available
    for merge in ("uniform", "hann"):
        unet2 = FakeUNet(lambda s, lr, ctx, k: torch.full_like(s, 3.0))
        v2 = uav_denoiser(unet2, torch.zeros(12, 3, 4, 4), 120, EMB, guidance_scale=1.0, window=8, overlap=6,
                          merge=merge)(torch.zeros(12, 4, 4, 4), torch.tensor(500), 0)
        torch.testing.assert_close(v2, torch.full_like(v2, 3.0))


def test_cfg_runs_uncond_and_cond_as_one_batch():
    # output depends on the prompt: uncond (zeros) -> 1, cond (ones) -> 3
    unet = FakeUNet(lambda s, lr, ctx, k: (1 + 2 * ctx.mean(dim=(1, 2))).view(-1, 1, 1, 1, 1).expand_as(s).clone())
    den = uav_denoiser(unet, torch.zeros(5, 3, 4, 4), 77, EMB, NEG, guidance_scale=6.0)
    v = den(torch.zeros(5, 4, 4, 4), torch.tensor(500), 0)
    torch.testing.assert_close(v, torch.full_like(v, 1 + 6.0 * (3 - 1)))
    assert unet.calls == [dict(frames=5, batch=2, device=torch.device("cpu"), labels=[77, 77])]
    with pytest.raises(ValueError, match="negative"):
        uav_denoiser(unet, torch.zeros(5, 3, 4, 4), 77, EMB, None, guidance_scale=6.0)


def test_twenty_frames_keep_device_memory_bounded_by_the_window():
    """The UNet runs on a 'device' (meta here: no data, so any per-frame state left there would fail to
    come back); the clip's latents and merged predictions live on the CPU; at most 8 frames per call."""
    unet = FakeUNet(lambda s, lr, ctx, k: torch.zeros(s.shape))  # a CPU result whatever the input device
    model = _model(unet, device=torch.device("meta"), offload_device=torch.device("meta"))
    cond = _cond(t=20, h=6, w=6)
    z = sample_uav(model, cond, None, EMB, NEG, 6.0, steps=2, seed=1)
    assert z.device.type == "cpu" and z.shape == (20, 4, 6, 6) and torch.isfinite(z).all()
    assert {c["device"].type for c in unet.calls} == {"meta"}
    assert max(c["frames"] for c in unet.calls) == 8
    assert len(unet.calls) == 2 * 3  # 3 distinct windows per step


def test_per_step_tiles_are_exact_for_a_local_network():
    def local(s, lr, ctx, k):
        return torch.tanh(s * 0.7 + lr[:, :1] * 0.3)

    x = torch.randn(6, 4, 20, 28)
    lr = torch.rand(6, 3, 20, 28) * 2 - 1
    base = uav_denoiser(FakeUNet(local), lr, 120, EMB, guidance_scale=1.0)(x, torch.tensor(500), 0)
    for tile_merge in ("hann", "hard"):
        unet = FakeUNet(local)
        tiled = uav_denoiser(unet, lr, 120, EMB, guidance_scale=1.0, tile=12, tile_overlap=4,
                             tile_merge=tile_merge)(x, torch.tensor(500), 0)
        assert len(unet.calls) > 1
        torch.testing.assert_close(tiled, base, atol=1e-6, rtol=0)


def test_hann_tiles_remove_the_seam_a_hard_paste_leaves():
    """A context-dependent network (its output is its crop's mean) makes tiles disagree; the official
    hard paste turns that into a step at the tile border, the blended tiles into a gentle ramp."""
    def global_mean(s, lr, ctx, k):
        return s.mean(dim=(-2, -1), keepdim=True).expand_as(s).clone()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 48, generator=g) + torch.linspace(-3, 3, 48)  # left/right tiles differ
    lr = torch.zeros(2, 3, 16, 48)
    jumps = {}
    for tile_merge in ("hard", "hann"):
        v = uav_denoiser(FakeUNet(global_mean), lr, 120, EMB, guidance_scale=1.0, tile=16, tile_overlap=8,
                         tile_merge=tile_merge)(x, torch.tensor(500), 0)
        jumps[tile_merge] = (v[..., 1:] - v[..., :-1]).abs().amax().item()
    assert jumps["hard"] > 0.5
    assert jumps["hann"] < 0.35 * jumps["hard"], jumps


def test_argument_errors():
    unet = FakeUNet()
    model = _model(unet)
    cond = _cond(t=4)
    with pytest.raises(ValueError, match="noise_level"):
        sample_uav(model, LRConditioning(cond.lr, None), None, EMB, NEG, steps=2)
    with pytest.raises(ValueError, match="noise_level"):
        LRConditioning(cond.lr, 351)
    with pytest.raises(ValueError, match="flow"):
        sample_uav(model, cond, None, EMB, NEG, steps=2, propagation_steps=[1])
    with pytest.raises(ValueError, match="loop indices"):
        sample_uav(model, cond, None, EMB, NEG, steps=2, propagation_steps=[2])
    vf = VideoFlow(torch.zeros(4, 2, 8, 12), torch.zeros(4, 2, 8, 12))
    with pytest.raises(ValueError, match="frames"):
        sample_uav(model, cond, vf, EMB, NEG, steps=2, propagation_steps=[0])
    with pytest.raises(ValueError, match="merge"):
        sample_uav(model, cond, None, EMB, NEG, steps=2, merge="max")
    with pytest.raises(ValueError, match="latents"):
        sample_uav(model, cond, None, EMB, NEG, steps=2, latents=torch.zeros(4, 4, 8, 8))


def test_seed_determinism_and_propagation_effect():
    def net(s, lr, ctx, k):
        return 0.2 * s + 0.1 * lr.mean(1, keepdim=True)

    cond = _cond(t=5, h=8, w=12)
    fwd = torch.zeros(4, 2, 8, 12)
    fwd[:, 0] = 1.0
    vf = VideoFlow(fwd, -fwd)
    a = sample_uav(_model(FakeUNet(net)), cond, vf, EMB, NEG, steps=3, seed=3)
    b = sample_uav(_model(FakeUNet(net)), cond, vf, EMB, NEG, steps=3, seed=3)
    c = sample_uav(_model(FakeUNet(net)), cond, vf, EMB, NEG, steps=3, seed=4)
    p = sample_uav(_model(FakeUNet(net)), cond, vf, EMB, NEG, steps=3, seed=3, propagation_steps=[1])
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1
    assert (a - p).abs().max() > 1e-3


class FakeVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls = []

    def decode(self, z, img_lr=None, w_lr=1.0):
        self.calls.append((z.shape[2], img_lr.clone(), w_lr))
        y = z[:, :3] * 0.08333 * 0.5 + 0.3 * img_lr
        return F.interpolate(y, scale_factor=(1, 4, 4), mode="nearest")


def test_decode_in_three_frame_chunks_with_the_lr_and_color_fix():
    vae = FakeVAE()
    model = VSRModel("upscale_a_video", FakeUNet(), vae, config={"scaling_factor": 0.08333})
    cond = _cond(t=10, h=6, w=8)
    z = torch.randn(10, 4, 6, 8)
    out = decode_uav(model, z, cond, w_lr=0.5)
    assert [c[0] for c in vae.calls] == [3, 3, 3, 1]
    assert torch.equal(vae.calls[3][1][0, :, 0], cond.lr[9]) and vae.calls[0][2] == 0.5
    assert out.shape == (10, 3, 24, 32) and out.min() >= 0 and out.max() <= 1
    expect = ((F.interpolate(z[:, :3] * 0.5 + 0.3 * cond.lr, scale_factor=4, mode="nearest")).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)
    fixed = decode_uav(model, z, cond, color="adain")
    assert (fixed - out).abs().max() > 1e-2
    with pytest.raises(ValueError, match="color"):
        decode_uav(model, z, cond, color="sepia")
