"""Import shims for running the unmodified official MGLD-VSR code under torch 2.14 / torchvision 0.29 on a
CPU (imported by the official-side harness before any official module; the official files are not touched).

* ``mmcv``: basicsr/archs/__init__ and basicsr/data/__init__ import every module of their folder, among them
  MaskFlownet (``mmcv.ops.Correlation``, CUDA) and the RealBasicVSR dataset transforms (``mmcv.transforms``).
  Neither is used by inference; a stub module stands in for mmcv (any use raises).
* ``torchvision.transforms.functional_tensor``: renamed ``_functional_tensor`` in torchvision 0.17;
  basicsr/data/degradations imports ``rgb_to_grayscale`` from the old name (training degradations only).
* xformers: not installed. ldm/modules/attention.py (and diffusionmodules/model.py) select their attention
  with ``XFORMERS_IS_AVAILBLE``; ``plain_xformers()`` installs a module ``xformers.ops`` whose
  ``memory_efficient_attention`` is softmax(q kᵀ / √d) v in plain torch (what xformers computes, attn_bias
  None, no dropout) and sets the flag True, so the official xformers branches run (the branch the
  released model ran in, e.g. the batch-1 context repeat-interleaved over the frames).
"""
import sys
import types


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _Unavailable:
    def __init__(self, *a, **k):
        raise RuntimeError("mmcv is a stub in this environment (not needed for inference)")


def install_stubs():
    if "mmcv" not in sys.modules:
        mmcv = _stub("mmcv", imnormalize=_Unavailable)
        mmcv.ops = _stub("mmcv.ops", Correlation=_Unavailable)
        mmcv.transforms = _stub("mmcv.transforms", BaseTransform=object)
    import torchvision.transforms._functional_tensor as ft
    sys.modules.setdefault("torchvision.transforms.functional_tensor", ft)


def memory_efficient_attention(q, k, v, attn_bias=None, op=None, p=0.0, scale=None):
    """xformers.ops.memory_efficient_attention in plain torch: [B, M, (H,) K] inputs, softmax(q kᵀ·scale) v."""
    import torch

    assert attn_bias is None and p == 0.0
    s = q.shape[-1] ** -0.5 if scale is None else scale
    if q.dim() == 4:  # [B, M, H, K] -> heads first and back
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = torch.softmax((q @ k.transpose(-1, -2)) * s, dim=-1) @ v
        return out.transpose(1, 2)
    return torch.softmax((q @ k.transpose(-1, -2)) * s, dim=-1) @ v


def plain_xformers():
    """Make ``import xformers, xformers.ops`` give the plain-torch attention above."""
    xf = sys.modules.get("xformers") or _stub("xformers")
    xf.ops = _stub("xformers.ops", memory_efficient_attention=memory_efficient_attention)
    return xf
