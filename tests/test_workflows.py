"""Shipped workflows: valid against the node definitions, up to date, and runnable on tiny models."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from pack import comfy_folders, load_pack
from workflow_tools import GRAPHS, build, run_api, to_api, validate

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
        assert model["url"].startswith("https://") and model["directory"].startswith("vsr/")


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


def _tiny_models(name: str, models: Path) -> None:
    from vsr_core.loaders.tiny import write_tiny_stablevsr
    from vsr_core.loaders.uav import write_tiny_uav

    if name == "StableVSR":
        write_tiny_stablevsr(models / "vsr" / "stablevsr" / "StableVSR")
    elif name == "UpscaleAVideo":
        write_tiny_uav(models / "vsr" / "upscale_a_video" / "upscale_a_video")
    elif name == "MGLD":
        from vsr_core.loaders.mgld import write_tiny_mgld

        write_tiny_mgld(models / "vsr" / "mgld" / "MGLD")


FAST = {"VSR_StableVSRSampler": {"steps": 2}, "VSR_UpscaleAVideoSampler": {"steps": 2, "propagation_steps": "1"},
        "VSR_MGLDSampler": {"steps": 2, "min_side": 0}}


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
        _tiny_models(name, tmp_path / "models")
        frames = indexed_frames(5, 16, 24)
        frames[..., 0] = torch.linspace(0, 255, 24).to(torch.uint8).numpy()  # some texture for the flow
        write_video(tmp_path / "input" / "input.mp4", frames, fps=12)
        prompt = to_api(json.loads((WORKFLOWS[0].parent / f"{name}.json").read_text()), MAPPINGS)
        for node in prompt.values():
            node["inputs"].update(FAST.get(node["class_type"], {}))
        out = run_api(prompt, MAPPINGS)
    saved = next(v for k, v in out.items() if prompt[k]["class_type"] == "VSR_SaveVideo")[0]
    info = probe(saved)
    assert (info.width, info.height, info.num_frames) == (96, 64, 5) and info.fps == pytest.approx(12)
