"""Forward-backward consistency masks (vsr_core.flow.occlusion) on scenes with known occlusions."""
from __future__ import annotations

import pytest
import torch

from vsr_core.flow import VideoFlow, fb_consistency_mgld, fb_consistency_uav, occlusion_masks

H, W = 24, 40
X0, Y0, S, D = 10, 6, 10, 4  # square top-left, side, rightward motion (pixels)


def _moving_square_flows():
    """Exact flows of a square moving D px right over a static background (frame 0 -> frame 1)."""
    fwd = torch.zeros(1, 2, H, W)
    bwd = torch.zeros(1, 2, H, W)
    fwd[:, 0, Y0 : Y0 + S, X0 : X0 + S] = D  # square pixels of frame 0 are found D px right in frame 1
    bwd[:, 0, Y0 : Y0 + S, X0 + D : X0 + D + S] = -D
    return fwd, bwd


def _strip(x_from, x_to):
    m = torch.zeros(1, 1, H, W)
    m[:, :, Y0 : Y0 + S, x_from:x_to] = 1
    return m


# In frame 0 the background strip just right of the square is covered in frame 1 (occluded); in
# frame 1 the strip the square left behind is newly revealed (disoccluded). Nothing else is flagged.
OCCLUDED_IN_F0 = _strip(X0 + S, X0 + S + D)
DISOCCLUDED_IN_F1 = _strip(X0, X0 + D)


@pytest.mark.parametrize("form", ["mgld", "uav"])
def test_moving_square_marks_exactly_the_occluded_and_disoccluded_strips(form):
    fwd, bwd = _moving_square_flows()
    occ_f, occ_b = occlusion_masks(fwd, bwd, form=form)
    assert occ_f.shape == occ_b.shape == (1, 1, H, W)
    assert torch.equal(occ_f, OCCLUDED_IN_F0)
    assert torch.equal(occ_b, DISOCCLUDED_IN_F1)


def test_published_functions_return_validity_and_occlusion_respectively():
    fwd, bwd = _moving_square_flows()
    valid = fb_consistency_uav(fwd, bwd)  # UAV: 1 = consistent
    assert torch.equal(valid, 1 - OCCLUDED_IN_F0)
    fo, bo = fb_consistency_mgld(fwd, bwd)  # MGLD: 1 = occluded
    assert torch.equal(fo, OCCLUDED_IN_F0) and torch.equal(bo, DISOCCLUDED_IN_F1)


def test_content_leaving_the_frame_is_occluded():
    """A global 3 px right shift: the last 3 columns of frame 0 have no match in frame 1."""
    fwd = torch.zeros(2, 2, H, W)
    fwd[:, 0] = 3
    bwd = -fwd
    for form in ("mgld", "uav"):
        occ_f, occ_b = occlusion_masks(fwd, bwd, form=form)
        assert occ_f[..., -3:].eq(1).all() and occ_f[..., :-3].eq(0).all()
        assert occ_b[..., :3].eq(1).all() and occ_b[..., 3:].eq(0).all()


def test_thresholds_forgive_small_inconsistency():
    """0.2 px of forward-backward disagreement is within both published tolerances (MGLD 0.5 px; UAV
    sqrt(0.05 + 0.001 * |f|^2 ...) ~ 0.23 px at this magnitude)."""
    fwd = torch.zeros(1, 2, H, W)
    fwd[:, 0] = 2.0
    bwd = torch.zeros(1, 2, H, W)
    bwd[:, 0] = -1.8
    for form in ("mgld", "uav"):
        occ_f, _ = occlusion_masks(fwd, bwd, form=form)
        assert occ_f[..., :-3].sum() == 0
    # ... and flagged once the tolerance is tightened
    occ_f, _ = occlusion_masks(fwd, bwd, form="mgld", alpha=0.0, beta=0.1)
    assert occ_f[..., :-3].eq(1).all()


def test_occlusion_masks_accepts_a_video_flow_and_works_in_chunks():
    torch.manual_seed(0)
    fwd = torch.randn(7, 2, H, W)
    bwd = torch.randn(7, 2, H, W)
    vf = VideoFlow(fwd, bwd)
    a = occlusion_masks(vf, form="mgld", chunk=2)
    b = occlusion_masks(fwd, bwd, form="mgld", chunk=100)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (7, 1, H, W)


def test_occlusion_rejects_bad_input():
    f = torch.zeros(2, 2, H, W)
    with pytest.raises(ValueError):
        occlusion_masks(f, torch.zeros(2, 2, H, W + 1))
    with pytest.raises(ValueError):
        occlusion_masks(f, f, form="unflow")
    with pytest.raises(ValueError):
        fb_consistency_uav(torch.zeros(2, 3, H, W), torch.zeros(2, 3, H, W))
    with pytest.raises(TypeError):
        occlusion_masks(f.numpy(), None)
