"""Upscale-A-Video latent propagation and its split DDIM step.

Parity files: ``uav/propagation_io`` (every recorded variant, through ``propagate_latents`` /
``LatentPropagation`` with ``VideoFlow`` inputs) and ``uav/scheduler_io`` (x̂0 from v, the DDIM update with
an edited x̂0 and ε̂ from the original v, the low-res noise augmentation). Reached: propagation max abs
diff 0 (asserted to 1e-6); scheduler steps to 1e-6.
Synthetic: a clip made by shifting one latent by a known integer flow against the recurrence computed
by hand with integer indexing, and pixels the check rejects left untouched.
"""
from __future__ import annotations

import json

import pytest
import torch

from vsr_core.flow import VideoFlow, fb_consistency_uav
from vsr_core.sampling.loop import sample
from vsr_core.sampling.propagation import (
    LatentPropagation,
    propagate_latents,
    propagation_validity,
    resolve_propagation_steps,
    uav_latent_flows,
)
from vsr_core.sampling.schedulers import make_schedule
from vsr_core.sampling.x4 import augment_lr

safetensors_torch = pytest.importorskip("safetensors.torch")


def _load(parity_dir, rel):
    path = parity_dir / rel
    if not path.is_file():
        pytest.skip(f"parity file {path} is missing")
    return safetensors_torch.load_file(str(path))


def _pairs(f):
    """UAV flow layout (1, 2, T-1, H, W) -> VideoFlow layout (T-1, 2, H, W)."""
    return f[0].transpose(0, 1).contiguous()


def _frames(x):
    """(1, C, T, h, w) -> (T, C, h, w)."""
    return x[0].transpose(0, 1).contiguous()


# ---- parity: propagation_io ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, flows, kwargs",
    [
        ("out_pipeline_args", "", {}),
        ("out_defaults", "", dict(interpolation="bilinear", alpha1=0.01, alpha2=0.5)),
        ("out_copy_nearest", "", dict(mode="copy")),
        ("out_pipeline_args_flows2x", "_2x", {}),
    ],
)
def test_propagation_matches_official(parity_dir, key, flows, kwargs):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    vf = VideoFlow(_pairs(t[f"flows_forward{flows}"]), _pairs(t[f"flows_backward{flows}"]))
    hook = LatentPropagation(vf, steps=[3], **kwargs)
    x = _frames(t["x"])
    assert hook.on_x0(x, x, 2) is x  # not a propagation step: untouched
    out = hook.on_x0(x, x, 3)
    expect = _frames(t[key])
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)
    assert (out - x).abs().max() > 1e-2  # the recorded case does change the latents
    assert torch.equal(x, _frames(t["x"]))  # input not modified


def test_propagation_flow_resize_is_area_times_width_ratio(parity_dir):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    vf = VideoFlow(_pairs(t["flows_forward_2x"]), _pairs(t["flows_backward_2x"]))
    f, b = uav_latent_flows(vf, (16, 24))
    area = torch.nn.functional.avg_pool2d(vf.forward, 2) * 0.5
    torch.testing.assert_close(f, area, atol=1e-6, rtol=0)
    assert b.shape == (5, 2, 16, 24)


def test_precomputed_validity_equals_per_pair_check(parity_dir):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    f, b = _pairs(t["flows_forward"]), _pairs(t["flows_backward"])
    x = _frames(t["x"])
    valid = propagation_validity(f, b)
    assert torch.equal(valid[0], t["fbcheck.valid_a0.001_b0.05"])
    assert torch.equal(propagate_latents(x, f, b, valid=valid), propagate_latents(x, f, b))


# ---- parity: scheduler_io (the split step) -----------------------------------------------------------


@pytest.mark.parametrize("tstep", [958, 496, 34, 1])
def test_split_ddim_step_with_edited_x0(parity_dir, tstep):
    s = _load(parity_dir, "uav/scheduler_io.safetensors")
    meta = json.loads(safetensors_torch.safe_open(str(parity_dir / "uav/scheduler_io.safetensors"), "pt")
                      .metadata()["ddim_config"])
    sched = make_schedule(dict(meta, _class_name="DDIMScheduler"), "ddim", 30)
    assert torch.equal(sched.timesteps, s["timesteps_30"])
    assert torch.equal(sched.alphas_cumprod, s["alphas_cumprod"])
    i = int((sched.timesteps == tstep).nonzero())
    z, v = s["sample"], s["model_output_v"]
    x0, eps = sched.predict(v, z, i)
    torch.testing.assert_close(x0, s[f"t{tstep}.step_v0.x0"], atol=1e-6, rtol=0)
    prev = sched.step(i, z, x0, eps)
    torch.testing.assert_close(prev, s[f"t{tstep}.step_vt(x0=step_v0).prev"], atol=1e-6, rtol=0)
    torch.testing.assert_close(prev, s[f"t{tstep}.step.prev"], atol=1e-6, rtol=0)
    # the split step: an edited x̂0 with ε̂ still from the original v
    edited = sched.step(i, z, s["x0_override"], eps)
    torch.testing.assert_close(edited, s[f"t{tstep}.step_vt(x0=x0_override).prev"], atol=1e-6, rtol=0)
    rederived = sched.step(i, z, s["x0_override"], (z - sched.alpha_sigma(i)[0] * s["x0_override"])
                           / sched.alpha_sigma(i)[1])
    if tstep != 1:  # re-deriving ε̂ from the edited x̂0 is a different (wrong) update
        assert (rederived - s[f"t{tstep}.step_vt(x0=x0_override).prev"]).abs().max() > 1e-3


def test_schedule_of_three_steps_and_lowres_augmentation(parity_dir):
    s = _load(parity_dir, "uav/scheduler_io.safetensors")
    meta = json.loads(safetensors_torch.safe_open(str(parity_dir / "uav/scheduler_io.safetensors"), "pt")
                      .metadata()["lowres_config"])
    sched = make_schedule({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.0001,
                           "beta_end": 0.02, "prediction_type": "v_prediction", "clip_sample": False,
                           "set_alpha_to_one": False, "steps_offset": 1}, "ddim", 3)
    assert sched.timesteps.tolist() == s["timesteps_3"].tolist() == [667, 334, 1]
    torch.testing.assert_close(sched.alpha_prod_prev[-1], s["final_alpha_cumprod"])
    noisy = augment_lr(s["lowres.image"], meta, 120, s["lowres.noise"])
    torch.testing.assert_close(noisy, s["lowres.add_noise_120"], atol=1e-6, rtol=0)


# ---- synthetic: known integer shifts -------------------------------------------------------------------


def _shifted_clip(t=5, c=3, h=6, w=12, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(c, h, w + d * t, generator=g)
    # frame k shows the scene moved right by k*d pixels: frame_k(x) = base(x - k*d + d*t)
    frames = torch.stack([base[:, :, d * t - k * d: d * t - k * d + w] for k in range(t)])
    frames = frames + 0.1 * torch.randn(frames.shape, generator=g)  # per-frame detail to be fused
    fwd = torch.zeros(t - 1, 2, h, w)
    fwd[:, 0] = d  # frame_i(x) ~ frame_{i+1}(x + d)
    return frames, VideoFlow(fwd, -fwd)


def _hand_recurrence(x, d):
    """The recurrence of §2.3 step 6e on a horizontal integer shift, by integer indexing only."""
    t, _, _, w = x.shape
    back = x.clone()
    for i in range(t - 2, -1, -1):
        for col in range(w):
            if col + d <= w - 1:  # the carried pixel lies inside frame i+1: flows agree
                back[i, :, :, col] = 0.5 * back[i + 1, :, :, col + d] + 0.5 * x[i, :, :, col]
    out = back.clone()
    for i in range(1, t):
        for col in range(w):
            if col - d >= 0:
                out[i, :, :, col] = 0.5 * out[i - 1, :, :, col - d] + 0.5 * back[i, :, :, col]
    return out


@pytest.mark.parametrize("d", [1, 2])
def test_integer_shift_equals_hand_recurrence(d):
    x, vf = _shifted_clip(d=d)
    out = LatentPropagation(vf, steps=[0])(x)
    torch.testing.assert_close(out, _hand_recurrence(x, d), atol=1e-6, rtol=0)
    # the right border columns of the backward sweep / left of the forward sweep are rejected by the check
    vb, vf_ = propagation_validity(vf.forward, vf.backward)
    assert vb[0, 0, 0, -d:].eq(0).all() and vb[0, 0, 0, :-d].eq(1).all()
    assert vf_[0, 0, 0, :d].eq(0).all() and vf_[0, 0, 0, d:].eq(1).all()


def test_inconsistent_pixels_are_left_untouched():
    x, vf = _shifted_clip(t=4, h=10, w=14, d=1, seed=1)
    bwd = vf.backward.clone()
    bwd[:, :, 3:7, 4:9] = torch.tensor([5.0, -4.0]).view(1, 2, 1, 1)  # an object the flows disagree on
    f, b = vf.forward, bwd
    out = propagate_latents(x, f, b)
    vb = fb_consistency_uav(f, b)  # frame i <- i+1
    vfw = fb_consistency_uav(b, f)  # frame i+1 <- i
    for i in range(x.shape[0]):
        rejected = torch.ones(1, 1, 10, 14, dtype=torch.bool)
        if i < x.shape[0] - 1:
            rejected &= vb[i:i + 1] == 0
        if i > 0:
            rejected &= vfw[i - 1:i] == 0
        sel = rejected.expand(1, 3, -1, -1)[0]
        assert sel.any()
        assert torch.equal(out[i][sel], x[i][sel])
    changed = (out - x).abs() > 1e-4
    assert changed.float().mean() > 0.3  # elsewhere the clip is smoothed


def test_single_frame_and_shape_errors():
    x = torch.randn(1, 4, 5, 6)
    empty = torch.zeros(0, 2, 5, 6)
    assert torch.equal(propagate_latents(x, empty, empty), x)
    x3, vf = _shifted_clip(t=3)
    with pytest.raises(ValueError, match="frames"):
        LatentPropagation(vf, steps=[0])(torch.randn(4, 3, 6, 12))
    with pytest.raises(ValueError, match="mode"):
        LatentPropagation(vf, mode="blend")
    with pytest.raises(ValueError, match="flows must be"):
        propagate_latents(x3, vf.forward[:1], vf.backward[:1])


def test_hook_runs_only_at_its_steps_inside_the_generic_loop():
    x, vf = _shifted_clip(t=4, d=1)
    sched = make_schedule({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.0001,
                           "beta_end": 0.02, "prediction_type": "v_prediction", "clip_sample": False,
                           "set_alpha_to_one": False, "steps_offset": 1}, "ddim", 4)
    seen = []

    class Spy(LatentPropagation):
        def __call__(self, x0):
            seen.append(1)
            return super().__call__(x0)

    def denoise(z, t, i):
        return 0.3 * z

    plain = sample(denoise, x.clone(), sched)
    hooked = sample(denoise, x.clone(), sched, hooks=[Spy(vf, steps=[1, 2])])
    assert len(seen) == 2
    assert (plain - hooked).abs().max() > 1e-3
    same = sample(denoise, x.clone(), sched, hooks=[LatentPropagation(vf, steps=[])])
    assert torch.equal(plain, same)


@pytest.mark.parametrize("given,steps,indices", [
    ("-6,-4,-2", 30, [24, 26, 28]),  # the published setting, counted from the end
    ("-6, -4, -2", 20, [14, 16, 18]),  # still the last steps at fewer steps
    ("24,26,28", 30, [24, 26, 28]),  # loop indices keep their meaning
    ([28, -2, 24.0], 30, [24, 28]),  # a JSON list; the same step twice counts once
    (-1, 2, [1]),
    ("", 5, []),
])
def test_propagation_steps_count_from_the_end_like_python_indices(given, steps, indices):
    assert resolve_propagation_steps(given, steps) == indices


def test_out_of_range_propagation_steps_name_the_range_and_the_from_the_end_form():
    with pytest.raises(ValueError, match=r"24, 26, 28 are outside 0\.\.19 \(or -20\.\.-1 counted from the end\) "
                                         r"for steps = 20; count from the end instead: -6,-4,-2"):
        resolve_propagation_steps("24,26,28", 20)
    with pytest.raises(ValueError, match=r"28 is outside 0\.\.26 .*instead: -6,-4,-2"):
        resolve_propagation_steps("24,26,28", 27)
    with pytest.raises(ValueError, match="e.g. -1 for the last step"):  # -6 does not fit 2 steps either
        resolve_propagation_steps("24,26,28", 2)
    with pytest.raises(ValueError, match=r"-21 is outside 0\.\.19 \(or -20\.\.-1 counted from the end\) "
                                         r"for steps = 20$"):
        resolve_propagation_steps([-21], 20)
    with pytest.raises(ValueError, match="separated by commas"):
        resolve_propagation_steps("a,b", 30)
    with pytest.raises(ValueError, match="whole step numbers"):
        resolve_propagation_steps([1.5], 30)
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        resolve_propagation_steps("-1", 0)
