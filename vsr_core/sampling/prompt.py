"""Prompt embeddings of a model's text encoder, computed once per prompt and cached on the bundle."""
from __future__ import annotations

import torch
from torch import Tensor

from ..models.bundle import VSRModel


def prompt_embeddings(model: VSRModel, prompt: str = "") -> Tensor:
    """``[1, 77, D]`` embeddings of ``prompt`` (StableVSR and MGLD use ""), cached per bundle and prompt.

    The text encoder visits the compute device only for the first call with a given prompt.
    """
    if model.text_encoder is None or model.tokenizer is None:
        raise ValueError(f"the {model.method} model was loaded without a text encoder/tokenizer, so prompts "
                         "cannot be encoded; load it with its text_encoder/ and tokenizer/ folders")

    def compute() -> Tensor:
        from ..loaders.clip import encode_prompt

        with model.on_device("text_encoder") as (te,), torch.no_grad():
            return encode_prompt(te, model.tokenizer, [prompt], device=model.device).float()

    return model.cached_prompt(("prompt", prompt), compute)
