"""Motion guidance (methods.md §4.3 step 6c) against parity/mgld/guidance_io.safetensors, plus the
finite-difference check of the gradient and the hook's behaviour.

Reached: loss bit-exact, gradient max abs diff ~2e-10 (values ~2e-3), guided latents at i = 49, 10, 0
within 3e-7 (values ~1).
"""
from __future__ import annotations

import pytest
import torch

from vsr_core.flow import VideoFlow
from vsr_core.sampling.mgld import mgld_schedule
from vsr_core.sampling.motion_guidance import (
    MotionGuidance,
    guided_update,
    latent_flow,
    motion_loss,
    motion_loss_grad,
)


def _load(parity_dir):
    from safetensors.torch import load_file

    path = parity_dir / "mgld/guidance_io.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return load_file(str(path))


def _video_flow(t) -> VideoFlow:
    # official flows[1] / flow_bwd_prop = RAFT(f_i, f_{i+1}) = our forward; flows[0] = our backward
    return VideoFlow(t["flows_bwd_prop"][0], t["flows_fwd_prop"][0], t["fwd_occs"][0], t["bwd_occs"][0])


def test_loss_and_gradient_match_official(parity_dir):
    t = _load(parity_dir)
    loss, grad = motion_loss_grad(t["latents"], _video_flow(t))
    torch.testing.assert_close(loss, t["loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, t["grad"], rtol=0, atol=1e-8)
    assert grad.abs().max() > 1e-4  # a non-trivial gradient was compared


@pytest.mark.parametrize("i", [49, 10, 0])
def test_guided_latents_match_official(parity_dir, i):
    t = _load(parity_dir)
    s = mgld_schedule(50)
    lv = s.posterior_log_variance_clipped[i]
    torch.testing.assert_close(lv, t[f"i{i}.model_log_variance"], rtol=0, atol=0)
    _, grad = motion_loss_grad(t["latents"], _video_flow(t))
    z = guided_update(t["latents"], grad, lv, -10.0)
    torch.testing.assert_close(z, t[f"i{i}.z_guided(g=-10)"], rtol=0, atol=3e-7)
    # the same step through the loop hook (loop step k runs respaced index 49 - k)
    hook = MotionGuidance(_video_flow(t), scale=-10.0)
    z2 = hook.on_step(t["latents"].clone(), None, 49 - i, s)
    torch.testing.assert_close(z2, t[f"i{i}.z_guided(g=-10)"], rtol=0, atol=3e-7)


def _random_case(seed=0, t=4, hw=(7, 9)):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(t, 3, *hw, generator=g, dtype=torch.float64)
    fwd = torch.randn(t - 1, 2, *hw, generator=g) * 1.5
    bwd = torch.randn(t - 1, 2, *hw, generator=g) * 1.5
    of = (torch.rand(t - 1, 1, *hw, generator=g) > 0.7).float()
    ob = (torch.rand(t - 1, 1, *hw, generator=g) > 0.7).float()
    return lat, (fwd.double(), bwd.double(), of.double(), ob.double())


@pytest.mark.parametrize("pairing", ["official", "aligned"])
def test_gradient_finite_differences(pairing):
    lat, fl = _random_case()
    # motion_loss in float64 (motion_loss_grad upcasts only to float32)
    z = lat.clone().requires_grad_(True)
    loss = motion_loss(z, fl, pairing)
    (grad,) = torch.autograd.grad(loss, z)
    g = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(12):
        idx = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in lat.shape)
        up, dn = lat.clone(), lat.clone()
        up[idx] += eps
        dn[idx] -= eps
        fd = (motion_loss(up, fl, pairing) - motion_loss(dn, fl, pairing)) / (2 * eps)
        assert float(fd) == pytest.approx(float(grad[idx]), rel=1e-4, abs=1e-9), idx
    # a directional derivative over all entries
    d = torch.randn(lat.shape, generator=g, dtype=torch.float64)
    fd = (motion_loss(lat + eps * d, fl, pairing) - motion_loss(lat - eps * d, fl, pairing)) / (2 * eps)
    assert float(fd) == pytest.approx(float((grad * d).sum()), rel=1e-5)


def test_guidance_lowers_the_loss_and_zero_scale_is_identity():
    lat, fl = _random_case(2)
    lat = lat.float()
    fl = tuple(v.float() for v in fl)
    vf = VideoFlow(*fl)
    s = mgld_schedule(50)
    hook = MotionGuidance(vf, scale=-0.05)
    before = float(motion_loss(lat, vf))
    after = float(motion_loss(hook.on_step(lat, None, 10, s), vf))
    assert after < before
    off = MotionGuidance(vf, scale=0.0)
    assert torch.equal(off.on_step(lat, None, 10, s), lat)


def test_official_pairing_quirks():
    # frames identical and static, no occlusion: the aligned loss is 0, the official one keeps the
    # zero-target shrinkage of L_{T-2} and L_1 (§4.3 step 6c quirk 2)
    t, hw = 5, (6, 6)
    lat = torch.ones(t, 4, *hw)
    z = torch.zeros(t - 1, 2, *hw)
    o = torch.zeros(t - 1, 1, *hw)
    assert float(motion_loss(lat, (z, z, o, o), "aligned")) == 0.0
    # two shrinkage terms of mean |1| each; interior frames warped by zero flow compare equal
    assert float(motion_loss(lat, (z, z, o, o), "official")) == pytest.approx(2.0)
    # fully occluded: every term masked out
    assert float(motion_loss(lat, (z, z, o + 1, o + 1), "official")) == 0.0


def test_latent_flow_resizes_and_recomputes_masks():
    lat, fl = _random_case(3, t=3, hw=(8, 12))
    vf = VideoFlow(fl[0].float(), fl[1].float(), frame_size=(32, 48))
    lf = latent_flow(vf, (4, 6))
    assert lf.grid_size == (4, 6) and lf.has_occlusion
    torch.testing.assert_close(lf.forward[:, 0].mean(), vf.forward[:, 0].mean() * 0.5, rtol=0.2, atol=0.2)
    with pytest.raises(ValueError, match="grid"):
        motion_loss(torch.zeros(3, 4, 5, 5), lf)
    with pytest.raises(ValueError, match="pairs"):
        motion_loss(torch.zeros(4, 4, 4, 6), lf)


def test_gradient_works_under_inference_mode():
    """ComfyUI executes nodes inside torch.inference_mode(): the guidance must still differentiate."""
    from vsr_core.flow import VideoFlow
    from vsr_core.sampling.motion_guidance import motion_loss_grad

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g)
    flow = VideoFlow(torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g),
                     torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    loss, grad = motion_loss_grad(z, flow)
    with torch.inference_mode():
        zi, fi = z.clone(), VideoFlow(flow.forward.clone(), flow.backward.clone(), flow.occ_forward.clone(),
                                      flow.occ_backward.clone())
        loss_i, grad_i = motion_loss_grad(zi, fi)
    assert torch.allclose(loss, loss_i) and torch.allclose(grad, grad_i) and grad.abs().sum() > 0
