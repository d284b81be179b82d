"""RAFT weights: the two public layouts, their key remaps, strict loading, tiny checkpoint writers.

Layouts (state-dict key names):

* ``"princeton"``: ``raft-things.pth`` from the princeton-vl/RAFT release, saved from
  ``DataParallel`` so every key starts with ``module.`` (Upscale-A-Video and MGLD load it this way).
  Without the prefix these are our canonical names (``vsr_core.flow.raft.RAFT``). The stride-2 skip
  norms of ``cnet`` appear twice, as ``norm3`` and ``downsample.1`` (one module, two names).
* ``"torchvision"``: ``torchvision.models.optical_flow.raft_large`` (StableVSR uses
  ``Raft_Large_Weights.C_T_SKHT_V2``), e.g. ``feature_encoder.layer1.0.convnormrelu1.0.weight``,
  ``update_block.recurrent_block.convgru1.convz.weight``, ``mask_predictor.conv.weight``.

The two describe the same network and compute the same flow (see ``vsr_core/flow/raft.py``).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..flow.raft import RAFT, RAFT_LARGE, RAFT_TINY, RAFTConfig
from .common import mismatch_message

__all__ = [
    "LAYOUTS",
    "RAFTWeightsError",
    "strip_module_prefix",
    "add_module_prefix",
    "torchvision_to_canonical",
    "canonical_to_torchvision",
    "detect_raft_layout",
    "raft_config_from_state_dict",
    "read_state_dict",
    "load_raft",
    "random_raft_state_dict",
    "write_raft_checkpoint",
]

LAYOUTS = ("princeton", "torchvision")
PRINCETON_PREFIX = "module."

WHERE_TO_GET = (
    "Expected one of: 'raft-things.pth' from the princeton-vl/RAFT release (its download_models.sh; "
    "keys 'module.fnet.*', used by Upscale-A-Video and MGLD), or torchvision's raft_large weights "
    "Raft_Large_Weights.C_T_SKHT_V2 ('raft_large_C_T_SKHT_V2-ff5fadd5.pth'; keys 'feature_encoder.*', "
    "used by StableVSR). Put the file in ComfyUI's models/vsr/flow/ folder."
)


class RAFTWeightsError(ValueError):
    """A RAFT weight file that cannot be read or does not match the expected layout."""


# --------------------------------------------------------------------------------------------- remaps
def strip_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Princeton file keys -> canonical: drop the ``module.`` that DataParallel adds (keys without it
    pass unchanged)."""
    return {k[len(PRINCETON_PREFIX):] if k.startswith(PRINCETON_PREFIX) else k: v for k, v in sd.items()}


def add_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Canonical -> princeton file keys (``module.`` + key), as ``raft-things.pth`` stores them."""
    return {PRINCETON_PREFIX + k: v for k, v in sd.items()}


_ENC = {"fnet": "feature_encoder", "cnet": "context_encoder"}
_ENC_BACK = {v: k for k, v in _ENC.items()}

# (canonical regex, torchvision template); None drops the key (princeton's duplicate norm3 names).
_TO_TV = [
    (r"^(fnet|cnet)\.conv1\.(\w+)$", lambda m: f"{_ENC[m[1]]}.convnormrelu.0.{m[2]}"),
    (r"^(fnet|cnet)\.norm1\.(\w+)$", lambda m: f"{_ENC[m[1]]}.convnormrelu.1.{m[2]}"),
    (r"^(fnet|cnet)\.(layer\d\.\d)\.conv([12])\.(\w+)$",
     lambda m: f"{_ENC[m[1]]}.{m[2]}.convnormrelu{m[3]}.0.{m[4]}"),
    (r"^(fnet|cnet)\.(layer\d\.\d)\.norm([12])\.(\w+)$",
     lambda m: f"{_ENC[m[1]]}.{m[2]}.convnormrelu{m[3]}.1.{m[4]}"),
    (r"^(fnet|cnet)\.(layer\d\.\d)\.downsample\.([01])\.(\w+)$",
     lambda m: f"{_ENC[m[1]]}.{m[2]}.downsample.{m[3]}.{m[4]}"),
    (r"^(fnet|cnet)\.(layer\d\.\d)\.norm3\.(\w+)$", None),
    (r"^(fnet|cnet)\.conv2\.(\w+)$", lambda m: f"{_ENC[m[1]]}.conv.{m[2]}"),
    (r"^update_block\.encoder\.conv([cf])([12])\.(\w+)$",
     lambda m: f"update_block.motion_encoder.conv{'corr' if m[1] == 'c' else 'flow'}{m[2]}.0.{m[3]}"),
    (r"^update_block\.encoder\.conv\.(\w+)$", lambda m: f"update_block.motion_encoder.conv.0.{m[1]}"),
    (r"^update_block\.gru\.conv([zrq])([12])\.(\w+)$",
     lambda m: f"update_block.recurrent_block.convgru{m[2]}.conv{m[1]}.{m[3]}"),
    (r"^update_block\.flow_head\.(conv[12])\.(\w+)$", lambda m: f"update_block.flow_head.{m[1]}.{m[2]}"),
    (r"^update_block\.mask\.0\.(\w+)$", lambda m: f"mask_predictor.convrelu.0.{m[1]}"),
    (r"^update_block\.mask\.2\.(\w+)$", lambda m: f"mask_predictor.conv.{m[1]}"),
]

_FROM_TV = [
    (r"^(feature_encoder|context_encoder)\.convnormrelu\.([01])\.(\w+)$",
     lambda m: f"{_ENC_BACK[m[1]]}.{'conv1' if m[2] == '0' else 'norm1'}.{m[3]}"),
    (r"^(feature_encoder|context_encoder)\.(layer\d\.\d)\.convnormrelu([12])\.([01])\.(\w+)$",
     lambda m: f"{_ENC_BACK[m[1]]}.{m[2]}.{'conv' if m[4] == '0' else 'norm'}{m[3]}.{m[5]}"),
    (r"^(feature_encoder|context_encoder)\.(layer\d\.\d)\.downsample\.([01])\.(\w+)$",
     lambda m: f"{_ENC_BACK[m[1]]}.{m[2]}.downsample.{m[3]}.{m[4]}"),
    (r"^(feature_encoder|context_encoder)\.conv\.(\w+)$", lambda m: f"{_ENC_BACK[m[1]]}.conv2.{m[2]}"),
    (r"^update_block\.motion_encoder\.conv(corr|flow)([12])\.0\.(\w+)$",
     lambda m: f"update_block.encoder.conv{m[1][0]}{m[2]}.{m[3]}"),
    (r"^update_block\.motion_encoder\.conv\.0\.(\w+)$", lambda m: f"update_block.encoder.conv.{m[1]}"),
    (r"^update_block\.recurrent_block\.convgru([12])\.conv([zrq])\.(\w+)$",
     lambda m: f"update_block.gru.conv{m[2]}{m[1]}.{m[3]}"),
    (r"^update_block\.flow_head\.(conv[12])\.(\w+)$", lambda m: f"update_block.flow_head.{m[1]}.{m[2]}"),
    (r"^mask_predictor\.convrelu\.0\.(\w+)$", lambda m: f"update_block.mask.0.{m[1]}"),
    (r"^mask_predictor\.conv\.(\w+)$", lambda m: f"update_block.mask.2.{m[1]}"),
]
_TO_TV = [(re.compile(p), f) for p, f in _TO_TV]
_FROM_TV = [(re.compile(p), f) for p, f in _FROM_TV]


def _apply_rules(sd: Mapping[str, Tensor], rules) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        for pattern, make in rules:
            m = pattern.match(key)
            if m:
                if make is not None:
                    out[make(m)] = value
                break
        else:
            out[key] = value  # unknown keys pass through, so a strict load names them
    return out


def canonical_to_torchvision(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Canonical (princeton without ``module.``) -> torchvision ``raft_large`` keys.

    Drops the duplicate ``*.norm3.*`` names (torchvision keeps only ``downsample.1``); keys it does not
    know pass through unchanged.
    """
    return _apply_rules(sd, _TO_TV)


def torchvision_to_canonical(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``raft_large`` keys -> canonical; re-creates each ``norm3`` alias from ``downsample.1``.

    Keys it does not know pass through unchanged.
    """
    out = _apply_rules(sd, _FROM_TV)
    for key in list(out):
        m = re.match(r"^((?:fnet|cnet)\.layer\d\.\d)\.downsample\.1\.(\w+)$", key)
        if m:
            out.setdefault(f"{m[1]}.norm3.{m[2]}", out[key])
    return out


_TV_ROOTS = ("feature_encoder.", "context_encoder.", "mask_predictor.", "update_block.motion_encoder.",
             "update_block.recurrent_block.")
_PRINCETON_ROOTS = ("fnet.", "cnet.", "update_block.encoder.", "update_block.gru.", "update_block.mask.")


def detect_raft_layout(sd: Mapping[str, Tensor]) -> str:
    """``"princeton"`` (with or without ``module.``) or ``"torchvision"``, from the key names.

    Raises RAFTWeightsError when neither layout's top-level names are present.
    """
    names = [k[len(PRINCETON_PREFIX):] if k.startswith(PRINCETON_PREFIX) else k for k in sd]
    if any(n.startswith(_TV_ROOTS) for n in names):
        return "torchvision"
    if any(n.startswith(_PRINCETON_ROOTS) for n in names):
        return "princeton"
    first = ", ".join(list(sd)[:5]) or "(no keys)"
    raise RAFTWeightsError(f"not a RAFT state dict (first keys: {first}). {WHERE_TO_GET}")


# ------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` pickle (``torch.load(weights_only=True)``).

    A pickle holding ``{"state_dict": {...}}`` or ``{"model": {...}}`` is unwrapped. Raises
    FileNotFoundError / RAFTWeightsError with the file name and where to get the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RAFT weights not found: {path}. {WHERE_TO_GET}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable weight file"
        raise RAFTWeightsError(f"could not read RAFT weights {path}: {exc}. {WHERE_TO_GET}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise RAFTWeightsError(f"{path} does not hold a flat tensor state dict. {WHERE_TO_GET}")
    return sd


def raft_config_from_state_dict(sd: Mapping[str, Tensor], corr_levels: int = 4, **overrides) -> RAFTConfig:
    """The ``RAFTConfig`` whose shapes match a canonical state dict (e.g. a tiny test checkpoint).

    The correlation channels fix only levels*(2r+1)^2, so ``corr_levels`` is assumed (4 in every public
    file). Returns RAFT-large (+ overrides) when the keys needed are absent, so that the strict load
    then names what is missing.
    """
    def out_ch(key: str) -> int:
        return int(sd[f"{key}.weight"].shape[0])

    def motion(a: str, b: str) -> tuple[int, int]:
        return out_ch(f"update_block.encoder.{a}"), out_ch(f"update_block.encoder.{b}")

    try:
        corr_ch = int(sd["update_block.encoder.convc1.weight"].shape[1])
        side = math.isqrt(corr_ch // corr_levels)
        if corr_levels * side * side != corr_ch or side % 2 == 0:
            raise RAFTWeightsError(
                f"correlation input has {corr_ch} channels: not {corr_levels} levels of a (2r+1)^2 window"
            )
        hidden = out_ch("update_block.gru.convz1")
        cfg = RAFTConfig(
            encoder_dims=tuple(out_ch(f"fnet.{n}") for n in ("conv1", "layer1.0.conv1", "layer2.0.conv1",
                                                             "layer3.0.conv1")),
            feature_dim=out_ch("fnet.conv2"),
            hidden_dim=hidden,
            context_dim=out_ch("cnet.conv2") - hidden,
            corr_levels=corr_levels,
            corr_radius=(side - 1) // 2,
            motion_corr_dims=motion("convc1", "convc2"),
            motion_flow_dims=motion("convf1", "convf2"),
            motion_dim=out_ch("update_block.encoder.conv") + 2,
            flow_head_dim=out_ch("update_block.flow_head.conv1"),
            mask_dim=out_ch("update_block.mask.0"),
        )
    except KeyError:
        cfg = RAFT_LARGE
    return RAFTConfig(**{**cfg.to_dict(), **overrides}) if overrides else cfg


def _fill_optional(model: RAFT, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    # BatchNorm's step counter is absent from some saved files and never used at inference.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    return sd


def _mismatch_message(name: str, layout: str, missing, unexpected, shapes) -> str:
    return mismatch_message(f"RAFT weights {name} do not match the {layout!r} layout strictly:",
                            missing, unexpected, shapes, hint=WHERE_TO_GET)


def load_raft(
    source: str | Path | Mapping[str, Tensor],
    layout: str = "auto",
    config: RAFTConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> RAFT:
    """Build a ``RAFT`` and load weights strictly from a file path or a state dict.

    layout: ``"auto"`` (from the keys), ``"princeton"`` (``raft-things.pth``, with or without ``module.``)
    or ``"torchvision"`` (``raft_large``). config: the model sizes; default inferred from the shapes
    (RAFT-large for the public files); ``config_overrides`` (e.g. ``normalize_input=True``, ``iters=20``)
    are applied on top. Every parameter and buffer must be present and no other key may be (only
    BatchNorm's ``num_batches_tracked`` may be absent). Returns the model in eval mode on device/dtype.
    Raises FileNotFoundError / RAFTWeightsError naming the file, the layout, the first offending keys and
    where to get the weights.
    """
    if layout not in ("auto",) + LAYOUTS:
        raise ValueError(f"layout must be 'auto', 'princeton' or 'torchvision', got {layout!r}")
    if isinstance(source, Mapping):
        name, sd = "(state dict)", dict(source)
    else:
        name, sd = str(source), read_state_dict(source)
    if layout == "auto":
        layout = detect_raft_layout(sd)
    canonical = strip_module_prefix(sd) if layout == "princeton" else torchvision_to_canonical(sd)

    cfg = config if config is not None else raft_config_from_state_dict(canonical)
    if config_overrides:
        cfg = RAFTConfig(**{**cfg.to_dict(), **config_overrides})
    model = RAFT(cfg)
    canonical = _fill_optional(model, canonical)
    expected = model.state_dict()
    missing = set(expected) - set(canonical)
    unexpected = set(canonical) - set(expected)
    shapes = [
        f"{k} {tuple(canonical[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in canonical and canonical[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        if layout == "torchvision":  # name the keys as they appear in the file
            missing = set(canonical_to_torchvision({k: expected[k] for k in missing}))
            unexpected = set(canonical_to_torchvision({k: canonical[k] for k in unexpected}))
        elif any(k.startswith(PRINCETON_PREFIX) for k in sd):
            missing = {PRINCETON_PREFIX + k for k in missing}
            unexpected = {PRINCETON_PREFIX + k for k in unexpected}
        raise RAFTWeightsError(_mismatch_message(name, layout, missing, unexpected, shapes))
    model.load_state_dict(canonical, strict=True)
    return model.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------- writers
def random_raft_state_dict(
    config: RAFTConfig = RAFT_TINY, layout: str = "princeton", seed: int = 0
) -> dict[str, Tensor]:
    """Random weights for ``config`` in a public layout (``"princeton"`` with ``module.``, or ``"torchvision"``).

    BatchNorm statistics and affine terms are randomised too, so a wrong remap of any of them shows in
    the output. Every tensor is its own copy (the norm3 alias included), ready for safetensors.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RAFT(config)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 1 + 0.1 * torch.randn(c, generator=gen)
            m.bias.data = 0.1 * torch.randn(c, generator=gen)
            m.running_mean = 0.1 * torch.randn(c, generator=gen)
            m.running_var = 0.5 + torch.rand(c, generator=gen)
            m.num_batches_tracked = torch.tensor(1000 + seed, dtype=torch.long)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return add_module_prefix(sd) if layout == "princeton" else canonical_to_torchvision(sd)


def write_raft_checkpoint(
    path: str | Path, config: RAFTConfig = RAFT_TINY, layout: str = "princeton", seed: int = 0
) -> Path:
    """Write a random-weight RAFT checkpoint in a public layout; ``.safetensors`` or a torch pickle.

    A ``.pth`` in the princeton layout is what ``raft-things.pth`` looks like (``module.`` keys); in the
    torchvision layout, what torchvision's ``raft_large`` weight file holds. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = random_raft_state_dict(config, layout, seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path
