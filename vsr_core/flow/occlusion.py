"""Forward-backward consistency: where a flow pair disagrees, the pixel is treated as occluded.

Two published forms, both reproduced exactly (tests compare with the official outputs):

* Upscale-A-Video (``fbConsistencyCheck`` in ``propagation_module.py``): squared norms, warped backward
  flow in the magnitude term, returns **validity** (1 = consistent):
  ``|f + W_f(b)|^2 < a1 * (|f|^2 + |W_f(b)|^2) + a2``. The pipeline calls it with (a1, a2) =
  (0.001, 0.05); the function's own default is (0.01, 0.5).
* MGLD-VSR (``forward_backward_consistency_check`` in ``scripts/util_flow.py``, after UnFlow): L2 norms,
  *unwarped* flows in the magnitude term, returns **occlusion** (1 = occluded) for both directions:
  ``|f + W_f(b)| > a * (|f| + |b|) + b0`` and the same with f and b swapped, (a, b0) = (0.01, 0.5).

``W_f(b)`` is ``b`` bilinearly sampled at ``p + f(p)`` (align_corners=True, zeros padding), i.e.
``warp(b, f)``. Masks are ``[N, 1, H, W]`` float32 with values in {0, 1}.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .warp import _check_flow, warp

__all__ = ["fb_consistency_uav", "fb_consistency_mgld", "occlusion_masks", "OCCLUSION_FORMS"]

OCCLUSION_FORMS = ("mgld", "uav")


def _check_pair(f: Tensor, b: Tensor) -> None:
    _check_flow(f, "forward flow")
    _check_flow(b, "backward flow")
    if f.shape != b.shape:
        raise ValueError(f"forward and backward flows differ in shape: {tuple(f.shape)} vs {tuple(b.shape)}")


def _length_sq(v: Tensor) -> Tensor:
    return torch.sum(torch.square(v), dim=1, keepdim=True)


def fb_consistency_uav(flow_fw: Tensor, flow_bw: Tensor, alpha1: float = 0.001, alpha2: float = 0.05) -> Tensor:
    """Upscale-A-Video's forward-backward check; returns the **validity** mask (1 = consistent).

    flow_fw: ``[N, 2, H, W]`` flow from frame a to frame b on a's grid; flow_bw: flow b -> a on b's grid.
    Valid where ``|f + W_f(b)|^2 < alpha1 * (|f|^2 + |W_f(b)|^2) + alpha2`` (squared pixel norms).
    Defaults are the pipeline's values (UAV §2.3 step 6e); the paper's "delta = 0.5" corresponds to the
    function default (0.01, 0.5). Returns ``[N, 1, H, W]`` float32 in {0, 1}.
    """
    _check_pair(flow_fw, flow_bw)
    flow_fw = flow_fw.float()
    flow_bw = flow_bw.float().to(flow_fw.device)
    bw_warped = warp(flow_bw, flow_fw, mode="bilinear", convention="uav")
    diff = flow_fw + bw_warped
    threshold = alpha1 * (_length_sq(flow_fw) + _length_sq(bw_warped)) + alpha2
    return (_length_sq(diff) < threshold).to(torch.float32)


def fb_consistency_mgld(
    fwd_flow: Tensor, bwd_flow: Tensor, alpha: float = 0.01, beta: float = 0.5
) -> tuple[Tensor, Tensor]:
    """MGLD's (UnFlow's) forward-backward check; returns **occlusion** masks (1 = occluded).

    fwd_flow: ``[N, 2, H, W]`` flow a -> b on a's grid; bwd_flow: flow b -> a on b's grid (in the MGLD
    script fwd_flow is its ``flows_backward[i] = RAFT(f_i, f_{i+1})``, i.e. our ``forward``).
    Occluded where ``|f + W_f(b)| > alpha * (|f| + |b|) + beta`` (L2 norms, unwarped magnitudes; the
    magnitude term is shared by both directions, as in the official code).
    Returns ``(fwd_occ, bwd_occ)``, each ``[N, 1, H, W]`` float32 in {0, 1}: fwd_occ on a's grid (content of
    a not visible in b), bwd_occ on b's grid.
    """
    _check_pair(fwd_flow, bwd_flow)
    fwd_flow = fwd_flow.float()
    bwd_flow = bwd_flow.float().to(fwd_flow.device)
    mag = torch.linalg.vector_norm(fwd_flow, dim=1, keepdim=True) + torch.linalg.vector_norm(
        bwd_flow, dim=1, keepdim=True
    )
    warped_bwd = warp(bwd_flow, fwd_flow, mode="bilinear", convention="mgld")
    warped_fwd = warp(fwd_flow, bwd_flow, mode="bilinear", convention="mgld")
    threshold = alpha * mag + beta
    fwd_occ = torch.linalg.vector_norm(fwd_flow + warped_bwd, dim=1, keepdim=True) > threshold
    bwd_occ = torch.linalg.vector_norm(bwd_flow + warped_fwd, dim=1, keepdim=True) > threshold
    return fwd_occ.to(torch.float32), bwd_occ.to(torch.float32)


def occlusion_masks(
    forward: Tensor,
    backward: Tensor | None = None,
    form: str = "mgld",
    alpha: float | None = None,
    beta: float | None = None,
    chunk: int = 16,
) -> tuple[Tensor, Tensor]:
    """Occlusion masks (1 = occluded) for both directions of a clip's flows.

    Either ``occlusion_masks(video_flow, form=...)`` with a ``VideoFlow`` or
    ``occlusion_masks(forward, backward, form=...)`` with ``[T-1, 2, h, w]`` tensors
    (``forward[i]`` = flow i -> i+1, ``backward[i]`` = flow i+1 -> i).
    form: ``"mgld"`` (L2 form; alpha, beta default 0.01, 0.5) or ``"uav"`` (squared form, validity
    inverted; alpha, beta are alpha1, alpha2, default 0.001, 0.05).
    Returns ``(occ_forward, occ_backward)``, each ``[T-1, 1, h, w]`` float32 on the flows' device:
    occ_forward[i] marks pixels of frame i whose content is not found in frame i+1, occ_backward[i]
    pixels of frame i+1 not found in frame i. Work is done ``chunk`` pairs at a time.
    """
    if backward is None:
        vf = forward
        if not (hasattr(vf, "forward") and hasattr(vf, "backward")):
            raise TypeError("occlusion_masks() needs a VideoFlow, or forward and backward flow tensors")
        forward, backward = vf.forward, vf.backward
    _check_pair(forward, backward)
    if form not in OCCLUSION_FORMS:
        raise ValueError(f"occlusion form must be one of {OCCLUSION_FORMS}, got {form!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = forward.shape[0]
    occ_f = torch.empty((n, 1, *forward.shape[-2:]), dtype=torch.float32, device=forward.device)
    occ_b = torch.empty_like(occ_f)
    for s in range(0, n, chunk):
        f, b = forward[s : s + chunk], backward[s : s + chunk]
        if form == "mgld":
            of, ob = fb_consistency_mgld(f, b, 0.01 if alpha is None else alpha, 0.5 if beta is None else beta)
        else:
            a1 = 0.001 if alpha is None else alpha
            a2 = 0.05 if beta is None else beta
            of = 1.0 - fb_consistency_uav(f, b, a1, a2)
            ob = 1.0 - fb_consistency_uav(b, f, a1, a2)
        occ_f[s : s + chunk] = of
        occ_b[s : s + chunk] = ob
    return occ_f, occ_b
