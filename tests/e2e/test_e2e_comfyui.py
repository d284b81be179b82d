"""End to end in a real ComfyUI and a real browser: every shipped workflow, loaded in the frontend,
converted by its own graphToPrompt, queued, run on the smoke model set, output checked.

Runs when a ComfyUI checkout is given (never committed here):

    VSR_COMFYUI_DIR=/path/to/ComfyUI VSR_COMFYUI_PYTHON=/path/to/its/venv/bin/python python -m pytest tests/e2e

``VSR_COMFYUI_PYTHON`` needs ComfyUI's requirements and ``playwright`` (pip install playwright; no browser
download: Debian's ``chromium`` is used). Skipped, with the reason, when any of it is missing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
COMFY_DIR = os.environ.get("VSR_COMFYUI_DIR")
COMFY_PY = os.environ.get("VSR_COMFYUI_PYTHON")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _why_skip() -> str | None:
    if not COMFY_DIR or not (Path(COMFY_DIR) / "main.py").is_file():
        return "set VSR_COMFYUI_DIR to a ComfyUI checkout (its main.py) to run the end-to-end tests"
    if not COMFY_PY or not Path(COMFY_PY).is_file():
        return "set VSR_COMFYUI_PYTHON to the python of ComfyUI's environment"
    if not CHROMIUM:
        return "Chromium not found (apt install chromium)"
    probe = subprocess.run([COMFY_PY, "-c", "import playwright.sync_api"], capture_output=True)
    if probe.returncode:
        return f"playwright is not installed in {COMFY_PY} (pip install playwright)"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_comfyui(root: Path, models: bool):
    """A ComfyUI server on a free port with the pack, input/output/temp folders under ``root`` and (``models``)
    the smoke model set; yields (url, root) and stops it afterwards."""
    from media import indexed_frames, write_video
    from smoke_models import write_smoke_models

    for d in ("input", "output", "temp", "models", "packs"):
        (root / d).mkdir()
    (root / "packs" / "ComfyUI-DiffusionVSR").symlink_to(REPO, target_is_directory=True)
    if models:
        write_smoke_models(root / "models")
    kinds = ("stablevsr", "sd_x4", "upscale_a_video", "mgld", "flow", "upscaler", "satec")
    yaml = ["diffusion_vsr_e2e:", f"    custom_nodes: {root / 'packs'}", f"    checkpoints: {root / 'models' / 'checkpoints'}"]
    yaml += [f"    vsr_{k}: {root / 'models' / 'vsr' / k}" for k in kinds]
    (root / "extra.yaml").write_text("\n".join(yaml) + "\n")
    frames = indexed_frames(6, 32, 48)
    frames[..., 0] = np.linspace(0, 255, frames.shape[2]).astype(np.uint8)  # texture for the flow
    write_video(root / "input" / "input.mp4", frames, fps=12)
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [COMFY_PY, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--extra-model-paths-config", str(root / "extra.yaml"), "--database-url", "sqlite:///:memory:",
         "--input-directory", str(root / "input"), "--output-directory", str(root / "output"),
         "--temp-directory", str(root / "temp")],
        cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(url + "/object_info/VSR_VideoUpscaler", timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.time() - t0 > 300:
                proc.kill()
                pytest.fail("ComfyUI did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(2)
    try:
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _start_comfyui(tmp_path_factory.mktemp("comfy"), models=True)


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """A new user's ComfyUI: the pack installed, no model files."""
    yield from _start_comfyui(tmp_path_factory.mktemp("comfy_bare"), models=False)


def test_pack_imports_without_failure(server):
    url, root = server
    text = (root / "server.log").read_text()
    assert "ComfyUI-DiffusionVSR" in text and "(IMPORT FAILED)" not in text
    info = json.load(urllib.request.urlopen(url + "/object_info"))
    assert {"VSR_LoadVideoFrames", "VSR_VideoUpscaler", "VSR_VideoMetrics", "VSR_SaveVideo", "VSR_StreamUpscaleVideo"} <= set(info)


def _browser(url: str, workflow: Path, sets: list[str], *extra: str) -> dict:
    cmd = [COMFY_PY, str(REPO / "tests" / "e2e" / "run_browser.py"), "--url", url, "--workflow", str(workflow),
           "--timeout", "600", "--chromium", CHROMIUM, *extra]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"run_browser.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


@pytest.mark.parametrize("renderer", ["classic", "vue"])
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_runs_in_the_browser(server, workflow, renderer):
    from smoke_models import FAST

    from vsr_core.io import probe

    url, root = server
    sets = ["VSR_LoadVideoFrames.video=input.mp4", "VSR_LoadVideoFrames.frame_load_cap=5"]
    for node_type, widgets in FAST.items():
        sets += [f"{node_type}.{k}={json.dumps(v)}" for k, v in widgets.items()]
    if renderer == "vue":  # a different seed: every node runs again instead of coming from the cache
        sets += ["VSR_SaveVideo.filename_prefix=VSR/vue", "VSR_LoadVideoFrames.resize=multiple_of_8"]
    result = _browser(url, workflow, sets, *(["--vue"] if renderer == "vue" else []))
    assert result["queued"]["status"] == 200, result["queued"]
    assert result["status"] == "success", result.get("messages")
    assert result["pack_console_errors"] == []
    # model hints: every directory is a real model folder, and only the files the smoke set lacks (the
    # optional RAFT weights) are reported missing
    dialogs = "\n".join(result["dialogs"])
    assert "Invalid directory" not in dialogs
    hinted = [m["name"] for m in json.loads(workflow.read_text()).get("models", [])]
    for name in hinted:
        assert (name in dialogs) == ("raft" in name), (name, dialogs)
    # progress on the nodes that ran: frames done / total (or step and frame for the samplers) and time
    assert result["progress_text"], "no progress line was shown on the running nodes"
    # (a sampler's line ends as its estimate and outcome: "est. peak ..." before, "took 2.5 s ..." after)
    assert all(re.match(r"(frames \d+/\d+|steps \d+/\d+|step \d+/\d+ · frame \d+/\d+) · |est\. peak |took \d", t)
               for t in result["progress_text"]), result["progress_text"]
    assert any(t.startswith("frames 5/5") for t in result["progress_text"])
    saves = [o for o in result["outputs"].values() if o.get("animated")]
    assert saves, result["outputs"]
    item = saves[0]["images"][0]
    info = probe(root / "output" / item["subfolder"] / item["filename"])
    assert (info.width, info.height, info.num_frames) == (192, 128, 5)
    # before the run the loader previews the 5 selected frames; after it the save node plays the result
    # and its compare slider shows input/output pairs
    (preview,) = result["before_run"]["preview"]
    assert preview["shown"] and preview["width"] > 0, preview
    assert preview["caption"].startswith("48×32 · 5/6 frames @ 12 fps · source 0…4"), preview
    assert any(item["filename"] in src for src in result["after_run"]["videos"]), result["after_run"]
    (compare,) = result["after_run"]["compare"]
    assert compare["shown"] and compare["a"] == compare["b"] == 192 and compare["labels"] == ["input", "output"]
    # every text the pack draws on a node is whole in its drawn box (the classic canvas clipped the progress
    # line to ~3 px, hid the loader's caption and cut the metrics' last line)
    _assert_boxes_hold_their_text(result["before_run"]["boxes"], {"vsr-preview-caption"})
    _assert_boxes_hold_their_text(result["after_run"]["boxes"], {"vsr-preview-caption", "vsr-progress",
                                                                 "vsr-compare-caption"})
    (metrics,) = result["metrics_boxes"]
    assert metrics["text"].endswith("warping error of the reference: 2.7183")
    _assert_boxes_hold_their_text([metrics], {"vsr-metrics"})


def _assert_boxes_hold_their_text(boxes: list[dict], kinds: set[str]) -> None:
    assert kinds <= {k for b in boxes for k in b["kind"].split()}, (kinds, boxes)
    for b in boxes:
        assert b["own"] and b["height"] >= 12, f"{b['kind']} box is {b['height']} px for {b['needed']} px: {b}"
        assert b["seen"] > 0.99, f"{b['kind']} is cut off on the canvas: {b}"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_a_new_user_opens_each_workflow_on_a_clip_and_sees_every_missing_file(bare_server, workflow):
    """No weights installed: the missing-models dialog lists every file the workflow needs (one entry each),
    and the loader already previews the example clip the pack put into the input folder (no 'not found')."""
    url, root = bare_server
    result = _browser(url, workflow, [], "--no-queue")
    assert (root / "input" / "vsr_example_coffee.mp4").is_file()
    (preview,) = result["before_run"]["preview"]
    assert preview["shown"] and preview["width"] > 0 and "⚠" not in preview["caption"], preview
    hinted = json.loads(workflow.read_text()).get("models", [])
    dialog = "\n".join(result["dialogs_on_load"])
    for model in hinted:
        assert f"{model['directory']} / {model['name']}" in dialog, (model, dialog)
    assert "Invalid directory" not in dialog


def _object_info(url: str, node: str) -> dict:
    return json.load(urllib.request.urlopen(f"{url}/object_info/{node}"))[node]


def _api_prompt(url: str, nodes: dict) -> str:
    """Queue an API prompt of ``{id: (class_type, inputs)}`` with every other widget at its default; the id."""
    prompt = {}
    for nid, (cls, inputs) in nodes.items():
        spec = _object_info(url, cls)["input"]["required"]
        full = {k: v[1]["default"] for k, v in spec.items() if len(v) > 1 and "default" in v[1]}
        full.update({k: v[0][0] for k, v in spec.items() if isinstance(v[0], list) and k not in full and v[0]})
        prompt[nid] = {"class_type": cls, "inputs": {**full, **inputs}}
    req = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["prompt_id"]


def _wait(url: str, pid: str, timeout: float = 300) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = json.load(urllib.request.urlopen(f"{url}/history/{pid}"))
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            return hist[pid]
        time.sleep(1)
    pytest.fail(f"prompt {pid} did not finish")


def test_runs_to_one_prefix_never_overwrite_each_other(server):
    """Save Video twice and Stream Upscale once to one prefix, in the real ComfyUI (core's folder_paths
    counter): three files (before, one: each run replaced the last)."""
    url, root = server
    load = ("VSR_LoadVideoFrames", {"video": "input.mp4", "frame_load_cap": 2})
    for cap in (2, 3):  # different inputs: the save node runs again
        save = ("VSR_SaveVideo", {"images": ["1", 0], "fps": 12.0, "filename_prefix": "VSR/twice"})
        entry = _wait(url, _api_prompt(url, {"1": (load[0], {**load[1], "frame_load_cap": cap}), "2": save}))
        assert entry["status"]["status_str"] == "success", entry["status"]
    entry = _wait(url, _api_prompt(url, {"1": ("VSR_StreamUpscaleVideo", {
        "method": "bicubic", "video": "input.mp4", "scale": 2, "filename_prefix": "VSR/twice"})}))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert sorted(p.name for p in (root / "output" / "VSR").glob("twice_*")) == [
        "twice_00001.mp4", "twice_00002.mp4", "twice_00003.mp4"]


def test_the_server_reveals_no_paths_outside_its_folders(server, tmp_path):
    """A LAN client asking for a preview of a link to a private file, or of a path under ~, learns neither
    the server's folders nor the link's target, and the node's file list does not offer the link."""
    url, root = server
    secret = tmp_path / "private_area" / "secret.mp4"
    secret.parent.mkdir()
    shutil.copy(root / "input" / "input.mp4", secret)
    link = root / "input" / "innocent.mp4"
    link.symlink_to(secret)
    try:
        assert "innocent.mp4" not in _object_info(url, "VSR_LoadVideoFrames")["input"]["required"]["video"][0]
        for query in ("video=innocent.mp4", "path=~/secret.mp4", f"path={secret}", "video=gone.mp4"):
            try:
                urllib.request.urlopen(f"{url}/vsr/preview?{query}")
                pytest.fail(f"{query} was served")
            except urllib.error.HTTPError as e:
                assert e.code == 400
                error = json.loads(e.read())["error"]
            for private in (str(root), str(tmp_path), os.path.expanduser("~") + "/"):
                assert private not in error.replace(str(secret), ""), (query, error)
        # the stream node refuses the link when the prompt is queued, once, on `path`
        req = urllib.request.Request(url + "/prompt", headers={"Content-Type": "application/json"}, data=json.dumps(
            {"prompt": {"1": {"class_type": "VSR_StreamUpscaleVideo", "inputs": {
                **{k: v[1]["default"] for k, v in _object_info(url, "VSR_StreamUpscaleVideo")["input"]["required"]
                   .items() if len(v) > 1 and "default" in v[1]},
                "video": "input.mp4", "path": "innocent.mp4", "method": "bicubic"}}}}).encode())
        try:
            urllib.request.urlopen(req)
            pytest.fail("the prompt was accepted")
        except urllib.error.HTTPError as e:
            errors = json.loads(e.read())["node_errors"]["1"]["errors"]
        assert [e["extra_info"]["input_name"] for e in errors] == ["path"], errors
        assert "innocent.mp4 [input] links to a file outside" in errors[0]["details"]
        assert str(secret) not in errors[0]["details"] and str(root) not in errors[0]["details"]
    finally:
        link.unlink()


def test_loader_upload_button_and_preview_follow_the_selection(server, tmp_path):
    from media import indexed_frames, write_video

    url, root = server
    clip = tmp_path / "uploaded_clip.mp4"
    write_video(clip, indexed_frames(9, 32, 48), fps=18)
    sets = ["VSR_LoadVideoFrames.skip_first_frames=1", "VSR_LoadVideoFrames.select_every_nth=2",
            "VSR_LoadVideoFrames.frame_load_cap=0"]
    result = _browser(url, REPO / "workflows" / "QuickStart.json", sets, "--no-queue", "--upload", str(clip))
    assert (root / "input" / clip.name).is_file()  # the button uploaded it into ComfyUI's input folder
    (preview,) = result["before_run"]["preview"]
    assert preview["caption"].startswith("48×32 · 4/9 frames @ 9 fps · source 1…7"), preview
    assert preview["duration"] == pytest.approx(4 / 9, abs=0.06)
    assert result["pack_console_errors"] == []


def test_a_temporal_chain_its_sampler_cannot_run_is_refused_when_queued(server):
    """Flow-Warped Conditioning chained into the x4 per-frame sampler: the real server refuses the prompt
    before any node runs, with the reason on the sampler's temporal input."""
    url, root = server
    info = _object_info(url, "VSR_X4PerFrameSampler")
    assert info["input"]["optional"]["temporal"][0] == "VSR_TEMPORAL"
    defaults = lambda cls: {k: v[1]["default"] for k, v in _object_info(url, cls)["input"]["required"].items()  # noqa
                            if len(v) > 1 and "default" in v[1]}
    prompt = {
        "1": {"class_type": "VSR_LoadVideoFrames", "inputs": {**defaults("VSR_LoadVideoFrames"), "video": "input.mp4"}},
        "2": {"class_type": "VSR_LoadDiffusionModel", "inputs": {"model": "sd_x4/stable-diffusion-x4-upscaler",
                                                                 "dtype": "auto", "offload": "auto"}},
        "3": {"class_type": "VSR_LatentEncoderLR", "inputs": {"frames": ["1", 0], "model": ["2", 0], "noise_level": 20}},
        "4": {"class_type": "VSR_TemporalFlowConditioning", "inputs": {"scale": 1.0, "bidirectional": True}},
        "5": {"class_type": "VSR_X4PerFrameSampler", "inputs": {**defaults("VSR_X4PerFrameSampler"), "model": ["2", 0],
                                                                "lr": ["3", 0], "temporal": ["4", 0]}},
        "6": {"class_type": "VSR_TemporalVAEDecode", "inputs": {**defaults("VSR_TemporalVAEDecode"), "model": ["2", 0],
                                                                "latent": ["5", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    req = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req)
        pytest.fail("the prompt was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        errors = json.loads(e.read())["node_errors"]["5"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["temporal"], errors
    assert "only the StableVSR sampler runs" in errors[0]["details"]
