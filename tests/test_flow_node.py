"""VSR_FlowGuidance: DIS and RAFT engines through the node, outputs a user sees."""
from __future__ import annotations

import pytest
import torch
from pack import comfy_folders, load_pack

from vsr_core.flow import DIS_PRESETS, VideoFlow
from vsr_core.synthetic import render_views, smooth_texture

PACK = load_pack()
Node = PACK.NODE_CLASS_MAPPINGS["VSR_FlowGuidance"]


def test_dis_preset_ids_are_opencv_constants():
    import cv2

    assert DIS_PRESETS == {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                           "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@pytest.fixture(scope="module")
def pan_clip():
    """6 frames panning right by 2 px per frame over a texture: the true forward flow is dx = -2."""
    tex = smooth_texture(120, 160, seed=3)
    params = torch.zeros(6, 4).numpy()
    params[:, 0] = [2.0 * i for i in range(6)]
    params[:, 2] = 1.0
    return torch.from_numpy(render_views(tex, (64, 96), params)).float() / 255


@pytest.fixture
def models(tmp_path):
    with comfy_folders(models=tmp_path / "models"):
        yield tmp_path / "models"


def test_dis_node_outputs(pan_clip):
    flow, image, mask = Node().estimate(pan_clip, pairs_per_chunk=2)
    assert isinstance(flow, VideoFlow) and flow.num_frames == 6 and flow.grid_size == (64, 96)
    assert flow.has_occlusion and flow.engine.startswith("dis")
    inner = flow.forward[:, :, 8:-8, 8:-8]
    # camera moves right by 2 px/frame, so content moves left: flow(i -> i+1) is (-2, 0)
    assert inner[:, 0].mean().item() == pytest.approx(-2.0, abs=0.1)
    assert inner[:, 1].abs().mean().item() < 0.1
    assert flow.backward[:, 0, 8:-8, 8:-8].mean().item() == pytest.approx(2.0, abs=0.1)
    assert image.shape == (5, 64, 96, 3) and 0 <= image.min() and image.max() <= 1
    assert mask.shape == (5, 64, 96) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[:, 8:-8, 8:-8].mean() < 0.05  # a pure pan is occlusion-free inside
    assert mask[:, :, :2].mean() > 0.5  # content at the left border leaves the view in the next frame


def test_compute_resolution_keeps_outputs_at_frame_size(pan_clip):
    flow, image, mask = Node().estimate(pan_clip, compute_resolution="1/2")
    assert flow.grid_size == (32, 48) and flow.frame_size == (64, 96)
    assert flow.forward[:, 0, 4:-4, 4:-4].mean().item() == pytest.approx(-1.0, abs=0.1)  # grid pixels
    assert image.shape == (5, 64, 96, 3) and mask.shape == (5, 64, 96)


def test_raft_from_the_models_folder(pan_clip, models):
    from vsr_core.loaders.raft import write_raft_checkpoint

    write_raft_checkpoint(models / "vsr" / "flow" / "raft-tiny.pth", layout="princeton")
    write_raft_checkpoint(models / "vsr" / "flow" / "raft-tiny-tv.safetensors", layout="torchvision")
    choices = Node.INPUT_TYPES()["required"]["engine"][0]
    assert choices[1:] == ["raft-tiny-tv.safetensors", "raft-tiny.pth"]
    for name in choices[1:]:
        for convention in ("stablevsr", "uav", "mgld"):
            flow, image, mask = Node().estimate(pan_clip[:3], engine=name, raft_convention=convention,
                                                raft_iterations=2)
            assert flow.forward.shape == (2, 2, 64, 96) and torch.isfinite(flow.forward).all()
            assert image.shape == (2, 64, 96, 3)


def test_missing_raft_file_says_where_it_goes(pan_clip, models):
    with pytest.raises(FileNotFoundError, match="models/vsr/flow"):
        Node().estimate(pan_clip, engine="raft-things.pth")


def test_a_single_frame_is_refused(pan_clip):
    with pytest.raises(ValueError, match="at least 2 frames"):
        Node().estimate(pan_clip[:1])
