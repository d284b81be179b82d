"""Import the repository the way ComfyUI does: as a package named after its folder, from its __init__.py."""
from __future__ import annotations

import importlib
import importlib.util
import os
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


def core_save_image_path(filename_prefix: str, output_dir: str, width: int = 0, height: int = 0):
    """ComfyUI core's ``folder_paths.get_save_image_path`` counting rule (0.3.75), restated for tests that run
    without a ComfyUI checkout: the counter is one past the largest N among entries named
    ``<name>_<N>_<anything>`` (so core's "video_00001_.png"); an entry whose N does not parse
    ("video_00001.mp4": "00001.mp4" is not a number) counts as 0. Returns (folder, name, counter,
    subfolder, prefix) like core."""
    subfolder, name = os.path.split(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed.")
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        entries = []
    found = []
    for entry in entries:
        head, rest = entry[:len(name) + 1], entry[len(name) + 1:]
        if os.path.normcase(head[:-1]) != os.path.normcase(name) or not head.endswith("_"):
            continue
        try:
            found.append(int(rest.split("_")[0]))
        except ValueError:
            found.append(0)
    return folder, name, max(found) + 1 if found else 1, subfolder, filename_prefix


def queue_time_errors(cls, inputs: dict, linked: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(input name, message) of each error ComfyUI 0.3.75's prompt validation reports for a V1 node given
    widget values ``inputs`` and the names of ``linked`` inputs, restated for tests without a checkout:
    a combo value not in its list is refused unless VALIDATE_INPUTS names that input; then VALIDATE_INPUTS
    is called with the inputs it names that the prompt has (a linked one as None), and a message it returns
    is reported once for EACH of those inputs."""
    import inspect

    spec = cls.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    named = inspect.getfullargspec(validate).args[1:] if validate else []
    errors = []
    for name, value in inputs.items():
        kind = declared[name][0]
        if isinstance(kind, list) and name not in named and value not in kind:
            errors.append((name, f"Value not in list: {name}: {value!r}"))
    present = {k: v for k, v in inputs.items() if k in named}
    present.update({k: None for k in linked if k in named})
    if validate is not None and present:
        result = validate(**present)
        if result is not True:
            errors += [(name, f"{name} - {result}") for name in present]
    return errors
