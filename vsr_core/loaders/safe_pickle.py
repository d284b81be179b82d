"""Loading torch pickles (``.ckpt``/``.pth``/``.bin``) without ever running code from the file.

A pickle can name any importable callable and call it while it is read (``__reduce__``), so a plain
``torch.load`` of a downloaded checkpoint can execute anything. Everything here goes through
``torch.load(weights_only=True)``, torch's restricted unpickler that rebuilds only tensors and plain
containers. PyTorch-Lightning checkpoints (MGLD's ``.ckpt`` files) also pickle training state: the
``ModelCheckpoint`` callback, OmegaConf hyper-parameters, numpy scalars. Those names, and only those
(``INERT_MODULES``), are mapped to an inert stand-in class that records its arguments and never imports
or calls the real one; the pickle is scanned first (statically, without running it) and any other global
(``os.system``, ``builtins.eval``, ...) makes the load fail with ``UnsafeCheckpointError``.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = [
    "UnsafeCheckpointError",
    "INERT_MODULES",
    "is_inert_global",
    "unsafe_globals",
    "safe_load",
    "load_state_dict",
]

# Module prefixes of training-time objects a Lightning checkpoint pickles beside the weights. Their
# classes are replaced by ``_Inert`` (never imported), so listing a module here cannot make a load run code.
INERT_MODULES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "omegaconf.",
    "numpy.",
    "pathlib.",
    "typing.",
    "argparse.Namespace",
    "_codecs.encode",
    "copyreg._reconstructor",
    "builtins.object",
    "__builtin__.object",
    "functools.partial",
)


class UnsafeCheckpointError(ValueError):
    """A pickle that references code other than tensors, plain containers and known training state."""


class _Inert:
    """Stand-in for a pickled training-state class: keeps what the pickle gave it, does nothing."""

    _pickled_name = "?"

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs = args, kwargs

    def __setstate__(self, state):
        self._state = state

    def __setitem__(self, key, value):  # dict subclasses are rebuilt by SETITEMS
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value):  # list subclasses are rebuilt by APPENDS
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<inert {self._pickled_name}>"


def is_inert_global(name: str) -> bool:
    """True when the pickled global ``module.qualname`` is training state that may be stubbed."""
    return any(name == p or name.startswith(p) for p in INERT_MODULES)


def _stub(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Inert,), {"_pickled_name": name, "__module__": __name__})


def unsafe_globals(path: str | Path) -> list[str] | None:
    """Globals in a zip-format torch pickle that torch's ``weights_only`` unpickler does not allow, found
    by disassembling it (nothing is executed). None for the legacy non-zip format (checked while loading)."""
    if not zipfile.is_zipfile(path):
        return None
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))


def _refuse(path: Path, names: Iterable[str]) -> UnsafeCheckpointError:
    names = sorted(set(names))
    return UnsafeCheckpointError(
        f"refused to load {path}: its pickle references {', '.join(names)}, which is neither a tensor, a plain "
        f"container nor known training state (Lightning/OmegaConf/numpy). Unpickling it could run code, so it "
        f"was not opened. Use the checkpoint from the method's official source, or a .safetensors copy."
    )


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def safe_load(path: str | Path, mmap: bool = True) -> Any:
    """Unpickle a torch checkpoint with ``torch.load(weights_only=True)``, Lightning/OmegaConf training
    state replaced by inert stand-ins. Tensors land on the CPU (memory-mapped for zip files when
    ``mmap``). Raises UnsafeCheckpointError when the file references anything else, FileNotFoundError
    when it is absent, and ``pickle.UnpicklingError``/RuntimeError for a corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    found = unsafe_globals(path)
    names: set[str] = set()
    if found is not None:
        bad = [n for n in found if not is_inert_global(n)]
        if bad:
            raise _refuse(path, bad)
        names.update(found)
    use_mmap = mmap and found is not None
    for _ in range(64):  # legacy files and dynamically built names are discovered one per failed attempt
        try:
            with torch.serialization.safe_globals([(_stub(n), n) for n in sorted(names)]):
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=use_mmap)
        except pickle.UnpicklingError as exc:
            m = _GLOBAL_RE.search(str(exc))
            if m is None:
                raise
            name = m[1]
            if not is_inert_global(name) or name in names:
                raise _refuse(path, [name]) from None
            names.add(name)
    raise _refuse(path, names)


def load_state_dict(path: str | Path, mmap: bool = True) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` state dict from ``.safetensors`` or a torch pickle (through ``safe_load``);
    ``{"state_dict": {...}}`` (Lightning) and ``{"model": {...}}`` wrappers are unwrapped. Raises
    UnsafeCheckpointError (see ``safe_load``) or ValueError when the file holds no tensor dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from .common import read_safetensors

        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return read_safetensors(path)
    obj = safe_load(path, mmap=mmap)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: state dict entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(obj)
