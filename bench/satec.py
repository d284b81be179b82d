"""SATeCo sampling: seconds per frame and peak memory of (a) the per-frame x4 upscaler, (b) SATeCo as
published, (c) SATeCo with our speed options, on the released architecture with random weights.

Each row is a fresh process (see bench/common.py). ``real`` = the SD 2.x base of ``vsr_core/configs/sd2``
(UNet 866 M, VAE 84 M) with SATeCo's adapters at the paper's sizes (``SATeCoConfig()``: SFA/TFA in every
decoder block of the UNet and the VAE, 6x8x8 tubelets); ``tiny`` = the smoke-test sizes. The adapters
are random (their zero-initialised outputs made non-zero). (b): ``sample_satec_latents`` as published
(strength 0.5 of a 2·steps DDIM schedule, so ``steps`` steps run, 6-frame clips, fp32) on a random
upscaled clip X_u at 4x the LR size, VAE encode included (the sampler encodes X_u). (c): the same call
under ``vsr_core.speed``; the VAE stays fp32. SATeCo has no classifier-free guidance.

Measured here (2-core AVX2 CPU, no native bf16, torch 2.13, 6 frames at 16x16 LR, 2 steps):

    row arch device configuration                           params M  s/frame  vs (a)  vs (b)  peak MiB  PSNR dB
    (a) real cpu    sd_x4 per-frame (CFG 9, fp32)                473.4   12.528   1.00x       -      2378        -
    (b) real cpu    SATeCo published (strength 0.5, fp32)        972.1    5.666   0.45x   1.00x      4370        -
    (c) real cpu    SATeCo + fp32+channels-last (auto here)      972.1    4.701   0.38x   0.83x      4348    134.3  PASS
    (c) forced bf16-autocast: 1.62x slower than (b), 63.4 dB (PASS), +1.5 GiB peak

  The machine was shared (load ~5 on 2 cores): rows vary by 30 % between runs. Details: bench/README.md.

    python bench/satec.py                                   # real, 6 frames at 16x16 LR, 2 steps
    python bench/satec.py --speed bf16-autocast              # force bf16 autocast on the CPU
"""
from __future__ import annotations

import argparse

from common import Row, add_common_args, describe, speed_table, x4_row

SATECO_CHILD = r"""
from diffusers import AutoencoderKL, UNet2DConditionModel
from vsr_core.loaders.satec import new_parts
from vsr_core.models.bundle import VSRModel
from vsr_core.models.satec import SATeCoConfig
from vsr_core.sampling.satec import sample_satec_latents
torch.manual_seed(0)
if arch == "tiny":
    from vsr_core.loaders.tiny import TINY_SD2_UNET as ucfg, TINY_SD2_VAE as vcfg
    sizes = dict(latent_guide_channels=16, pixel_guide_channels=8, sfa_hidden=16, tubelet=[3, 4, 4], max_inner=32,
                 head_dim=16, refiner_channels=16)  # tests/smoke_models.py SATECO_TINY
    scfg = SATeCoConfig.from_dict({**SATeCoConfig().to_dict(), **sizes})
else:
    ucfg, vcfg, scfg = config("sd2/unet.json"), config("sd2/vae.json"), SATeCoConfig()
unet = UNet2DConditionModel.from_config(ucfg).eval()
vae = AutoencoderKL.from_config(vcfg).eval()
# the text encoder never runs: the empty prompt's embedding is put in the bundle's cache below
base = VSRModel("satec", unet, vae, text_encoder=torch.nn.Identity(), tokenizer=object(),
                scheduler_config=config("sd2/scheduler.json"), device=device, offload_device=device)
parts = new_parts(scfg, base)
random_init_(*parts.modules().values())
parts.trained = {"unet", "vae", "refiner"}
params = {"unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters()),
          "adapters": sum(p.numel() for m in (parts.unet, parts.vae) for p in m.parameters())}
model = apply_speed(base, opts)
g = torch.Generator().manual_seed(1)
x_u = torch.rand(T, 3, 4 * h, 4 * w, generator=g) * 2 - 1
model._prompt_cache[("prompt", "")] = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)

def run(n_frames, n_steps):  # published: strength 0.5, DDIM, 6-frame clips
    return sample_satec_latents(model, parts, x_u[:n_frames], strength=0.5, steps=2 * n_steps, seed=0, clip_length=6)

child_report(run, device, opts, params, T, steps, {warmup}, {save!r}, REPEAT)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, frames=6, lr="16x16", steps=2)
    args = ap.parse_args()
    lr = tuple(int(v) for v in args.lr.split("x"))

    def rows(arch, c_opts):
        return [x4_row(lr),
                Row("b", "SATeCo published (strength 0.5, fp32)", SATECO_CHILD, {"precision": "fp32"}, lr),
                Row("c", f"SATeCo + {describe(c_opts)}", SATECO_CHILD, c_opts, lr)]

    speed_table(f"SATeCo, LR {args.lr} -> x4", rows, args)


if __name__ == "__main__":
    main()
