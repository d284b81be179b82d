"""Shipped workflows: valid against the node definitions, up to date, and runnable on tiny models."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from pack import comfy_folders, load_pack
from smoke_models import FAST, write_smoke_models
from workflow_tools import EXAMPLE_VIDEO, GRAPHS, build, run_api, to_api, validate

PACK = load_pack()
MAPPINGS = PACK.NODE_CLASS_MAPPINGS
WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))


def test_every_method_workflow_is_shipped():
    assert {p.stem for p in WORKFLOWS} >= set(GRAPHS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid_and_up_to_date(path):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4
    assert validate(wf, MAPPINGS) == []
    assert wf == json.loads(json.dumps(build(GRAPHS[path.stem], MAPPINGS))), \
        "regenerate with: python tests/workflow_tools.py"
    for model in wf.get("models", []):
        # the frontend's missing-models check looks the directory up among the model folder keys and
        # the name among that folder's files (relative paths): both must be real
        assert model["url"].startswith("https://")
        assert model["directory"] == "checkpoints" or model["directory"] in {
            f"vsr_{k}" for k in ("flow", "stablevsr", "upscale_a_video", "mgld", "sd_x4", "upscaler", "satec")}
        assert " " not in model["name"] and model["name"].rsplit(".", 1)[-1] in ("safetensors", "ckpt", "pth", "bin")
        # a file with a download of its own links to that file (not a repository or model page)
        if model["url"].startswith("https://huggingface.co/"):
            assert "/resolve/main/" in model["url"] and model["url"].endswith("/" + model["name"].rsplit("/")[-1])
        assert not model["url"].startswith("https://github.com/"), model
    # the dialog shows one entry per URL: every file needs its own
    urls = [m["url"] for m in wf.get("models", [])]
    assert len(set(urls)) == len(urls), urls
    # the loader opens on the clip the pack puts into ComfyUI's input folder, which a new user has
    loaders = [n for n in wf["nodes"] if n["type"] == "VSR_LoadVideoFrames"]
    assert loaders and all(n["widgets_values"][0] == EXAMPLE_VIDEO for n in loaders)


def test_validator_catches_broken_workflows():
    wf = build(GRAPHS["StableVSR"], MAPPINGS)
    sampler = next(n for n in wf["nodes"] if n["type"] == "VSR_StableVSRSampler")
    bad = copy.deepcopy(wf)
    next(n for n in bad["nodes"] if n["id"] == sampler["id"])["widgets_values"].pop(3)  # the seed control
    assert any("widget values" in e for e in validate(bad, MAPPINGS))
    bad = copy.deepcopy(wf)
    next(n for n in bad["nodes"] if n["id"] == sampler["id"])["widgets_values"][0] = 0  # steps below min
    assert any("steps=0 < min" in e for e in validate(bad, MAPPINGS))
    bad = copy.deepcopy(wf)
    link = next(l for l in bad["links"] if l[5] == "VSR_FLOW")
    link[1] = next(n["id"] for n in bad["nodes"] if n["type"] == "VSR_LoadVideoFrames")
    assert any("wants VSR_FLOW" in e for e in validate(bad, MAPPINGS))
    bad = copy.deepcopy(wf)
    bad["nodes"][0]["type"] = "VSR_DoesNotExist"
    assert any("unknown node type" in e for e in validate(bad, MAPPINGS))


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_workflow_runs_on_tiny_models(tmp_path, name):
    """The shipped workflow, converted to an API prompt, runs on tiny random weights in the official
    layouts (fewer steps), and writes a video of the expected size."""

    from media import indexed_frames, write_video

    from vsr_core.io import probe

    kinds = ("input", "output", "temp", "models")
    for kind in kinds:
        (tmp_path / kind).mkdir()
    with comfy_folders(**{k: tmp_path / k for k in kinds}):
        write_smoke_models(tmp_path / "models", [name])
        frames = indexed_frames(5, 16, 24)
        frames[..., 0] = torch.linspace(0, 255, 24).to(torch.uint8).numpy()  # some texture for the flow
        write_video(tmp_path / "input" / EXAMPLE_VIDEO, frames, fps=12)
        prompt = to_api(json.loads((WORKFLOWS[0].parent / f"{name}.json").read_text()), MAPPINGS)
        for node in prompt.values():
            node["inputs"].update(FAST.get(node["class_type"], {}))
        out = run_api(prompt, MAPPINGS)
    saved = next(v for k, v in out.items() if prompt[k]["class_type"] == "VSR_SaveVideo")[0]
    info = probe(saved)
    assert (info.width, info.height, info.num_frames) == (96, 64, 5) and info.fps == pytest.approx(12)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_a_thumbnail(path):
    """ComfyUI shows workflows/<name>.jpg next to the template (rendered from the real frontend by
    tests/e2e/thumbnails.py)."""
    import cv2

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"missing {thumb.name}: run tests/e2e/thumbnails.py against a ComfyUI with the pack"
    img = cv2.imread(str(thumb))
    assert img is not None and img.shape[1] >= 512 and img.std() > 5  # a picture, not a blank


def test_the_example_clip_reaches_the_input_folder_once_and_never_replaces_a_file(tmp_path, monkeypatch):
    """Inside ComfyUI the pack copies its bundled clip into the input folder as the name the shipped
    workflows use; a file of that name (the user's own) is never replaced."""
    import importlib
    import sys
    import types

    adapter = importlib.import_module(f"{PACK.__name__}.nodes.comfy_adapter")
    assert adapter.EXAMPLE_VIDEO == EXAMPLE_VIDEO
    fp = types.ModuleType("folder_paths")
    fp.get_input_directory = lambda: str(tmp_path / "input")
    fp.get_output_directory = fp.get_temp_directory = lambda: str(tmp_path / "output")
    for name, mod in {"folder_paths": fp, "comfy": types.ModuleType("comfy"),
                      "comfy.model_management": types.ModuleType("mm"), "comfy.utils": types.ModuleType("ut")}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    adapter._comfy.cache_clear()
    try:
        bundled = adapter.PACK_ROOT / "vsr_core" / "assets" / "demo_coffee_lr.mp4"
        path = adapter.provide_example_input(bundled)
        assert path == tmp_path / "input" / EXAMPLE_VIDEO and path.read_bytes() == bundled.read_bytes()
        assert [p.name for p in (tmp_path / "input").iterdir()] == [EXAMPLE_VIDEO]
        path.write_bytes(b"the user's own file of that name")
        assert adapter.provide_example_input(bundled) == path
        assert path.read_bytes() == b"the user's own file of that name"
    finally:
        adapter._comfy.cache_clear()
