"""Prompt embeddings of a model's text encoder, computed once per prompt and cached on the bundle."""
from __future__ import annotations

from torch import Tensor

from ..models.bundle import VSRModel, prompt_cache_key


def prompt_embeddings(model: VSRModel, prompt: str = "") -> Tensor:
    """``[1, 77, D]`` embeddings of ``prompt`` (StableVSR and MGLD use ""), cached per bundle and prompt.

    The loaders encode the method's default prompts when they load (``loaders.clip.text_side``); another
    prompt is encoded at its first use: by the kept text encoder, which visits the compute device for the
    call, or by one built again from its file (``model.text_reload``) for this call only. The encoder
    computes in the dtype it was loaded in, so the embeddings do not depend on a run's speed options.
    """
    if model.tokenizer is None or (model.text_encoder is None and model.text_reload is None):
        raise ValueError(f"the {model.method} model was loaded without a text encoder/tokenizer, so prompts "
                         "cannot be encoded; load it with its text_encoder/ and tokenizer/ folders")

    def compute() -> Tensor:
        from ..loaders.clip import encode_on

        if model.text_encoder is not None:
            return encode_on(model.text_encoder, model.tokenizer, prompt, model.device, model.offload_device)
        model.tokenizer([prompt])  # a prompt the tokenizer refuses is refused before the encoder is read again
        return encode_on(model.text_reload(), model.tokenizer, prompt, model.device)

    return model.cached_prompt(prompt_cache_key(prompt), compute)
