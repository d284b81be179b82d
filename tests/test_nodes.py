"""Node contracts: every node's INPUT_TYPES is well formed and its function returns what it declares."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from media import frame_index, indexed_frames, write_video
from pack import REPO, core_save_image_path, load_pack, queue_time_errors

PACK = load_pack()
MAPPINGS = PACK.NODE_CLASS_MAPPINGS
adapter = importlib.import_module(f"{PACK.__name__}.nodes.comfy_adapter")

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def test_pack_registers_its_nodes_with_the_prefix_and_one_category():
    assert PACK.WEB_DIRECTORY == "./js"
    expected = {"VSR_LoadVideoFrames", "VSR_SaveVideo", "VSR_VideoUpscaler"}
    assert expected <= set(MAPPINGS)
    nodes_pkg = importlib.import_module(f"{PACK.__name__}.nodes")
    assert nodes_pkg.IMPORT_ERRORS == {}
    for node_id, cls in MAPPINGS.items():
        assert node_id.startswith("VSR_")
        assert cls.CATEGORY.startswith("Diffusion VSR/")
        assert node_id in PACK.NODE_DISPLAY_NAME_MAPPINGS


@pytest.mark.parametrize("node_id", sorted(MAPPINGS))
def test_input_types_are_well_formed(node_id):
    cls = MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, entry)
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            assert isinstance(opts, dict)
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):  # combo
                if kind:
                    assert opts.get("default", kind[0]) in kind
            elif kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], name
                if kind == "INT":
                    assert all(isinstance(opts[k], int) for k in ("default", "min", "max"))
            else:
                assert isinstance(kind, str) and kind.isupper(), (name, kind)
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    for hook in ("IS_CHANGED", "VALIDATE_INPUTS"):
        if hasattr(cls, hook):  # ComfyUI calls these on the class
            assert isinstance(cls.__dict__[hook], classmethod)


def _check_outputs(cls, result):
    values = result["result"] if isinstance(result, dict) else result
    assert len(values) == len(cls.RETURN_TYPES)
    for kind, value in zip(cls.RETURN_TYPES, values):
        if kind == "IMAGE":
            assert value.dtype == torch.float32 and value.ndim == 4 and value.shape[-1] == 3
            assert value.device.type == "cpu" and 0 <= value.min() and value.max() <= 1
        elif kind == "INT":
            assert isinstance(value, int)
        elif kind == "FLOAT":
            assert isinstance(value, float)
        elif kind == "STRING":
            assert isinstance(value, str)
        elif kind == "AUDIO":
            assert value is None or (value["waveform"].ndim == 3 and isinstance(value["sample_rate"], int))
    return values


def test_load_node_returns_declared_outputs(folders):
    write_video(folders / "input" / "clip.mkv", indexed_frames(20), fps=20, codec="ffv1", pix_fmt="bgr0",
                audio=(8000, 1, 1.0))
    cls = MAPPINGS["VSR_LoadVideoFrames"]
    assert "clip.mkv" in cls.INPUT_TYPES()["required"]["video"][0]
    assert queue_time_errors(cls, {"video": "clip.mkv", "path": ""}) == []
    out = cls().load("clip.mkv", frame_load_cap=4, skip_first_frames=2, select_every_nth=3)
    frames, count, fps, audio, info = _check_outputs(cls, out)
    assert count == 4 and [frame_index(f) for f in frames] == [2, 5, 8, 11]
    assert fps == pytest.approx(20 / 3)
    assert audio["sample_rate"] == 8000
    assert audio["waveform"].shape[-1] / 8000 == pytest.approx(4 / fps, abs=0.05)  # the span of the frames
    assert info.path.endswith("clip.mkv") and info.loaded_frames == 4
    # the fingerprint changes when the file changes
    fp = cls.IS_CHANGED(video="clip.mkv")
    write_video(folders / "input" / "clip.mkv", indexed_frames(5), fps=20, codec="ffv1", pix_fmt="bgr0")
    assert cls.IS_CHANGED(video="clip.mkv") != fp


def test_load_node_path_input_and_allowed_folders(folders, tmp_path_factory):
    write_video(folders / "output" / "prev.mkv", indexed_frames(3), codec="ffv1", pix_fmt="bgr0")
    cls = MAPPINGS["VSR_LoadVideoFrames"]
    frames = cls().load("", path="prev.mkv [output]")[0]
    assert frames.shape[0] == 3
    outside = tmp_path_factory.mktemp("elsewhere")
    write_video(outside / "secret.mkv", indexed_frames(3), codec="ffv1", pix_fmt="bgr0")
    ((name, msg),) = queue_time_errors(cls, {"video": "", "path": str(outside / "secret.mkv")})
    assert name == "path" and "VSR_ALLOWED_DIRS" in msg
    with pytest.raises(PermissionError, match="outside the folders"):
        cls().load("", path=str(outside / "secret.mkv"))
    with pytest.raises(PermissionError):
        cls().load("", path="../../../etc/passwd")
    assert queue_time_errors(cls, {"video": "missing.mp4", "path": ""}) == [
        ("video", "Value not in list: video: 'missing.mp4'")]


@pytest.mark.parametrize("node", ["VSR_LoadVideoFrames", "VSR_StreamUpscaleVideo"])
def test_bad_paths_are_refused_at_queue_time_once_without_server_paths(folders, tmp_path_factory, node):
    """Messages reach whoever can open the server's page: they must not reveal its folders, a link's real
    target or the home folder, and a bad path is reported once (on `path`), not on `video` too."""
    cls = MAPPINGS[node]
    write_video(folders / "input" / "ok.mkv", indexed_frames(3), codec="ffv1", pix_fmt="bgr0")
    outside = tmp_path_factory.mktemp("private_area")
    write_video(outside / "secret.mkv", indexed_frames(3), codec="ffv1", pix_fmt="bgr0")
    (folders / "input" / "innocent.mkv").symlink_to(outside / "secret.mkv")
    (folders / "input" / "sub").mkdir()
    cases = {"innocent.mkv": "innocent.mkv [input] links to a file outside",
             str(outside / "secret.mkv"): "is outside the folders",
             "~/secret.mkv": "'~/secret.mkv' is outside the folders",
             "sub/missing.mkv": "video file not found: sub/missing.mkv [input]"}
    home = os.path.expanduser("~")
    for typed, expected in cases.items():
        errors = queue_time_errors(cls, {"video": "ok.mkv", "path": typed})
        assert [e[0] for e in errors] == ["path"], errors  # once
        msg = errors[0][1]
        assert expected in msg, msg
        for private in (str(folders), str(outside), home + "/"):
            assert private not in msg.replace(typed, ""), (private, msg)
        run = (lambda: cls().load("", path=typed)) if node == "VSR_LoadVideoFrames" else \
            (lambda: cls().run("bicubic", path=typed, scale=2))
        with pytest.raises((PermissionError, FileNotFoundError)) as err:
            run()
        assert str(folders) not in str(err.value) and str(outside) not in str(err.value).replace(typed, "")
    # the file list does not offer the link the loader refuses
    assert cls.INPUT_TYPES()["required"]["video"][0] == ["ok.mkv"]
    assert queue_time_errors(cls, {"video": "ok.mkv", "path": ""}) == []
    if node == "VSR_StreamUpscaleVideo":  # a connected video_info replaces both
        assert queue_time_errors(cls, {"video": "ok.mkv", "path": "innocent.mkv"}, linked=("video_info",)) == []



def test_save_node_counter_preview_and_audio(folders):
    cls = MAPPINGS["VSR_SaveVideo"]
    frames = torch.rand(5, 32, 48, 3)
    audio = {"waveform": torch.zeros(1, 1, 8000), "sample_rate": 8000}
    first = cls().save(frames, 10.0, "VSR/test", audio=audio, prompt={"1": {}}, extra_pnginfo={"workflow": {}})
    second = cls().save(frames, 10.0, "VSR/test")
    (p1,), (p2,) = _check_outputs(cls, first), _check_outputs(cls, second)
    assert p1.endswith("VSR/test_00001.mp4") and p2.endswith("VSR/test_00002.mp4")
    ui = first["ui"]
    assert ui["images"] == [{"filename": "test_00001.mp4", "subfolder": "VSR", "type": "output"}]
    assert ui["animated"] == (True,)
    from vsr_core.io import probe

    info = probe(p1)
    assert info.num_frames == 5 and info.has_audio and info.fps == pytest.approx(10.0)
    seq = cls().save(frames, 10.0, "VSR/seq", format="png sequence")
    assert seq["ui"]["images"][0] == {"filename": "frame_000001.png", "subfolder": "VSR/seq_00001", "type": "output"}
    assert (folders / "output" / "VSR" / "seq_00001" / "frame_000005.png").exists()
    with pytest.raises(ValueError, match="outside the output folder"):
        cls().save(frames, 10.0, "../escape")


def test_upscaler_node_matches_bicubic_and_lanczos_is_sharper():
    cls = MAPPINGS["VSR_VideoUpscaler"]
    frames = torch.rand(3, 16, 20, 3)
    (up,) = _check_outputs(cls, cls().upscale(frames, 4, "bicubic", frames_per_chunk=2))
    assert up.shape == (3, 64, 80, 3)
    ref = F.interpolate(frames.permute(0, 3, 1, 2), scale_factor=4, mode="bicubic").clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(up, ref, atol=1e-6)
    (up2,) = cls().upscale(frames, 2, "lanczos")
    assert up2.shape == (3, 32, 40, 3) and 0 <= up2.min() and up2.max() <= 1
    with pytest.raises(ValueError, match="scale"):
        cls().upscale(frames, 3, "bicubic")


# ------------------------------------------------------------------------ inside a (stub) ComfyUI

@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    """Minimal stand-ins for folder_paths / comfy.model_management / comfy.utils, recording calls."""
    calls = {"progress": [], "interrupt_after": None, "checks": 0}

    class Interrupted(Exception):
        pass

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"vsr_flow": ([str(tmp_path / "mine")], set())}
    fp.get_input_directory = lambda: str(tmp_path / "input")
    fp.get_output_directory = lambda: str(tmp_path / "output")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    fp.get_folder_paths = lambda key: fp.folder_names_and_paths[key][0]

    def get_save_image_path(prefix, out_root, width=0, height=0):
        calls["saved"] = (prefix, width, height)
        return core_save_image_path(prefix, out_root, width, height)  # core's own counting rule
    fp.get_save_image_path = get_save_image_path
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda force=False: None

    def throw():
        calls["checks"] += 1
        if calls["interrupt_after"] is not None and calls["checks"] > calls["interrupt_after"]:
            raise Interrupted("cancelled")
    mm.throw_exception_if_processing_interrupted = throw
    ut = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            calls["progress"].append(("new", total, node_id))

        def update_absolute(self, value, total=None, preview=None):
            calls["progress"].append((value, total))
    ut.ProgressBar = ProgressBar
    comfy_pkg = types.ModuleType("comfy")
    comfy_pkg.model_management, comfy_pkg.utils = mm, ut
    for name, mod in {"folder_paths": fp, "comfy": comfy_pkg, "comfy.model_management": mm, "comfy.utils": ut}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    adapter._comfy.cache_clear()
    yield calls, Interrupted, fp
    adapter._comfy.cache_clear()


def test_adapter_uses_comfyui_when_present(fake_comfy, tmp_path):
    calls, Interrupted, fp = fake_comfy
    assert adapter.has_comfy()
    adapter.register_model_folders()
    assert fp.folder_names_and_paths["vsr_mgld"][0] == [str(tmp_path / "models" / "vsr" / "mgld")]
    # a user's extra_model_paths.yaml entry is kept, our default folder is added after it
    assert fp.folder_names_and_paths["vsr_flow"][0] == [str(tmp_path / "mine"), str(tmp_path / "models/vsr/flow")]
    assert adapter.input_dir() == str(tmp_path / "input")
    cls = MAPPINGS["VSR_VideoUpscaler"]
    cls().upscale(torch.rand(6, 8, 8, 3), 2, "bicubic", frames_per_chunk=2, unique_id="7")
    assert calls["progress"][0] == ("new", 6, "7") and calls["progress"][-1] == (6, 6)


def test_progress_messages_say_frames_steps_and_eta(fake_comfy, monkeypatch):
    sent = []
    server = types.ModuleType("server")

    class PromptServer:
        client_id = "page-1"

        def send_sync(self, event, data, sid=None):
            sent.append((event, data, sid))
    PromptServer.instance = PromptServer()
    server.PromptServer = PromptServer
    monkeypatch.setitem(sys.modules, "server", server)
    monkeypatch.setattr(adapter.Progress, "MIN_INTERVAL", 0.0)
    MAPPINGS["VSR_VideoUpscaler"]().upscale(torch.rand(6, 8, 8, 3), 2, "bicubic", frames_per_chunk=2, unique_id="7")
    assert [d["text"].split(" · ")[0] for e, d, sid in sent] == ["frames 2/6", "frames 4/6", "frames 6/6"]
    assert all(e == "vsr.progress" and d["node"] == "7" and sid == "page-1" for e, d, sid in sent)
    assert "ETA" in sent[0][1]["text"] and "ETA" not in sent[-1][1]["text"]
    bar = adapter.Progress(20 * 8, "9", unit="step", per_step=8)
    bar(9)
    assert sent[-1][1]["text"].startswith("step 2/20 · frame 1/8 · ")


def test_interrupt_stops_within_one_chunk_and_save_leaves_no_file(fake_comfy, tmp_path):
    calls, Interrupted, _ = fake_comfy
    (tmp_path / "output").mkdir()
    calls["interrupt_after"] = 1
    with pytest.raises(Interrupted):
        MAPPINGS["VSR_VideoUpscaler"]().upscale(torch.rand(10, 8, 8, 3), 2, "bicubic", frames_per_chunk=2)
    assert calls["checks"] == 2  # stopped at the second chunk, not at the end
    calls["checks"] = 0
    with pytest.raises(Interrupted):
        MAPPINGS["VSR_SaveVideo"]().save(torch.rand(40, 16, 16, 3), 24.0, "VSR/cut")
    assert calls["saved"] == ("VSR/cut", 16, 16)  # ComfyUI's own prefix/counter logic was used
    assert not any(p.is_file() for p in (tmp_path / "output").rglob("*"))


def test_saves_inside_comfyui_never_overwrite_each_other(fake_comfy, tmp_path):
    """Inside ComfyUI core's counter only sees names like "video_00001_.png", not "video_00001.mp4": four
    saves and a stream to one prefix must still leave five files (they left one, the last, before)."""
    (tmp_path / "output").mkdir(), (tmp_path / "input").mkdir()
    clip = write_video(tmp_path / "input" / "clip.mkv", indexed_frames(3, 8, 8), codec="ffv1", pix_fmt="bgr0")
    saved = []
    for k in range(4):
        out = MAPPINGS["VSR_SaveVideo"]().save(torch.full((2, 8, 8, 3), k / 4), 8.0, "VSR/same")
        saved.append(out["result"][0])
    out = MAPPINGS["VSR_StreamUpscaleVideo"]().run("bicubic", path=str(clip), scale=2, filename_prefix="VSR/same")
    saved.append(out["result"][0])
    # a core SaveImage to the same prefix in between: our counter goes past core's names too
    (tmp_path / "output" / "VSR" / "same_00009_.png").write_bytes(b"png")
    saved.append(MAPPINGS["VSR_SaveVideo"]().save(torch.rand(2, 8, 8, 3), 8.0, "VSR/same")["result"][0])
    names = [os.path.basename(p) for p in saved]
    assert names == [f"same_{i:05d}.mp4" for i in (1, 2, 3, 4, 5, 10)], names
    assert sorted(p.name for p in (tmp_path / "output" / "VSR").iterdir()) == sorted(names + ["same_00009_.png"])
    from vsr_core.io import probe

    assert [probe(p).num_frames for p in saved] == [2, 2, 2, 2, 3, 2]


def test_a_name_taken_while_saving_moves_the_save_to_the_next_counter(fake_comfy, tmp_path, monkeypatch):
    """Two prompts finishing together: the name is re-checked when the file is moved into place."""
    (tmp_path / "output").mkdir()
    from vsr_core.io import video as video_io

    real_close = video_io.VideoWriter.close

    def close_after_another_run(self):  # another run takes our name just before we finish
        self.path.write_bytes(b"the other run's video")
        return real_close(self)
    monkeypatch.setattr(video_io.VideoWriter, "close", close_after_another_run)
    (path,) = MAPPINGS["VSR_SaveVideo"]().save(torch.rand(2, 8, 8, 3), 8.0, "VSR/race")["result"]
    assert path.endswith("race_00002.mp4")
    assert (tmp_path / "output" / "VSR" / "race_00001.mp4").read_bytes() == b"the other run's video"


IMPORT_CHECK = """
import sys, importlib.util
sys.path = [p for p in sys.path if p not in ('', {repo!r})]
spec = importlib.util.spec_from_file_location('somepack', {init!r}, submodule_search_locations=[{repo!r}])
m = importlib.util.module_from_spec(spec); sys.modules['somepack'] = m; spec.loader.exec_module(m)
import torch
assert not torch.cuda.is_initialized(), 'import touched the GPU'
heavy = [k for k in ('diffusers', 'cv2', 'comfy') if k in sys.modules]
print(sorted(m.NODE_CLASS_MAPPINGS), heavy)
"""


def test_pack_imports_in_a_clean_interpreter_without_comfyui(tmp_path):
    code = IMPORT_CHECK.format(repo=str(REPO), init=str(REPO / "__init__.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "VSR_LoadVideoFrames" in out.stdout
    assert out.stdout.strip().endswith("[]"), "importing the pack must not import heavy optional modules"


WITH_COMFY = """
import sys, importlib.util
sys.path.insert(0, {comfy!r})
from comfy.cli_args import args
args.cpu = True  # what `main.py --cpu` sets before anything imports comfy.model_management
import folder_paths
spec = importlib.util.spec_from_file_location('somepack', {init!r}, submodule_search_locations=[{repo!r}])
m = importlib.util.module_from_spec(spec); sys.modules['somepack'] = m; spec.loader.exec_module(m)
import importlib
adapter = importlib.import_module('somepack.nodes.comfy_adapter')
assert adapter.has_comfy()
assert folder_paths.get_folder_paths('vsr_flow')[-1].endswith('vsr/flow')
import nodes  # ComfyUI's own nodes.py must still be the top-level `nodes`
assert hasattr(nodes, 'NODE_CLASS_MAPPINGS') and 'KSampler' in nodes.NODE_CLASS_MAPPINGS
print(sorted(m.NODE_CLASS_MAPPINGS))
"""


def test_pack_imports_with_a_real_comfyui_on_sys_path(tmp_path):
    """Needs a ComfyUI checkout: VSR_COMFYUI_DIR (and VSR_COMFYUI_PYTHON, a python with its requirements)."""
    import os

    comfy_dir = os.environ.get("VSR_COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set VSR_COMFYUI_DIR to a ComfyUI checkout (and VSR_COMFYUI_PYTHON) to run this check")
    python = os.environ.get("VSR_COMFYUI_PYTHON", sys.executable)
    code = WITH_COMFY.format(comfy=comfy_dir, repo=str(REPO), init=str(REPO / "__init__.py"))
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "VSR_FlowGuidance" in out.stdout


REAL_SAVES = """
import os, sys, importlib.util
sys.path.insert(0, {comfy!r})
from comfy.cli_args import args
args.cpu = True
import folder_paths
folder_paths.set_output_directory({out!r})
spec = importlib.util.spec_from_file_location('somepack', {init!r}, submodule_search_locations=[{repo!r}])
m = importlib.util.module_from_spec(spec); sys.modules['somepack'] = m; spec.loader.exec_module(m)
import torch
save = m.NODE_CLASS_MAPPINGS['VSR_SaveVideo']()
paths = [save.save(torch.full((2, 8, 8, 3), k / 3), 8.0, 'VSR/real')['result'][0] for k in range(3)]
stream = m.NODE_CLASS_MAPPINGS['VSR_StreamUpscaleVideo']()
paths.append(stream.run('bicubic', path={clip!r}, scale=2, filename_prefix='VSR/real')['result'][0])
print(sorted(os.listdir(os.path.join({out!r}, 'VSR'))), [os.path.basename(p) for p in paths])
"""


def test_saves_with_the_real_comfyui_folder_paths_never_overwrite(tmp_path):
    """Needs a ComfyUI checkout: VSR_COMFYUI_DIR (and VSR_COMFYUI_PYTHON, a python with its requirements)."""
    comfy_dir = os.environ.get("VSR_COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set VSR_COMFYUI_DIR to a ComfyUI checkout (and VSR_COMFYUI_PYTHON) to run this check")
    python = os.environ.get("VSR_COMFYUI_PYTHON", sys.executable)
    out = tmp_path / "output"
    out.mkdir()
    clip = write_video(out / "clip.mkv", indexed_frames(3, 8, 8), codec="ffv1", pix_fmt="bgr0")
    code = REAL_SAVES.format(comfy=comfy_dir, repo=str(REPO), init=str(REPO / "__init__.py"), out=str(out),
                             clip=str(clip))
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = [f"real_{i:05d}.mp4" for i in (1, 2, 3, 4)]
    assert done.stdout.strip().splitlines()[-1] == f"{names} {names}"  # four files, none replaced


def test_root_init_imported_as_a_plain_module_registers_nothing_and_does_not_fail():
    """pytest imports the checkout's __init__.py as a top-level module when the folder name is not a
    valid package name (a CI clone in /tmp/tmp.X1y2); that must not break collection."""
    spec = importlib.util.spec_from_file_location("vsr_plain_checkout", REPO / "__init__.py",
                                                  submodule_search_locations=None)  # a module, not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {} and module.WEB_DIRECTORY == "./js"
