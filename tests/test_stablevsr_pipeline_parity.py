"""The official StableVSR pipeline run (``stablevsr/pipeline_io``) reproduced by ``sample_stablevsr``.

3 frames x 2 DDPM steps (t = 501, 1) on the tiny official-key weights, fed the recorded prompt
embedding, the recorded flows (``in.flow_call*`` as a ``VideoFlow``) and either the recorded noise or
our default CPU generator with seed 42 (the official run drew the same numbers). Checked per frame and
step: the UNet input (z_t and LR), every ControlNet condition (decoded, warped previous x̂0), the model
output, x̂0, z_prev, and the final decoded frames. Reached on CPU float32: max abs diff 4.4e-6 on the
model outputs, 3.8e-6 on the ControlNet conditions, 2.0e-6 on z_t / x̂0 / z_prev (values up to ~3),
2.2e-6 on the final frames; asserted: 2e-5 on states, 1e-5 on frames.
"""
from __future__ import annotations

import json

import pytest
import torch

from vsr_core.flow import VideoFlow
from vsr_core.models.bundle import VSRModel
from vsr_core.sampling.decode import decode_latents
from vsr_core.sampling.stablevsr import frame_order, sample_stablevsr
from vsr_core.sampling.x4 import prepare_lr

safetensors_torch = pytest.importorskip("safetensors.torch")
diffusers = pytest.importorskip("diffusers")

STATE_TOL = 2e-5
FRAME_TOL = 1e-5
T, STEPS = 3, 2


def _load(folder, name):
    path = folder / name
    if not path.is_file():
        pytest.skip(f"parity file {path} is missing")
    return safetensors_torch.load_file(str(path))


def _cfg(folder, name):
    return {k: v for k, v in json.loads((folder / name).read_text()).items() if not k.startswith("_")}


def build_parity_model(folder) -> VSRModel:
    """The tiny StableVSR bundle from the parity folder, loaded strictly by hand (no loader)."""
    unet = diffusers.UNet2DConditionModel.from_config(_cfg(folder, "tiny_unet_config.json"))
    unet.load_state_dict(_load(folder, "tiny_weights.safetensors"), strict=True)
    cn = diffusers.ControlNetModel.from_config(_cfg(folder, "tiny_controlnet_config.json"))
    cn.load_state_dict(_load(folder, "tiny_controlnet_weights.safetensors"), strict=True)
    vae = diffusers.AutoencoderKL.from_config(_cfg(folder, "tiny_vae_config.json"))
    vae.load_state_dict(_load(folder, "tiny_vae_weights.safetensors"), strict=True)
    sched = json.loads((folder / "scheduler_config.json").read_text())
    return VSRModel("stablevsr", unet.eval(), vae.eval(), controlnet=cn.eval(), scheduler_config=sched,
                    config={"scaling_factor": 0.08333, "vae_scale_factor": 4})


def parity_flow(rec) -> VideoFlow:
    """Call 2(i−1) = RAFT(cur=i, prev=i−1) -> backward[i−1]; call 2(i−1)+1 = RAFT(prev, cur) -> forward[i−1]."""
    return VideoFlow(forward=torch.cat([rec["in.flow_call1"], rec["in.flow_call3"]]),
                     backward=torch.cat([rec["in.flow_call0"], rec["in.flow_call2"]]), engine="recorded")


class Recorder:
    """Wraps the UNet and ControlNet forwards and collects (x0, z_prev) per frame and step."""

    def __init__(self, model):
        self.unet_in, self.unet_out, self.ctrl_cond, self.x0, self.z_prev = [], [], [], [], {}
        self._wrap(model.unet, self._unet)
        self._wrap(model.controlnet, self._ctrl)

    def _wrap(self, module, hook):
        orig = module.forward

        def fwd(*a, **kw):
            out = orig(*a, **kw)
            hook(a, kw, out)
            return out

        module.forward = fwd

    def _unet(self, a, kw, out):
        self.unet_in.append(a[0].clone())
        self.unet_out.append(out[0].clone())

    def _ctrl(self, a, kw, out):
        self.ctrl_cond.append(kw["controlnet_cond"].clone())

    def callback(self, done, total, x0):
        self.x0.append(x0.clone())

    def on_step(self, x_prev, x0, i, schedule):
        self.z_prev[i] = x_prev.clone()
        return x_prev


@pytest.fixture(scope="module")
def parity(parity_dir):
    folder = parity_dir / "stablevsr"
    rec = _load(folder, "pipeline_io.safetensors")
    return folder, rec


@pytest.mark.parametrize("noise_source", ["seed42", "recorded"])
def test_pipeline_io_reproduced(parity, noise_source):
    folder, rec = parity
    model = build_parity_model(folder)
    lr = prepare_lr(torch.stack([rec[f"in.lr_uint8_frame{k}"] for k in range(T)]), 4)
    r = Recorder(model)
    kwargs = {}
    if noise_source == "recorded":
        kwargs["latents"] = torch.cat([rec[f"init_latent{k}"] for k in range(T)])

        def noise(i, k, shape):
            return rec[f"ddpm_variance_noise{i * T + frame_order(T, i).index(k)}"]

        kwargs["noise"] = noise
    latents = sample_stablevsr(model, lr, parity_flow(rec), rec["in.prompt_embeds"], steps=STEPS,
                               scheduler="ddpm", seed=42, callback=r.callback, hooks=[r], **kwargs)

    assert len(r.unet_in) == T * STEPS and len(r.ctrl_cond) == (T - 1) * STEPS
    ctrl = 0
    for j in range(T * STEPS):
        i, pos = divmod(j, T)
        k = frame_order(T, i)[pos]
        assert int(rec[f"step{j}.t"]) == int(rec[f"unet_call{j}.timestep"])
        torch.testing.assert_close(r.unet_in[j], rec[f"unet_call{j}.sample"], atol=STATE_TOL, rtol=0)
        torch.testing.assert_close(r.unet_in[j][:, :4], rec[f"step{j}.z_t"], atol=STATE_TOL, rtol=0)
        assert bool(rec[f"unet_call{j}.has_ctrl"]) == (pos > 0)
        if pos > 0:
            torch.testing.assert_close(r.ctrl_cond[ctrl], rec[f"controlnet_call{ctrl}.controlnet_cond"],
                                       atol=STATE_TOL, rtol=0)
            ctrl += 1
        torch.testing.assert_close(r.unet_out[j], rec[f"step{j}.model_output"], atol=STATE_TOL, rtol=0)
        torch.testing.assert_close(r.x0[j], rec[f"step{j}.x0"], atol=STATE_TOL, rtol=0)
        torch.testing.assert_close(r.z_prev[i][k:k + 1], rec[f"step{j}.z_prev"], atol=STATE_TOL, rtol=0)

    frames = decode_latents(model.vae, latents, model.scaling_factor)
    for k in range(T):
        torch.testing.assert_close(frames[k:k + 1], rec[f"out.frame{k}"], atol=FRAME_TOL, rtol=0)
