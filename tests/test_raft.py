"""RAFT: our model against the official key sets, the two weight layouts, strict loading, the engine."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import torch

from vsr_core.flow.raft import RAFT, RAFT_LARGE, RAFT_PRESETS, RAFT_TINY, CorrPyramid, RAFTEngine, convex_upsample
from vsr_core.loaders.raft import (
    RAFTWeightsError,
    add_module_prefix,
    canonical_to_torchvision,
    detect_raft_layout,
    load_raft,
    random_raft_state_dict,
    read_state_dict,
    strip_module_prefix,
    torchvision_to_canonical,
    write_raft_checkpoint,
)

DATA = Path(__file__).parent / "data"


def _keys(name: str) -> dict:
    return json.loads((DATA / f"raft_{name}_keys.json").read_text())


def _shapes(sd) -> dict:
    return {k: list(v.shape) for k, v in sd.items()}


def _frames(n=2, h=37, w=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h + 6, w + 6, generator=g)
    return base[..., 1 : 1 + h, 2 : 2 + w], base[..., 3 : 3 + h, 1 : 1 + w]


@pytest.fixture(scope="module")
def tiny() -> RAFT:
    return load_raft(random_raft_state_dict(RAFT_TINY, "princeton", seed=1))


# ------------------------------------------------------------------------- official structure and keys
def test_large_model_has_official_keys_shapes_and_param_count():
    model = RAFT(RAFT_LARGE)
    sd = model.state_dict()
    princeton, tv = _keys("princeton"), _keys("torchvision")
    assert _shapes(add_module_prefix(sd)) == princeton["keys"]
    assert _shapes(canonical_to_torchvision(sd)) == tv["keys"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == princeton["num_params"] == tv["num_params"] == 5_257_536


def test_remaps_round_trip_both_layouts():
    pr = random_raft_state_dict(RAFT_TINY, "princeton", seed=2)
    canon = strip_module_prefix(pr)
    assert add_module_prefix(canon).keys() == pr.keys()
    assert all(canon[k[len("module."):]] is v for k, v in pr.items())
    tv = canonical_to_torchvision(canon)
    assert not any(".norm3." in k for k in tv)  # torchvision stores the skip norm once
    back = torchvision_to_canonical(tv)
    assert back.keys() == canon.keys()
    assert all(torch.equal(back[k], canon[k]) for k in canon)
    assert torchvision_to_canonical(canonical_to_torchvision(back)).keys() == canon.keys()
    assert canonical_to_torchvision(torchvision_to_canonical(tv)).keys() == tv.keys()


def test_unknown_keys_pass_through_remaps():
    extra = {"something.else": torch.zeros(1)}
    assert "something.else" in canonical_to_torchvision(extra)
    assert "something.else" in torchvision_to_canonical(extra)


# ------------------------------------------------------------------------------------- strict loading
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_both_layouts_load_strictly_and_give_the_same_flow(tmp_path, suffix):
    p_pr = write_raft_checkpoint(tmp_path / f"raft-things{suffix}", RAFT_TINY, "princeton", seed=4)
    p_tv = write_raft_checkpoint(tmp_path / f"raft_large{suffix}", RAFT_TINY, "torchvision", seed=4)
    assert detect_raft_layout(read_state_dict(p_pr)) == "princeton"
    assert detect_raft_layout(read_state_dict(p_tv)) == "torchvision"
    m_pr, m_tv = load_raft(p_pr), load_raft(p_tv)
    assert m_pr.config == RAFT_TINY and m_tv.config == RAFT_TINY  # sizes inferred from the shapes
    sd_pr, sd_tv = m_pr.state_dict(), m_tv.state_dict()
    assert all(torch.equal(sd_pr[k], sd_tv[k]) for k in sd_pr)
    a, b = _frames(1, 128, 128)
    with torch.no_grad():
        f_pr, f_tv = m_pr(a * 2 - 1, b * 2 - 1, iters=2), m_tv(a * 2 - 1, b * 2 - 1, iters=2)
    assert torch.equal(f_pr, f_tv)
    assert torch.isfinite(f_pr).all()


def test_layout_detection_and_explicit_layout():
    pr = random_raft_state_dict(RAFT_TINY, "princeton")
    tv = random_raft_state_dict(RAFT_TINY, "torchvision")
    assert detect_raft_layout(pr) == "princeton"
    assert detect_raft_layout(strip_module_prefix(pr)) == "princeton"
    assert detect_raft_layout(tv) == "torchvision"
    load_raft(tv, layout="torchvision")
    load_raft(strip_module_prefix(pr), layout="princeton")
    with pytest.raises(RAFTWeightsError, match="'princeton' layout"):
        load_raft(tv, layout="princeton")
    with pytest.raises(RAFTWeightsError, match="not a RAFT state dict"):
        load_raft({"encoder.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="layout must be"):
        load_raft(pr, layout="mgld")


def test_missing_and_extra_keys_are_refused_with_their_names(tmp_path):
    pr = random_raft_state_dict(RAFT_TINY, "princeton")
    broken = dict(pr)
    del broken["module.update_block.gru.convq2.weight"]
    broken["module.update_block.extra.weight"] = torch.zeros(3)
    path = tmp_path / "raft-things.pth"
    torch.save(broken, path)
    with pytest.raises(RAFTWeightsError) as err:
        load_raft(path)
    msg = str(err.value)
    assert str(path) in msg and "'princeton'" in msg
    assert "module.update_block.gru.convq2.weight" in msg and "module.update_block.extra.weight" in msg
    assert "raft-things.pth" in msg and "C_T_SKHT_V2" in msg and "models/vsr/flow" in msg

    tv = random_raft_state_dict(RAFT_TINY, "torchvision")
    del tv["mask_predictor.conv.bias"]
    with pytest.raises(RAFTWeightsError, match=r"mask_predictor\.conv\.bias"):  # named as in the file
        load_raft(tv)


def test_shape_mismatch_is_refused():
    sd = random_raft_state_dict(RAFT_TINY, "princeton")
    with pytest.raises(RAFTWeightsError, match="shape mismatch"):
        load_raft(sd, config=RAFT_LARGE)


def test_num_batches_tracked_may_be_absent():
    sd = {k: v for k, v in random_raft_state_dict(RAFT_TINY, "torchvision").items() if "num_batches" not in k}
    assert isinstance(load_raft(sd), RAFT)


def test_missing_or_unreadable_file_names_file_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="raft-things.pth") as err:
        load_raft(tmp_path / "nope.pth")
    assert "nope.pth" in str(err.value)
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(RAFTWeightsError, match="garbage.pth"):
        load_raft(bad)


def test_config_overrides_apply_on_load():
    model = load_raft(random_raft_state_dict(RAFT_TINY, "princeton"), normalize_input=True, iters=3)
    assert model.config.normalize_input and model.config.iters == 3


# ---------------------------------------------------------------------------------- model mechanics
def test_correlation_window_is_x_major():
    # fmap2 is fmap1 moved by (dx=2, dy=1): each pixel's only match sits at that offset.
    h = w = 16
    n_pix = h * w
    feat = torch.eye(n_pix).view(n_pix, h, w)[None]
    fmap2 = torch.roll(feat, shifts=(1, 2), dims=(2, 3))
    r = 3
    corr = CorrPyramid(feat, fmap2, levels=1, radius=r)
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    out = corr.lookup(torch.stack([xs, ys])[None])  # [1, (2r+1)^2, h, w]
    side = 2 * r + 1
    centre = out[0, :, 5, 5]
    assert centre.argmax().item() == (2 + r) * side + (1 + r)  # channel i*(2r+1)+j <-> x offset i-r, y offset j-r
    assert centre.max().item() == pytest.approx(1 / n_pix ** 0.5)


def test_convex_upsample_follows_the_chosen_neighbour():
    flow = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    for neighbour, (dy, dx) in ((4, (0, 0)), (5, (0, 1)), (1, (-1, 0))):
        logits = torch.full((1, 9, 8, 8, 3, 4), -1e4)
        logits[:, neighbour] = 0
        up = convex_upsample(flow, logits.view(1, 9 * 64, 3, 4))
        assert up.shape == (1, 2, 24, 32)
        y, x = 9, 13  # inside cell (1, 1): its neighbour (1+dy, 1+dx) exists
        assert up[0, :, y, x].tolist() == (8 * flow[0, :, 1 + dy, 1 + dx]).tolist()
    # Mask axes are (sub-row, sub-col): upper half of each cell takes the centre, lower half the right.
    logits = torch.full((1, 9, 8, 8, 3, 4), -1e4)
    logits[:, 4, :4] = 0
    logits[:, 5, 4:] = 0
    up = convex_upsample(flow, logits.view(1, 9 * 64, 3, 4))
    assert up[0, :, 8 + 2, 8 + 6].tolist() == (8 * flow[0, :, 1, 1]).tolist()
    assert up[0, :, 8 + 6, 8 + 2].tolist() == (8 * flow[0, :, 1, 2]).tolist()


def test_model_rejects_sizes_it_cannot_handle(tiny):
    a = torch.zeros(1, 3, 128, 132)
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny(a, a)
    b = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="at least 128x128"):
        tiny(b, b)
    with pytest.raises(ValueError, match="shapes differ"):
        tiny(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 136))


def test_iterations_change_the_flow_and_all_predictions(tiny):
    a, b = _frames(1, 128, 128, seed=3)
    with torch.no_grad():
        one = tiny(a * 2 - 1, b * 2 - 1, iters=1)
        three = tiny(a * 2 - 1, b * 2 - 1, iters=3)
        preds = tiny(a * 2 - 1, b * 2 - 1, iters=3, all_predictions=True)
    assert not torch.allclose(one, three)
    assert len(preds) == 3 and torch.equal(preds[0], one) and torch.equal(preds[-1], three)


# --------------------------------------------------------------------------------------------- engine
@pytest.mark.parametrize("pad_mode,extra", [("replicate", {}), ("resize", {}), ("resize", {"uav_rescale": True})])
def test_engine_returns_flow_of_the_input_size(tiny, pad_mode, extra):
    engine = RAFTEngine(tiny, iters=2, pad_mode=pad_mode, **extra)
    src, dst = _frames(2, 37, 53)
    flow = engine(src, dst)
    assert flow.shape == (2, 2, 37, 53) and flow.dtype == torch.float32 and flow.device == src.device
    assert torch.isfinite(flow).all()


def test_engine_none_mode_needs_multiples_of_8(tiny):
    engine = RAFTEngine(tiny, iters=1, pad_mode="none")
    with pytest.raises(ValueError, match="divisible by 8.*replicate"):
        engine(*_frames(1, 37, 53))
    assert engine(*_frames(1, 40, 56)).shape == (1, 2, 40, 56)  # below min size: padded, not NaN


def test_engine_without_padding_equals_the_bare_model(tiny):
    src, dst = _frames(2, 128, 136, seed=5)
    engine = RAFTEngine(tiny, iters=2, pad_mode="replicate", input_range="-1_1")
    with torch.no_grad():
        direct = tiny(src * 2 - 1, dst * 2 - 1, iters=2)
    assert torch.equal(engine(src, dst), direct)


def test_replicate_padding_is_centred_and_cropped_back(tiny):
    # A 130x138 frame pads to 136x144 with 3/3 rows and 3/3 cols: cropping must hand back those pixels.
    src, dst = _frames(1, 130, 138, seed=6)
    engine = RAFTEngine(tiny, iters=1, pad_mode="replicate", input_range="-1_1")
    padded = [torch.nn.functional.pad(x * 2 - 1, [3, 3, 3, 3], mode="replicate") for x in (src, dst)]
    with torch.no_grad():
        ref = tiny(*padded, iters=1)[..., 3:-3, 3:-3]
    assert torch.equal(engine(src, dst), ref)


@pytest.mark.parametrize("input_range,lo,hi", [("-1_1", -1.0, 1.0), ("0_1", 0.0, 1.0), ("0_255", 0.0, 255.0)])
def test_engine_scales_input_range(tiny, input_range, lo, hi):
    seen = {}

    def hook(_module, args):
        seen["min"], seen["max"] = args[0].min().item(), args[0].max().item()

    handle = tiny.register_forward_pre_hook(hook)
    try:
        src = torch.zeros(1, 3, 128, 128)
        src[..., :64, :] = 1.0
        RAFTEngine(tiny, iters=1, input_range=input_range)(src, src)
    finally:
        handle.remove()
    assert seen["min"] == pytest.approx(lo) and seen["max"] == pytest.approx(hi)


def test_engine_half_on_cpu_warns_and_runs_fp32(tiny):
    src, dst = _frames(1, 128, 128)
    engine = RAFTEngine(tiny, iters=1, half=True)
    with pytest.warns(UserWarning, match="CUDA-only"):
        flow = engine(src, dst)
    assert torch.equal(flow, RAFTEngine(tiny, iters=1)(src, dst))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine(src, dst)  # warned once


def test_engine_rejects_bad_arguments(tiny):
    with pytest.raises(ValueError, match="input_range"):
        RAFTEngine(tiny, input_range="0_2")
    with pytest.raises(ValueError, match="pad_mode"):
        RAFTEngine(tiny, pad_mode="reflect")
    with pytest.raises(ValueError, match="iters"):
        RAFTEngine(tiny, iters=0)
    engine = RAFTEngine(tiny, iters=1)
    with pytest.raises(ValueError, match="same shape"):
        engine(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 72))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        engine(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))


def test_method_presets_are_the_official_calls(tiny):
    uav = RAFTEngine.for_method(tiny, "uav")
    assert (uav.iters, uav.input_range, uav.pad_mode, uav.uav_rescale) == (20, "-1_1", "resize", True)
    svsr = RAFTEngine.for_method(tiny, "stablevsr")
    assert (svsr.iters, svsr.input_range, svsr.pad_mode) == (12, "-1_1", "none")
    mgld = RAFTEngine.for_method(tiny, "mgld", iters=4)
    assert (mgld.iters, mgld.input_range, mgld.pad_mode, mgld.name) == (4, "0_1", "replicate", "raft-mgld")
    assert set(RAFT_PRESETS) == {"uav", "stablevsr", "mgld"}
    with pytest.raises(ValueError, match="method"):
        RAFTEngine.for_method(tiny, "satec")


def test_tiny_engine_is_fast_on_cpu(tiny):
    engine = RAFTEngine(tiny, iters=12)
    src, dst = _frames(1, 64, 64)
    engine(src, dst)
    t0 = time.perf_counter()
    engine(src, dst)
    assert time.perf_counter() - t0 < 1.0
