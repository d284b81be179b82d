"""StableVSR's sampling rules, checked with an instrumented ControlNet on tiny random weights.

Each rule of methods.md §3.3 has a test that fails when it is broken: the frame order alternates
every step; the first frame of each pass gets no ControlNet; every other frame's ControlNet sees the
VAE decode of the x̂0 its predecessor predicted at the same step, warped with the right flow
(``backward[k-1]`` going forward in time, ``forward[k]`` going backward). Plus determinism, CPU
offload equality, progress per frame per step, and cancelling from the callback.
"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

from vsr_core.flow import VideoFlow, warp
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.decode import vae_decode
from vsr_core.sampling.stablevsr import frame_order, guidance_flow, sample_stablevsr
from vsr_core.sampling.x4 import LRConditioning

SCHED = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
         "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
         "set_alpha_to_one": False, "steps_offset": 1}
T, H, W = 3, 8, 12  # latent (= LR) grid; HR guidance is 32 x 48


def _randomize(module, seed):
    # zero-initialised ControlNet convs would make the TCM a no-op; refill like the parity vectors do
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def tiny_stablevsr() -> VSRModel:
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=16, use_linear_projection=True,
        only_cross_attention=(True, False),
    )
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16, scaling_factor=0.08333)
    for seed, m in enumerate((unet, cn, vae)):
        _randomize(m, seed)
    return VSRModel("stablevsr", unet.eval(), vae.eval(), controlnet=cn.eval(), scheduler_config=dict(SCHED),
                    config={"scaling_factor": 0.08333, "vae_scale_factor": 4})


def frame_lr():
    """Frame k's LR is the constant k/4 − 0.5, so the UNet input tells which frame is being denoised."""
    return torch.stack([torch.full((3, H, W), k / 4 - 0.5) for k in range(T)])


def which_frame(sample7):
    return round((float(sample7[0, 4:].mean()) + 0.5) * 4)


def distinct_flows():
    """Smooth flows on the HR grid, different for every pair and direction (a wrong pick is visible)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 4 * H), torch.linspace(-1, 1, 4 * W), indexing="ij")
    f = [torch.stack([3 * torch.sin(2 * ys + j) + j, 2 * torch.cos(3 * xs - j) - j]) for j in range(4)]
    return VideoFlow(forward=torch.stack(f[:2]), backward=torch.stack(f[2:]))


class Spy:
    """Records every UNet / ControlNet call (frame, guidance image) and every callback x̂0."""

    def __init__(self, model):
        self.calls, self.x0 = [], []
        self._pending = None
        unet_fwd, cn_fwd = model.unet.forward, model.controlnet.forward

        def cn(*a, **kw):
            self._pending = kw["controlnet_cond"].clone()
            return cn_fwd(*a, **kw)

        def unet(*a, **kw):
            self.calls.append((which_frame(a[0]), self._pending))
            self._pending = None
            return unet_fwd(*a, **kw)

        model.unet.forward, model.controlnet.forward = unet, cn

    def callback(self, done, total, x0):
        self.x0.append(x0.clone())


PROMPT = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(0))


def test_order_alternates_and_first_frame_of_each_pass_has_no_controlnet():
    model = tiny_stablevsr()
    spy = Spy(model)
    sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=4, seed=3)
    frames = [f for f, _ in spy.calls]
    assert frames == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0]
    assert [g is not None for _, g in spy.calls] == [False, True, True] * 4

    model = tiny_stablevsr()
    spy = Spy(model)
    sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=3, bidirectional=False)
    assert [f for f, _ in spy.calls] == [0, 1, 2] * 3
    assert [g is not None for _, g in spy.calls] == [False, True, True] * 3


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpmpp_2m"])
def test_controlnet_sees_same_step_previous_x0_decoded_and_warped(scheduler):
    model = tiny_stablevsr()
    spy = Spy(model)
    flow = distinct_flows()
    sample_stablevsr(model, frame_lr(), flow, PROMPT, steps=2, scheduler=scheduler, seed=3,
                     callback=spy.callback)
    assert len(spy.x0) == len(spy.calls) == 2 * T
    with torch.no_grad():
        for j, (k, guide) in enumerate(spy.calls):
            i, pos = divmod(j, T)
            if pos == 0:
                continue
            prev = frame_order(T, i)[pos - 1]
            hr = vae_decode(model.vae, spy.x0[j - 1], model.scaling_factor).float()
            right = flow.backward[k - 1:k] if prev == k - 1 else flow.forward[k:k + 1]
            torch.testing.assert_close(guide, warp(hr, right, convention="stablevsr"), atol=1e-5, rtol=0)
            # what a mistake would have fed instead is far from it
            # the same pair's flow in the other direction (the classic forward/backward mix-up)
            wrong_dir = flow.forward[k - 1:k] if prev == k - 1 else flow.backward[k:k + 1]
            assert (guide - warp(hr, wrong_dir, convention="stablevsr")).abs().max() > 0.05
            assert (guide - hr).abs().max() > 0.05  # not unwarped
            assert (guide - warp(hr, right, convention="mgld")).abs().max() > 1e-3  # StableVSR's convention
            if j > T:  # the previous *step*'s x̂0 of that frame would be wrong too
                stale = vae_decode(model.vae, spy.x0[j - T - 1], model.scaling_factor).float()
                assert (guide - warp(stale, right, convention="stablevsr")).abs().max() > 1e-3


def test_guidance_is_not_clamped():
    model = tiny_stablevsr()
    spy = Spy(model)
    sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=2, seed=3, callback=spy.callback)
    with torch.no_grad():
        hr = vae_decode(model.vae, spy.x0[0], model.scaling_factor)
    assert hr.abs().max() > 1.0, "tiny VAE should produce out-of-range values for this check"
    assert spy.calls[1][1].abs().max() > 1.0


def test_tcm_off_never_calls_controlnet_and_changes_the_result():
    model = tiny_stablevsr()
    spy = Spy(model)
    off = sample_stablevsr(model, LRConditioning(frame_lr()), None, PROMPT, steps=2, seed=3, tcm=False)
    assert all(g is None for _, g in spy.calls) and len(spy.calls) == 2 * T
    on = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=2, seed=3)
    assert (off - on).abs().max() > 1e-3


def test_determinism_seed_and_offload_equality():
    model = tiny_stablevsr()
    a = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5)
    b = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5)
    c = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=6)
    d = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5, keep_on_cpu=True)
    assert a.shape == (T, 4, H, W) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b) and torch.equal(a, d)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_equality_on_cuda():
    model = tiny_stablevsr()
    model.device = torch.device("cuda")
    a = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5)
    d = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5, keep_on_cpu=True)
    assert torch.equal(a, d)
    cpu = tiny_stablevsr()
    ref = sample_stablevsr(cpu, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5)
    # the seed reproduces across devices, up to kernel rounding: cuDNN's default TF32 convolutions round
    # to 10 mantissa bits (measured on an H200: 1.3e-3 after 3 steps); in full fp32 the gap is far smaller
    assert (a - ref).abs().max() < 1e-2
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        full = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=5)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert (full - ref).abs().max() < 1e-4


def test_progress_per_frame_per_step_and_interrupt_releases_tensors():
    model = tiny_stablevsr()
    seen = []
    sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=2, seed=1,
                     callback=lambda d, n, x0: seen.append((d, n)))
    assert seen == [(d, 2 * T) for d in range(1, 2 * T + 1)]

    refs, unet_calls = [], []
    fwd = model.unet.forward

    def unet(*a, **kw):
        out = fwd(*a, **kw)
        refs.extend(weakref.ref(t) for t in (a[0], out[0]))
        unet_calls.append(1)
        return out

    model.unet.forward = unet

    class Cancelled(Exception):
        pass

    def cancel(done, total, x0):
        refs.append(weakref.ref(x0))
        if done == T + 2:  # second frame of the second step
            raise Cancelled

    with pytest.raises(Cancelled) as info:
        sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=4, seed=1, callback=cancel)
    assert len(unet_calls) == T + 2  # stopped right after that frame's denoising step
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert info.value.__traceback__ is not None and not alive, f"{len(alive)} tensors kept alive by the exception"


def test_noise_injection_replaces_the_seed():
    model = tiny_stablevsr()
    lat = torch.randn(T, 4, H, W, generator=torch.Generator().manual_seed(0))
    table = torch.randn(3, T, 1, 4, H, W, generator=torch.Generator().manual_seed(1))

    def noise(i, k, shape):
        return table[i, k]

    a = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=1, latents=lat, noise=noise)
    b = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=3, seed=99, latents=lat, noise=noise)
    assert torch.equal(a, b)  # nothing is drawn from the seed when both are given


def test_guidance_flow_mapping_resizing_and_tiled_guidance():
    flow = distinct_flows()
    assert torch.equal(guidance_flow(flow, 2, 1, (32, 48)), flow.backward[1:2])
    assert torch.equal(guidance_flow(flow, 0, 1, (32, 48)), flow.forward[0:1])
    with pytest.raises(ValueError, match="neighbour"):
        guidance_flow(flow, 0, 2, (32, 48))
    lr_grid = VideoFlow(torch.ones(2, 2, H, W), -torch.ones(2, 2, H, W))
    up = guidance_flow(lr_grid, 1, 0, (4 * H, 4 * W))
    assert up.shape == (1, 2, 32, 48) and torch.allclose(up, torch.full_like(up, -4.0))

    model = tiny_stablevsr()
    spy = Spy(model)
    whole = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=2, seed=2)
    tiled = sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=2, seed=2, guidance_tile=6)
    assert spy.calls[-1][1].shape == (1, 3, 32, 48)
    assert torch.isfinite(tiled).all() and 0 < (tiled - whole).abs().max() < 5


def test_input_errors():
    model = tiny_stablevsr()
    with pytest.raises(ValueError, match="flows"):
        sample_stablevsr(model, frame_lr(), None, PROMPT, steps=1)
    with pytest.raises(ValueError, match="2 frames but the clip has 3"):
        sample_stablevsr(model, frame_lr(), VideoFlow(torch.zeros(1, 2, 32, 48), torch.zeros(1, 2, 32, 48)),
                         PROMPT, steps=1)
    with pytest.raises(ValueError, match="prompt_embeds"):
        sample_stablevsr(model, frame_lr(), distinct_flows(), None, steps=1)
    model.controlnet = None
    with pytest.raises(ValueError, match="ControlNet"):
        sample_stablevsr(model, frame_lr(), distinct_flows(), PROMPT, steps=1)
    # a single frame needs neither flows nor a ControlNet
    one = sample_stablevsr(model, frame_lr()[:1], None, PROMPT, steps=1)
    assert one.shape == (1, 4, H, W)
