"""Temporal mechanisms as pieces (vsr_core/sampling/mechanisms.py, nodes/temporal.py, issue 18).

Each mechanism attached to its own method, with the method's built-in copy of it switched off, reproduces
that method's parity vectors; a mechanism that does nothing leaves any sampler bit-identical; the chain
order is the order they act in; a mechanism that cannot act on a sampler is refused with the reason,
before any network runs.
"""
from __future__ import annotations

import pytest
import torch

from vsr_core.flow import VideoFlow
from vsr_core.sampling.mechanisms import (FlowWarpedConditioning, Mechanism, MotionGuidanceMechanism, Propagation,
                                          Site, WindowMerge, check_mechanisms)
from vsr_core.sampling.motion_guidance import MotionGuidance
from vsr_core.sampling.x4 import lr_conditioning, sample_per_frame


def _flow(t: int, h: int, w: int, dx: float = 1.0) -> VideoFlow:
    fwd = torch.zeros(t - 1, 2, h, w)
    fwd[:, 0] = dx
    return VideoFlow(fwd, -fwd)


# ------------------------------------------------------------------------------------- per-frame x4

@pytest.fixture(scope="module")
def x4():
    from test_sampler_x4 import _embeds, _frames, tiny_x4

    model = tiny_x4()
    return model, lr_conditioning(model, _frames(T=3), noise_level=20), _embeds()


@pytest.mark.parametrize("scheduler,reseed", [("ddim", False), ("ddpm", False), ("ddpm", True), ("dpmpp_2m", False)])
def test_x4_clip_loop_with_a_mechanism_that_does_nothing_is_bit_identical(x4, scheduler, reseed):
    model, cond, (pos, neg) = x4
    ref = sample_per_frame(model, cond, pos, neg, 5.0, 3, scheduler, seed=7, reseed_per_frame=reseed)
    idle = [Propagation(_flow(3, 12, 16), steps=""), MotionGuidanceMechanism(_flow(3, 12, 16), scale=0.0)]
    seen = []
    out = sample_per_frame(model, cond, pos, neg, 5.0, 3, scheduler, seed=7, reseed_per_frame=reseed,
                           temporal=idle, callback=lambda done, total, x0: seen.append((done, total, x0.shape[0])))
    assert torch.equal(out, ref)
    assert seen[-1] == (9, 9, 3)  # progress counts frames x steps; the hooks saw the whole clip


def test_x4_sampler_with_propagation_and_motion_guidance(x4):
    model, cond, (pos, neg) = x4
    flow = _flow(3, 12, 16)
    ref = sample_per_frame(model, cond, pos, neg, 5.0, 3, "ddim", seed=7)
    prop = sample_per_frame(model, cond, pos, neg, 5.0, 3, "ddim", seed=7, temporal=[Propagation(flow, steps="-1")])
    both = sample_per_frame(model, cond, pos, neg, 5.0, 3, "ddim", seed=7,
                            temporal=[Propagation(flow, steps="-1"), MotionGuidanceMechanism(flow, scale=-50.0)])
    assert (prop - ref).abs().max() > 1e-4 and (both - prop).abs().max() > 1e-4

    def warp_error(z):  # frames pulled together along the flow: neighbours agree more
        from vsr_core.flow.warp import warp

        return float((z[:-1] - warp(z[1:], flow.forward)).abs().mean())
    assert warp_error(prop) < warp_error(ref)


# ---------------------------------------------------------------------------------- Upscale-A-Video

def test_propagation_attached_to_uav_reproduces_the_official_pipeline(parity_dir):
    from test_uav_pipeline_parity import _frames, _inputs, _load, _tiny_model

    from vsr_core.sampling.uav import sample_uav

    t = _load(parity_dir, "uav/pipeline_io.safetensors")
    model = _tiny_model(parity_dir)
    cond, flow = _inputs(t)
    args = (model, cond, flow, t["in.prompt_embeds"], t["in.negative_prompt_embeds"], 6.0, 3)
    z = sample_uav(*args, seed=10, latents=_frames(t["in.latents"]), temporal=[Propagation(flow, steps=[1])])
    ref = _frames(t["out.latents"])
    assert (z - ref).abs().max() / ref.abs().max() < 2e-5  # as the built-in propagation reaches
    built_in = sample_uav(*args, seed=10, latents=_frames(t["in.latents"]), propagation_steps=[1])
    assert torch.equal(z, built_in)
    idle = sample_uav(*args, seed=10, latents=_frames(t["in.latents"]), propagation_steps=[1],
                      temporal=[Propagation(flow, steps=""), MotionGuidanceMechanism(flow, scale=0.0)])
    assert torch.equal(idle, built_in)
    hann = sample_uav(*args, seed=10, latents=_frames(t["in.latents"]), merge="hann")
    assert torch.equal(sample_uav(*args, seed=10, latents=_frames(t["in.latents"]), temporal=[WindowMerge("hann")]),
                       hann)


def test_the_chain_order_is_the_order_they_act_in(parity_dir):
    from test_uav_pipeline_parity import _frames, _inputs, _load, _tiny_model

    from vsr_core.sampling.uav import sample_uav

    t = _load(parity_dir, "uav/pipeline_io.safetensors")
    model = _tiny_model(parity_dir)
    cond, flow = _inputs(t)
    args = (model, cond, flow, t["in.prompt_embeds"], t["in.negative_prompt_embeds"], 6.0, 3)
    run = lambda **kw: sample_uav(*args, seed=10, latents=_frames(t["in.latents"]), **kw)  # noqa: E731
    a, b = MotionGuidanceMechanism(flow, -40.0, "official"), MotionGuidanceMechanism(flow, -40.0, "aligned")
    ab, ba = run(temporal=[a, b]), run(temporal=[b, a])
    assert (ab - ba).abs().max() > 1e-5
    hooks = [MotionGuidance(flow, -40.0, "official"), MotionGuidance(flow, -40.0, "aligned")]
    assert torch.equal(ab, run(hooks=hooks))


# --------------------------------------------------------------------------------------------- MGLD

def test_motion_guidance_attached_to_mgld_reproduces_the_official_run(parity_dir):
    import json

    from test_mgld_sampling_parity import _flow as mgld_flow

    from vsr_core.loaders.mgld import configs_from_official, load_mgld_model
    from vsr_core.sampling.mgld import sample_mgld

    from safetensors.torch import load_file

    d = parity_dir / "mgld"
    if not (d / "sampling_io.safetensors").is_file():
        pytest.skip("mgld parity files missing")
    rec = load_file(str(d / "sampling_io.safetensors"))
    cfg = configs_from_official(json.loads((d / "tiny_config.json").read_text()),
                                json.loads((d / "tiny_video_vae_config.json").read_text()))
    model = load_mgld_model(d / "tiny_weights.safetensors", d / "tiny_video_vae_weights.safetensors",
                            dtype="fp32", text_encoder=False, configs=cfg)
    flow = mgld_flow(rec)
    kw = dict(steps=50, tile=16, tile_overlap=8, tile_batch=4, init_latent=rec["init_latent(scaled)"],
              x_T_noise=rec["x_T_noise"], noise=[rec[f"sampler_noise{k}"] for k in range(50)],
              context=rec["semantic_c"])
    out = sample_mgld(model, None, flow, guidance_scale=0.0, temporal=[MotionGuidanceMechanism(flow, -10.0)], **kw)
    ref = rec["samples_z0"]
    assert float((out - ref).norm() / ref.norm()) < 2e-4  # the built-in guidance's own parity bound
    assert torch.equal(out, sample_mgld(model, None, flow, guidance_scale=-10.0, **kw))


# ---------------------------------------------------------------------------------------- StableVSR

def test_flow_warped_conditioning_attached_to_stablevsr_reproduces_the_official_pipeline(parity_dir):
    from test_stablevsr_pipeline_parity import FRAME_TOL, STEPS, T, _load, build_parity_model, parity_flow

    from vsr_core.sampling.decode import decode_latents
    from vsr_core.sampling.stablevsr import sample_stablevsr
    from vsr_core.sampling.x4 import prepare_lr

    folder = parity_dir / "stablevsr"
    rec = _load(folder, "pipeline_io.safetensors")
    model = build_parity_model(folder)
    lr = prepare_lr(torch.stack([rec[f"in.lr_uint8_frame{k}"] for k in range(T)]), 4)
    args = (model, lr, parity_flow(rec), rec["in.prompt_embeds"])
    z = sample_stablevsr(*args, steps=STEPS, scheduler="ddpm", seed=42, tcm=False,
                         temporal=[FlowWarpedConditioning()])
    assert torch.equal(z, sample_stablevsr(*args, steps=STEPS, scheduler="ddpm", seed=42))
    frames = decode_latents(model.vae, z, model.scaling_factor)
    for k in range(T):
        torch.testing.assert_close(frames[k:k + 1], rec[f"out.frame{k}"], atol=FRAME_TOL, rtol=0)
    off = sample_stablevsr(*args, steps=STEPS, scheduler="ddpm", seed=42, tcm=False)
    assert (off - z).abs().max() > 1e-4  # without it, no temporal conditioning


# ---------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("method", ["sd_x4", "upscale_a_video", "mgld", "satec"])
def test_flow_warped_conditioning_is_refused_where_no_controlnet_takes_it(method):
    with pytest.raises(ValueError, match="only the StableVSR sampler runs"):
        check_mechanisms([FlowWarpedConditioning()], Site(method, 4, 10))
    with pytest.raises(ValueError, match="load a StableVSR folder"):
        check_mechanisms([FlowWarpedConditioning()], Site("stablevsr", 4, 10, has_controlnet=False))
    check_mechanisms([FlowWarpedConditioning()], Site("stablevsr", 4, 10, has_controlnet=True))


def test_window_merge_is_refused_where_it_is_no_choice():
    for method in ("sd_x4", "stablevsr"):
        with pytest.raises(ValueError, match="has no windows"):
            check_mechanisms([WindowMerge("hann")], Site(method, 4, 10))
    with pytest.raises(ValueError, match="always overlap"):
        check_mechanisms([WindowMerge("segments")], Site("upscale_a_video", 4, 10))
    with pytest.raises(ValueError, match="choose hann or segments"):
        check_mechanisms([WindowMerge("running")], Site("mgld", 4, 10))
    with pytest.raises(ValueError, match="window merge must be one of"):
        WindowMerge("blend")
    with pytest.raises(TypeError, match="not a temporal mechanism"):
        check_mechanisms([object()], Site("mgld", 4, 10))
    assert isinstance(WindowMerge(), Mechanism)


def test_refusals_come_before_any_network_runs(x4):
    model, cond, (pos, neg) = x4
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="Flow-Warped Conditioning \\(temporal mechanism 2\\)"):
            sample_per_frame(model, cond, pos, neg, 5.0, 2, "ddim", temporal=[Propagation(_flow(3, 12, 16)),
                                                                              FlowWarpedConditioning()])
        with pytest.raises(ValueError, match="Window Merge"):
            from vsr_core.sampling.mgld import sample_mgld

            sample_mgld(model, torch.rand(3, 3, 8, 8), None, temporal=[WindowMerge("uniform")])
    finally:
        handle.remove()
    assert not calls


def test_a_flow_of_another_clip_is_refused(x4):
    model, cond, (pos, neg) = x4
    with pytest.raises(ValueError, match="covers 5 frames but the clip has 3"):
        sample_per_frame(model, cond, pos, neg, 5.0, 2, "ddim", temporal=[Propagation(_flow(5, 12, 16), "-1")])


# -------------------------------------------------------------------------------------------- nodes

def test_mechanism_nodes_chain_in_order_and_samplers_take_the_chain(tmp_path):
    from nodes import NODE_CLASS_MAPPINGS as N

    from vsr_core.sampling.x4 import LRConditioning

    flow = _flow(3, 12, 16)
    (chain,) = N["VSR_TemporalLatentPropagation"]().add(flow, steps="-1")
    (chain,) = N["VSR_TemporalMotionGuidance"]().add(flow, scale=-20.0, temporal=chain)
    (chain,) = N["VSR_TemporalWindowMerge"]().add("hann", temporal=chain)
    assert [type(m).__name__ for m in chain] == ["Propagation", "MotionGuidanceMechanism", "WindowMerge"]
    for name in ("VSR_X4PerFrameSampler", "VSR_StableVSRSampler", "VSR_UpscaleAVideoSampler", "VSR_MGLDSampler",
                 "VSR_SATeCoSampler"):
        assert N[name].INPUT_TYPES()["optional"]["temporal"][0] == "VSR_TEMPORAL"
    assert N["VSR_TemporalLatentPropagation"].VALIDATE_INPUTS(steps="24 26 x") != True  # noqa: E712
    assert N["VSR_TemporalMotionGuidance"].VALIDATE_INPUTS(start=0.8, end=0.2) != True  # noqa: E712

    from vsr_core.loaders import load_method_model
    from vsr_core.loaders.tiny import write_tiny_sd_x4

    model = load_method_model("sd_x4", write_tiny_sd_x4(tmp_path / "x4"))
    (latent,) = N["VSR_LatentEncoderLR"]().encode(torch.rand(3, 12, 16, 3), model)
    assert isinstance(latent["vsr_lr"], LRConditioning)
    sampler = N["VSR_X4PerFrameSampler"]()
    with pytest.raises(ValueError, match="Upscale-A-Video or MGLD sampler"):  # the window merge: refused
        sampler.sample(model, latent, steps=2, temporal=chain)
    (good,) = N["VSR_TemporalMotionGuidance"]().add(flow, scale=-20.0, temporal=chain[:1])
    (out,) = sampler.sample(model, latent, steps=2, temporal=good)["result"]
    (plain,) = sampler.sample(model, latent, steps=2)["result"]
    assert out["samples"].shape == plain["samples"].shape == (3, 4, 12, 16)
    assert not torch.equal(out["samples"], plain["samples"])


def test_motion_guidance_occlusion_handling(x4):
    model, cond, (pos, neg) = x4
    fwd = torch.zeros(2, 2, 12, 16)
    fwd[:, 0, :, :8] = 3.0  # the left half moves, the right half stays: an occluded band between them
    flow = VideoFlow(fwd, -fwd)
    run = lambda occ: sample_per_frame(model, cond, pos, neg, 5.0, 2, "ddim", seed=7,  # noqa: E731
                                       temporal=[MotionGuidanceMechanism(flow, -50.0, occlusion=occ)])
    assert (run("mgld") - run("none")).abs().max() > 1e-5
    with pytest.raises(ValueError, match="occlusion must be one of"):
        MotionGuidance(flow, occlusion="ignore")


def test_the_stream_chunk_carry_is_a_mechanism():
    from vsr_core.stream import ChunkCarry

    carry = ChunkCarry(keep=1)
    assert isinstance(carry, Mechanism) and carry.hooks(Site("upscale_a_video", 3, 4)) == [carry]
    check_mechanisms([carry], Site("sd_x4", 3, 4))


# ------------------------------------------------------------------------------- the queue-time check

def _combine_prompt() -> dict:
    from pack import load_pack
    from workflow_tools import GRAPHS, build, to_api

    mappings = load_pack().NODE_CLASS_MAPPINGS
    return to_api(build(GRAPHS["Combine"], mappings), mappings)


def _ids(prompt: dict, cls: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == cls]


def test_a_chain_its_sampler_cannot_run_is_refused_when_queued_on_the_temporal_input():
    from pack import queue_time_errors

    from nodes import NODE_CLASS_MAPPINGS as N
    from nodes.temporal import check_prompt

    prompt = _combine_prompt()
    (sampler,) = _ids(prompt, "VSR_X4PerFrameSampler")
    (mg,) = _ids(prompt, "VSR_TemporalMotionGuidance")
    assert check_prompt(prompt) == {} and prompt[sampler]["inputs"]["temporal"] == [mg, 0]  # the shipped one runs
    assert queue_time_errors(N["VSR_X4PerFrameSampler"], {}, linked=("temporal",)) == []

    prompt["99"] = {"class_type": "VSR_TemporalFlowConditioning", "inputs": {"scale": 1.0, "bidirectional": True,
                                                                             "temporal": [mg, 0]}}
    prompt[sampler]["inputs"]["temporal"] = ["99", 0]
    found = check_prompt(prompt)
    assert list(found) == [sampler] and "only the StableVSR sampler runs" in found[sampler]
    ((name, message),) = queue_time_errors(N["VSR_X4PerFrameSampler"], {"temporal": prompt[sampler]["inputs"]["temporal"]})
    assert name == "temporal" and "Flow-Warped Conditioning (temporal mechanism 3) cannot be used here" in message

    prompt = _combine_prompt()
    prompt[sampler]["inputs"]["steps"] = 4  # fewer steps than the propagation's -6
    assert "outside 0..3" in check_prompt(prompt)[sampler]


def test_the_queue_check_reads_the_model_a_stablevsr_sampler_gets():
    from nodes.temporal import check_prompt

    prompt = {
        "1": {"class_type": "VSR_LoadDiffusionModel", "inputs": {"model": "sd_x4/x4-upscaler-ema.safetensors"}},
        "2": {"class_type": "VSR_TemporalFlowConditioning", "inputs": {"scale": 1.0, "bidirectional": True}},
        "3": {"class_type": "VSR_StableVSRSampler", "inputs": {"model": ["1", 0], "steps": 10, "temporal": ["2", 0]}},
        "4": {"class_type": "VSR_TemporalWindowMerge", "inputs": {"mode": "segments"}},
        "5": {"class_type": "VSR_UpscaleAVideoSampler", "inputs": {"steps": 10, "temporal": ["4", 0]}},
    }
    found = check_prompt(prompt)
    assert "load a StableVSR folder" in found["3"] and "always overlap" in found["5"]
    prompt = {"1": {"class_type": "VSR_LoadDiffusionModel", "inputs": {"model": "stablevsr/StableVSR"}},
              "2": {"class_type": "VSR_TemporalFlowConditioning", "inputs": {}},
              "3": {"class_type": "VSR_StableVSRSampler", "inputs": {"model": ["1", 0], "temporal": ["2", 0]}}}
    assert check_prompt(prompt) == {}
