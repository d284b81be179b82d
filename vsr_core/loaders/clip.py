"""CLIP prompt encoding without ``transformers``: tokenizer, text-encoder loading, key remaps, tiny files.

Tokenizer. ``CLIPTokenizer`` reads an HF tokenizer folder (``vocab.json``, ``merges.txt``,
``special_tokens_map.json``, ``tokenizer_config.json``) and produces the ids transformers' ``CLIPTokenizer``
produces for it (the ids the official pipelines fed their text encoders):

* special tokens (bos, eos, unk, pad) are cut out of the text first: those declared
  ``"normalized": true`` after normalisation, the others in the raw text. The SD 2.x / x4 upscaler folders
  declare pad ``"!"``, so a "!" in a prompt becomes the pad id, as it did for the official code;
* normalisation: Unicode NFC, every whitespace run to one space, lowercase (HF without ``ftfy``);
* pre-tokenisation into contractions ('s 't 're 've 'm 'll 'd), letter runs, single digits and runs of
  other non-space characters; each piece is UTF-8 encoded and its bytes mapped to printable characters
  (the byte-level alphabet of GPT-2/CLIP);
* byte-pair merges by rank, the last symbol of a piece carrying the end-of-word mark ``</w>``; a symbol
  missing from the vocabulary becomes the unknown token;
* ``[bos] + tokens[:max_length - 2] + [eos]``, right-padded with the pad id to ``max_length`` (77).

Where ``special_tokens_map.json`` and ``tokenizer_config.json`` disagree (the x4 upscaler's say pad "!" and
"<|endoftext|>"), the special-tokens map wins, as in transformers: the x4 upscaler pads with id 0 ("!"),
which is also what OpenCLIP's own tokenizer pads with (the LDM single-file checkpoint's training code).

Single-file checkpoints carry no vocabulary: ``EmptyPromptTokenizer`` tokenizes the empty prompt exactly
(the only prompt MGLD and most VSR runs use) from the special ids alone.

Text encoder layouts accepted (all load strictly into ``vsr_core.models.clip_text.CLIPTextModel``):

* HF folder ``text_encoder/`` (``config.json`` + ``model.safetensors`` | ``pytorch_model.bin``), keys
  ``text_model.*`` (transformers 4.x, what the official repos ship); files written by transformers 5.x
  drop the ``text_model.`` prefix and are remapped; the ``text_model.embeddings.position_ids`` buffer
  of older files is dropped (we compute positions);
* LDM single file (``x4-upscaler-ema.ckpt``/``.safetensors``): OpenCLIP keys under
  ``cond_stage_model.model.`` (``transformer.resblocks.N.attn.in_proj_weight`` ...), see
  ``open_clip_to_hf``.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..models.clip_text import CLIPTextConfig, CLIPTextModel
from .common import key_mismatches, mismatch_message

__all__ = [
    "CLIPWeightsError",
    "bytes_to_unicode",
    "CLIPTokenizer",
    "EmptyPromptTokenizer",
    "load_tokenizer",
    "shipped_text_encoder_config",
    "shipped_tokenizer_config",
    "hf_text_encoder_keys",
    "open_clip_to_hf",
    "hf_to_open_clip",
    "is_open_clip_state_dict",
    "read_text_encoder_state_dict",
    "text_encoder_from_state_dict",
    "load_text_encoder",
    "encode_prompt",
    "encode_on",
    "text_side",
    "TINY_CLIP_CONFIG",
    "write_tiny_clip",
    "tiny_clip_state_dict",
    "tiny_open_clip_state_dict",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
OPEN_CLIP_PREFIX = "cond_stage_model.model."
HF_PREFIX = "text_model."
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin")

WHERE_TO_GET = (
    "Expected the text encoder of the Stable Diffusion x4 upscaler: the 'text_encoder/' folder "
    "(config.json + model.safetensors) of stabilityai/stable-diffusion-x4-upscaler or claudiom4sir/StableVSR "
    "on Hugging Face, placed at ComfyUI models/vsr/<method>/<model folder>/text_encoder/, or the single-file "
    "x4-upscaler-ema.safetensors/.ckpt (its cond_stage_model.model.* keys) in models/vsr/sd_x4/."
)
WHERE_TO_GET_TOKENIZER = (
    "Expected the 'tokenizer/' folder (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json) "
    "of stabilityai/stable-diffusion-x4-upscaler or claudiom4sir/StableVSR on Hugging Face."
)


class CLIPWeightsError(ValueError):
    """A text-encoder or tokenizer file that cannot be read or does not match the expected layout."""


# ------------------------------------------------------------------------------------------ tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: each byte 0..255 -> one printable character.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves;
    the others (controls, space, soft hyphen) take chr(256 + k) in byte order, so BPE never sees
    whitespace or control characters. The dict's order (printable bytes first) is the order of the
    first 256 entries of the CLIP vocabulary, which is why "!" is id 0.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_CHARS = bytes_to_unicode()
# Unicode White_Space (the `\s` of the regex engine HF tokenizers use); Python's str.isspace() also
# counts U+001C..U+001F, which HF keeps as text.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_WHITESPACE_RUN = re.compile("[" + re.escape("".join(sorted(_WHITESPACE))) + "]+")
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _normalize(text: str) -> str:
    text = _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", text))
    # Character by character, as HF's normaliser does: str.lower() would apply the final-sigma rule.
    return "".join(c.lower() for c in text)


def _char_class(c: str) -> str:
    if c in _WHITESPACE:
        return " "
    cat = unicodedata.category(c)[0]
    return cat if cat in ("L", "N") else "O"


def _pre_tokenize(text: str) -> list[str]:
    """Split normalised text into CLIP's word pieces (whitespace dropped): a contraction, a run of
    letters, one digit/number character, or a run of other non-space characters (leftmost alternative
    first, as CLIP's pattern ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``)."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        cls = _char_class(text[i])
        if cls == " ":
            i += 1
            continue
        if text[i] == "'":
            con = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if con is not None:
                pieces.append(con)
                i += len(con)
                continue
        j = i + 1
        if cls != "N":  # numbers are single characters; letters and others run on
            while j < n and _char_class(text[j]) == cls:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class CLIPTokenizer:
    """Byte-level BPE tokenizer of CLIP, equal to transformers' ``CLIPTokenizer`` on the same files.

    vocab: token -> id (``vocab.json``); merges: ranked symbol pairs (``merges.txt``); the special tokens
    by content; ``normalized_specials``: the special contents matched after normalisation (the others are
    matched in the raw text). ``__call__`` returns input ids [N, max_length].
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        bos_token: str = "<|startoftext|>",
        eos_token: str = "<|endoftext|>",
        unk_token: str = "<|endoftext|>",
        pad_token: str = "<|endoftext|>",
        model_max_length: int = 77,
        normalized_specials: Iterable[str] = (),
        extra_special_tokens: Iterable[str] = (),
    ):
        self.vocab = dict(vocab)
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.model_max_length = int(model_max_length)
        specials = [bos_token, eos_token, unk_token, pad_token, *extra_special_tokens]
        missing = [t for t in specials if t not in self.vocab]
        if missing:
            raise CLIPWeightsError(f"special token(s) {missing} are not in the vocabulary. {WHERE_TO_GET_TOKENIZER}")
        self.bos_token_id = self.vocab[bos_token]
        self.eos_token_id = self.vocab[eos_token]
        self.unk_token_id = self.vocab[unk_token]
        self.pad_token_id = self.vocab[pad_token]
        normalized = set(normalized_specials)
        self._raw_split = self._splitter([t for t in specials if t not in normalized])
        self._norm_split = self._splitter([t for t in specials if t in normalized])
        self._cache: dict[str, list[int]] = {}

    @staticmethod
    def _splitter(tokens: list[str]):
        if not tokens:
            return None
        # Longest first, so the alternation finds the leftmost-longest special token.
        alternatives = sorted(set(tokens), key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    @classmethod
    def from_folder(cls, path: str | Path) -> "CLIPTokenizer":
        """Read an HF tokenizer folder: ``vocab.json`` + ``merges.txt`` (required),
        ``tokenizer_config.json`` (model_max_length, special tokens) and ``special_tokens_map.json``
        (special tokens; takes precedence). Raises FileNotFoundError / CLIPWeightsError naming the file."""
        folder = Path(path)
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"tokenizer file not found: {folder / name}. {WHERE_TO_GET_TOKENIZER}")
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise CLIPWeightsError(
                f"could not read the tokenizer in {folder}: {exc}. {WHERE_TO_GET_TOKENIZER}") from exc
        merges = []
        for line in lines:
            if not line.strip() or line.startswith("#version"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise CLIPWeightsError(f"{folder / 'merges.txt'}: malformed merge line {line!r}")
            merges.append((parts[0], parts[1]))

        settings = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>"}
        normalized: set[str] = set()
        max_length = 77

        def take(entries: Mapping, keys=tuple(settings)):
            for key in keys:
                if key in entries and entries[key] is not None:
                    value = entries[key]
                    content = value["content"] if isinstance(value, Mapping) else str(value)
                    settings[key] = content
                    if isinstance(value, Mapping) and value.get("normalized", False):
                        normalized.add(content)

        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # later file wins
            file = folder / name
            if not file.is_file():
                continue
            try:
                entries = json.loads(file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise CLIPWeightsError(f"could not parse {file}: {exc}") from exc
            take(entries)
            if name == "tokenizer_config.json":
                ml = entries.get("model_max_length")
                if isinstance(ml, int) and 0 < ml < 10_000:  # HF writes 1e30 for "unbounded"
                    max_length = ml
                for value in (entries.get("added_tokens_decoder") or {}).values():
                    if isinstance(value, Mapping) and value.get("normalized", False):
                        normalized.add(value.get("content", ""))
        return cls(vocab, merges, model_max_length=max_length, normalized_specials=normalized, **settings)

    # -- encoding
    def _bpe(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        chars = [_BYTE_CHARS[b] for b in piece.encode("utf-8")]
        word = chars[:-1] + [chars[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.bpe_ranks.get(pair, -1), k) for k, pair in enumerate(zip(word, word[1:]))]
            ranked = [(r, k) for r, k in ranked if r >= 0]
            if not ranked:
                break
            first, second = word[min(ranked)[1]], word[min(ranked)[1] + 1]
            merged, k = [], 0
            while k < len(word):  # merge every occurrence of the best pair, left to right
                if k + 1 < len(word) and word[k] == first and word[k + 1] == second:
                    merged.append(first + second)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        ids = [self.vocab.get(symbol, self.unk_token_id) for symbol in word]
        if len(self._cache) < 10_000:
            self._cache[piece] = ids
        return ids

    def _encode_normalized(self, text: str) -> list[int]:
        ids: list[int] = []
        parts = self._norm_split.split(text) if self._norm_split else [text]
        for k, part in enumerate(parts):
            if k % 2:  # odd entries of re.split with one group are the separators
                ids.append(self.vocab[part])
            else:
                for piece in _pre_tokenize(part):
                    ids.extend(self._bpe(piece))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos, padding or truncation."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids: list[int] = []
        parts = self._raw_split.split(text) if self._raw_split else [text]
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self.vocab[part])
            elif part:
                ids.extend(self._encode_normalized(_normalize(part)))
        return ids

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None, padding: str = "max_length",
                 truncation: bool = True) -> Tensor:
        """Tokenize prompts -> LongTensor [N, L]: ``bos, tokens, eos`` then the pad id.

        max_length: default ``model_max_length`` (77). padding: ``"max_length"`` (L = max_length, what the
        SD pipelines use) or ``"longest"`` (L = the longest sequence). truncation: cut the tokens so that
        bos + tokens + eos fit max_length; without it an over-long prompt raises ValueError.
        """
        return _pad_batch([self.encode(t) for t in _as_list(texts)], self.bos_token_id, self.eos_token_id,
                          self.pad_token_id, max_length or self.model_max_length, padding, truncation)

    def __repr__(self) -> str:
        return (f"CLIPTokenizer(vocab={len(self.vocab)}, merges={len(self.bpe_ranks)}, bos={self.bos_token_id}, "
                f"eos={self.eos_token_id}, pad={self.pad_token_id}, max_length={self.model_max_length})")


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no prompts given (an empty list); pass [''] for an empty prompt")
    return texts


def _pad_batch(token_lists: list[list[int]], bos: int, eos: int, pad: int, max_length: int, padding: str,
               truncation: bool) -> Tensor:
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (bos + eos), got {max_length}")
    rows = []
    for tokens in token_lists:
        if len(tokens) + 2 > max_length:
            if not truncation:
                raise ValueError(f"prompt is {len(tokens) + 2} tokens long (with bos/eos), more than max_length "
                                 f"{max_length}; shorten it or tokenize with truncation=True")
            tokens = tokens[: max_length - 2]
        rows.append([bos, *tokens, eos])
    length = max_length if padding == "max_length" else max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)


class EmptyPromptTokenizer:
    """Tokenizer for checkpoints that ship no vocabulary: it knows the special ids only.

    Tokenizes the empty prompt (and whitespace-only prompts, which CLIP tokenizes identically) to
    ``[bos, eos, pad, ...]`` exactly; any other text raises ValueError, since without the vocabulary its
    ids are unknowable. Defaults are the x4 upscaler's ids (bos 49406, eos 49407, pad 0 = "!").
    """

    def __init__(self, bos_id: int = 49406, eos_id: int = 49407, pad_id: int = 0, max_length: int = 77):
        self.bos_token_id, self.eos_token_id, self.pad_token_id = int(bos_id), int(eos_id), int(pad_id)
        self.model_max_length = int(max_length)

    @classmethod
    def from_config(cls, config: str | Path | Mapping | None = None) -> "EmptyPromptTokenizer":
        """From a dict/JSON file with ``bos_token_id``, ``eos_token_id``, ``pad_token_id``,
        ``model_max_length``; default the shipped ``configs/sd_x4/tokenizer.json``."""
        cfg = shipped_tokenizer_config() if config is None else config
        if not isinstance(cfg, Mapping):
            cfg = json.loads(Path(cfg).read_text(encoding="utf-8"))
        return cls(cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"], cfg.get("model_max_length", 77))

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        if text.strip():
            raise ValueError(
                f"cannot tokenize the prompt {text[:60]!r}: this checkpoint has no tokenizer; put the tokenizer "
                "folder (vocab.json, merges.txt) beside it or use an empty prompt. " + WHERE_TO_GET_TOKENIZER)
        return []

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None, padding: str = "max_length",
                 truncation: bool = True) -> Tensor:
        """Same contract as ``CLIPTokenizer.__call__``; only empty prompts are accepted."""
        return _pad_batch([self.encode(t) for t in _as_list(texts)], self.bos_token_id, self.eos_token_id,
                          self.pad_token_id, max_length or self.model_max_length, padding, truncation)

    def __repr__(self) -> str:
        return (f"EmptyPromptTokenizer(bos={self.bos_token_id}, eos={self.eos_token_id}, pad={self.pad_token_id}, "
                f"max_length={self.model_max_length})")


def shipped_text_encoder_config(method: str = "sd_x4") -> CLIPTextConfig:
    """The text-encoder config shipped in ``vsr_core/configs/<method>/text_encoder.json``."""
    return CLIPTextConfig.from_dict(json.loads((CONFIG_DIR / method / "text_encoder.json").read_text()))


def shipped_tokenizer_config(method: str = "sd_x4") -> dict:
    """The special ids shipped in ``vsr_core/configs/<method>/tokenizer.json`` (for ``EmptyPromptTokenizer``)."""
    return json.loads((CONFIG_DIR / method / "tokenizer.json").read_text())


def load_tokenizer(path: str | Path | None, fallback: Mapping | None = None):
    """``CLIPTokenizer.from_folder(path)`` when ``path`` holds ``vocab.json`` and ``merges.txt``, else an
    ``EmptyPromptTokenizer`` from ``fallback`` (default the shipped x4 special ids)."""
    if path is not None and (Path(path) / "vocab.json").is_file() and (Path(path) / "merges.txt").is_file():
        return CLIPTokenizer.from_folder(path)
    return EmptyPromptTokenizer.from_config(fallback)


# -------------------------------------------------------------------------------------- key remaps
def hf_text_encoder_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF ``CLIPTextModel`` file keys -> our names: adds the ``text_model.`` prefix that transformers 5.x
    files lack and drops the ``text_model.embeddings.position_ids`` buffer of older files (we compute
    positions). Other keys pass through unchanged, so a strict load names them."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            key = HF_PREFIX + key
        if key == HF_PREFIX + "embeddings.position_ids":
            continue
        out[key] = value
    return out


_OPEN_CLIP_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPEN_CLIP_BLOCK_NAMES = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPEN_CLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
# The contrastive head and OpenCLIP's non-persistent causal mask play no part in prompt conditioning.
_OPEN_CLIP_IGNORED = ("text_projection", "logit_scale", "attn_mask")


def is_open_clip_state_dict(sd: Mapping[str, Tensor], prefix: str = OPEN_CLIP_PREFIX) -> bool:
    """True when ``sd`` holds an OpenCLIP text tower under ``prefix`` (the LDM single-file layout)."""
    return prefix + "token_embedding.weight" in sd


def open_clip_to_hf(state_dict: Mapping[str, Tensor], num_layers: int | None = 23,
                    prefix: str = OPEN_CLIP_PREFIX) -> dict[str, Tensor]:
    """LDM single-file OpenCLIP text keys -> HF ``CLIPTextModel`` keys (pure; tensors are not copied
    except the q/k/v split).

    Only keys under ``prefix`` are read (the rest of the checkpoint: UNet, VAE, is ignored).
    ``transformer.resblocks.N.attn.in_proj_weight`` [3d, d] / ``in_proj_bias`` [3d] are split in that
    order into ``q_proj``/``k_proj``/``v_proj`` (``torch.nn.MultiheadAttention``'s packing);
    ``out_proj``, ``ln_1``/``ln_2`` -> ``layer_norm1``/``layer_norm2``, ``mlp.c_fc``/``mlp.c_proj`` ->
    ``mlp.fc1``/``mlp.fc2``, ``token_embedding``, ``positional_embedding`` -> ``position_embedding.weight``,
    ``ln_final`` -> ``final_layer_norm``. Blocks ``>= num_layers`` are dropped (SD 2.x and the x4 upscaler
    condition on the penultimate of OpenCLIP ViT-H's 24 blocks: ``num_layers=23``; None keeps all);
    ``text_projection``, ``logit_scale`` and ``attn_mask`` are ignored. Unknown keys under the prefix pass
    through with the prefix removed, so a strict load names them.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[name]] = value
            continue
        if name in _OPEN_CLIP_IGNORED:
            continue
        m = _OPEN_CLIP_BLOCK.match(name)
        if m is None:
            out[name] = value
            continue
        index, rest = int(m[1]), m[2]
        if num_layers is not None and index >= num_layers:
            continue
        base = f"text_model.encoder.layers.{index}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            if value.shape[0] % 3:
                raise CLIPWeightsError(f"{key}: first dimension {value.shape[0]} is not 3 x width")
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{base}self_attn.{proj}.{kind}"] = part.clone()
        elif rest in _OPEN_CLIP_BLOCK_NAMES:
            out[base + _OPEN_CLIP_BLOCK_NAMES[rest]] = value
        else:
            out[name] = value
    return out


def hf_to_open_clip(state_dict: Mapping[str, Tensor], prefix: str = OPEN_CLIP_PREFIX) -> dict[str, Tensor]:
    """HF ``CLIPTextModel`` keys -> LDM single-file OpenCLIP keys, the inverse of ``open_clip_to_hf``
    (q/k/v concatenated into ``in_proj``); for writing single-file test checkpoints from HF weights.
    The dropped last block, ``text_projection`` and ``logit_scale`` are not re-created."""
    back_top = {v: k for k, v in _OPEN_CLIP_TOP.items()}
    back_block = {v: k for k, v in _OPEN_CLIP_BLOCK_NAMES.items()}
    sd = hf_text_encoder_keys(state_dict)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in back_top:
            out[prefix + back_top[key]] = value
            continue
        m = re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$", key)
        if m is None:
            raise CLIPWeightsError(f"hf_to_open_clip: unknown key {key}")
        base = f"{prefix}transformer.resblocks.{m[1]}."
        rest = m[2]
        if rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            layer = f"text_model.encoder.layers.{m[1]}.self_attn"
            qkv = [sd[f"{layer}.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"{base}attn.in_proj_{kind}"] = torch.cat(qkv)
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            continue
        elif rest in back_block:
            out[base + back_block[rest]] = value
        else:
            raise CLIPWeightsError(f"hf_to_open_clip: unknown key {key}")
    return out


# --------------------------------------------------------------------------------------- loading
def read_text_encoder_state_dict(path: str | Path, prefix: str | None = None,
                                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Read a weight file: ``.safetensors`` (only the keys under ``prefix`` when given, so a 3 GB LDM
    checkpoint is not read whole) or a torch pickle via ``torch.load(weights_only=True)`` (a
    ``{"state_dict": ...}`` wrapper is unwrapped). ``dtype``: floating-point tensors converted to it, one
    at a time (a safetensors file as it is read, into memory of its own, not mapped: see
    ``read_safetensors``). Raises FileNotFoundError / CLIPWeightsError."""
    from .common import read_safetensors, to_dtype_

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text encoder weights not found: {path}. {WHERE_TO_GET}")
    try:
        if path.suffix == ".safetensors":
            under = (lambda k: k.startswith(prefix)) if prefix is not None else None
            sd = read_safetensors(path, dtype, keep=under)
            if prefix is not None and not sd:  # not an LDM file: read it all, the caller will tell
                sd = read_safetensors(path, dtype)
        else:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a usable weight file"
        raise CLIPWeightsError(f"could not read text encoder weights {path}: {exc}. {WHERE_TO_GET}") from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CLIPWeightsError(f"{path} does not hold a flat tensor state dict. {WHERE_TO_GET}")
    if prefix is not None:
        sd = {k: v for k, v in sd.items() if k.startswith(prefix)} or sd
    return to_dtype_(sd, dtype)  # one at a time; a mapped pickle's pages go with the dict


def text_encoder_from_state_dict(
    state_dict: Mapping[str, Tensor],
    config: CLIPTextConfig | Mapping | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "(state dict)",
) -> CLIPTextModel:
    """Build a ``CLIPTextModel`` and load ``state_dict`` strictly.

    Accepts HF keys (with or without ``text_model.``, with or without ``position_ids``) or an LDM
    checkpoint's OpenCLIP keys (converted with ``open_clip_to_hf(num_layers=config.num_hidden_layers)``).
    config: default the shipped x4 upscaler config. Returns the model in eval mode on device/dtype.
    Raises CLIPWeightsError naming ``source``, the missing / unexpected keys, shape mismatches and where
    to get the weights.
    """
    if config is None:
        config = shipped_text_encoder_config()
    elif not isinstance(config, CLIPTextConfig):
        config = CLIPTextConfig.from_dict(config)
    if is_open_clip_state_dict(state_dict):
        layout, sd = "LDM single-file OpenCLIP", open_clip_to_hf(state_dict, config.num_hidden_layers)
    else:
        layout, sd = "HF CLIPTextModel", hf_text_encoder_keys(state_dict)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    message = mismatch_message(
        f"text encoder weights {source} ({layout} layout) do not match the config (hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, vocab {config.vocab_size}):",
        *key_mismatches(model.state_dict(), sd), hint=WHERE_TO_GET)
    if message:
        raise CLIPWeightsError(message)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_text_encoder(
    folder_or_file: str | Path,
    config: CLIPTextConfig | Mapping | str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CLIPTextModel:
    """Load a text encoder strictly from an HF folder or a single weight file.

    Folder: ``config.json`` (or ``config``) and the first of ``model.safetensors``, ``pytorch_model.bin``,
    ``model.fp16.safetensors``, ``pytorch_model.fp16.bin``. File: HF keys, or an LDM checkpoint whose
    ``cond_stage_model.model.*`` OpenCLIP keys are converted; ``config`` default the shipped x4 upscaler
    config. config may be a ``CLIPTextConfig``, a dict or a path to a JSON file. Returns the model in eval
    mode on device/dtype. Raises FileNotFoundError / CLIPWeightsError naming the file.
    """
    path = Path(folder_or_file)
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    if path.is_dir():
        if config is None:
            cfg_file = path / "config.json"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"text encoder config not found: {cfg_file}. {WHERE_TO_GET}")
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise CLIPWeightsError(f"could not parse {cfg_file}: {exc}. {WHERE_TO_GET}") from exc
        weights = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no text encoder weights in {path} (looked for {', '.join(WEIGHT_NAMES)}). "
                                    f"{WHERE_TO_GET}")
        sd = read_text_encoder_state_dict(weights, dtype=dtype)
    else:
        weights = path
        sd = read_text_encoder_state_dict(path, prefix=OPEN_CLIP_PREFIX, dtype=dtype)
    return text_encoder_from_state_dict(sd, config, device=device, dtype=dtype, source=str(weights))


@torch.no_grad()
def encode_prompt(text_encoder: CLIPTextModel, tokenizer, prompts: str | Sequence[str],
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Prompts -> prompt embeddings [N, max_length (77), hidden] (the text encoder's last_hidden_state).

    Runs on the encoder's device (or ``device``, where the ids are sent; the encoder must already be
    there); the result is cast to ``dtype`` (default the encoder's). Raises ValueError when the tokenizer
    yields ids beyond the encoder's vocabulary (e.g. the x4 special ids with a tiny test encoder).
    """
    ids = tokenizer(prompts)
    vocab = text_encoder.config.vocab_size
    if int(ids.max()) >= vocab:
        raise ValueError(f"token id {int(ids.max())} is outside the text encoder's vocabulary ({vocab}): the "
                         f"tokenizer ({tokenizer!r}) does not belong to this text encoder")
    run_device = torch.device(device) if device is not None else next(text_encoder.parameters()).device
    out = text_encoder(ids.to(run_device))
    return out.to(dtype=dtype or out.dtype)


def encode_on(encoder: CLIPTextModel, tokenizer, prompt: str, device: torch.device | str,
              offload_device: torch.device | str | None = None) -> Tensor:
    """``[1, 77, D]`` embeddings (fp32, on the CPU) of one ``prompt``, the encoder computing in its own dtype
    on ``device``. offload_device: where a kept encoder rests (it visits ``device`` for the call, through
    the device manager); None for an encoder made for this one call: it stays where it is on a CPU, else
    visits ``device`` and goes back to the CPU, so nothing keeps it once the caller drops it."""
    import gc

    from ..models.bundle import borrow

    device = torch.device(device)
    if offload_device is None and device.type == "cpu":
        with torch.no_grad():
            return encode_prompt(encoder, tokenizer, [prompt], device=device).float()
    with borrow([(encoder, None)], device, offload_device or "cpu"), torch.no_grad():
        out = encode_prompt(encoder, tokenizer, [prompt], device=device).float().cpu()
    if offload_device is None:
        gc.collect()  # a host's device manager may hold a reference cycle to the one-call encoder
    return out


def text_side(load: Callable[[], CLIPTextModel], tokenizer, prompts: Sequence[str], device: torch.device | str,
              offload_device: torch.device | str, keep: bool = False) -> dict:
    """A ``VSRModel``'s text side, as its keyword arguments.

    load: builds the text encoder from its file (strictly, in the model's dtype). keep: the encoder stays
    in the bundle (``text_encoder``, resting on ``offload_device``). Otherwise, the loaders' default, the
    ``prompts`` the method uses unless told otherwise are encoded now, and the encoder is not kept:
    ``text_reload`` (= ``load``) builds it again for the one encode of a prompt not yet cached, which drops
    it after. The text encoder is the largest network no sampling step uses (the x4 family's OpenCLIP-H
    tower: 354 M parameters, 1.4 GB in fp32), and a run encodes one or two prompts, once. Loaders call this
    before they read the UNet, so the encoder is never in memory beside it.
    """
    if keep:
        return {"text_encoder": nn.Module.to(load(), device=torch.device(offload_device)), "tokenizer": tokenizer}
    from ..memory import trim_heap
    from ..models.bundle import prompt_cache_key

    encoder = load()
    cache = {prompt_cache_key(p): encode_on(encoder, tokenizer, p, device) for p in dict.fromkeys(prompts)}
    del encoder
    trim_heap()  # its freed weights, before the UNet is read
    return {"text_encoder": None, "text_reload": load, "tokenizer": tokenizer, "_prompt_cache": cache}


# ------------------------------------------------------------------------------------ tiny writers
TINY_CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5)

# A few captions to learn the tiny merges from; any ASCII text still tokenizes (bytes are all in the
# vocabulary), these words just become fewer tokens.
_TINY_CORPUS = (
    "a high quality photo of a cat sitting on the table. a video of the sea, the sky and the city at night. "
    "sharp detailed texture, clean edges, 4k, realistic, cinematic lighting. there is a dog in the street; "
    "the people are walking and talking. it's the best frame of the clip, isn't it?"
)


def _tiny_vocab_and_merges(num_merges: int = 96) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A synthetic byte-level BPE vocabulary in CLIP's layout: the 256 byte characters, the same with
    ``</w>``, merges learnt greedily (most frequent adjacent pair) from ``_TINY_CORPUS``, then bos/eos."""
    tokens = list(_BYTE_CHARS.values())
    tokens += [t + "</w>" for t in tokens]
    known = set(tokens)
    counts = Counter(_pre_tokenize(_normalize(_TINY_CORPUS)))
    words = {}
    for w in counts:
        chars = [_BYTE_CHARS[b] for b in w.encode("utf-8")]
        words[w] = chars[:-1] + [chars[-1] + "</w>"]
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                if pair[0] + pair[1] not in known:
                    pairs[pair] += counts[w]
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        known.add(best[0] + best[1])
        tokens.append(best[0] + best[1])
        for w, symbols in words.items():
            merged, k = [], 0
            while k < len(symbols):
                if k + 1 < len(symbols) and (symbols[k], symbols[k + 1]) == best:
                    merged.append(best[0] + best[1])
                    k += 2
                else:
                    merged.append(symbols[k])
                    k += 1
            words[w] = merged
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _tiny_config(vocab_size: int, **overrides) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab_size, **{**TINY_CLIP_CONFIG, **overrides})


def tiny_clip_state_dict(config: CLIPTextConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random weights for ``config`` in HF keys; LayerNorm affines are randomised too (not 1/0), so a
    wrong remap of any tensor shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in CLIPTextModel(config).state_dict().items():
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("layer_norm.weight"):
            sd[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif "embedding" in key:
            sd[key] = 0.5 * torch.randn(value.shape, generator=gen)
        else:
            fan_in = value.shape[-1] if value.dim() > 1 else config.hidden_size
            sd[key] = torch.randn(value.shape, generator=gen) / fan_in ** 0.5
    return sd


def write_tiny_clip(text_encoder_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0,
                    hidden_act: str = "gelu", pad_token: str = "!") -> tuple[Path, Path]:
    """Write a tiny random CLIP text encoder + tokenizer as HF folders, the way the x4 upscaler ships them.

    text_encoder_dir: ``config.json`` (hidden 32, 2 layers, 4 heads, vocab ~610) + ``model.safetensors``
    (``text_model.*`` keys). tokenizer_dir: ``vocab.json``, ``merges.txt``, ``special_tokens_map.json``
    (pad ``pad_token``; "!" as in the x4 upscaler, so pad id 0), ``tokenizer_config.json``
    (model_max_length 77; like the x4 upscaler's it names pad "<|endoftext|>", which the special-tokens
    map overrides). Both transformers and this module load them. Returns the two folders.
    """
    from safetensors.torch import save_file

    te_dir, tok_dir = Path(text_encoder_dir), Path(tokenizer_dir)
    te_dir.mkdir(parents=True, exist_ok=True)
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tiny_vocab_and_merges()
    config = _tiny_config(len(vocab), hidden_act=hidden_act)
    cfg = {**config.to_dict(), "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "pad_token_id": vocab[pad_token], "projection_dim": 32, "torch_dtype": "float32"}
    (te_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in tiny_clip_state_dict(config, seed).items()},
              str(te_dir / "model.safetensors"))

    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                        encoding="utf-8")

    def special(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    (tok_dir / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": special("<|startoftext|>"), "eos_token": special("<|endoftext|>"),
        "pad_token": pad_token, "unk_token": special("<|endoftext|>")}, indent=2))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
        "bos_token": {"__type": "AddedToken", **special("<|startoftext|>")},
        "eos_token": {"__type": "AddedToken", **special("<|endoftext|>")},
        "unk_token": {"__type": "AddedToken", **special("<|endoftext|>")},
        "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}, indent=2))
    return te_dir, tok_dir


def tiny_open_clip_state_dict(seed: int = 0, width: int = 32, layers: int = 3, vocab_size: int = 610,
                              context_length: int = 77, embed_dim: int = 16,
                              prefix: str = OPEN_CLIP_PREFIX) -> dict[str, Tensor]:
    """Random OpenCLIP text-tower weights in the LDM single-file naming (for converter tests).

    ``layers`` blocks ``transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2,
    mlp.c_fc, mlp.c_proj}``, ``token_embedding``, ``positional_embedding``, ``ln_final``, plus the
    ``text_projection`` [width, embed_dim] and ``logit_scale`` the converter must ignore; MLP width
    4 x ``width`` as in OpenCLIP. No head count is stored (OpenCLIP files have none): the config used to
    load it says it (the tests use 4 heads).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        scale = scale if scale is not None else shape[-1] ** -0.5
        return scale * torch.randn(*shape, generator=gen)

    sd = {
        "token_embedding.weight": rand(vocab_size, width, scale=0.5),
        "positional_embedding": rand(context_length, width, scale=0.5),
        "ln_final.weight": 1 + rand(width, scale=0.1),
        "ln_final.bias": rand(width, scale=0.1),
        "text_projection": rand(width, embed_dim),
        "logit_scale": torch.tensor(4.6052),
    }
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        sd.update({
            b + "ln_1.weight": 1 + rand(width, scale=0.1), b + "ln_1.bias": rand(width, scale=0.1),
            b + "attn.in_proj_weight": rand(3 * width, width), b + "attn.in_proj_bias": rand(3 * width, scale=0.1),
            b + "attn.out_proj.weight": rand(width, width), b + "attn.out_proj.bias": rand(width, scale=0.1),
            b + "ln_2.weight": 1 + rand(width, scale=0.1), b + "ln_2.bias": rand(width, scale=0.1),
            b + "mlp.c_fc.weight": rand(4 * width, width), b + "mlp.c_fc.bias": rand(4 * width, scale=0.1),
            b + "mlp.c_proj.weight": rand(width, 4 * width), b + "mlp.c_proj.bias": rand(width, scale=0.1),
        })
    return {prefix + k: v for k, v in sd.items()}
