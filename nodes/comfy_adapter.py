"""The one place where the node pack touches ComfyUI.

Progress bar, interrupt, compute device, folders (input/output/temp/models) and the model-folder
registration. Every function works without ComfyUI too (plain folders, a no-op progress bar, the
CUDA-if-available device), so every node can be called in tests and scripts. ComfyUI modules are
imported lazily, on first use, never at pack import time.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("diffusion_vsr")

# models/vsr/<kind>/ : one folder per kind of weight file, each a folder_paths key "vsr_<kind>"
MODEL_KINDS = ("flow", "upscaler", "sd_x4", "stablevsr", "upscale_a_video", "mgld", "satec")
MODEL_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"}

_overrides: dict[str, str] = {}
PACK_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def _comfy():
    """(folder_paths, model_management, utils) when running inside ComfyUI, else None."""
    try:
        import comfy.model_management as model_management
        import comfy.utils as utils
        import folder_paths
    except Exception:  # ImportError, or a ComfyUI that fails to import outside its server
        return None
    return folder_paths, model_management, utils


def has_comfy() -> bool:
    return _comfy() is not None


# ----------------------------------------------------------------------------------- folders

def set_directory(kind: str, path: str | os.PathLike) -> None:
    """Override a folder ("input", "output", "temp", "models") when running without ComfyUI (tests, scripts)."""
    _overrides[kind] = str(path)


def reset_directories() -> None:
    """Forget every ``set_directory`` override."""
    _overrides.clear()


def _directory(kind: str) -> str:
    if kind in _overrides:
        return _overrides[kind]
    c = _comfy()
    if c is not None:
        fp = c[0]
        return {"input": fp.get_input_directory, "output": fp.get_output_directory,
                "temp": fp.get_temp_directory, "models": lambda: fp.models_dir}[kind]()
    env = os.environ.get(f"VSR_{kind.upper()}_DIR")
    if env:
        return env
    if kind == "temp":  # scratch files (previews, compare stills) never land in the working directory
        import tempfile

        return os.path.join(tempfile.gettempdir(), "diffusion_vsr_temp")
    return os.path.join(os.getcwd(), kind)


def input_dir() -> str:
    return _directory("input")


def output_dir() -> str:
    return _directory("output")


def temp_dir() -> str:
    return _directory("temp")


def _labelled_roots() -> list[tuple[Path, str]]:
    """(resolved folder, label) of every folder a node may read from: ComfyUI's input, output and temp
    folders, then the folders of the ``VSR_ALLOWED_DIRS`` environment variable (os.pathsep-separated)."""
    roots = [(Path(_directory(k)).resolve(), k) for k in ("input", "output", "temp")]
    extra = [p for p in os.environ.get("VSR_ALLOWED_DIRS", "").split(os.pathsep) if p]
    roots += [(Path(p).resolve(), "VSR_ALLOWED_DIRS" if len(extra) == 1 else f"VSR_ALLOWED_DIRS #{i + 1}")
              for i, p in enumerate(extra)]
    return roots


def allowed_roots() -> list[Path]:
    """Folders a node may read user-given paths from: ComfyUI's input, output and temp folders, plus
    any listed in the ``VSR_ALLOWED_DIRS`` environment variable (os.pathsep-separated)."""
    return [r for r, _ in _labelled_roots()]


def display_path(path: str | os.PathLike) -> str:
    """``path`` as a node message may show it to whoever uses the server: relative to the allowed folder
    it lies in, with that folder's name ("clips/a.mp4 [input]"), never the server's absolute paths; a path
    outside them shows as its file name only."""
    p = Path(path)
    for root, label in _labelled_roots():
        for cand in (p, p.resolve()) if p.is_absolute() else (p,):
            if cand == root or root in cand.parents:
                rel = cand.relative_to(root).as_posix()
                return f"{rel} [{label}]" if rel != "." else f"[{label}]"
    return p.name


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def resolve_user_path(path: str) -> Path:
    """Resolve a path typed into a node; refuse anything outside ``allowed_roots()``.

    A ComfyUI server can be reachable by others, so a path widget must not read arbitrary files, and its
    messages must not tell them about the server's folders: they name the path as typed and the folders
    by their ComfyUI names. Relative paths and ComfyUI annotations ("clip.mp4 [output]") are resolved
    against the folders.
    """
    raw = path.strip().strip('"').strip("'")
    m = re.fullmatch(r"(.*?)\s*\[(input|output|temp)\]", raw)
    if m:
        candidate = Path(_directory(m.group(2))) / m.group(1)
    else:
        candidate = Path(os.path.expanduser(raw))
        if not candidate.is_absolute():
            candidate = Path(input_dir()) / candidate
    resolved = candidate.resolve()
    roots = allowed_roots()
    if not _inside(resolved, roots):
        linked = _inside(Path(os.path.normpath(candidate)), roots)  # inside by name: a link leads out
        what = f"{display_path(os.path.normpath(candidate))} links to a file" if linked else f"{raw!r} is"
        raise PermissionError(
            f"{what} outside the folders this node may read: ComfyUI's input, output and temp folders, and "
            "those listed in the VSR_ALLOWED_DIRS environment variable. Copy the file into ComfyUI's input "
            "folder, or add its folder to VSR_ALLOWED_DIRS before starting ComfyUI.")
    return resolved


def list_input_files(extensions: tuple[str, ...]) -> list[str]:
    """Files (relative names) in the input folder with one of ``extensions``, sorted; links whose target
    lies outside the allowed folders are left out (the loader would refuse them)."""
    root = Path(input_dir())
    if not root.is_dir():
        return []
    roots = allowed_roots()
    out = []
    for p in root.rglob("*"):
        if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."):
            if _inside(p.resolve(), roots):
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def _counter_pattern(filename: str) -> re.Pattern:
    # "video_00007.mp4", a PNG folder "video_00007", core's "video_00007_.png", a partial
    # ".video_00007.mp4.x1y2.partial.mp4": every name that holds counter 7 of prefix "video"
    return re.compile(re.escape(filename) + r"_(\d+)_?(\..*)?", re.IGNORECASE)


def next_counter(folder: Path, filename: str) -> int:
    """1 + the largest counter any entry of ``folder`` holds for ``filename`` (our names, core's names with
    the trailing underscore, folders, and the partial files of runs still writing)."""
    pattern = _counter_pattern(filename)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 1
    counters = [int(m.group(1)) for n in names if (m := pattern.fullmatch(n.lstrip(".")))]
    return max(counters, default=0) + 1


def save_path(filename_prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, base filename, counter, subfolder) for a new output, ComfyUI's prefix/counter convention.

    "VSR/video" -> output/VSR/video_00001.mp4, then _00002, ... The counter is one past every name the
    folder holds for the prefix, ours and core's alike (core's own counter only sees names of its form
    "video_00001_.png", so it is not enough on its own).
    """
    out_root = output_dir()
    c = _comfy()
    core_counter = 1
    if c is not None and "output" not in _overrides:  # core's checks (prefix inside the output folder) and counter
        folder, filename, core_counter, subfolder, _ = c[0].get_save_image_path(filename_prefix, out_root, width,
                                                                                 height)
        folder = Path(folder)
    else:
        subfolder, filename = os.path.split(os.path.normpath(filename_prefix))
        folder = Path(out_root) / subfolder
        if not folder.resolve().is_relative_to(Path(out_root).resolve()):
            raise ValueError(f"filename_prefix {filename_prefix!r} points outside the output folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder, filename, max(core_counter, next_counter(folder, filename)), subfolder


def new_output(filename_prefix: str, ext: str, width: int = 0, height: int = 0):
    """(path, subfolder, next_name) of a new output file (or, ``ext`` empty, a PNG folder) for
    ``filename_prefix``. ``next_name(taken)`` gives the next free counter's path: pass it to the writer as
    ``on_exists`` so that an output which finishes when another run has taken its name goes to the next
    counter instead of replacing it."""
    folder, filename, counter, subfolder = save_path(filename_prefix, width, height)

    def next_name(taken: Path) -> Path:
        n = max(next_counter(folder, filename), counter + 1)
        return folder / f"{filename}_{n:05d}{ext}"

    return folder / f"{filename}_{counter:05d}{ext}", subfolder, next_name


EXAMPLE_VIDEO = "vsr_example_coffee.mp4"  # what the shipped workflows' loaders point at


def provide_example_input(source: str | os.PathLike, name: str = EXAMPLE_VIDEO) -> Path | None:
    """Inside ComfyUI, put the pack's bundled example clip into the input folder as ``name`` (once: a file
    of that name, the user's or ours, is never replaced), so the shipped workflows open on a video that
    exists. Returns its path, or None without ComfyUI or when the input folder cannot be written."""
    if _comfy() is None or "input" in _overrides:
        return None
    from vsr_core.io.video import write_file

    target = Path(input_dir()) / name
    if os.path.lexists(target):
        return target
    try:
        write_file(target, lambda tmp: shutil.copyfile(source, tmp))
    except FileExistsError:  # another process put it there meanwhile
        pass
    except OSError as e:  # a read-only input folder: the workflows then ask for a video
        log.warning("[Diffusion VSR] could not put the example clip into the input folder: %s", e)
        return None
    return target


def register_model_folders() -> None:
    """Register ``models/vsr/<kind>/`` as folder_paths keys ``vsr_<kind>`` (no-op without ComfyUI).

    Keys a user already defined in extra_model_paths.yaml are kept and get our extensions added.
    """
    c = _comfy()
    if c is None:
        return
    fp = c[0]
    for kind in MODEL_KINDS:
        key = f"vsr_{kind}"
        default = os.path.join(fp.models_dir, "vsr", kind)
        if key in fp.folder_names_and_paths:
            paths, exts = fp.folder_names_and_paths[key]
            if default not in paths:
                paths.append(default)
            if exts:  # an empty set means "every file" in folder_paths: leave that as it is
                exts.update(MODEL_EXTENSIONS)
        else:
            fp.folder_names_and_paths[key] = ([default], set(MODEL_EXTENSIONS))


def model_folders(kind: str) -> list[str]:
    """The folders searched for ``kind`` weights (ComfyUI's, or ``VSR_MODELS_DIR``/vsr/<kind>)."""
    c = _comfy()
    if c is not None and "models" not in _overrides:
        try:
            return list(c[0].get_folder_paths(f"vsr_{kind}"))
        except KeyError:
            pass
    return [os.path.join(_directory("models"), "vsr", kind)]


def list_models(kind: str) -> list[str]:
    """Weight files (relative names) available for ``kind``, sorted."""
    names = set()
    for folder in model_folders(kind):
        root = Path(folder)
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob("*")
                         if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)
    return sorted(names)


def list_model_dirs(kind: str, marker: str = "unet") -> list[str]:
    """Model folders (relative names) under the ``kind`` folders that contain ``marker`` (a diffusers layout)."""
    names = set()
    for folder in model_folders(kind):
        root = Path(folder)
        if root.is_dir():
            names.update(p.parent.relative_to(root).as_posix() for p in root.rglob(marker) if p.is_dir())
    return sorted(n for n in names if n != ".")


def model_path(kind: str, name: str) -> Path:
    """Full path of a weight file listed by ``list_models``; a clear error says where it should be."""
    for folder in model_folders(kind):
        p = Path(folder) / name
        if p.exists():
            return p
    raise FileNotFoundError(f"model file {name!r} not found in {model_folders(kind)}: put it in "
                            f"ComfyUI/models/vsr/{kind}/ (or a 'vsr_{kind}' entry of extra_model_paths.yaml)")


def checkpoint_folders() -> list[str]:
    """ComfyUI's ``checkpoints`` folders (or ``<models>/checkpoints`` without ComfyUI)."""
    c = _comfy()
    if c is not None and "models" not in _overrides:
        try:
            return list(c[0].get_folder_paths("checkpoints"))
        except KeyError:
            pass
    return [os.path.join(_directory("models"), "checkpoints")]


def list_checkpoints() -> list[str]:
    """Checkpoint files (relative names) in ComfyUI's checkpoints folders, sorted."""
    names = set()
    for folder in checkpoint_folders():
        root = Path(folder)
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob("*")
                         if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)
    return sorted(names)


_model_cache: dict = {}


def cached_model(key, path: str | os.PathLike, load, keep: int = 2):
    """``load()``'s result, reused while ``path`` is unchanged (same mtime and size).

    Keeps the ``keep`` most recently used models (on whatever device their users leave them,
    normally the CPU) so that re-running a graph does not re-read weight files.
    """
    st = os.stat(path)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _model_cache.pop(key, None)
    if hit is not None and hit[0] == stamp:
        _model_cache[key] = hit
        return hit[1]
    model = load()
    _model_cache[key] = (stamp, model)
    while len(_model_cache) > keep:
        _model_cache.pop(next(iter(_model_cache)))
    return model


# ----------------------------------------------------------------------------- runtime

def get_device():
    """ComfyUI's compute device (honours --cpu), else CUDA when available, else the CPU."""
    import torch

    c = _comfy()
    if c is not None:
        return c[1].get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str = "auto"):
    """A device from a node's "device" widget: "auto" follows ComfyUI, otherwise the given name."""
    import torch

    return get_device() if name in ("auto", "", None) else torch.device(name)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (no-op without ComfyUI)."""
    c = _comfy()
    if c is not None:
        c[1].throw_exception_if_processing_interrupted()


def make_room(nbytes: int, device) -> None:
    """Ask ComfyUI to unload other models until ``nbytes`` are free on ``device`` (no-op without ComfyUI)."""
    c = _comfy()
    if c is not None and getattr(device, "type", str(device)) != "cpu":
        c[1].free_memory(int(nbytes), device)


def offload_device():
    """Where weights rest between uses: ComfyUI's choice (CPU unless --gpu-only/--highvram), else the CPU."""
    import torch

    c = _comfy()
    if c is not None:
        return c[1].unet_offload_device()
    return torch.device("cpu")


def add_file_route(path: str, produce) -> bool:
    """Serve ``GET path`` inside ComfyUI's server: ``produce(query: dict) -> (file, info: dict)`` runs in a
    worker thread; the file comes back with ``info`` as JSON in the ``X-VSR-Info`` header, and a bad
    request (ValueError, OSError, RuntimeError: the message says why) as ``400 {"error": ...}``.
    Returns False (and registers nothing) without a ComfyUI server."""
    try:
        from server import PromptServer

        routes = PromptServer.instance.routes
    except Exception:
        return False

    async def handler(request):
        import asyncio

        from aiohttp import web

        query = dict(request.rel_url.query)
        try:
            file, info = await asyncio.get_running_loop().run_in_executor(None, produce, query)
        except (ValueError, OSError, RuntimeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.FileResponse(file, headers={"X-VSR-Info": json.dumps(info), "Cache-Control": "no-store"})

    routes.get(path)(handler)
    return True


def add_prompt_check(check) -> bool:
    """Run ``check(prompt)`` on every prompt queued to ComfyUI's server, before its validation (an
    ``on_prompt`` handler); ``check`` may edit the prompt in place. Returns False without a server."""
    try:
        from server import PromptServer

        server = PromptServer.instance
    except Exception:
        return False

    def handler(json_data):
        prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
        if isinstance(prompt, dict):
            check(prompt)
        return json_data

    server.add_on_prompt_handler(handler)
    return True


def soft_empty_cache() -> None:
    c = _comfy()
    if c is not None:
        c[1].soft_empty_cache()


class Progress:
    """A ``(done, total)`` callable driving ComfyUI's progress bar; each call is also a cancel point.

    Inside ComfyUI it also sends a ``vsr.progress`` message (node, done, total, a readable line with
    frames or steps, elapsed time and ETA) that the pack's frontend shows on the running node.
    ``unit`` names what is counted; ``per_step`` > 0 says the count is steps x ``per_step`` frames.
    """

    MIN_INTERVAL = 0.25  # seconds between two messages (the last one always goes)

    def __init__(self, total: int, node_id: str | None = None, unit: str = "frame", per_step: int = 0):
        self.total = max(int(total), 1)
        self.done = 0
        self.node_id, self.unit, self.per_step = node_id, unit, int(per_step)
        self.t0 = time.monotonic()
        self._sent = 0.0
        c = _comfy()
        self._bar = c[2].ProgressBar(self.total, node_id=node_id) if c is not None else None

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = max(int(total), 1)
        self.done = int(done)
        if self._bar is not None:
            self._bar.update_absolute(self.done, self.total)
            self._notify()
        check_interrupt()

    def text(self) -> str:
        """"frames 12/48 · 3.1 s · ETA 9.4 s" (or "step 3/20 · frame 4/8 · ...")."""
        done, total = min(self.done, self.total), self.total
        if self.per_step > 0:
            steps = max(total // self.per_step, 1)
            step = min(done // self.per_step + (1 if done % self.per_step else 0), steps)
            frame = done % self.per_step or (self.per_step if done else 0)
            head = f"step {step}/{steps} · frame {frame}/{self.per_step}"
        else:
            head = f"{self.unit}s {done}/{total}"
        elapsed = time.monotonic() - self.t0
        parts = [head, _duration(elapsed)]
        if 0 < done < total:
            parts.append("ETA " + _duration(elapsed / done * (total - done)))
        return " · ".join(parts)

    def _notify(self) -> None:
        now = time.monotonic()
        if self.node_id is None or (now - self._sent < self.MIN_INTERVAL and self.done < self.total):
            return
        self._sent = now
        _send_progress(self.node_id, self.done, self.total, self.text())


def _send_progress(node_id, done: int, total: int, text: str) -> None:
    """The ``vsr.progress`` message the pack's frontend shows on node ``node_id``."""
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync("vsr.progress", {"node": str(node_id), "done": done, "total": total, "text": str(text)},
                         server.client_id)
    except Exception:  # a display nicety: never fail a run over it
        pass


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def show_text(node_id, text: str) -> None:
    """Show ``text`` on the node's progress line (the pack's frontend, ``vsr.progress``) now, e.g. a
    sampler's pre-run estimate; the first progress step replaces it. No-op without ComfyUI's server."""
    if node_id is not None and _comfy() is not None:
        _send_progress(node_id, 0, 0, text)


def user_file(name: str) -> str | None:
    """A path under ComfyUI's user folder (settings that outlive the temp folder), or None without
    ComfyUI (``VSR_USER_DIR`` then names the folder, else nothing is written)."""
    c = _comfy()
    if c is not None and hasattr(c[0], "get_user_directory"):
        return os.path.join(c[0].get_user_directory(), name)
    env = os.environ.get("VSR_USER_DIR")
    return os.path.join(env, name) if env else None


# --------------------------------------------------------------------------- model management

_PATCHER = "_vsr_model_patcher"  # where a sub-model keeps its ModelPatcher (it lives as long as the module)
_held_classes: dict = {}


def _held(module, device):
    """``module`` inside a container ComfyUI's ModelPatcher can drive: it sets ``.device`` and load
    bookkeeping on the model it wraps, which diffusers' models (read-only ``device``) do not allow.
    The class is named after the module's ("VSR_UNet2DConditionModel"), which ComfyUI's log shows."""
    import torch

    name = type(module).__name__
    cls = _held_classes.get(name)
    if cls is None:
        def __init__(self, module, device):
            torch.nn.Module.__init__(self)
            self.module = module
            self.device = device

        cls = _held_classes[name] = type(f"VSR_{name}", (torch.nn.Module,), {"__init__": __init__})
    return cls(module, device)


def _on(t, device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


class ComfyDeviceManager:
    """The ``vsr_core`` device manager inside ComfyUI: each sub-model gets one cached
    ``comfy.model_patcher.ModelPatcher`` (load device = the bundle's device, offload device = its
    offload device) and is loaded with ``comfy.model_management.load_models_gpu``, so ComfyUI unloads
    other graph models to make room for ours (weights + the sampler's activation estimate) and counts
    ours when the next node needs room. Without ComfyUI both methods return False: plain moves.

    Loads are full (``force_full_load``): ComfyUI's partial (lowvram) loading relies on ``comfy.ops``
    layers that fetch their weights per call, and ours are plain torch layers. At the end of a block,
    sub-models are unloaded to their offload device when it differs from the compute device (the
    loader's offload setting); otherwise they stay loaded and ComfyUI evicts them when it needs room.
    """

    def patcher(self, module, device, offload_device):
        from comfy.model_patcher import ModelPatcher

        p = module.__dict__.get(_PATCHER)
        if p is not None and p.load_device == device and p.offload_device == offload_device:
            return p
        if p is not None:
            self._unload(p)
        first = next(module.parameters(), None)
        p = ModelPatcher(_held(module, first.device if first is not None else offload_device),
                         load_device=device, offload_device=offload_device)
        module.__dict__[_PATCHER] = p  # not a submodule or parameter: nothing else sees it
        return p

    def load(self, modules, device, offload_device, memory_required=0, keep=()) -> bool:
        c = _comfy()
        if c is None:
            return False
        import torch

        mm = c[1]
        patchers = [self.patcher(m, device, offload_device) for m in modules]
        kept = [p for p in (m.__dict__.get(_PATCHER) for m in keep) if p is not None and p.load_device == device]
        mm.load_models_gpu(patchers + kept, memory_required=int(memory_required), force_full_load=True)
        for m in modules:  # --novram still loads partially; our layers cannot run that way
            if not all(_on(t, device) for t in list(m.parameters()) + list(m.buffers())):
                log.warning("[Diffusion VSR] ComfyUI loaded %s partially; moving all of it to %s",
                            type(m).__name__, device)
                torch.nn.Module.to(m, device)
        return True

    def release(self, modules, offload_device) -> bool:
        c = _comfy()
        if c is None:
            return False
        if offload_device is None:
            return True  # stays loaded; ComfyUI evicts it when another model needs the room
        import torch

        for m in modules:
            p = m.__dict__.get(_PATCHER)
            if p is not None:
                self._unload(p)
            if not all(_on(t, offload_device) for t in m.parameters()):
                torch.nn.Module.to(m, offload_device)
        c[1].soft_empty_cache()
        return True

    @staticmethod
    def _unload(patcher) -> None:
        """Unload one model the way ComfyUI evicts one (``LoadedModel.model_unload``), and forget it."""
        c = _comfy()
        loaded = c[1].current_loaded_models if c is not None else []
        for i, lm in enumerate(loaded):
            if lm.model is patcher:
                lm.model_unload()
                loaded.pop(i)
                return
        patcher.detach()  # not (or no longer) tracked: make sure its weights are on the offload device


def install_device_manager() -> None:
    """Route ``VSRModel.on_device`` / ``borrow`` through ComfyUI's model management (at pack import;
    ComfyUI itself is imported only when a model is first loaded, and without it moves stay plain)."""
    from vsr_core.models.bundle import get_device_manager, set_device_manager

    if get_device_manager() is None:
        set_device_manager(ComfyDeviceManager())


def manages_models() -> bool:
    """True when ComfyUI's model management loads our sub-models (then it also makes room for them)."""
    from vsr_core.models.bundle import get_device_manager

    return has_comfy() and isinstance(get_device_manager(), ComfyDeviceManager)
