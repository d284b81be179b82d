"""Warping by a flow and resizing flows between grids (vsr_core.flow.warp)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vsr_core.flow import WARP_CONVENTIONS, WarpConvention, resize_flow, warp


def _const_flow(n, h, w, dx, dy):
    f = torch.zeros(n, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    return f


@pytest.mark.parametrize("convention", [None, "uav", "mgld"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_integer_shift_equals_roll_away_from_borders(convention, mode):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 20, 30)
    dx, dy = 3, -2
    out = warp(x, _const_flow(2, 20, 30, dx, dy), mode=mode, convention=convention)
    # out(p) = x(p + d) and roll(x, s)(p) = x(p - s)
    ref = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    inner = (slice(None), slice(None), slice(2, 20), slice(0, 30 - 3))  # p + d inside the frame
    torch.testing.assert_close(out[inner], ref[inner], atol=1e-5, rtol=0)
    # content that would come from outside the frame is zero (zeros padding), not wrapped around; the
    # first outside column sits a rounding error past the edge, so it may keep ~1e-6 of the edge pixel
    assert out[:, :, :, -3:].abs().max() < 1e-4
    assert out[:, :, :2, :].abs().max() < 1e-4


def test_exact_normalisation_with_align_corners_false_also_rolls():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 16, 24)
    out = warp(x, _const_flow(1, 16, 24, -2, 1), align_corners=False, normalize="exact")
    ref = torch.roll(x, shifts=(-1, 2), dims=(2, 3))
    torch.testing.assert_close(out[:, :, :-1, 2:], ref[:, :, :-1, 2:], atol=1e-5, rtol=0)


def test_zero_flow_is_identity_except_under_the_stablevsr_quirk():
    x = torch.arange(24, dtype=torch.float32).view(1, 1, 1, 24).expand(1, 1, 8, 24).contiguous()
    zero = torch.zeros(1, 2, 8, 24)
    torch.testing.assert_close(warp(x, zero), x)
    torch.testing.assert_close(warp(x, zero, convention="stablevsr", normalize="exact"), x)
    # StableVSR divides by (W-1) but samples with align_corners=False: column c reads c*W/(W-1) - 0.5,
    # a stretch about the centre (reproduced on purpose, see parity tests).
    out = warp(x, zero, convention="stablevsr")
    cols = torch.arange(24, dtype=torch.float32)
    expect = cols * 24 / 23 - 0.5
    interior = slice(1, 23)
    torch.testing.assert_close(out[0, 0, 3, interior], expect[interior], atol=1e-4, rtol=0)
    assert (out[0, 0, 3] - x[0, 0, 3]).abs().max() > 0.4


def test_latents_any_channels_and_half_precision():
    torch.manual_seed(2)
    z = torch.randn(3, 4, 12, 20)
    f = torch.randn(3, 2, 12, 20) * 2
    ref = warp(z, f)
    out16 = warp(z.half(), f.half())
    assert out16.dtype == torch.float16 and out16.shape == z.shape
    torch.testing.assert_close(out16.float(), ref, atol=1e-2, rtol=1e-2)
    z16c = torch.randn(2, 16, 12, 20)
    assert warp(z16c, f[:2]).shape == (2, 16, 12, 20)


def test_warp_is_differentiable_in_the_warped_tensor():
    """MGLD's motion guidance takes the gradient of a warped-latent loss with respect to the latents."""
    torch.manual_seed(5)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    f = torch.randn(2, 2, 8, 8)
    warp(z, f).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_flow_batch_of_one_broadcasts():
    torch.manual_seed(3)
    x = torch.randn(4, 2, 10, 10)
    f = torch.randn(1, 2, 10, 10)
    torch.testing.assert_close(warp(x, f), warp(x, f.expand(4, -1, -1, -1)))


def test_explicit_arguments_override_the_preset():
    assert WARP_CONVENTIONS["stablevsr"].align_corners is False
    x = torch.randn(1, 1, 9, 9)
    f = torch.full((1, 2, 9, 9), 0.4)
    a = warp(x, f, convention="uav", mode="nearest")
    b = warp(x, f, convention=WarpConvention("nearest", "zeros", True, "size_minus_one"))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, warp(x, f, convention="uav"))


@pytest.mark.parametrize(
    "x_shape, f_shape, kwargs, err",
    [
        ((3, 8, 8), (1, 2, 8, 8), {}, ValueError),
        ((1, 3, 8, 8), (1, 3, 8, 8), {}, ValueError),
        ((1, 3, 8, 8), (1, 2, 8, 9), {}, ValueError),
        ((2, 3, 8, 8), (3, 2, 8, 8), {}, ValueError),
        ((1, 3, 8, 8), (1, 2, 8, 8), {"convention": "raft"}, ValueError),
        ((1, 3, 8, 8), (1, 2, 8, 8), {"mode": "cubic"}, ValueError),
        ((1, 3, 8, 8), (1, 2, 8, 8), {"padding_mode": "wrap"}, ValueError),
    ],
)
def test_warp_rejects_bad_input(x_shape, f_shape, kwargs, err):
    with pytest.raises(err):
        warp(torch.zeros(x_shape), torch.zeros(f_shape), **kwargs)


def test_resize_flow_scales_vectors_per_axis():
    f = _const_flow(2, 12, 20, 2.0, -3.0)
    up = resize_flow(f, (36, 40))  # h x3, w x2
    assert up.shape == (2, 2, 36, 40)
    torch.testing.assert_close(up[:, 0], torch.full((2, 36, 40), 4.0))
    torch.testing.assert_close(up[:, 1], torch.full((2, 36, 40), -9.0))
    down = resize_flow(f, (6, 10), mode="area")
    torch.testing.assert_close(down[:, 0], torch.full((2, 6, 10), 1.0))
    torch.testing.assert_close(down[:, 1], torch.full((2, 6, 10), -1.5))
    # UAV scales both components by the width ratio
    uav = resize_flow(f, (36, 40), scale="width")
    torch.testing.assert_close(uav[:, 1], torch.full((2, 36, 40), -6.0))


@pytest.mark.parametrize(
    "size, kwargs",
    [((0, 4), {}), ((4,), {}), ("ab", {}), ((4, 4), {"mode": "lanczos"}), ((4, 4), {"scale": "height"})],
)
def test_resize_flow_rejects_bad_arguments(size, kwargs):
    with pytest.raises(ValueError):
        resize_flow(torch.zeros(1, 2, 8, 8), size, **kwargs)


@pytest.mark.parametrize("motion", ["pan", "zoom", "rotate", "mixed"])
def test_view_flow_is_where_the_virtual_camera_moved_each_pixel(motion):
    """The exact flow between two views of the virtual camera: warping the later view by it gives the
    earlier one back (up to the views' own resampling and 8-bit rounding), half a pixel off does worse,
    and on the x4 grid it is the full-resolution flow sampled at the low-resolution pixel centres, /4."""
    from vsr_core.synthetic import camera_path, render_views, smooth_texture, view_flow

    img = smooth_texture(300, 400, seed=1)
    p = camera_path(8, motion, 1.0, seed=2)
    v = torch.from_numpy(render_views(img, (128, 160), p)).float().permute(0, 3, 1, 2) / 255
    flow = torch.from_numpy(view_flow(img.shape[:2], (128, 160), p[2], p[5])).float()[None]
    inner = (Ellipsis, slice(32, -32), slice(32, -32))  # away from what moved in at the edges

    def residual(f):
        back = warp(v[5:6], f, mode="bilinear", padding_mode="border", align_corners=False)
        return (back - v[2:3])[inner].abs().mean()

    still = (v[5:6] - v[2:3])[inner].abs().mean()
    assert residual(flow) < 0.25 * still and residual(flow) < 0.012, (residual(flow), still)
    for off in ((0.5, 0.0), (0.0, 0.5), (-0.5, -0.5)):
        assert residual(flow + torch.tensor(off).view(1, 2, 1, 1)) > residual(flow)
    low = view_flow(img.shape[:2], (128, 160), p[2], p[5], scale=4)
    assert low.shape == (2, 32, 40)
    np.testing.assert_allclose(low[:, 3, 5] * 4, ((flow[0, :, 13, 21] + flow[0, :, 14, 22]) / 2).numpy(), atol=0.05)
