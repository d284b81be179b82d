"""MGLD sampling (methods.md §4.3): respaced DDPM from the noised LR latent, latent canvas tiling,
motion guidance, 5-frame segments, and the CFW decode.

One run, per segment of frames:

    z_LR = 0.18215 · VAE.encode(x_up).sample()              x_up: LR bicubic-upsampled, in [-1, 1]
    x_T  = √ᾱ_999 · z_LR + √(1 − ᾱ_999) · ε                  (start from the noised LR latent)
    for i = N-1 … 0 (respaced index; the nets see t = ori_timesteps[i]):
        ε̂  = Gaussian-weighted merge over 64×64 latent tiles of UNet(z_t, t, c, struct(z_LR, t))
        x̂0 = √(1/ᾱ_i)·z_t − √(1/ᾱ_i − 1)·ε̂
        z  = coef1_i·x̂0 + coef2_i·z_t + 1[i>0]·exp(½ logσ̃²_i)·ε
        z  = z − g·logσ̃²_i·∇_z L_motion(z)                     (motion_guidance.py, g = −10)

The loop is ``sampling/loop.sample`` with an ``MGLDSchedule`` (whose step k is respaced index
N-1-k) and a ``MotionGuidance`` hook. Two temporal layouts:

* ``segment_mode="official"``: non-overlapping segments of ``segment`` frames (the clip padded by
  repeating its last frame), each sampled on its own with the same seed (the script calls
  ``seed_everything(42)`` for every segment, then draws the LR posterior sample, x_T's noise and the
  step noise from that one stream, in that order; so does ``sample_mgld``), no exchange between segments.
* ``segment_mode="overlap"`` (ours): windows of ``segment`` frames overlapping by ``segment_overlap``
  frames denoised in lockstep; each step the windows' ε̂ are cross-faded (raised cosine) into one
  clip-wide prediction, one ancestral step is taken on the whole clip and the motion guidance acts on
  the whole clip, across window borders. It removes the seams every ``segment`` frames
  (bench/mgld.py measures them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..flow.types import VideoFlow
from ..temporal import WindowMerger, pad_frames, plan_segments, plan_windows
from ..tiling import TileMerger, plan_tiles
from .loop import NoiseFn, call_releasing, sample, seeded_noise
from .mechanisms import MotionGuidanceMechanism, Site, check_mechanisms, mechanism_hooks, mechanism_settings
from .motion_guidance import MGLD_GUIDANCE_SCALE

__all__ = [
    "MGLD_STEPS",
    "MGLD_SEGMENT",
    "MGLD_TILE",
    "MGLD_TILE_OVERLAP",
    "MGLD_SCALE_FACTOR",
    "SEGMENT_MODES",
    "space_timesteps",
    "MGLDSchedule",
    "mgld_schedule",
    "canvas_eps",
    "Denoiser",
    "model_denoiser",
    "prepare_mgld_input",
    "MGLDInput",
    "encode_lr",
    "encode_lr_posterior",
    "LatentPosterior",
    "sample_mgld_latents",
    "sample_mgld",
    "decode_mgld",
    "seam_error",
]

# methods.md §4.1 / §4.3 (README command and script defaults)
MGLD_STEPS = 50
MGLD_SEGMENT = 5
MGLD_TILE, MGLD_TILE_OVERLAP = 64, 32
MGLD_SCALE_FACTOR = 0.18215
MGLD_TRAIN_STEPS = 1000
MGLD_LINEAR_START, MGLD_LINEAR_END = 0.00085, 0.0120
MGLD_PAD_MULTIPLE = 32  # the script reflect-pads the upsampled frames to a multiple of 32
MGLD_MIN_SIDE = 512     # s = max(512 / min(h, w), upscale)
SEGMENT_MODES = ("official", "overlap")

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``denoiser(z_t_tile, z_lr_tile, t) -> ε̂``: tiles ``[T, 4, th, tw]``, ``t`` the ``[1]`` int64 original
timestep (what the UNet and the structure encoder see)."""


# ---- schedule -------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The original timesteps kept by a respacing to ``count`` steps (sorted ascending).

    Guided-diffusion's single-section rule, as MGLD's ``space_timesteps(1000, [count])``: ``count``
    indices spread with the fractional stride (T-1)/(count-1), each rounded (Python's round, half to
    even). For 1000/50: 0, 20, 41, 61, …, 979, 999.
    """
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot respace {num_timesteps} steps to {count}")
    stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur, out = 0.0, []
    for _ in range(count):
        out.append(round(cur))
        cur += stride
    return sorted(set(out))


@dataclass
class MGLDSchedule:
    """MGLD's respaced DDPM schedule (LDM ``register_schedule`` on the respaced betas).

    Arrays ``[N]`` float32, indexed by the respaced index i (0 = the last step): ``betas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance``, ``posterior_log_variance_clipped``,
    ``posterior_mean_coef1/2``; ``ori_timesteps`` ``[N]`` int64 (what the nets see at index i).
    ``train_sqrt_alphas_cumprod`` / ``train_sqrt_one_minus_alphas_cumprod`` ``[1000]``: the original
    schedule, used once to noise the LR latent to t = 999.

    As a ``loop.sample`` schedule its step k runs respaced index ``N-1-k`` (``timesteps`` is descending).
    """

    ori_timesteps: Tensor
    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    train_alphas_cumprod: Tensor
    train_sqrt_alphas_cumprod: Tensor
    train_sqrt_one_minus_alphas_cumprod: Tensor
    prediction_type: str = "epsilon"

    def __len__(self) -> int:
        return int(self.ori_timesteps.shape[0])

    def index(self, k: int) -> int:
        """Respaced index i of loop step k."""
        return len(self) - 1 - int(k)

    @property
    def timesteps(self) -> Tensor:
        """``[N]`` original timesteps in loop order (999, 979, …, 0)."""
        return self.ori_timesteps.flip(0)

    @property
    def alpha_prod(self) -> Tensor:
        return self.alphas_cumprod.flip(0)

    @property
    def alpha_prod_prev(self) -> Tensor:
        return self.alphas_cumprod_prev.flip(0)

    def log_variance(self, k: int) -> Tensor:
        """logσ̃² (clipped at log 1e-20) of loop step k: the guidance step-size factor."""
        return self.posterior_log_variance_clipped[self.index(k)]

    def needs_noise(self, k: int) -> bool:
        return self.index(k) > 0

    def predict(self, eps: Tensor, x_t: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(x̂0, ε̂) from ε̂ (``predict_start_from_noise``; no clipping: MGLD's clip_denoised is False)."""
        i = self.index(k)
        c1 = self.sqrt_recip_alphas_cumprod[i].to(x_t.device)
        c2 = self.sqrt_recipm1_alphas_cumprod[i].to(x_t.device)
        return c1 * x_t - c2 * eps, eps

    def step(self, k: int, x_t: Tensor, x0: Tensor, eps: Tensor | None = None, noise: Tensor | None = None,
             state: dict | None = None) -> Tensor:
        """Posterior sample: ``coef1·x̂0 + coef2·x_t + 1[i>0]·exp(½ logσ̃²)·noise``."""
        i = self.index(k)
        dev = x_t.device
        mean = self.posterior_mean_coef1[i].to(dev) * x0 + self.posterior_mean_coef2[i].to(dev) * x_t
        if i == 0:
            return mean
        if noise is None:
            raise ValueError(f"MGLD step i={i} needs a noise tensor")
        std = (0.5 * self.posterior_log_variance_clipped[i]).exp().to(dev)
        return mean + std * noise

    def noise_lr_latent(self, z_lr: Tensor, noise: Tensor, t: int = MGLD_TRAIN_STEPS - 1) -> Tensor:
        """x_T = √ᾱ_t·z_LR + √(1−ᾱ_t)·ε on the original schedule (``q_sample_respace`` at t = 999)."""
        a = self.train_sqrt_alphas_cumprod[t].to(z_lr.device)
        s = self.train_sqrt_one_minus_alphas_cumprod[t].to(z_lr.device)
        return a * z_lr + s * noise


def _register(betas: np.ndarray) -> dict[str, np.ndarray]:
    # LDM register_schedule with its numpy dtypes: float32 betas/cumprod, float64 where np.append(1., …)
    # promotes (alphas_cumprod_prev and everything computed from it); stored as float32 afterwards.
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def mgld_schedule(steps: int = MGLD_STEPS, num_train_timesteps: int = MGLD_TRAIN_STEPS,
                  linear_start: float = MGLD_LINEAR_START, linear_end: float = MGLD_LINEAR_END) -> MGLDSchedule:
    """MGLD's schedule: LDM "linear" betas (= scaled_linear, √β linear), respaced to ``steps`` steps.

    New betas ``β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}`` over the kept timesteps ``s`` (``space_timesteps``),
    computed from the float32 ᾱ buffer as the script does, then the posterior coefficients.
    """
    steps = int(steps)
    betas = (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_train_timesteps,
                            dtype=torch.float64) ** 2).numpy()
    ac64 = np.cumprod(1.0 - betas, axis=0)
    ac32 = torch.tensor(ac64, dtype=torch.float32)
    keep = space_timesteps(num_train_timesteps, steps)
    last = 1.0
    new_betas = []
    for t in keep:
        new_betas.append((1 - ac32[t] / last).numpy())
        last = ac32[t]
    reg = {k: torch.tensor(v, dtype=torch.float32) for k, v in _register(np.array(new_betas)).items()}
    return MGLDSchedule(
        ori_timesteps=torch.tensor(keep, dtype=torch.int64),
        train_alphas_cumprod=ac32,
        train_sqrt_alphas_cumprod=torch.tensor(np.sqrt(ac64), dtype=torch.float32),
        train_sqrt_one_minus_alphas_cumprod=torch.tensor(np.sqrt(1.0 - ac64), dtype=torch.float32),
        **reg,
    )


# ---- the canvas denoiser ---------------------------------------------------------------------------


def canvas_eps(denoiser: Denoiser, x: Tensor, z_lr: Tensor, t: Tensor, tile: int = MGLD_TILE,
               overlap: int = MGLD_TILE_OVERLAP, tile_batch: int = 1) -> Tensor:
    """ε̂ of a segment by MGLD's latent canvas (``p_mean_variance_canvas``).

    x, z_lr: ``[T, 4, h, w]``. Tiles of ``tile`` latent px every ``tile − overlap``, the last row/column
    snapped to the border (one smaller tile where the latent is smaller than ``tile``); every tile holds
    all T frames. Outputs are merged with MGLD's Gaussian weights, visiting tiles column by column as
    the official loop does (x outer, y inner), so the float sums match. ``tile=0`` disables tiling.
    tile_batch: tiles per network call (1 = official; more is faster, each tile stays a clip of T frames
    for the temporal layers).
    """
    h, w = x.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return denoiser(x, z_lr, t)
    tiles = sorted(plan_tiles((h, w), tile, overlap), key=lambda q: q.index[::-1])
    merger = TileMerger(tuple(x.shape), "gaussian", device=x.device, dtype=x.dtype)
    n = x.shape[0]
    for b in range(0, len(tiles), max(1, int(tile_batch))):
        group = tiles[b:b + max(1, int(tile_batch))]
        out = denoiser(torch.cat([tl.crop(x) for tl in group]), torch.cat([tl.crop(z_lr) for tl in group]), t)
        for j, tl in enumerate(group):
            merger.add(tl, out[j * n:(j + 1) * n])
    return merger.result()


def _context(model) -> Tensor:
    from .prompt import prompt_embeddings

    # MGLD always conditions on the empty prompt (§4.1 "Text"); the bundle caches it.
    return prompt_embeddings(model, "")


def model_denoiser(model, context: Tensor | None = None, num_frames: int | None = None) -> Denoiser:
    """The MGLD denoiser of a ``VSRModel`` (method "mgld"): structure encoder on the clean LR latent
    tile, then the UNet, both at the original timestep. context: ``[1, L, D]`` text embedding (default:
    the model's cached empty-prompt embedding). num_frames: frames per clip in a batch (the segment or
    window length; tiles are stacked as clips), for the UNet's temporal layers (default: its config's)."""
    unet = model.unet
    struct = getattr(model, "struct_encoder", None)
    if struct is None:
        raise ValueError("this VSRModel has no MGLD structure encoder (load it with load_mgld_model)")
    ctx = _context(model) if context is None else context

    def denoise(x: Tensor, z_lr: Tensor, t: Tensor) -> Tensor:
        dt = next(unet.parameters()).dtype
        tt = t.to(x.device).reshape(-1)
        tt = tt.expand(x.shape[0]) if tt.numel() == 1 else tt
        feats = struct(z_lr.to(dt), tt)
        c = ctx.to(x.device, dt)
        out = unet(x.to(dt), tt, c, feats, num_frames=num_frames)
        return out.to(x.dtype)

    return denoise


# ---- inputs ---------------------------------------------------------------------------------------


@dataclass
class MGLDInput:
    """The prepared clip: ``x_up`` ``[T, 3, Hp, Wp]`` in [-1, 1] (upsampled by ``scale``, reflect-padded
    to a multiple of 32), ``size`` ``(H, W)`` of the upsampled frames before padding, ``out_size`` the
    ×``upscale`` size the result is resized to when ``scale > upscale``."""

    x_up: Tensor
    size: tuple[int, int]
    scale: float
    out_size: tuple[int, int]

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.x_up.shape[-2] // 8, self.x_up.shape[-1] // 8


def prepare_mgld_input(lr: Tensor, upscale: int = 4, min_side: int = MGLD_MIN_SIDE) -> MGLDInput:
    """LR frames ``[T, 3, h, w]`` in [0, 1] -> the script's network input (§4.3 step 2).

    Bicubic upsampling by ``s = max(min_side / min(h, w), upscale)`` (sizes ``int(h·s)``), to [-1, 1],
    clamped, reflect-padded on the bottom/right to a multiple of 32 (the script pads a full 32 rows
    when already aligned is not the case; aligned frames are left as they are).
    """
    if lr.dim() != 4 or lr.shape[1] != 3:
        raise ValueError(f"lr must be [T, 3, h, w] in [0, 1], got {tuple(lr.shape)}")
    h, w = lr.shape[-2:]
    s = max(min_side / min(h, w), float(upscale))
    size = (int(h * s), int(w * s))
    x = F.interpolate(lr.float() * 2 - 1, size=size, mode="bicubic").clamp(-1, 1)
    # The UNet needs latents divisible by 8 (three downsamplings). The official path (short side >= 512,
    # 64-latent tiles) only ever feeds it full 64-latent tiles; smaller frames (min_side < 512) may be
    # narrower than one tile, so they are padded to 64 pixels instead of 32.
    multiple = MGLD_PAD_MULTIPLE if min(size) >= MGLD_MIN_SIDE else 64
    ph = (-size[0]) % multiple
    pw = (-size[1]) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return MGLDInput(x, size, s, (int(h * upscale), int(w * upscale)))


@dataclass
class LatentPosterior:
    """The scaled LR latent as the VAE's posterior: ``mean`` and ``std`` ``[T, 4, h, w]`` (both times the
    VAE's scaling factor). :func:`sample_mgld_latents` draws ``mean + std · ε`` from each segment's own
    noise stream, before that segment's x_T noise, in the script's order."""

    mean: Tensor
    std: Tensor


def encode_lr_posterior(model, x_up: Tensor, chunk: int = MGLD_SEGMENT) -> LatentPosterior:
    """The VAE posterior of ``x_up`` (scaled, float32, CPU), encoded ``chunk`` frames at a time."""
    means, stds = [], []
    with torch.no_grad(), model.on_device("vae"):
        vae = model.vae
        dev = next(vae.parameters()).device
        dt = next(vae.parameters()).dtype
        for s in range(0, x_up.shape[0], chunk):
            post = vae.encode(x_up[s:s + chunk].to(dev, dt))
            post = getattr(post, "latent_dist", post)
            if isinstance(post, tuple):
                post = post[0]
            means.append(post.mean.float().cpu() * model.scaling_factor)
            stds.append(post.std.float().cpu() * model.scaling_factor)
    return LatentPosterior(torch.cat(means), torch.cat(stds))


def encode_lr(model, x_up: Tensor, generator: torch.Generator | None = None, chunk: int = MGLD_SEGMENT) -> Tensor:
    """``0.18215 · VAE.encode(x_up).sample()``, ``[T, 4, H/8, W/8]`` float32 on the CPU: one posterior
    sample for the whole clip, its noise drawn from ``generator`` (CPU); None takes the mode.
    (:func:`sample_mgld` itself hands the sampler the posterior, which draws per segment.)"""
    post = encode_lr_posterior(model, x_up, chunk)
    if generator is None:
        return post.mean
    return post.mean + post.std * torch.randn(post.mean.shape, generator=generator)


# ---- the sampler ----------------------------------------------------------------------------------


def _pad_flow(flow: VideoFlow, num_frames: int) -> VideoFlow:
    # Repeated last frames are identical: zero flow, nothing occluded.
    extra = num_frames - flow.num_frames
    if extra <= 0:
        return flow
    z = flow.forward.new_zeros((extra, *flow.forward.shape[1:]))
    zo = None if not flow.has_occlusion else flow.occ_forward.new_zeros((extra, *flow.occ_forward.shape[1:]))
    cat = (lambda a, b: None if a is None else torch.cat([a, b]))
    return VideoFlow(torch.cat([flow.forward, z]), torch.cat([flow.backward, z]), cat(flow.occ_forward, zo),
                     cat(flow.occ_backward, zo), flow.frame_size, flow.engine, dict(flow.meta))


def _noise_from(noise: NoiseFn | Tensor | list | None, seed: int) -> NoiseFn:
    if noise is None:
        return seeded_noise(seed)
    if callable(noise):
        return noise
    seq = list(noise)

    def recorded(k: int, shape: tuple) -> Tensor:
        return seq[k]

    return recorded


def sample_mgld_latents(
    denoiser: Denoiser,
    z_lr: Tensor,
    flow: VideoFlow | None,
    *,
    steps: int = MGLD_STEPS,
    seed: int = 42,
    guidance_scale: float = MGLD_GUIDANCE_SCALE,
    guidance_pairing: str = "official",
    segment: int = MGLD_SEGMENT,
    segment_mode: str = "official",
    segment_overlap: int = 2,
    tile: int = MGLD_TILE,
    tile_overlap: int = MGLD_TILE_OVERLAP,
    tile_batch: int = 1,
    x_T_noise: Tensor | None = None,
    noise: NoiseFn | list | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    device: torch.device | str | None = None,
    schedule: MGLDSchedule | None = None,
    temporal: Sequence[object] = (),
) -> Tensor:
    """Sample MGLD latents for a clip from its LR latents.

    z_lr: ``[T, 4, h, w]`` scaled LR latents (``encode_lr``), or their ``LatentPosterior``
    (``encode_lr_posterior``), sampled per segment from the segment's stream before x_T.
    flow: the clip's ``VideoFlow`` (any grid; resized to ``(h, w)`` with MGLD occlusion masks), None or
    ``guidance_scale=0`` for no guidance.
    segment / segment_mode / segment_overlap: see the module doc (the denoiser always sees windows of
    ``segment`` frames; shorter clips are padded by repeating the last frame).
    tile / tile_overlap / tile_batch: latent canvas tiles (``tile=0``: whole frame; see ``canvas_eps``).
    x_T_noise: ``[T, 4, h, w]`` initial noise (default drawn from ``seed``); noise: step noise, a
    ``noise(k, shape)`` callable or a list indexed by loop step k (default ``seeded_noise(seed)``, drawn
    after ``x_T_noise``; in official mode re-seeded for every segment, as the script does).
    callback(done, total, x0): progress over all segments' steps. Returns ``[T, 4, h, w]`` float32 (CPU).
    temporal: temporal mechanisms (``mechanisms.Mechanism``) run after the published motion guidance, in
    order, on the frames of each segment (a Window Merge sets ``segment_mode``).
    """
    if segment_mode not in SEGMENT_MODES:
        raise ValueError(f"segment_mode must be one of {SEGMENT_MODES}, got {segment_mode!r}")
    posterior = z_lr if isinstance(z_lr, LatentPosterior) else None
    if posterior is not None:
        z_lr = posterior.mean
    if z_lr.dim() != 4:
        raise ValueError(f"z_lr must be [T, 4, h, w], got {tuple(z_lr.shape)}")
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    sched = mgld_schedule(steps) if schedule is None else schedule
    dev = torch.device(device) if device is not None else z_lr.device
    t_total, _, h, w = z_lr.shape
    if flow is not None and flow.num_frames != t_total:
        raise ValueError(f"flow has {flow.num_frames} frames, the latents {t_total}")
    check_mechanisms(temporal, Site("mgld", t_total, len(sched)))
    segment_mode = mechanism_settings(temporal, Site("mgld", t_total, len(sched))).get("segment_mode", segment_mode)
    # the published mechanism (motion guidance), then the user's chain
    chain = [*([MotionGuidanceMechanism(flow, guidance_scale, guidance_pairing)]
               if flow is not None and guidance_scale != 0 else []), *temporal]

    if segment_mode == "official" or t_total <= segment:
        spans = plan_segments(t_total, segment, pad="last")
        total_frames = spans[-1][1]
        windows = None
    else:
        if not 0 <= segment_overlap < segment:
            raise ValueError(f"need 0 <= segment_overlap < segment, got {segment_overlap}")
        spans, total_frames = [(0, t_total)], t_total
        windows = plan_windows(t_total, segment, segment_overlap, layout="snap")

    z_all = pad_frames(z_lr.float(), total_frames)
    std_all = None if posterior is None else pad_frames(posterior.std.float(), total_frames)
    xt_all = None if x_T_noise is None else pad_frames(x_T_noise.float(), total_frames)
    n_steps = len(sched)
    done = [0]
    total_steps = n_steps * len(spans)
    outs = []
    for s, e in spans:
        gen = seeded_noise(seed)
        z = z_all[s:e]
        if std_all is not None:  # the script: seed, posterior sample, x_T noise, step noise, per segment
            z = z + std_all[s:e] * gen(-2, tuple(z.shape))
        z = z.to(dev)
        eps0 = xt_all[s:e] if xt_all is not None else gen(-1, tuple(z.shape))
        eps0 = eps0.to(dev)
        gen_noise = gen if noise is None else _noise_from(noise, seed)
        x = sched.noise_lr_latent(z, eps0)
        hooks = mechanism_hooks(chain, Site("mgld", t_total, n_steps, frames=e - s, offset=s))

        if windows is None:
            def denoise(x_t: Tensor, t: Tensor, k: int, z=z) -> Tensor:
                return canvas_eps(denoiser, x_t, z, t.reshape(1), tile, tile_overlap, tile_batch)
        else:
            def denoise(x_t: Tensor, t: Tensor, k: int, z=z) -> Tensor:
                merger = WindowMerger(x_t.shape[0], "hann", segment_overlap, dim=0)
                for ws, we in windows:
                    merger.add(canvas_eps(denoiser, x_t[ws:we], z[ws:we], t.reshape(1), tile, tile_overlap, tile_batch),
                               ws, we)
                return merger.result()

        def step_cb(k: int, n: int, x0: Tensor) -> None:
            done[0] += 1
            if callback is not None:
                callback(done[0], total_steps, x0)

        with torch.no_grad():
            x = sample(denoise, x, sched, hooks, gen_noise, step_cb)
        outs.append(x.float().cpu())
    return torch.cat(outs)[:t_total]


def sample_mgld(
    model,
    lr_frames: Tensor | None,
    flow: VideoFlow | None,
    steps: int = MGLD_STEPS,
    seed: int = 42,
    guidance_scale: float = MGLD_GUIDANCE_SCALE,
    segment: int = MGLD_SEGMENT,
    segment_mode: str = "official",
    tile: int = MGLD_TILE,
    tile_overlap: int = MGLD_TILE_OVERLAP,
    callback: Callable[[int, int, Tensor], None] | None = None,
    *,
    init_latent: Tensor | None = None,
    x_T_noise: Tensor | None = None,
    noise: NoiseFn | list | None = None,
    segment_overlap: int = 2,
    guidance_pairing: str = "official",
    upscale: int = 4,
    context: Tensor | None = None,
    tile_batch: int = 1,
    min_side: int = MGLD_MIN_SIDE,
    temporal: Sequence[object] = (),
) -> Tensor:
    """MGLD latents ``[T, 4, Hp/8, Wp/8]`` (float32, CPU) for LR frames ``[T, 3, h, w]`` in [0, 1].

    The frames are upsampled/padded (``prepare_mgld_input``) and encoded (``encode_lr_posterior``); each
    segment draws its posterior sample, x_T's noise and its step noise from one stream seeded with ``seed``,
    as the script does, unless ``init_latent`` (the scaled LR latent) is given — parity tests
    pass the recorded one, with ``x_T_noise`` and the step ``noise``. The rest is
    ``sample_mgld_latents`` with the model's denoiser (``context``: the text embedding, default the
    model's empty-prompt one); decode with ``decode_mgld``.
    """
    if temporal:  # refused before the LR frames are encoded
        frames = (lr_frames if init_latent is None else init_latent).shape[0]
        check_mechanisms(temporal, Site("mgld", frames, steps))
    if init_latent is None:
        if lr_frames is None:
            raise ValueError("give lr_frames or init_latent")
        prep = prepare_mgld_input(lr_frames, upscale, min_side)
        z_lr = encode_lr_posterior(model, prep.x_up)
    else:
        z_lr = init_latent.float()
    # the UNet always sees `segment` frames: official segments and clips shorter than one segment are
    # padded to it, overlapping windows are `segment` long
    with model.on_device("unet", "struct_encoder"):
        return call_releasing(
            sample_mgld_latents, model_denoiser(model, context, segment), z_lr, flow, steps=steps, seed=seed,
            guidance_scale=guidance_scale, guidance_pairing=guidance_pairing, segment=segment,
            segment_mode=segment_mode, segment_overlap=segment_overlap, tile=tile, tile_overlap=tile_overlap,
            tile_batch=tile_batch, x_T_noise=x_T_noise, noise=noise, callback=callback, device=model.device,
            temporal=temporal)


def decode_mgld(model, latents: Tensor, lr_frames: Tensor | None = None, dec_w: float = 1.0,
                color_fix: str = "adain", *, x_up: Tensor | None = None, segment: int = MGLD_SEGMENT,
                upscale: int = 4, min_side: int = MGLD_MIN_SIDE) -> Tensor:
    """Decode MGLD latents with the video VAE's CFW decoder (§4.3 steps 7-9).

    latents: ``[T, 4, h, w]`` from ``sample_mgld``; lr_frames: the same LR frames ``[T, 3, h0, w0]`` in
    [0, 1] (the encoder features of their upsampled version feed CFW, and the colour fix uses it), or
    ``x_up`` ``[T, 3, 8h, 8w]`` in [-1, 1] directly. dec_w: the CFW fusion weight w (README 1.0).
    color_fix: ``"adain" | "wavelet" | "none"``. Frames are decoded ``segment`` at a time (the temporal
    convs see the segment). Returns ``[T, 3, H, W]`` float32 in [0, 1] on the CPU, cropped to the
    unpadded size and resized to ×``upscale`` when the upsampling was larger. upscale / min_side must be
    those given to ``sample_mgld`` (``prepare_mgld_input``).
    """
    from ..color import color_fix as apply_color_fix

    prep = None
    if x_up is None:
        if lr_frames is None:
            raise ValueError("give lr_frames or x_up")
        prep = prepare_mgld_input(lr_frames, upscale, min_side)
        x_up = prep.x_up
    if getattr(model, "video_vae", None) is None:
        raise ValueError("this VSRModel has no MGLD video VAE (load it with load_mgld_model)")
    from ..memory import trim_heap

    trim_heap()  # the sampler's freed activations, before the decoder's large ones (0.5 GiB at 512 px)
    t = latents.shape[0]
    spans = plan_segments(t, segment, pad="last")
    lat = pad_frames(latents.float(), spans[-1][1])
    xu = pad_frames(x_up.float(), spans[-1][1])
    outs = []
    with torch.no_grad(), model.on_device("video_vae") as (vae,):
        dev = next(vae.parameters()).device
        dt = next(vae.parameters()).dtype
        for s, e in spans:
            xi = xu[s:e].to(dev, dt)
            out = _decode_cfw(vae, lat[s:e].to(dev, dt) / model.scaling_factor, xi, dec_w)
            out = (out.float() + 1) / 2
            if color_fix and color_fix != "none":
                # the script's AdaIN/wavelet act on [-1, 1] tensors; color.py maps [0, 1] to that range
                out = apply_color_fix(out, (xi.float() + 1) / 2, color_fix, clamp=False)
            outs.append(out.cpu())
    x = torch.cat(outs)[:t]
    if prep is not None:
        x = x[..., :prep.size[0], :prep.size[1]]
    x = x.clamp(0, 1)
    if prep is not None and prep.scale > upscale:
        x = F.interpolate(x, size=prep.out_size, mode="bicubic").clamp(0, 1)
    return x


def _decode_cfw(vae, z: Tensor, x_up: Tensor, dec_w: float) -> Tensor:
    # CFW: the decoder fuses the encoder features of the upsampled LR (§4.3 step 7)
    enc = vae.encode_features(x_up) if hasattr(vae, "encode_features") else vae.encode(x_up)[1]
    return vae.decode(z, enc, fusion_w=dec_w)



def seam_error(x: Tensor, flow: VideoFlow, segment: int = MGLD_SEGMENT) -> tuple[float, float]:
    """Temporal seam measure: mean warping error at segment borders vs inside segments.

    x: ``[T, C, h, w]`` latents or frames; flow: the clip's ``VideoFlow`` (resized to x's grid, MGLD
    occlusion masks). For each pair (i, i+1): ``mean |x_i − warp(x_{i+1}, forward[i])|`` over pixels not
    occluded. Returns ``(border, inside)``: the mean over pairs that cross a ``segment`` border
    (``(i+1) % segment == 0``) and over the others (nan when a group is empty).
    """
    from .motion_guidance import latent_flow
    from ..flow.warp import warp

    t = x.shape[0]
    vf = latent_flow(flow, tuple(x.shape[-2:]))
    xf = x.float()
    w = warp(xf[1:], vf.forward.to(xf.device), convention="mgld")
    keep = (1 - vf.occ_forward).to(xf.device)
    err = ((xf[:-1] - w).abs() * keep).sum(dim=(1, 2, 3)) / (keep.sum(dim=(1, 2, 3)) * x.shape[1]).clamp_min(1)
    border = [float(err[i]) for i in range(t - 1) if (i + 1) % segment == 0]
    inside = [float(err[i]) for i in range(t - 1) if (i + 1) % segment != 0]
    mean = (lambda v: sum(v) / len(v) if v else float("nan"))
    return mean(border), mean(inside)
