"""What every strict loader shares: comparing a file's keys with a model's and saying what is wrong."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor


def first_keys(keys: Iterable[str], limit: int = 5) -> str:
    """The first ``limit`` keys, sorted, with a count of the rest."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def key_mismatches(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]):
    """(missing, unexpected, shape mismatches) of ``given`` against ``expected`` state dicts."""
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    shapes = [f"{k} {tuple(given[k].shape)} (file) vs {tuple(v.shape)} (model)"
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    return missing, unexpected, shapes


def mismatch_message(header: str, missing, unexpected, shapes, hint: str = "", limit: int = 5) -> str | None:
    """``header`` + the first offending keys + ``hint``; None when nothing is wrong."""
    if not (missing or unexpected or shapes):
        return None
    parts = [header]
    if missing:
        parts.append(f"{len(missing)} missing key(s): {first_keys(missing, limit)};")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {first_keys(unexpected, limit)};")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:limit])};")
    if hint:
        parts.append(hint)
    return " ".join(parts)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def to_dtype_(sd: dict[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    """Convert the floating-point tensors of ``sd`` to ``dtype`` (None: leave them) in place, one at a time,
    so each source tensor can be freed as its copy is made; returns ``sd``."""
    if dtype is not None:
        for key in list(sd):
            if sd[key].is_floating_point() and sd[key].dtype != dtype:
                sd[key] = sd[key].to(dtype)
    return sd


def read_safetensors(path: str | Path, dtype: torch.dtype | None = None,
                     keep: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, each read into its own (64-byte aligned) CPU memory;
    ``dtype``: floating-point tensors are converted to it as they are read, one at a time, so a model
    stored in bf16 never has all its fp32 weights in memory at once. ``keep``: read only the tensors
    whose names it accepts (the text encoder of a 3 GB single-file checkpoint, say).

    Not memory-mapped, unlike ``safetensors.torch.load_file``: tensors backed by a file mapping keep the
    whole mapping, and every page of it that was ever read, resident as long as any one of them lives, so
    converting a model in place (channels-last, another dtype) left the file's pages beside the new copies
    (+0.4 to 2.3 GB on the released models) until the last untouched tensor (a bias) died. Read with
    ``readinto``, the file goes through the page cache, which is not this process's memory.
    """
    import json
    import struct

    out: dict[str, Tensor] = {}
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        start = 8 + size
        for name, info in sorted(((k, v) for k, v in header.items()
                                  if k != "__metadata__" and (keep is None or keep(k))),
                                 key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {info['dtype']}, which this reader does not know")
            begin, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            nbytes = t.numel() * t.element_size()
            if nbytes != end - begin:
                raise ValueError(f"tensor {name!r}: {end - begin} bytes in the file for shape {info['shape']}")
            if nbytes:
                f.seek(start + begin)
                if f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != nbytes:
                    raise ValueError(f"tensor {name!r} is cut short: the file is truncated")
            out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out
