"""Our warp / consistency / flow-resize functions against tensors the official code produced.

Files: ``stablevsr/flow_warp_io``, ``uav/propagation_io`` (fbcheck.*, flow_warp.*, and the propagation
outputs that are the only record of UAV's area-resize of 2x flows), ``mgld/flow_io`` and the flow part of
``mgld/sampling_io``, ``stablevsr/pipeline_io`` (which flow call is which direction). Layout adapters
(UAV ``(B, 2, T-1, H, W)``, MGLD ``(B, T-1, 2, H, W)``, StableVSR ``(B, H, W, 2)``) live here, not in the
library. Reached: every float output bit-identical (max abs diff 0.0), every mask exactly equal.
"""
from __future__ import annotations

import pytest
import torch

from vsr_core.flow import (
    VideoFlow,
    estimate_video_flow,
    fb_consistency_mgld,
    fb_consistency_uav,
    occlusion_masks,
    resize_flow,
    warp,
)

safetensors_torch = pytest.importorskip("safetensors.torch")
ATOL = 1e-5


def _load(parity_dir, rel):
    path = parity_dir / rel
    if not path.is_file():
        pytest.skip(f"parity file {path} is missing")
    return safetensors_torch.load_file(str(path))


def _uav_layout_to_pairs(f):
    """UAV (B=1, 2, T-1, H, W) -> (T-1, 2, H, W)."""
    return f[0].transpose(0, 1).contiguous()


# ---- StableVSR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_stablevsr_flow_warp(parity_dir, mode):
    t = _load(parity_dir, "stablevsr/flow_warp_io.safetensors")
    flow = t["flow"].permute(0, 3, 1, 2)  # (B, H, W, 2) -> (B, 2, H, W)
    out = warp(t["x"], flow, mode=mode, convention="stablevsr")
    torch.testing.assert_close(out, t[f"out_{mode}"], atol=ATOL, rtol=0)
    # the quirk matters on this input: the geometrically exact warp is visibly different
    exact = warp(t["x"], flow, mode=mode, convention="stablevsr", normalize="exact")
    assert (exact - t[f"out_{mode}"]).abs().max() > 0.1


def test_stablevsr_flow_calls_map_onto_forward_backward(parity_dir):
    """StableVSR's call 2(i-1) = of(cur=i, prev=i-1) is our backward[i-1]; call 2(i-1)+1 our forward[i-1]."""
    t = _load(parity_dir, "stablevsr/pipeline_io.safetensors")
    calls = [(t[f"flow_call{k}.target"], t[f"flow_call{k}.source"], t[f"in.flow_call{k}"]) for k in range(4)]
    frames = torch.cat([t["flow_call0.source"], t["flow_call0.target"], t["flow_call2.target"]])

    class Recorded:
        name = "recorded"

        def __call__(self, src, dst):  # torchvision RAFT(image1=target, image2=source) = flow target -> source
            out = []
            for s, d in zip(src, dst):
                hit = [f for tg, so, f in calls if torch.equal(tg[0], s) and torch.equal(so[0], d)]
                assert len(hit) == 1, "engine asked for a pair the official run never computed"
                out.append(hit[0])
            return torch.cat(out)

    vf = estimate_video_flow(frames, Recorded(), with_occlusion=False)
    torch.testing.assert_close(vf.forward, torch.cat([t["in.flow_call1"], t["in.flow_call3"]]), atol=0, rtol=0)
    torch.testing.assert_close(vf.backward, torch.cat([t["in.flow_call0"], t["in.flow_call2"]]), atol=0, rtol=0)


# ---- Upscale-A-Video -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alphas", [(0.001, 0.05), (0.01, 0.5)])
def test_uav_fbcheck_validity(parity_dir, alphas):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    a1, a2 = alphas
    valid = fb_consistency_uav(t["fbcheck.flow_fw"], t["fbcheck.flow_bw"], a1, a2)
    expect = t[f"fbcheck.valid_a{a1}_b{a2}"]
    assert valid.shape == expect.shape
    assert torch.equal(valid, expect), f"{int((valid != expect).sum())} mask pixels differ"


def test_uav_fbcheck_through_video_flow(parity_dir):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    vf = VideoFlow(_uav_layout_to_pairs(t["flows_forward"]), _uav_layout_to_pairs(t["flows_backward"]))
    assert torch.equal(vf.forward, t["fbcheck.flow_fw"])
    occ_f, _ = occlusion_masks(vf, form="uav")
    assert torch.equal(occ_f, 1 - t["fbcheck.valid_a0.001_b0.05"])


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_uav_flow_warp(parity_dir, mode):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    out = warp(t["flow_warp.x"], t["fbcheck.flow_fw"], mode=mode, convention="uav")
    torch.testing.assert_close(out, t[f"flow_warp.{mode}"], atol=ATOL, rtol=0)


def _uav_training_free_propagation(
    x, flows_forward, flows_backward, interpolation, mode, fuse_scale, a1, a2, resize_mode="area"
):
    """Test scaffold: UAV §2.3 step 6e (Propagation(learnable=False)) from our warp / fbcheck / resize.

    Kept here only to reach the recorded outputs, the sole record of the official area-resize of the
    ``*_2x`` flows. x: (B, C, T, h, w); flows: UAV layout (B, 2, T-1, H', W').
    """
    t, (h, w) = x.shape[2], x.shape[-2:]
    ff = resize_flow(_uav_layout_to_pairs(flows_forward), (h, w), mode=resize_mode, scale="width")
    fb = resize_flow(_uav_layout_to_pairs(flows_backward), (h, w), mode=resize_mode, scale="width")

    def sweep(frames, order, prop_flows, check_flows, pair_of):
        out, prev = {}, None
        for k, i in enumerate(order):
            cur = frames[i]
            if k > 0:
                j = pair_of(i)
                valid = fb_consistency_uav(prop_flows[j : j + 1], check_flows[j : j + 1], a1, a2)
                warped = warp(prev, prop_flows[j : j + 1], mode=interpolation, convention="uav")
                if mode == "fuse":
                    warped = warped * fuse_scale + cur * (1 - fuse_scale)
                cur = valid * warped + (1 - valid) * cur
            out[i] = prev = cur
        return [out[i] for i in range(t)]

    frames = [x[:, :, i] for i in range(t)]
    back = sweep(frames, range(t - 1, -1, -1), ff, fb, lambda i: i)  # frame i+1 warped onto i by forward[i]
    fwd = sweep(back, range(t), fb, ff, lambda i: i - 1)  # frame i-1 warped onto i by backward[i-1]
    return torch.stack(fwd, dim=2)


@pytest.mark.parametrize(
    "key, flows, args",
    [
        ("out_pipeline_args", "", ("nearest", "fuse", 0.5, 0.001, 0.05)),
        ("out_defaults", "", ("bilinear", "fuse", 0.5, 0.01, 0.5)),
        ("out_copy_nearest", "", ("nearest", "copy", 0.5, 0.001, 0.05)),
        ("out_pipeline_args_flows2x", "_2x", ("nearest", "fuse", 0.5, 0.001, 0.05)),
    ],
)
def test_uav_propagation_outputs_including_area_resized_2x_flows(parity_dir, key, flows, args):
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    out = _uav_training_free_propagation(t["x"], t[f"flows_forward{flows}"], t[f"flows_backward{flows}"], *args)
    torch.testing.assert_close(out, t[key], atol=ATOL, rtol=0)


def test_uav_2x_parity_is_sensitive_to_the_resize_rule(parity_dir):
    """Guards the 2x case above: subsampling the 2x flows instead of area-averaging misses the record.

    (A 2x bilinear downscale without antialiasing equals the 2x2 area mean, so "nearest" is the foil.)
    """
    t = _load(parity_dir, "uav/propagation_io.safetensors")
    out = _uav_training_free_propagation(
        t["x"], t["flows_forward_2x"], t["flows_backward_2x"], "nearest", "fuse", 0.5, 0.001, 0.05,
        resize_mode="nearest",
    )
    assert (out - t["out_pipeline_args_flows2x"]).abs().max() > 1e-2


# ---- MGLD ----------------------------------------------------------------------------------------------


def test_mgld_consistency_masks(parity_dir):
    t = _load(parity_dir, "mgld/flow_io.safetensors")
    fo, bo = fb_consistency_mgld(t["fwd_flow"], t["bwd_flow"], 0.01, 0.5)
    assert torch.equal(fo[:, 0], t["fwd_occ_a0.01_b0.5"]), f"{int((fo[:, 0] != t['fwd_occ_a0.01_b0.5']).sum())} differ"
    assert torch.equal(bo[:, 0], t["bwd_occ_a0.01_b0.5"])
    vf = VideoFlow(t["fwd_flow"], t["bwd_flow"])
    of2, ob2 = occlusion_masks(vf, form="mgld")
    assert torch.equal(of2, fo) and torch.equal(ob2, bo)


def test_mgld_flow_warp(parity_dir):
    t = _load(parity_dir, "mgld/flow_io.safetensors")
    out = warp(t["flow_warp.x"], t["fwd_flow"], convention="mgld")
    torch.testing.assert_close(out, t["flow_warp.out"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [(24, 40), (6, 10)])
def test_mgld_resize_flow(parity_dir, size):
    t = _load(parity_dir, "mgld/flow_io.safetensors")
    out = resize_flow(t["resize_flow.in"], size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, t[f"resize_flow.out_{size[0]}x{size[1]}"], atol=ATOL, rtol=0)


def test_mgld_sampling_flows_and_masks_from_a_video_flow(parity_dir):
    """MGLD's script: RAFT on quarter-size frames, resize to the latent grid, then occlusion there.

    MGLD's flows_backward[i] = RAFT(f_i, f_{i+1}) (call 0) is our forward; its flows_forward (call 1) our
    backward; the script's ``flows[1]`` / ``flows[0]`` are those resized.
    """
    t = _load(parity_dir, "mgld/sampling_io.safetensors")
    frames = t["flownet_in.im_lq_0_1_quarter"][0]  # (5, 3, 48, 48) in [0, 1]
    call0, call1 = t["in.flownet_out_call0(lrs_1,lrs_2)"], t["in.flownet_out_call1(lrs_2,lrs_1)"]

    class Recorded:
        name = "recorded"

        def __call__(self, src, dst):
            out = []
            for s, d in zip(src, dst):
                si, di = (next(k for k in range(5) if torch.equal(frames[k], v)) for v in (s, d))
                assert abs(si - di) == 1, "engine asked for a pair the official run never computed"
                out.append(call0[si] if di == si + 1 else call1[di])
            return torch.stack(out)

    vf = estimate_video_flow(frames, Recorded(), chunk=3, with_occlusion=False).resized((24, 24))
    torch.testing.assert_close(vf.forward, t["flows[1].latent_res"][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(vf.backward, t["flows[0].latent_res"][0], atol=ATOL, rtol=0)
    vf = vf.with_occlusion("mgld")
    assert torch.equal(vf.occ_forward, t["fwd_occs"][0]) and torch.equal(vf.occ_backward, t["bwd_occs"][0])
