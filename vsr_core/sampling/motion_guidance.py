"""Motion guidance (MGLD, methods.md §4.3 step 6c): a gradient step on the latents after each update.

After the ancestral update gives ``z_{t-1}``, MGLD lowers a flow-warped, occlusion-masked L1 between
neighbouring frames' latents with one gradient step whose size follows the posterior log variance:

    z_{t-1} <- z_{t-1} - g · log σ̃²_t · ∇_z L(z_{t-1}),    g = -10, log σ̃²_t = log max(β̃_t, 1e-20)

so the step is plain descent of size ``10·|log σ̃²_t|`` (15.5 at t = 999 ... 460.5 on the last step,
where β̃ = 0 is clipped to 1e-20). It runs at every step, the last one included.

``MotionGuidance`` packages this as a loop hook (``on_step``), so any sampler of ``sampling/loop.py``
(x4, StableVSR, UAV) can use it; ``sample_mgld`` uses the same pieces.

Flow names are ours (``VideoFlow``): ``forward[i]`` = flow i -> i+1 (the official ``flows[1]`` /
``flow_bwd_prop``), ``backward[i]`` = flow i+1 -> i (the official ``flows[0]`` / ``flow_fwd_prop``),
``occ_forward`` / ``occ_backward`` = the official ``fwd_occs`` / ``bwd_occs``.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..flow.types import VideoFlow
from ..flow.warp import warp

__all__ = [
    "MGLD_GUIDANCE_SCALE",
    "LOG_VARIANCE_FLOOR",
    "PAIRINGS",
    "latent_flow",
    "motion_loss",
    "motion_loss_grad",
    "guided_update",
    "guidance_step_size",
    "posterior_log_variance",
    "schedule_log_variance",
    "MotionGuidance",
]

# g of §4.3 step 6c: the script calls sample_canvas(guidance_scale=-10.0); the update subtracts
# g·logσ²·∇L, and logσ² < 0, so a negative g descends.
MGLD_GUIDANCE_SCALE = -10.0
# posterior_log_variance_clipped = log(max(β̃, 1e-20)) (LDM register_schedule)
LOG_VARIANCE_FLOOR = 1e-20

PAIRINGS = ("official", "aligned")
OCCLUSION_HANDLING = ("mgld", "none")


def latent_flow(flow: VideoFlow, size: tuple[int, int], alpha: float = 0.01, beta: float = 0.5) -> VideoFlow:
    """The flows on the latent grid ``size = (h, w)`` with MGLD occlusion masks computed there.

    MGLD resizes the RAFT flows to the latent grid (bilinear, vectors scaled per axis) and then runs its
    forward-backward check (α = 0.01, β = 0.5) at latent resolution (§4.3 step 3). Masks a ``VideoFlow``
    already carries are kept only when they are on this grid and were made with the MGLD form.
    """
    size = (int(size[0]), int(size[1]))
    vf = flow.resized(size)
    if vf.has_occlusion and flow.grid_size == size and vf.meta.get("occlusion_form", "mgld") == "mgld":
        return vf
    return vf.with_occlusion("mgld", alpha, beta)


def _as_btchw(latents: Tensor) -> Tensor:
    if latents.dim() == 4:
        return latents.unsqueeze(0)
    if latents.dim() == 5:
        return latents
    raise ValueError(f"latents must be [T, C, h, w] or [B, T, C, h, w], got {tuple(latents.shape)}")


def _flows(flow: VideoFlow | tuple, t: int, hw: tuple[int, int], device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if isinstance(flow, VideoFlow):
        if not flow.has_occlusion:
            flow = flow.with_occlusion("mgld")
        fwd, bwd, of, ob = flow.forward, flow.backward, flow.occ_forward, flow.occ_backward
    else:
        fwd, bwd, of, ob = flow
    if fwd.shape[0] != t - 1:
        raise ValueError(f"{t} latent frames need {t - 1} flow pairs, got {fwd.shape[0]}")
    if tuple(fwd.shape[-2:]) != tuple(hw):
        raise ValueError(f"flow grid {tuple(fwd.shape[-2:])} differs from the latent grid {tuple(hw)}; "
                         "resize it with latent_flow(flow, (h, w))")
    return tuple(v.to(device=device, dtype=torch.float32) for v in (fwd, bwd, of, ob))


def motion_loss(latents: Tensor, flow: VideoFlow | tuple, pairing: str = "official") -> Tensor:
    """MGLD's temporal loss ``compute_temporal_condition_v4`` on a clip's latents (a 0-d tensor).

    latents: ``[T, C, h, w]`` (or ``[B, T, C, h, w]``); flow: a ``VideoFlow`` on the latent grid with
    occlusion masks (``latent_flow``), or a tuple ``(forward, backward, occ_forward, occ_backward)`` of
    ``[T-1, 2|1, h, w]`` tensors. Every term is ``F.l1_loss`` (mean over ``B, C, h, w``) between masked
    latents, ``mask = 1 - occlusion``.

    pairing="official" reproduces the published loss and its two quirks (§4.3 step 6c): frame i is
    compared with ``warp(L_{i+1}, forward[i+1])`` (the next pair's flow) masked by ``1 - occ_forward[i]``,
    and with ``warp(L_{i-1}, backward[i-2])`` masked by ``1 - occ_backward[i-1]``; the first comparison of
    each direction is against zeros (an L1 shrinkage of ``L_{T-2}`` and ``L_1``). Terms are summed in the
    official order (backward pass T-2 -> 0, then forward pass 1 -> T-1).
    pairing="aligned" (ours): frame i against ``warp(L_{i+1}, forward[i])`` and frame i+1 against
    ``warp(L_i, backward[i])``, each pair's own flow and mask, no shrinkage terms.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    lat = _as_btchw(latents)
    b, t, c, h, w = lat.shape
    if t < 2:
        return lat.sum() * 0.0
    fwd, bwd, occ_f, occ_b = _flows(flow, t, (h, w), lat.device)
    keep_f, keep_b = 1 - occ_f, 1 - occ_b  # [T-1, 1, h, w]

    def warped(src: Tensor, fl: Tensor) -> Tensor:
        # src [B, n, C, h, w], fl [n, 2, h, w] -> [B, n, C, h, w] (one grid_sample per frame pair)
        n = src.shape[1]
        out = warp(src.reshape(b * n, c, h, w), fl.repeat(b, 1, 1, 1), convention="mgld")
        return out.reshape(b, n, c, h, w)

    def term(pred: Tensor, cur: Tensor, keep: Tensor) -> Tensor:
        return F.l1_loss(keep * pred, keep * cur)

    if pairing == "aligned":
        p = warped(lat[:, 1:], fwd)   # frame i+1 brought onto frame i
        q = warped(lat[:, :-1], bwd)  # frame i brought onto frame i+1
        loss = lat.new_zeros(())
        for i in range(t - 1):
            loss = loss + term(p[:, i], lat[:, i], keep_f[i]) + term(q[:, i], lat[:, i + 1], keep_b[i])
        return loss

    # official: P_i = W(L_{i+1}, forward[i+1]) for i < T-2 (P_{T-2} = 0); Q_i = W(L_{i-1}, backward[i-2])
    # for i > 1 (Q_1 = 0)
    p = warped(lat[:, 1:t - 1], fwd[1:]) if t > 2 else None
    q = warped(lat[:, 1:t - 1], bwd[:t - 2]) if t > 2 else None
    zero = torch.zeros_like(lat[:, 0])
    loss_b = 0
    for i in range(t - 2, -1, -1):
        pred = zero if i == t - 2 else p[:, i]
        loss_b = loss_b + term(pred, lat[:, i], keep_f[i])
    loss_f = 0
    for i in range(1, t):
        pred = zero if i == 1 else q[:, i - 2]
        loss_f = loss_f + term(pred, lat[:, i], keep_b[i - 1])
    return loss_b + loss_f


def motion_loss_grad(latents: Tensor, flow: VideoFlow | tuple, pairing: str = "official") -> tuple[Tensor, Tensor]:
    """``(loss, ∂loss/∂latents)`` of ``motion_loss``, with autograd enabled even inside ``no_grad``.

    The gradient has the latents' shape and dtype; the loss is computed in float32 on the latents'
    device (half-precision latents are upcast for the loss, the gradient is cast back).
    """
    # ComfyUI runs nodes under torch.inference_mode(): tensors made there can neither require grad nor
    # be saved for backward, so leave inference mode and take normal copies of every input.
    with torch.inference_mode(False), torch.enable_grad():
        z = latents.detach().float().clone().requires_grad_(True)
        loss = motion_loss(z, _normal_tensors(flow), pairing)
        (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad.to(latents.dtype)


def _normal_tensors(flow):
    """A copy of ``flow`` (a VideoFlow or a tuple of tensors) whose tensors are not inference tensors."""
    if isinstance(flow, VideoFlow):
        if not any(t is not None and t.is_inference() for t in
                   (flow.forward, flow.backward, flow.occ_forward, flow.occ_backward)):
            return flow
        return dataclasses.replace(flow, **{k: None if getattr(flow, k) is None else getattr(flow, k).clone()
                                            for k in ("forward", "backward", "occ_forward", "occ_backward")})
    if isinstance(flow, (tuple, list)):
        return type(flow)(_normal_tensors(t) for t in flow)
    if isinstance(flow, Tensor) and flow.is_inference():
        return flow.clone()
    return flow


def guided_update(latents: Tensor, grad: Tensor, log_variance: Tensor | float,
                  scale: float = MGLD_GUIDANCE_SCALE) -> Tensor:
    """``z - g · logσ² · ∇L`` (the official expression and evaluation order; g = ``scale``)."""
    lv = torch.as_tensor(log_variance, dtype=torch.float32, device=latents.device)
    return latents - (scale * lv) * grad


def guidance_step_size(log_variance: Tensor | float, scale: float = MGLD_GUIDANCE_SCALE) -> float:
    """The effective descent step ``g · logσ²`` (``10·|logσ²|`` for the published g = -10, logσ² < 0)."""
    return float(scale * float(log_variance))


def posterior_log_variance(alpha_prod: Tensor | float, alpha_prod_prev: Tensor | float) -> Tensor:
    """``log max(β̃, 1e-20)`` for a step ᾱ_t -> ᾱ_prev, β̃ = (1-ᾱ_prev)/(1-ᾱ_t)·(1 - ᾱ_t/ᾱ_prev) (float32)."""
    a = torch.as_tensor(alpha_prod, dtype=torch.float64)
    ap = torch.as_tensor(alpha_prod_prev, dtype=torch.float64)
    var = (1 - ap) / (1 - a) * (1 - a / ap)
    return torch.log(torch.clamp(var, min=LOG_VARIANCE_FLOOR)).float()


def schedule_log_variance(schedule, i: int) -> Tensor:
    """logσ² at loop step ``i`` of any schedule: its own ``log_variance(i)`` when it has one (the MGLD
    respaced schedule), else computed from ``alpha_prod[i]`` / ``alpha_prod_prev[i]`` (``Schedule``)."""
    if hasattr(schedule, "log_variance"):
        return schedule.log_variance(i)
    return posterior_log_variance(schedule.alpha_prod[i], schedule.alpha_prod_prev[i])


@dataclass
class MotionGuidance:
    """The motion-guidance hook (``VSR_TEMPORAL``): after each update, one descent step on the latents.

    flow: the clip's ``VideoFlow`` (any grid; resized to the latent grid with MGLD occlusion masks on
    first use). scale: g (``-10`` published; 0 disables; more negative = stronger). pairing: see
    ``motion_loss``. start / end: fraction of the run (0..1) during which it acts (published: all).
    frame_offset: index in ``flow`` of the first latent frame the hook sees (a segment of a longer clip).
    occlusion: ``"mgld"`` (pixels failing MGLD's forward-backward check are left out of the loss, as
    published) or ``"none"`` (every pixel counts).
    Latents handed to ``on_step`` are ``[T, C, h, w]``; ``last_loss`` keeps the loss of the last step.
    """

    flow: VideoFlow
    scale: float = MGLD_GUIDANCE_SCALE
    pairing: str = "official"
    start: float = 0.0
    end: float = 1.0
    frame_offset: int = 0
    occlusion: str = "mgld"
    last_loss: float | None = field(default=None, init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got {self.start}, {self.end}")
        if self.occlusion not in OCCLUSION_HANDLING:
            raise ValueError(f"occlusion must be one of {OCCLUSION_HANDLING}, got {self.occlusion!r}")

    def flow_for(self, num_frames: int, size: tuple[int, int], device=None) -> VideoFlow:
        """The (cached) latent-grid flow of frames ``[frame_offset, frame_offset + num_frames)`` on ``device``
        (default: the flow's own)."""
        key = (num_frames, tuple(size), None if device is None else str(device))
        if key not in self._cache:
            vf = latent_flow(self.flow.frames(self.frame_offset, self.frame_offset + num_frames), size)
            if self.occlusion == "none":
                vf = dataclasses.replace(vf, occ_forward=torch.zeros_like(vf.occ_forward),
                                         occ_backward=torch.zeros_like(vf.occ_backward))
            self._cache[key] = vf if device is None else vf.to(device)
        return self._cache[key]

    def active(self, i: int, n: int) -> bool:
        if self.scale == 0:
            return False
        frac = i / max(n - 1, 1)
        return self.start - 1e-9 <= frac <= self.end + 1e-9

    def apply(self, latents: Tensor, log_variance: Tensor | float) -> Tensor:
        """One guided update of ``latents`` ``[T, C, h, w]`` with the given logσ²."""
        if latents.shape[0] < 2 or self.scale == 0:
            return latents
        vf = self.flow_for(int(latents.shape[0]), tuple(latents.shape[-2:]), latents.device)
        loss, grad = motion_loss_grad(latents, vf, self.pairing)
        self.last_loss = float(loss)
        return guided_update(latents, grad, log_variance, self.scale)

    def on_step(self, x_prev: Tensor, x0: Tensor, i: int, schedule) -> Tensor:
        if not self.active(i, len(schedule)):
            return x_prev
        return self.apply(x_prev, schedule_log_variance(schedule, i))

