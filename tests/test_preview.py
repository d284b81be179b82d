"""What the frontend shows on the nodes: the loader's preview of the selected frames (served by the
pack's /vsr/preview route) and the compare-slider frame pairs of Save Video and Video Metrics."""
from __future__ import annotations

import os

import importlib
import sys
import types

import cv2
import pytest
import torch
from media import frame_index, indexed_frames, write_video
from pack import load_pack

from vsr_core.io import FrameSelection, iter_frames, probe
from vsr_core.io.preview import compare_stills, preview_size, selection_preview

PACK = load_pack()
MAPPINGS = PACK.NODE_CLASS_MAPPINGS
adapter = importlib.import_module(f"{PACK.__name__}.nodes.comfy_adapter")
video_nodes = importlib.import_module(f"{PACK.__name__}.nodes.video")


def test_preview_size_fits_and_keeps_even_sides():
    assert preview_size(1920, 1080) == (270, 480)
    assert preview_size(1080, 1920) == (480, 270)
    assert preview_size(320, 180) is None  # small and even: the source size
    h, w = preview_size(321, 181)
    assert h % 2 == 0 and w % 2 == 0 and abs(w / h - 321 / 181) < 0.02


@pytest.mark.parametrize("skip,nth,cap", [(0, 1, 0), (3, 2, 0), (1, 3, 4), (5, 1, 2)])
def test_preview_shows_exactly_the_selected_frames(tmp_path, skip, nth, cap):
    src = tmp_path / "clip.mkv"
    write_video(src, indexed_frames(20, 32, 48), fps=20, codec="ffv1", pix_fmt="bgr0")
    sel = FrameSelection(skip_first=skip, nth=nth, cap=cap)
    path, info = selection_preview(src, sel, tmp_path / "cache")
    expected = list(sel.indices(20))
    shown = torch.cat(list(iter_frames(path)))
    assert [frame_index(f) for f in shown.numpy()] == expected
    assert info["selected"] == info["shown"] == len(expected)
    assert (info["first"], info["last"]) == (expected[0], expected[-1])
    assert info["fps"] == pytest.approx(20 / nth) and probe(path).fps == pytest.approx(20 / nth, rel=0.01)
    assert (info["width"], info["height"], info["source_frames"]) == (48, 32, 20)


def test_preview_is_small_capped_cached_and_follows_the_file(tmp_path):
    src = tmp_path / "big.mp4"
    write_video(src, indexed_frames(12, 720, 1280), fps=24)
    path, info = selection_preview(src, FrameSelection(), tmp_path / "cache", max_frames=5)
    meta = probe(path)
    assert (meta.width, meta.height, meta.num_frames) == (480, 270, 5)
    assert info["selected"] == 12 and info["shown"] == 5 and info["last"] == 4
    mtime = path.stat().st_mtime_ns
    again, _ = selection_preview(src, FrameSelection(), tmp_path / "cache", max_frames=5)
    assert again == path and again.stat().st_mtime_ns >= mtime  # served from the cache
    write_video(src, indexed_frames(3, 720, 1280), fps=24)  # the user replaced the file
    _, info = selection_preview(src, FrameSelection(), tmp_path / "cache", max_frames=5)
    assert info["selected"] == 3


def test_preview_cache_is_bounded(tmp_path):
    src = tmp_path / "clip.mkv"
    write_video(src, indexed_frames(6), fps=10, codec="ffv1", pix_fmt="bgr0")
    for cap in range(1, 6):
        selection_preview(src, FrameSelection(cap=cap), tmp_path / "cache")
    from vsr_core.io import preview

    preview._trim_cache(tmp_path / "cache", keep=2)
    assert len(list((tmp_path / "cache").glob("*.mp4"))) == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_preview_request_checks_its_input(folders, tmp_path_factory):
    write_video(folders / "input" / "clip.mkv", indexed_frames(10), fps=10, codec="ffv1", pix_fmt="bgr0")
    path, info = video_nodes.preview_selection({"video": "clip.mkv", "skip": "2", "nth": "3", "cap": "0"})
    assert info["selected"] == 3 and path.is_relative_to(folders / "temp" / "vsr_preview")
    with pytest.raises(ValueError, match="no frames selected"):
        video_nodes.preview_selection({"video": "clip.mkv", "skip": "10"})
    with pytest.raises(ValueError, match="select_every_nth must be >= 1"):
        video_nodes.preview_selection({"video": "clip.mkv", "nth": "0"})
    with pytest.raises(ValueError, match="skip must be a whole number"):
        video_nodes.preview_selection({"video": "clip.mkv", "skip": "two"})
    with pytest.raises(FileNotFoundError, match="not found"):
        video_nodes.preview_selection({"video": "gone.mp4"})
    outside = tmp_path_factory.mktemp("elsewhere")
    write_video(outside / "secret.mkv", indexed_frames(3), codec="ffv1", pix_fmt="bgr0")
    with pytest.raises(PermissionError, match="outside the folders"):
        video_nodes.preview_selection({"path": str(outside / "secret.mkv")})


def test_preview_errors_show_no_server_paths(folders, tmp_path_factory):
    """GET /vsr/preview answers anyone who can reach the server: its errors name files relative to
    ComfyUI's folders, never the folders' absolute paths, a link's real target, or the home folder."""
    outside = tmp_path_factory.mktemp("private_area")
    write_video(outside / "secret.mkv", indexed_frames(3), codec="ffv1", pix_fmt="bgr0")
    (folders / "input" / "link.mkv").symlink_to(outside / "secret.mkv")
    (folders / "input" / "broken.mkv").write_bytes(b"not a video")
    queries = [{"video": "link.mkv"}, {"path": "~/secret.mkv"}, {"path": str(outside / "secret.mkv")},
               {"video": "gone.mp4"}, {"path": "sub/../../x.mkv"}, {"video": "broken.mkv"}]
    for q in queries:
        with pytest.raises((ValueError, OSError, RuntimeError)) as err:
            video_nodes.preview_selection(q)
        msg = str(err.value).replace(q.get("path", "\0"), "")
        for private in (str(folders), str(outside), os.path.expanduser("~") + "/"):
            assert private not in msg, (q, msg)
    with pytest.raises(PermissionError, match=r"link.mkv \[input\] links to a file outside"):
        video_nodes.preview_selection({"video": "link.mkv"})
    with pytest.raises(FileNotFoundError, match=r"gone.mp4 \[input\]"):
        video_nodes.preview_selection({"video": "gone.mp4"})


def test_preview_route_registers_only_inside_a_comfyui_server(monkeypatch):
    assert adapter.add_file_route("/vsr/preview", video_nodes.preview_selection) is False
    registered = {}

    class Routes:
        def get(self, path):
            def deco(fn):
                registered[path] = fn
                return fn
            return deco

    server = types.ModuleType("server")
    server.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(routes=Routes())})
    monkeypatch.setitem(sys.modules, "server", server)
    assert adapter.add_file_route("/vsr/preview", video_nodes.preview_selection) is True
    assert "/vsr/preview" in registered


def test_compare_stills_pair_input_and_output(tmp_path):
    lr = torch.rand(10, 8, 12, 3)
    out = torch.rand(10, 32, 48, 3)
    pairs = compare_stills(lr, out, tmp_path, "x", count=4)
    assert [p["index"] for p in pairs] == [0, 3, 6, 9]
    for p in pairs:
        a, b = cv2.imread(str(tmp_path / p["a"])), cv2.imread(str(tmp_path / p["b"]))
        assert a.shape == b.shape == (32, 48, 3)  # the input is shown at the output's size
    # large outputs are shown downscaled; a shorter input clamps to its last frame
    pairs = compare_stills(torch.rand(2, 300, 400, 3), torch.rand(3, 1200, 1600, 3), tmp_path, "y", count=8)
    assert len(pairs) == 3
    assert cv2.imread(str(tmp_path / pairs[-1]["a"])).shape == (768, 1024, 3)
    with pytest.raises(ValueError, match="two IMAGE batches"):
        compare_stills(torch.rand(8, 12, 3), out, tmp_path, "z")


def test_save_node_compare_with_and_metrics_node_show_a_compare_slider(folders):
    lr = torch.rand(4, 8, 12, 3)
    out = torch.rand(4, 32, 48, 3)
    res = MAPPINGS["VSR_SaveVideo"]().save(out, 10.0, "VSR/cmp", compare_with=lr, unique_id="5")
    pairs = res["ui"]["vsr_compare"]
    assert len(pairs) == 4 and pairs[0]["labels"] == ["input", "output"] and pairs[0]["frames"] == 4
    for side in ("a", "b"):
        item = pairs[1][side]
        assert item["type"] == "temp" and (folders / "temp" / item["subfolder"] / item["filename"]).is_file()
    assert "vsr_compare" not in MAPPINGS["VSR_SaveVideo"]().save(out, 10.0, "VSR/plain")["ui"]
    m = MAPPINGS["VSR_VideoMetrics"]().measure(out, out.flip(0), unique_id="6")
    assert m["ui"]["vsr_compare"][0]["labels"] == ["reference", "result"]
