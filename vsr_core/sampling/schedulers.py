"""Noise schedules and update rules as small functions we control.

A ``Schedule`` holds what one sampling run needs (timesteps, ᾱ at each step and at the next one, the
DPM-Solver sigmas) and splits every scheduler step in two, so a temporal mechanism can edit the
predicted clean latent in between:

    x0, eps = schedule.predict(model_output, x_t, i)      # v / ε / x0 prediction -> (x̂0, ε̂)
    x0 = hook(x0)                                         # e.g. Upscale-A-Video's latent propagation
    x_prev = schedule.step(i, x_t, x0, eps, noise, state)

The timesteps and ``alphas_cumprod`` come from diffusers' own scheduler classes built from the model's
config, so they are exactly what the official code used; the arithmetic of each update repeats
diffusers' float32 expressions term by term, so ``predict`` + ``step`` equals ``scheduler.step`` on the
same inputs (tests/test_schedulers.py). Noise is an argument, never drawn here.

Names: ``"ddpm"`` (ancestral, as StableVSR publishes it: ``DDPMScheduler`` on the x4 config,
fixed_small variance), ``"ddim"`` (η = 0), ``"dpmpp_2m"`` (DPM-Solver++(2M) in x0 form, midpoint, first
order on the first and the last step, final sigma 0 — diffusers' ``DPMSolverMultistepScheduler``
defaults).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SCHEDULERS",
    "Schedule",
    "make_schedule",
    "scheduler_name_for",
    "to_x0_eps",
    "from_x0_eps",
    "ddpm_update",
    "ddim_update",
    "dpmpp_2m_update",
    "add_noise",
]

SCHEDULERS = ("ddpm", "ddim", "dpmpp_2m")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_CLASS_TO_NAME = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmpp_2m"}


def scheduler_name_for(scheduler_config: dict, default: str = "ddim") -> str:
    """Our scheduler name for a diffusers config's ``_class_name`` (``default`` when unknown)."""
    return _CLASS_TO_NAME.get(str(scheduler_config.get("_class_name", "")), default)


# ---- prediction conversions ----------------------------------------------------------------------


def to_x0_eps(model_output: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
              prediction_type: str) -> tuple[Tensor, Tensor]:
    """Turn a network output into (x̂0, ε̂) for ``x_t = alpha·x0 + sigma·ε``.

    alpha, sigma: √ᾱ_t and √(1−ᾱ_t) (0-d tensors or floats). prediction_type: ``"v_prediction"``
    (v = alpha·ε − sigma·x0, Salimans & Ho 2022 §4), ``"epsilon"`` or ``"sample"``.
    """
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * model_output, alpha * model_output + sigma * x_t
    if prediction_type == "epsilon":
        return (x_t - sigma * model_output) / alpha, model_output
    if prediction_type == "sample":
        return model_output, (x_t - alpha * model_output) / sigma
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                prediction_type: str) -> Tensor:
    """The network output that ``to_x0_eps`` maps to (x0, eps) (inverse conversion)."""
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


# ---- update rules (pure functions) ---------------------------------------------------------------


def ddpm_update(x_t: Tensor, x0: Tensor, a_t: Tensor, a_prev: Tensor, noise: Tensor | None = None,
                variance_type: str = "fixed_small") -> Tensor:
    """One ancestral DDPM step x_t -> x_{t_prev} (Ho et al. 2020, eqs. 6-7, on arbitrary timestep pairs).

    a_t, a_prev: ᾱ at t and at the next timestep (1.0 after the last), float32 0-d tensors.
    noise: N(0, I) like ``x_t``; None adds no noise (what diffusers does at t = 0).
    variance_type: ``"fixed_small"`` (β̃, the posterior variance), ``"fixed_small_log"`` or
    ``"fixed_large"`` (β).
    """
    b_t, b_prev = 1 - a_t, 1 - a_prev
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    mean = (a_prev ** 0.5 * cur_beta) / b_t * x0 + cur_alpha ** 0.5 * b_prev / b_t * x_t
    if noise is None:
        return mean
    var = torch.clamp((1 - a_prev) / (1 - a_t) * cur_beta, min=1e-20)
    if variance_type == "fixed_small":
        std = var ** 0.5
    elif variance_type == "fixed_small_log":
        # diffusers multiplies the noise by exp(½·log β̃) without a further square root
        std = torch.exp(0.5 * torch.log(var))
    elif variance_type == "fixed_large":
        std = cur_beta ** 0.5
    else:
        raise ValueError(f"unsupported DDPM variance_type {variance_type!r} "
                         "(fixed_small, fixed_small_log, fixed_large)")
    return mean + std * noise


def ddim_update(x0: Tensor, eps: Tensor, a_prev: Tensor) -> Tensor:
    """Deterministic DDIM step (η = 0, Song et al. 2021 eq. 12): √ᾱ_prev·x̂0 + √(1−ᾱ_prev)·ε̂."""
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def _alpha_sigma(sigma: Tensor) -> tuple[Tensor, Tensor]:
    # DPM-Solver's sigma is the noise-to-signal ratio √((1−ᾱ)/ᾱ); α_t = 1/√(σ²+1), σ_t = σ·α_t.
    alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
    return alpha, sigma * alpha


def dpmpp_2m_update(x_t: Tensor, x0: Tensor, sigma_s: Tensor, sigma_t: Tensor,
                    x0_prev: Tensor | None = None, sigma_prev: Tensor | None = None) -> Tensor:
    """DPM-Solver++(2M) step from sigma_s to sigma_t in data-prediction form (Lu et al. 2022, Alg. 2).

    Without ``x0_prev`` (first step, or a final step to sigma 0) it is the first-order update
    x_t = (σ_t/σ_s)·x_s − α_t(e^{−h} − 1)·x̂0 with h = λ_t − λ_s, λ = log α − log σ; with the previous
    step's x̂0 at ``sigma_prev`` it adds the midpoint correction D1 = (x̂0 − x̂0_prev)/r, r = h_prev/h.
    """
    alpha_t, s_t = _alpha_sigma(sigma_t)
    alpha_s, s_s = _alpha_sigma(sigma_s)
    lam_t = torch.log(alpha_t) - torch.log(s_t)
    lam_s = torch.log(alpha_s) - torch.log(s_s)
    h = lam_t - lam_s
    c = alpha_t * (torch.exp(-h) - 1.0)
    if x0_prev is None:
        return (s_t / s_s) * x_t - c * x0
    alpha_p, s_p = _alpha_sigma(sigma_prev)
    lam_p = torch.log(alpha_p) - torch.log(s_p)
    r0 = (lam_s - lam_p) / h
    d1 = (1.0 / r0) * (x0 - x0_prev)
    return (s_t / s_s) * x_t - c * x0 - 0.5 * c * d1


def add_noise(x0: Tensor, noise: Tensor, alphas_cumprod: Tensor, t: int | Tensor) -> Tensor:
    """q(x_t | x0) = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, ``t`` one timestep or one per batch item (diffusers'
    ``add_noise``; used for the x4 low-res noise augmentation)."""
    ac = alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    t = torch.as_tensor(t, device=x0.device).long().reshape(-1)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    a = ac[t]
    return (a ** 0.5).reshape(shape) * x0 + ((1 - a) ** 0.5).reshape(shape) * noise


# ---- the schedule ----------------------------------------------------------------------------------


@dataclass
class Schedule:
    """One sampling run's schedule (all tensors float32/int64 on the CPU; coefficients are 0-d
    tensors, usable against latents on any device).

    timesteps: ``[N]`` model timesteps, descending. alpha_prod / alpha_prod_prev: ``[N]`` ᾱ at each
    timestep and at the step it moves to (1.0 or ``final_alpha_cumprod`` after the last, as each diffusers
    class does). sigmas: ``[N+1]`` DPM-Solver sigmas (``dpmpp_2m`` only, last = 0).
    """

    name: str
    timesteps: Tensor
    alphas_cumprod: Tensor
    alpha_prod: Tensor
    alpha_prod_prev: Tensor
    prediction_type: str
    variance_type: str = "fixed_small"
    clip_sample: float | None = None
    sigmas: Tensor | None = None
    init_noise_sigma: float = 1.0

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def alpha_sigma(self, i: int) -> tuple[Tensor, Tensor]:
        """(√ᾱ, √(1−ᾱ)) at step i, computed the way this scheduler's diffusers class computes them."""
        if self.name == "dpmpp_2m":
            return _alpha_sigma(self.sigmas[i])
        a = self.alpha_prod[i]
        return a ** 0.5, (1 - a) ** 0.5

    def predict(self, model_output: Tensor, x_t: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(x̂0, ε̂) from the network output at step i (x̂0 clamped when the config asks ``clip_sample``)."""
        alpha, sigma = self.alpha_sigma(i)
        x0, eps = to_x0_eps(model_output, x_t, alpha, sigma, self.prediction_type)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0, eps

    def needs_noise(self, i: int) -> bool:
        """Whether ``step(i, ...)`` takes a noise tensor (ancestral DDPM at t > 0)."""
        return self.name == "ddpm" and int(self.timesteps[i]) > 0

    def step(self, i: int, x_t: Tensor, x0: Tensor, eps: Tensor | None = None, noise: Tensor | None = None,
             state: dict | None = None) -> Tensor:
        """x_t -> x at the next timestep, from a (possibly edited) x̂0 and ε̂.

        noise: required when ``needs_noise(i)``. state: a dict the caller keeps per sample for the
        multistep solver (``dpmpp_2m`` stores the previous x̂0 in it); other schedulers ignore it.
        """
        if self.name == "ddpm":
            if self.needs_noise(i) and noise is None:
                raise ValueError(f"ddpm step {i} (t={int(self.timesteps[i])}) needs a noise tensor")
            return ddpm_update(x_t, x0, self.alpha_prod[i], self.alpha_prod_prev[i],
                               noise if self.needs_noise(i) else None, self.variance_type)
        if self.name == "ddim":
            if eps is None:
                raise ValueError("ddim needs ε̂ (take it from Schedule.predict)")
            return ddim_update(x0, eps, self.alpha_prod_prev[i])
        # dpmpp_2m: second order when the previous step's x̂0 is known, except into sigma = 0
        state = {} if state is None else state
        last = i == len(self) - 1
        prev = state.get("x0") if state.get("i") == i - 1 and not last else None
        out = dpmpp_2m_update(x_t.float(), x0, self.sigmas[i], self.sigmas[i + 1], prev,
                              self.sigmas[i - 1] if prev is not None else None)
        state["x0"], state["i"] = x0, i
        return out.to(x_t.dtype)


def _filtered(cls, config: dict, **overrides) -> dict:
    keys = set(inspect.signature(cls.__init__).parameters) - {"self"}
    cfg = {k: v for k, v in config.items() if k in keys}
    cfg.update(overrides)
    return cfg


def make_schedule(scheduler_config: dict, name: str, steps: int, timestep_spacing: str | None = None) -> Schedule:
    """Build the schedule of ``steps`` steps for scheduler ``name`` from a diffusers scheduler config.

    scheduler_config: the model's ``scheduler_config.json`` as a dict (betas, prediction_type,
    steps_offset, timestep_spacing...; keys another scheduler class does not know are ignored, as
    StableVSR's ``DDPMScheduler.from_pretrained`` on a DDIM config does).
    name: ``"ddpm" | "ddim" | "dpmpp_2m"``. timestep_spacing: overrides the config's
    (``"leading" | "trailing" | "linspace"``).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    over = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    cfg = dict(scheduler_config)

    def settings(sched) -> tuple[str, float | None]:
        # read back from the built class so its defaults apply (DDPM/DDIM default to clip_sample=True)
        c = sched.config
        if c.get("thresholding"):
            raise NotImplementedError("dynamic thresholding is not supported by vsr_core schedulers")
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {c.prediction_type!r}")
        clip = float(c.clip_sample_range) if c.get("clip_sample") else None
        return c.prediction_type, clip

    if name == "ddpm":
        sched = DDPMScheduler.from_config(_filtered(DDPMScheduler, cfg, **over))
        sched.set_timesteps(steps)
        pred, clip = settings(sched)
        ts = sched.timesteps.clone().long()
        ac = sched.alphas_cumprod.float()
        # diffusers >= 0.22 steps to the next listed timestep (0.21 used t - T//N: equal for "leading")
        prev = torch.cat([ts[1:], ts.new_tensor([-1])])
        a_prev = torch.stack([ac[p] if p >= 0 else sched.one.float() for p in prev])
        return Schedule("ddpm", ts, ac, ac[ts], a_prev, pred, sched.config.variance_type, clip,
                        init_noise_sigma=float(sched.init_noise_sigma))
    if name == "ddim":
        sched = DDIMScheduler.from_config(_filtered(DDIMScheduler, cfg, **over))
        sched.set_timesteps(steps)
        pred, clip = settings(sched)
        ts = sched.timesteps.clone().long()
        ac = sched.alphas_cumprod.float()
        # DDIM's previous timestep is always t - T//N, whatever the spacing (diffusers DDIMScheduler.step)
        prev = ts - sched.config.num_train_timesteps // steps
        final = torch.as_tensor(sched.final_alpha_cumprod).float()
        a_prev = torch.stack([ac[p] if p >= 0 else final for p in prev])
        return Schedule("ddim", ts, ac, ac[ts], a_prev, pred, clip_sample=clip,
                        init_noise_sigma=float(sched.init_noise_sigma))
    sched = DPMSolverMultistepScheduler.from_config(_filtered(
        DPMSolverMultistepScheduler, cfg, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        final_sigmas_type="zero", lower_order_final=True, euler_at_final=False, use_karras_sigmas=False,
        use_lu_lambdas=False, use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False,
        thresholding=False, variance_type=None, **over))
    sched.set_timesteps(steps)
    pred, _ = settings(sched)
    ts = sched.timesteps.clone().long()
    ac = sched.alphas_cumprod.float()
    sig = sched.sigmas.clone().float()
    a_prev = torch.cat([ac[ts[1:]], ac.new_ones(1)])
    return Schedule("dpmpp_2m", ts, ac, ac[ts], a_prev, pred, sigmas=sig,
                    init_noise_sigma=float(sched.init_noise_sigma))
