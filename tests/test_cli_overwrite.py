"""The command line never replaces an existing file unless asked (``--overwrite`` / ``-y``): each command
refuses before any work with one line naming the file and the flag, replaces with the flag, and replaces
only at completion (an interrupted ``--overwrite`` run leaves the old file as it was, and nothing partial)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from media import indexed_frames, write_video

import vsr_core.loaders.video_upscaler as upscaler_files
import vsr_core.synthetic
import vsr_core.upscale
from vsr_core.cli import main
from vsr_core.io import VideoWriter, probe

OLD = b"an hour of someone's render"


def _keep(*paths) -> dict:
    """Fill each path with old bytes; returns {path: bytes} to compare with afterwards."""
    for i, p in enumerate(paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(OLD + bytes([i]))
    return {p: p.read_bytes() for p in paths}


def _refused(capsys, argv, path, held="exists") -> None:
    assert main([*map(str, argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path} already {held}; use --overwrite (-y) to replace it"]


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the outputs were checked")


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def _half_written(*args, **kwargs):
    """A writer stopped half-way: writes some bytes to the path it was given, then the user presses Ctrl-C."""
    path = next(a for a in (*args, *kwargs.values()) if isinstance(a, (str, os.PathLike)))
    with open(path, "wb") as f:
        f.write(b"half")
    _ctrl_c()


def _video_job(command, tmp_path):
    """(argv without the flag, the files it writes) of a fast run of each video command."""
    out = tmp_path / "out"
    if command == "demo":
        return ["demo", "--out", out, "--method", "bicubic"], [out / "demo_x4.mp4", out / "demo_compare.png"]
    if command == "render":
        import cv2

        from vsr_core.synthetic import smooth_texture

        cv2.imwrite(str(tmp_path / "tex.png"), smooth_texture(64, 64)[..., ::-1])
        return (["render", tmp_path / "tex.png", out / "lr.mp4", "--hr", out / "hr.mp4", "--frames", 6, "--size",
                 "32x32", "--motion", "pan"], [out / "lr.mp4", out / "hr.mp4"])
    src = write_video(tmp_path / "in.mkv", indexed_frames(5, 16, 16), codec="ffv1", pix_fmt="bgr0")
    if command == "upscale":
        return (["upscale", src, out / "up.mp4", "--method", "bicubic", "--chunk", 1, "--compare", out / "cmp.png"],
                [out / "up.mp4", out / "cmp.png"])
    return ["stream", src, out / "up.mp4", "--method", "bicubic", "--chunk", 2], [out / "up.mp4"]


@pytest.mark.parametrize("command", ["upscale", "stream", "demo", "render"])
def test_video_commands_replace_an_output_only_when_asked_and_complete(command, tmp_path, monkeypatch, capsys):
    argv, outputs = _video_job(command, tmp_path)
    folder = outputs[0].parent
    with monkeypatch.context() as m:  # refused before any work: no model, no frame
        m.setattr(vsr_core.upscale, "make_upscaler", _no_work)
        m.setattr(vsr_core.synthetic, "make_clip", _no_work)
        for taken in outputs:  # each output on its own is enough to refuse
            old = _keep(taken)
            _refused(capsys, argv, taken)
            assert {p: p.read_bytes() for p in old} == old and sorted(folder.iterdir()) == [taken]
            taken.unlink()
    old = _keep(*outputs)

    real_write = VideoWriter.write

    def write_then_stop(self, frames):  # Ctrl-C once the first frames are in the new file
        real_write(self, frames)
        _ctrl_c()

    with monkeypatch.context() as m:
        m.setattr(VideoWriter, "write", write_then_stop)
        assert main([*map(str, argv), "--overwrite"]) == 130
    assert {p: p.read_bytes() for p in outputs} == old
    assert sorted(folder.iterdir()) == sorted(outputs)  # no partial file left beside them

    assert main([*map(str, argv), "-y"]) == 0
    assert sorted(folder.iterdir()) == sorted(outputs)
    for p in outputs:
        assert p.read_bytes() != old[p]
        if p.suffix == ".png":
            import cv2

            assert cv2.imread(str(p)) is not None
        else:
            assert probe(p).num_frames > 1


def test_the_output_being_the_input_keeps_its_own_error(tmp_path, capsys):
    src = write_video(tmp_path / "a.mkv", indexed_frames(2), codec="ffv1", pix_fmt="bgr0")
    before = src.read_bytes()
    for command in ("upscale", "stream"):
        assert main([command, str(src), str(src), "-y"]) == 2
        assert "output path is the input path" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_convert_replaces_an_output_only_when_asked_and_complete(tmp_path, monkeypatch, capsys):
    import safetensors.torch
    from safetensors.torch import load_file

    import vsr_core.loaders.mgld as mgld
    from vsr_core.loaders.safe_pickle import load_state_dict

    ckpt = mgld.write_tiny_mgld(tmp_path / "mgld", weights="ckpt", text_encoder=False)["video_vae"]
    out = tmp_path / "out" / "vae.safetensors"
    beside = ckpt.with_suffix(".safetensors")  # convert's default output name
    old = _keep(out, beside)
    with monkeypatch.context() as m:
        m.setattr(mgld, "load_state_dict", _no_work)
        _refused(capsys, ["convert", ckpt, out], out)
        _refused(capsys, ["convert", ckpt], beside)
    assert main(["convert", str(beside), str(beside), "-y"]) == 1  # the output is the input: convert's own error
    assert "would overwrite the input" in capsys.readouterr().err

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", _half_written)
        assert main(["convert", str(ckpt), str(out), "-y"]) == 130
    assert {p: p.read_bytes() for p in old} == old
    assert sorted(out.parent.iterdir()) == [out]

    assert main(["convert", str(ckpt), str(out), "--overwrite"]) == 0
    converted, original = load_file(str(out)), load_state_dict(ckpt)
    assert converted.keys() == original.keys() and sorted(out.parent.iterdir()) == [out]


def test_train_upscaler_replaces_its_export_only_when_asked_and_complete(tmp_path, monkeypatch, capsys):
    import cv2

    from vsr_core.synthetic import smooth_texture

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "tex0.png"), smooth_texture(96, 128, seed=0, octaves=6))
    out = tmp_path / "export" / "weights.safetensors"
    run = tmp_path / "run"
    argv = ["train-upscaler", "--images", images, "--workdir", run, "--out", out, "--steps", 2, "--batch", 1,
            "--lr-patch", 8, "--channels", 8, "--blocks", 1, "--warmup", 1, "--no-fetch"]
    old = _keep(out)
    _refused(capsys, argv, out)
    assert not run.exists()  # refused before any work

    with monkeypatch.context() as m:  # Ctrl-C while the export is being written
        m.setattr(upscaler_files, "save_video_upscaler", _half_written)
        assert main([*map(str, argv), "-y"]) == 130
    assert out.read_bytes() == old[out] and sorted(out.parent.iterdir()) == [out]

    assert main([*map(str, argv), "-y"]) == 0  # resumes from the final checkpoint and exports
    assert upscaler_files.load_video_upscaler(out).config.channels == 8
    assert sorted(out.parent.iterdir()) == [out]


def _clip_folder(root):
    rng = np.random.default_rng(0)
    root.mkdir()
    write_video(root / "a.mkv", rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), codec="ffv1", pix_fmt="bgr0")
    return root


def test_train_satec_stage1_replaces_its_export_only_when_asked_and_complete(tmp_path, monkeypatch, capsys):
    out = tmp_path / "satec"
    export = out / "upscaler.safetensors"
    argv = ["train-satec", "--stage", 1, "--data", _clip_folder(tmp_path / "clips"), "--out", out, "--steps", 1,
            "--clip-length", 3, "--crop", 32, "--device", "cpu"]
    old = _keep(export)
    _refused(capsys, argv, export)
    assert sorted(out.iterdir()) == [export]  # no checkpoint: refused before any work

    with monkeypatch.context() as m:
        m.setattr(upscaler_files, "save_video_upscaler", _half_written)
        assert main([*map(str, argv), "-y"]) == 130
    assert export.read_bytes() == old[export]
    assert not [p for p in out.iterdir() if "partial" in p.name]

    assert main([*map(str, argv), "-y"]) == 0
    assert upscaler_files.load_video_upscaler(export) is not None


TINY = dict(latent_guide_channels=16, pixel_guide_channels=8, sfa_hidden=16, tubelet=[3, 4, 4], max_inner=32,
            head_dim=16, refiner_channels=16)


def test_train_satec_refuses_only_a_stage_the_adapter_file_holds(tmp_path, capsys):
    """Stages 2-4 add their part to one satec.safetensors: adding a part replaces nothing, retraining one does."""
    from vsr_core.loaders.satec import new_parts, save_satec
    from vsr_core.models.satec import SATeCoConfig

    adapters = tmp_path / "satec" / "satec.safetensors"
    save_satec(adapters, new_parts(SATeCoConfig.from_dict({**SATeCoConfig().to_dict(), **TINY})), which={"unet"})
    before = adapters.read_bytes()
    argv = ["train-satec", "--data", tmp_path / "no_clips", "--base", tmp_path / "no_base.safetensors", "--out",
            adapters.parent]
    _refused(capsys, [*argv, "--stage", 2], adapters, held="holds stage 2 (unet)")
    for extra in (["--stage", "3"], ["--stage", "2", "-y"]):  # past the check: the missing data stops it
        assert main([*map(str, argv), *extra]) == 1
        assert "training data folder not found" in capsys.readouterr().err
    assert adapters.read_bytes() == before


def test_train_satec_stage2_replaces_its_part_only_when_asked_and_complete(tmp_path, monkeypatch, capsys):
    from vsr_core.loaders.satec import load_satec
    from vsr_core.loaders.tiny import write_tiny_sd2_single_file
    from vsr_core.training.satec import _Stage

    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"satec": TINY}))
    out = tmp_path / "satec"
    adapters = out / "satec.safetensors"
    argv = [*map(str, ["train-satec", "--stage", 2, "--config", config, "--data", _clip_folder(tmp_path / "clips"),
                       "--base", write_tiny_sd2_single_file(tmp_path / "sd2.safetensors"), "--out", out, "--steps", 1,
                       "--clip-length", 3, "--crop", 64, "--device", "cpu"])]
    assert main(argv) == 0
    capsys.readouterr()
    first = adapters.read_bytes()
    _refused(capsys, argv, adapters, held="holds stage 2 (unet)")
    assert adapters.read_bytes() == first

    with monkeypatch.context() as m:  # Ctrl-C during the training step
        m.setattr(_Stage, "loss", _ctrl_c)
        assert main([*argv, "--restart", "-y"]) == 130
    assert adapters.read_bytes() == first and not [p for p in out.iterdir() if "partial" in p.name]

    assert main([*argv, "--restart", "-y"]) == 0  # retrains the part from the exported one
    assert adapters.read_bytes() != first and load_satec(adapters).trained == {"unet"}
