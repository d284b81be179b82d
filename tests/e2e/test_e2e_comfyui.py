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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from media import indexed_frames, write_video
    from smoke_models import write_smoke_models

    root = tmp_path_factory.mktemp("comfy")
    for d in ("input", "output", "temp", "models", "packs"):
        (root / d).mkdir()
    (root / "packs" / "ComfyUI-DiffusionVSR").symlink_to(REPO, target_is_directory=True)
    write_smoke_models(root / "models")
    kinds = ("stablevsr", "upscale_a_video", "mgld", "flow", "upscaler", "satec")
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
