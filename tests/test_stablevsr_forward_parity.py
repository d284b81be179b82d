"""StableVSR single forward passes against the official code's recorded outputs (../shared/parity/stablevsr).

The official tiny UNet / ControlNet / VAE weights are laid out as a StableVSR diffusers folder and loaded
by ``load_diffusion_model`` (strict), then fed the recorded ``forward_io`` inputs: the ControlNet residuals,
the UNet output with and without them, and the VAE decode must match to ~1e-5 (float32, CPU).
"""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from vsr_core.loaders.diffusion import DiffusionWeightsError, load_diffusion_model

# Max abs diff reached (float32, CPU): ControlNet residuals 7.6e-6 (values up to ~7), UNet 3.0e-6 without /
# 2.7e-6 with the residuals, VAE decode 3.5e-6. Bound: 1e-5 x max(1, |reference|), so other CPUs' rounding fits.
ATOL = 1e-5


@pytest.fixture(scope="module")
def parity(parity_dir):
    return parity_dir / "stablevsr"


@pytest.fixture(scope="module")
def official_folder(parity, tmp_path_factory):
    """The parity tiny weights under the official folder layout of claudiom4sir/StableVSR."""
    root = tmp_path_factory.mktemp("stablevsr_parity") / "StableVSR"
    for sub, weights, config in (("unet", "tiny_weights", "tiny_unet_config"),
                                 ("controlnet", "tiny_controlnet_weights", "tiny_controlnet_config"),
                                 ("vae", "tiny_vae_weights", "tiny_vae_config")):
        (root / sub).mkdir(parents=True)
        shutil.copy(parity / f"{weights}.safetensors", root / sub / "diffusion_pytorch_model.safetensors")
        shutil.copy(parity / f"{config}.json", root / sub / "config.json")
    (root / "scheduler").mkdir()
    shutil.copy(parity / "scheduler_config.json", root / "scheduler" / "scheduler_config.json")
    return root


@pytest.fixture(scope="module")
def model(official_folder):
    return load_diffusion_model(official_folder, dtype="fp32", text_encoder=False)


@pytest.fixture(scope="module")
def io(parity):
    return load_file(str(parity / "forward_io.safetensors"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference in units of the bound's scale: < ATOL means within 1e-5 x max(1, |b|)."""
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item() / max(1.0, b.abs().max().item())


def test_parity_weights_load_strictly_into_the_loader_modules(model, parity):
    assert model.method == "stablevsr"
    assert not model.config["uses_class_labels"] and model.low_res_scheduler_config is None
    for name, file in (("unet", "tiny_weights"), ("controlnet", "tiny_controlnet_weights"),
                       ("vae", "tiny_vae_weights")):
        ours = getattr(model, name).state_dict()
        official = load_file(str(parity / f"{file}.safetensors"))
        assert set(ours) == set(official)
        assert all(torch.equal(ours[k], official[k]) for k in official), name


@torch.no_grad()
def test_controlnet_residuals_match_official(model, io):
    down, mid = model.controlnet(io["sample7"], io["timestep"], encoder_hidden_states=io["encoder_hidden_states"],
                                 controlnet_cond=io["controlnet_cond"], conditioning_scale=1.0, return_dict=False)
    n_down = len([k for k in io if k.startswith("controlnet.down")])
    assert len(down) == n_down == 8
    diffs = [_max_diff(d, io[f"controlnet.down{i}"]) for i, d in enumerate(down)]
    diffs.append(_max_diff(mid, io["controlnet.mid"]))
    assert max(diffs) < ATOL, diffs


@torch.no_grad()
def test_unet_outputs_match_official_with_and_without_tcm(model, io):
    args = (io["sample7"], io["timestep"])
    plain = model.unet(*args, encoder_hidden_states=io["encoder_hidden_states"]).sample
    assert _max_diff(plain, io["unet.out_no_ctrl"]) < ATOL

    down, mid = model.controlnet(*args, encoder_hidden_states=io["encoder_hidden_states"],
                                 controlnet_cond=io["controlnet_cond"], conditioning_scale=1.0, return_dict=False)
    guided = model.unet(*args, encoder_hidden_states=io["encoder_hidden_states"],
                        down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert _max_diff(guided, io["unet.out_with_ctrl"]) < ATOL
    # The residuals matter at this scale: a UNet that ignored them would fail the line above.
    assert _max_diff(io["unet.out_with_ctrl"], io["unet.out_no_ctrl"]) > 100 * ATOL


@torch.no_grad()
def test_vae_decode_matches_official(model, io):
    out = model.vae.decode(io["vae.decode_in"]).sample
    assert _max_diff(out, io["vae.decode_out"]) < ATOL


def test_a_wrong_weight_file_is_refused_with_its_name(official_folder, parity, tmp_path):
    bad = tmp_path / "StableVSR"
    shutil.copytree(official_folder, bad)
    # The ControlNet's weights in the UNet's place: the strict load must name the file and keys.
    shutil.copy(parity / "tiny_controlnet_weights.safetensors", bad / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(DiffusionWeightsError) as err:
        load_diffusion_model(bad, dtype="fp32", text_encoder=False)
    msg = str(err.value)
    assert str(bad / "unet" / "diffusion_pytorch_model.safetensors") in msg
    assert "controlnet_cond_embedding" in msg and "claudiom4sir/StableVSR" in msg
