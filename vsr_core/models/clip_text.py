"""CLIP text transformer (the prompt encoder of the SD x4 upscaler, StableVSR and Upscale-A-Video).

Our own implementation, so the runtime does not depend on ``transformers`` (heavy, and its CLIP module
layout changes between major versions). The parameter names are those of the ``CLIPTextModel`` files
the official checkpoints ship (``text_model.embeddings.token_embedding.weight``, ...,
``text_model.final_layer_norm.*``; saved with transformers 4.x), so those files load with
``strict=True``. ``vsr_core.loaders.clip`` remaps the other layouts (transformers 5.x files without the
``text_model.`` prefix, the LDM single-file OpenCLIP keys).

The network: token + learned position embeddings, ``num_hidden_layers`` pre-LayerNorm residual blocks
(causal multi-head self-attention, then a 2-layer MLP), and a final LayerNorm. The x4 upscaler's encoder
is OpenCLIP ViT-H/14's text tower with its last block dropped: Stable Diffusion 2.x conditions on the
penultimate block's output passed through ``ln_final`` (``FrozenOpenCLIPEmbedder(layer="penultimate")``),
which a 23-block model's ``last_hidden_state`` is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CLIPTextConfig", "CLIPTextModel", "ACTIVATIONS"]


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU, x * sigmoid(1.702 x) (SD 1.x's ViT-L/14 uses it)."""
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


# HF ``hidden_act`` names. OpenCLIP towers (SD 2.x, the x4 upscaler) use exact GELU ("gelu").
ACTIVATIONS = {
    "gelu": F.gelu,
    "quick_gelu": quick_gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
}


# transformers' ``CLIPTextConfig`` defaults (OpenAI ViT-B/32's text tower), for keys a config.json omits.
HF_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)


@dataclass
class CLIPTextConfig:
    """Architecture of a CLIP text transformer, with the field names of HF ``config.json``.

    Defaults are those of the SD x4 upscaler's text encoder (OpenCLIP ViT-H/14 text tower, 23 of its 24
    blocks, as in ``stabilityai/stable-diffusion-x4-upscaler/text_encoder/config.json``).
    """

    vocab_size: int = 49408
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 23
    num_attention_heads: int = 16
    max_position_embeddings: int = 77
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "CLIPTextConfig":
        """Build from an HF ``config.json`` dict (a ``CLIPTextConfig``, or a ``CLIPConfig`` with a
        ``text_config`` entry); unknown keys (dropout, projection_dim, token ids...) are ignored and
        absent ones take transformers' defaults (so a file means what it meant to transformers)."""
        if "text_config" in cfg and isinstance(cfg["text_config"], Mapping):
            cfg = cfg["text_config"]
        names = {f.name for f in fields(cls)}
        return cls(**{**HF_DEFAULTS, **{k: cfg[k] for k in names if k in cfg}})

    def to_dict(self) -> dict:
        """An HF-compatible ``config.json`` dict (transformers' ``CLIPTextModel`` loads it)."""
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **asdict(self)}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (HF names; OpenCLIP packs them into one
    ``in_proj``, split by the loader)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        # Without a padding mask the causal pattern is SDPA's own (lets it pick a fused kernel).
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """CLIP text encoder; ``state_dict()`` keys equal the official HF ``CLIPTextModel`` file keys.

    ``forward(input_ids)`` -> ``last_hidden_state`` [N, L, hidden] (after the final LayerNorm), the
    prompt embedding the UNets cross-attend to. ``input_ids``: LongTensor [N, L], L <=
    ``max_position_embeddings`` (77), from ``vsr_core.loaders.clip.CLIPTokenizer``.
    """

    def __init__(self, config: CLIPTextConfig | Mapping[str, Any] | None = None):
        super().__init__()
        if config is None:
            config = CLIPTextConfig()
        elif not isinstance(config, CLIPTextConfig):
            config = CLIPTextConfig.from_dict(config)
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.final_layer_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.final_layer_norm.weight.device

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                output_hidden_states: bool = False):
        """Encode token ids.

        input_ids: LongTensor [N, L]. attention_mask: optional [N, L] (1 = token, 0 = padding), combined
        with the causal mask; the SD pipelines pass none (padding positions then carry embeddings of
        their own, which the UNet sees).
        Returns ``last_hidden_state`` [N, L, hidden]; with ``output_hidden_states=True`` a pair
        ``(last_hidden_state, hidden_states)`` where ``hidden_states`` is a tuple of
        ``num_hidden_layers + 1`` tensors (the embeddings, then each block's output, before the final
        LayerNorm), as HF orders them.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [N, L], got shape {tuple(input_ids.shape)}")
        n, length = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens exceed max_position_embeddings "
                             f"{self.config.max_position_embeddings}; tokenize with truncation")
        tm = self.text_model
        x = tm.embeddings(input_ids)
        mask = None
        if attention_mask is not None:
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            keep = attention_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]
            allowed = causal & keep
            # A query with every key masked (left padding) would give NaN; let it see itself instead.
            empty = ~allowed.any(-1, keepdim=True)
            allowed = allowed | (empty & torch.eye(length, dtype=torch.bool, device=x.device))
            mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
            mask.masked_fill_(~allowed, torch.finfo(x.dtype).min)
        hidden = [x] if output_hidden_states else None
        for layer in tm.encoder.layers:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        out = tm.final_layer_norm(x)
        return (out, tuple(hidden)) if output_hidden_states else out
