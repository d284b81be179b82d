"""Import the repository the way ComfyUI does: as a package named after its folder, from its __init__.py."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "diffusion_vsr_pack"


def load_pack(name: str = PACK_NAME):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def comfy_folders(**folders):
    """Point the pack's ComfyUI adapter at these folders (input=..., output=..., temp=..., models=...)
    for the block, as ComfyUI's folder_paths would; the overrides are dropped afterwards."""
    adapter = importlib.import_module(f"{load_pack().__name__}.nodes.comfy_adapter")
    for kind, path in folders.items():
        adapter.set_directory(kind, path)
    try:
        yield
    finally:
        adapter.reset_directories()
