"""What every strict loader shares: comparing a file's keys with a model's and saying what is wrong."""
from __future__ import annotations

from typing import Iterable, Mapping

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
