"""MGLD for ``vs_official.py``: the official sampling of ``scripts/vsr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py``
and ours on the same full-size random weights in the release files.

The official environment (github.com/IanYeung/MGLD-VSR; no xformers, no mmcv):

    python -m venv /work/mgld_venv
    /work/mgld_venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/mgld_venv/bin/pip install pytorch-lightning==1.9.5 einops==0.3.0 omegaconf "numpy<2" opencv-python-headless \
        kornia safetensors scipy open_clip_torch==2.0.2 openai-clip transformers==4.46.3 matplotlib scikit-learn \
        scikit-image "setuptools<70"
    /work/mgld_venv/bin/pip install --no-deps taming-transformers-rom1504==0.0.6
    python bench/vs_official.py mgld --official /work/official/MGLD-VSR --python /work/mgld_venv/bin/python

``official_mgld_env.py`` (beside this file) installs, before any official import, a plain-torch
``xformers.ops.memory_efficient_attention`` (so the official xformers branches run, the ones the released model
ran in: only that branch repeats the batch-1 text context over the 5 frames), a stub ``mmcv`` (imported by
basicsr's package for MaskFlownet and training datasets only) and the old name of
``torchvision.transforms.functional_tensor``. The official files are not modified.

* ``WRITE_OFFICIAL`` builds the released architecture with the official classes (``instantiate_from_config`` of
  ``mgldvsr_512_realbasicvsr_deg.yaml`` and ``video_autoencoder_kl_64x64x4_resi.yaml``), random weights (every
  all-zero parameter made non-zero; the uninitialised ``temporal_alpha`` parameters 0.1 N(0, 1)), and saves the
  release files: ``mgldvsr_unet.ckpt`` (Lightning ``{"state_dict": ...}``, official key names, 1431 M values),
  ``video_vae_cfw.ckpt`` (with the training loss ``loss.*``) and ``raft-things.pth`` (the same RAFT weights as
  ``flownet_model.*``). Our loader reads them strictly; the official side as the script's
  ``load_model_from_config`` (``strict=False``, checked to leave no key missing).
* Both sides run one 5-frame segment as the script does with the README arguments (``--dec_w 1.0
  --colorfix_type adain``, guidance -10, the 64/32 latent canvas): upsampling by max(512 / short side, 4),
  RAFT flows on the upsampled frames brought to 1/4, MGLD occlusion masks, the first-stage posterior sample,
  x_T at t = 999, respaced DDPM, CFW decode, AdaIN colour fix, bicubic back to x4. Seeding: one stream seeded 42
  before the first-stage encoding, drawn in the script's order (posterior noise, x_T noise, one draw per step);
  ours is handed the same stream. Frames of at most 960 px take the script's non-tiled branch, which reads
  ``flow_f``/``fwd_occ`` that only its tile branch defines (a NameError as released); the harness hands over the
  whole-frame flows and masks, what the tile branch gives a single tile.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent

WRITE_OFFICIAL = r"""
import sys, time
sys.path[:0] = [{official!r}, {here!r}, {bench!r}]
import torch
torch.set_num_threads({threads})
import official_mgld_env
official_mgld_env.install_stubs(); official_mgld_env.plain_xformers()
from omegaconf import OmegaConf
from ldm.util import instantiate_from_config
from common import random_init_  # bench/common.py: every all-zero parameter made small random
from pathlib import Path


def randomize_(module, seed):
    random_init_(module)
    # SpatialTemporalConv / TemporalAttention hold temporal_alpha = nn.Parameter(torch.Tensor(1)): uninitialised
    # memory in the official classes (a trained value in the release). Anything may be there (1e21 was, and
    # the middle block then overflowed to NaN): 0.1 N(0, 1) as in shared/parity.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in module.named_parameters():
            if name.endswith("temporal_alpha"):
                prm.copy_(0.1 * torch.randn(prm.shape, generator=g))


folder = Path({folder!r})
folder.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
config = OmegaConf.load("configs/mgldvsr/mgldvsr_512_realbasicvsr_deg.yaml")
p = config.model.params
p.ckpt_path = None                                     # training-only SD 2.1 init
p.first_stage_config.params.ckpt_path = None
p.cond_stage_config.params.version = ""                # open_clip pretrained="": no download
p.cond_stage_config.params.device = "cpu"
p.flownet_config.params.load_path = None               # RAFT random here; written as raft-things.pth below
t0 = time.perf_counter()
model = instantiate_from_config(config.model)
randomize_(model, 1)
sd = model.state_dict()
n = sum(v.numel() for k, v in sd.items() if v.is_floating_point())
torch.save({{"state_dict": sd, "global_step": 0, "epoch": 0}}, folder / "mgldvsr_unet.ckpt")
raft = {{"module." + k[len("flownet_model."):]: v for k, v in sd.items() if k.startswith("flownet_model.")}}
torch.save(raft, folder / "raft-things.pth")
print(f"mgldvsr_unet.ckpt: {{len(sd)}} tensors, {{n / 1e6:.1f}} M values ({{time.perf_counter() - t0:.0f}} s)", flush=True)
del model, sd, raft

# the video VAE with its training loss (the released file carries loss.*): LPIPS' VGG16 and weights, and
# the loss' SpyNet, random instead of downloaded
import torchvision, taming.modules.losses.lpips as lp
_vgg16 = torchvision.models.vgg16
lp.models.vgg16 = lambda pretrained=False, **kw: _vgg16(weights=None)
lp.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None
vq = OmegaConf.load("configs/video_vae/video_autoencoder_kl_64x64x4_resi.yaml")
vq.model.params.ckpt_path = None
vq.model.params.lossconfig.params.flownet_config.params.load_path = None
vae = instantiate_from_config(vq.model)
randomize_(vae, 2)
vsd = vae.state_dict()
torch.save({{"state_dict": vsd, "global_step": 0, "epoch": 0}}, folder / "video_vae_cfw.ckpt")
print(f"video_vae_cfw.ckpt: {{len(vsd)}} tensors, "
      f"{{sum(v.numel() for v in vsd.values() if v.is_floating_point()) / 1e6:.1f}} M values", flush=True)
"""

OFFICIAL_MGLD = r"""
import json, sys, time, resource, copy, importlib.util
sys.path[:0] = [{official!r}, {official!r} + "/scripts", {here!r}]
import numpy as np, torch
torch.set_num_threads({threads})
import official_mgld_env
official_mgld_env.install_stubs(); official_mgld_env.plain_xformers()
import torch.nn.functional as F
from omegaconf import OmegaConf
from einops import rearrange, repeat
from pytorch_lightning import seed_everything
from ldm.util import instantiate_from_config
from basicsr.archs.arch_util import resize_flow
from scripts.util_flow import forward_backward_consistency_check
from scripts.wavelet_color_fix import adaptive_instance_normalization
spec = importlib.util.spec_from_file_location("script", "scripts/vsr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py")
script = importlib.util.module_from_spec(spec); spec.loader.exec_module(script)  # its space_timesteps

STEPS, SEED, DEC_W, UPSCALE, TILE_OVERLAP, N_SAMPLES = {steps}, 42, 1.0, 4.0, 32, 1
seed_everything(SEED)

def load_model_from_config(config, ckpt):  # the script's, without .cuda()
    pl_sd = torch.load(ckpt, map_location="cpu")
    sd = pl_sd["state_dict"]
    model = instantiate_from_config(config.model)
    m, u = model.load_state_dict(sd, strict=False)
    assert not m, f"{{ckpt}}: {{len(m)}} missing keys, e.g. {{m[:5]}}"
    print(f"{{ckpt}}: {{len(u)}} unexpected keys", file=sys.stderr)
    model.eval()
    return model

t0 = time.perf_counter()
config = OmegaConf.load("configs/mgldvsr/mgldvsr_512_realbasicvsr_deg.yaml")
p = config.model.params
p.ckpt_path = None                                     # training-only paths of the config
p.first_stage_config.params.ckpt_path = None
p.cond_stage_config.params.version = ""                # weights come from the checkpoint, not the hub
p.flownet_config.params.load_path = {raft!r}           # the config's raft-things.pth (then overwritten by the ckpt)
model = load_model_from_config(config, {unet!r})
device = torch.device("cpu")
model = model.to(device)
model.configs = config
vqgan_config = OmegaConf.load("configs/video_vae/video_autoencoder_kl_64x64x4_resi.yaml")
vqgan_config.model.params.ckpt_path = None
vqgan_config.model.params.lossconfig = {{"target": "torch.nn.Identity"}}  # the training loss is not built
vq_model = load_model_from_config(vqgan_config, {vae!r})
vq_model.decoder.fusion_w = DEC_W
model.register_schedule(given_betas=None, beta_schedule="linear", timesteps=1000,
                        linear_start=0.00085, linear_end=0.0120, cosine_s=8e-3)
model.num_timesteps = 1000
sqrt_alphas_cumprod = copy.deepcopy(model.sqrt_alphas_cumprod)
sqrt_one_minus_alphas_cumprod = copy.deepcopy(model.sqrt_one_minus_alphas_cumprod)
use_timesteps = set(script.space_timesteps(1000, [STEPS]))
last_alpha_cumprod = 1.0
new_betas = []
for i, alpha_cumprod in enumerate(model.alphas_cumprod):
    if i in use_timesteps:
        new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
        last_alpha_cumprod = alpha_cumprod
new_betas = [beta.data.cpu().numpy() for beta in new_betas]
model.register_schedule(given_betas=np.array(new_betas), timesteps=len(new_betas))
model.num_timesteps = 1000
model.ori_timesteps = sorted(use_timesteps)
model.cond_stage_model.device = device
load = time.perf_counter() - t0

lr = np.load({lr!r})  # [T, h, w, 3] in [0, 1], uint8 values / 255 (read_image's float32 maths)
t1 = time.perf_counter()
extra = {{}}
with torch.no_grad(), model.ema_scope():
    frames = []
    for f in lr:
        cur_image = (torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))[None] - 0.5) / 0.5
        size_min = min(cur_image.size(-1), cur_image.size(-2))
        upsample_scale = max(512 / size_min, UPSCALE)
        cur_image = F.interpolate(cur_image, size=(int(cur_image.size(-2) * upsample_scale),
                                                   int(cur_image.size(-1) * upsample_scale)), mode="bicubic")
        frames.append(cur_image)
    init_image = torch.cat(frames, dim=0)
    im_lq_bs = init_image.clamp(-1.0, 1.0).to(device)
    ori_h, ori_w = im_lq_bs.shape[2:]
    if not (ori_h % 32 == 0 and ori_w % 32 == 0):
        flag_pad = True
        pad_h = ((ori_h // 32) + 1) * 32 - ori_h
        pad_w = ((ori_w // 32) + 1) * 32 - ori_w
        im_lq_bs = F.pad(im_lq_bs, pad=(0, pad_w, 0, pad_h), mode="reflect")
    else:
        flag_pad = False
    im_lq_bs_0_1 = torch.clamp((im_lq_bs + 1.0) / 2.0, min=0.0, max=1.0)
    _, _, im_h, im_w = im_lq_bs_0_1.shape
    im_lq_bs_0_1 = F.interpolate(im_lq_bs_0_1, size=(im_h // 4, im_w // 4), mode="bicubic")
    im_lq_bs_0_1 = rearrange(im_lq_bs_0_1, "(b t) c h w -> b t c h w", t=init_image.size(0))
    flows = model.compute_flow(im_lq_bs_0_1)
    flows = [rearrange(flow, "b t c h w -> (b t) c h w") for flow in flows]
    flows = [resize_flow(flow, size_type="shape", sizes=(im_h // 8, im_w // 8)) for flow in flows]
    flows = [rearrange(flow, "(b t) c h w -> b t c h w", t=init_image.size(0) - 1) for flow in flows]
    fwd_occ_list, bwd_occ_list = list(), list()
    for i in range(init_image.size(0) - 1):
        fwd_flow, bwd_flow = flows[1][:, i, :, :, :], flows[0][:, i, :, :, :]
        fwd_occ, bwd_occ = forward_backward_consistency_check(fwd_flow, bwd_flow, alpha=0.01, beta=0.5)
        fwd_occ_list.append(fwd_occ.unsqueeze_(1))
        bwd_occ_list.append(bwd_occ.unsqueeze_(1))
    fwd_occs = rearrange(torch.stack(fwd_occ_list, dim=1), "b t c h w -> (b t) c h w")
    bwd_occs = rearrange(torch.stack(bwd_occ_list, dim=1), "b t c h w -> (b t) c h w")
    flows = [rearrange(flow, "b t c h w -> (b t) c h w") for flow in flows]
    # Frames of at most 960 px take the script's else-branch, which reads flow_f/flow_b/fwd_occ/bwd_occ that
    # only its tile branch defines (a NameError as released). They are the whole-frame flows and masks here,
    # what the tile branch hands sample_canvas for a single tile, and the tile branch's per-tile seeding.
    assert im_lq_bs.shape[2] <= 960 and im_lq_bs.shape[3] <= 960, "the 960/750 pixel tiling is not run here"
    flow_f, flow_b, fwd_occ, bwd_occ = flows[0], flows[1], fwd_occs, bwd_occs
    seed_everything(SEED)
    init_latent = model.get_first_stage_encoding(model.encode_first_stage(im_lq_bs))
    text_init = [""] * N_SAMPLES
    semantic_c = model.cond_stage_model(text_init)
    noise = torch.randn_like(init_latent)
    t = repeat(torch.tensor([999]), "1 -> b", b=im_lq_bs.size(0))
    t = t.to(device).long()
    x_T = model.q_sample_respace(x_start=init_latent, t=t, sqrt_alphas_cumprod=sqrt_alphas_cumprod,
                                 sqrt_one_minus_alphas_cumprod=sqrt_one_minus_alphas_cumprod, noise=noise)
    flow_f = rearrange(flow_f, "(b t) c h w -> b t c h w", t=init_image.size(0) - 1)
    flow_b = rearrange(flow_b, "(b t) c h w -> b t c h w", t=init_image.size(0) - 1)
    fwd_occ = rearrange(fwd_occ, "(b t) c h w -> b t c h w", t=init_image.size(0) - 1)
    bwd_occ = rearrange(bwd_occ, "(b t) c h w -> b t c h w", t=init_image.size(0) - 1)
    flows = (flow_f, flow_b)
    masks = (fwd_occ, bwd_occ)
    s0 = time.perf_counter()
    samples, _ = model.sample_canvas(cond=semantic_c, struct_cond=init_latent, guidance_scale=-10.0,
                                     lr_images=None, flows=flows, masks=masks, cond_flow=None,
                                     batch_size=im_lq_bs.size(0), timesteps=STEPS, time_replace=STEPS, x_T=x_T,
                                     return_intermediates=True, tile_size=64, tile_overlap=TILE_OVERLAP,
                                     batch_size_sample=N_SAMPLES, verbose=False)
    sampling = time.perf_counter() - s0
    _, enc_fea_lq = vq_model.encode(im_lq_bs)
    x_samples = vq_model.decode(samples * 1. / model.scale_factor, enc_fea_lq)
    x_samples = adaptive_instance_normalization(x_samples, im_lq_bs)  # --colorfix_type adain
    im_sr = torch.clamp((x_samples + 1.0) / 2.0, min=0.0, max=1.0)
    if upsample_scale > UPSCALE:
        im_sr = F.interpolate(im_sr, size=(int(im_lq_bs.size(-2) * UPSCALE / upsample_scale),
                                           int(im_lq_bs.size(-1) * UPSCALE / upsample_scale)), mode="bicubic")
        im_sr = torch.clamp(im_sr, min=0.0, max=1.0)
    im_sr = im_sr.cpu().numpy().transpose(0, 2, 3, 1)  # the script then writes (x * 255).astype(uint8) PNGs
    if flag_pad:
        im_sr = im_sr[:, :ori_h, :ori_w, ]
total = time.perf_counter() - t1
np.save({out!r}, np.ascontiguousarray(im_sr, dtype=np.float32))
print(json.dumps({{"load": load, "run": total, "sampling": sampling,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""

OURS_MGLD = r"""
import json, sys, time, resource
sys.path.insert(0, {repo!r})
import numpy as np, torch
import torch.nn.functional as F
torch.set_num_threads({threads})
from vsr_core.flow import estimate_video_flow
from vsr_core.flow.raft import RAFTEngine
from vsr_core.loaders.mgld import find_mgld_files, load_mgld_model
from vsr_core.loaders.raft import load_raft
from vsr_core.sampling.mgld import decode_mgld, encode_lr, prepare_mgld_input, sample_mgld
from vsr_core.sampling.prompt import prompt_embeddings
from vsr_core.speed import apply_speed, compute_context, speed_options
import contextlib
STEPS, SEED = {steps}, 42
t0 = time.perf_counter()
opts = None if {speed!r} in ("fp32", "as loaded") else speed_options({speed!r}, "cpu")
unet_file, vae_file, configs = find_mgld_files({folder!r})
# the loader's dtype: "auto" reads the weights straight into bf16 on a CPU with native bf16
model = load_mgld_model(unet_file, vae_file, dtype={dtype!r}, device="cpu", configs=configs)
engine = RAFTEngine.for_method(load_raft({raft!r}), "mgld")
if opts is not None:
    model = apply_speed(model, opts)
lr = torch.from_numpy(np.load({lr!r}))  # [T, h, w, 3] in [0, 1]
load = time.perf_counter() - t0
t1 = time.perf_counter()
with torch.no_grad(), (compute_context(model.device, opts) if opts is not None else contextlib.nullcontext()):
    x = lr.permute(0, 3, 1, 2).contiguous()
    prep = prepare_mgld_input(x, 4)
    hp, wp = prep.x_up.shape[-2:]
    if {flow_input!r} == "official":
        # the script's flow input: the padded upsampled frames, bicubic to 1/4 of their size
        f_in = F.interpolate(((prep.x_up + 1) / 2).clamp(0, 1), size=(hp // 4, wp // 4), mode="bicubic")
    else:
        f_in = x  # what our nodes/CLI hand the sampler: the flow of the LR frames
    flow = estimate_video_flow(f_in, engine, occlusion_form="mgld")
    if {seeding!r} == "official":
        # one stream, in the script's order: posterior noise, x_T noise, one draw per step
        gen = torch.Generator().manual_seed(SEED)
        z_lr = encode_lr(model, prep.x_up, gen)
        x_T_noise = torch.randn(z_lr.shape, generator=gen)
        noise = lambda k, shape: torch.randn(shape, generator=gen)
    else:  # the library's default seeding for seed 42
        z_lr = encode_lr(model, prep.x_up, torch.Generator().manual_seed(SEED))
        x_T_noise = noise = None
    emb = prompt_embeddings(model, "")
    s0 = time.perf_counter()
    z = sample_mgld(model, None, flow, steps=STEPS, seed=SEED, guidance_scale=-10.0, segment=5,
                    segment_mode="official", tile=64, tile_overlap=32, init_latent=z_lr, x_T_noise=x_T_noise,
                    noise=noise)
    sampling = time.perf_counter() - s0
    frames = decode_mgld(model, z, x, dec_w=1.0, color_fix="adain")
total = time.perf_counter() - t1
np.save({out!r}, frames.permute(0, 2, 3, 1).float().contiguous().numpy())
print(json.dumps({{"load": load, "run": total, "sampling": sampling,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""



# ------------------------------------------------------------------------------------ for vs_official.py
def add_args(ap) -> None:
    pass


def prepare(args, work: Path) -> dict:
    """Writes the weights (once) and the inputs; returns the template fields both sides share."""
    import numpy as np
    import torch

    if args.frames != 5:
        raise SystemExit("mgld: one 5-frame segment (the script's n_frames) is measured; leave --frames at 5")
    folder = work / "MGLD"
    if not (folder / "video_vae_cfw.ckpt").is_file():
        print(f"writing full-size random MGLD weights to {folder} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        code = WRITE_OFFICIAL.format(official=args.official, here=str(HERE), bench=str(HERE), folder=str(folder),
                                     threads=args.threads)
        subprocess.run([args.python, "-c", code], check=True, cwd=args.official)
    g = torch.Generator().manual_seed(3)
    lr = torch.nn.functional.interpolate(torch.rand(args.frames, 3, args.lr // 8, args.lr // 8, generator=g),
                                         size=(args.lr, args.lr), mode="bicubic").clamp(0, 1)
    lr = (lr * 255).round().to(torch.uint8).float() / 255  # what the script's read_image gives for PNG frames
    np.save(work / "lr.npy", lr.permute(0, 2, 3, 1).contiguous().numpy())
    return dict(folder=str(folder), lr=str(work / "lr.npy"), steps=args.steps, threads=args.threads,
                raft=str(folder / "raft-things.pth"))


def title(args, common: dict) -> str:
    return (f"MGLD, one 5-frame segment, LR {args.lr}x{args.lr} (upsampled to 512) -> x4, {args.steps} respaced DDPM "
            "steps, motion guidance -10, 64/32 latent canvas, CFW w=1, AdaIN")


def official_code(args, common: dict, out: str) -> str:
    f = Path(common["folder"])
    return OFFICIAL_MGLD.format(official=args.official, here=str(HERE), unet=str(f / "mgldvsr_unet.ckpt"),
                                vae=str(f / "video_vae_cfw.ckpt"), out=out,
                                **{k: v for k, v in common.items() if k != "folder"})


def ours_code(args, common: dict, out: str, speed: str, dtype: str, repo: str) -> str:
    return OURS_MGLD.format(repo=repo, speed=speed, dtype=dtype, out=out, flow_input="official", seeding="official",
                            **common)
