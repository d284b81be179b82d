"""Sub-models load through ComfyUI's model management when ComfyUI is there, and rest on their offload
device when the offload policy says so.

A fake ``comfy`` package (recording ``load_models_gpu`` and ``ModelPatcher`` like v0.3.75's) checks the
wiring here; ``test_real_comfyui_model_management`` runs the same path against a real ComfyUI checkout
(VSR_COMFYUI_DIR / VSR_COMFYUI_PYTHON), skipped without one.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from pack import REPO, comfy_folders, load_pack

from vsr_core import memory
from vsr_core.loaders.tiny import tiny_modules
from vsr_core.models import bundle
from vsr_core.models.bundle import VSRModel

PACK = load_pack()
N = PACK.NODE_CLASS_MAPPINGS
adapter = importlib.import_module(f"{PACK.__name__}.nodes.comfy_adapter")
budget = importlib.import_module(f"{PACK.__name__}.nodes.budget")
CPU0 = torch.device("cpu", 0)  # "another device" on a CPU-only machine: moves are real calls, free ones


class FakeComfy:
    """The parts of comfy.model_management / model_patcher / utils and folder_paths the pack uses."""

    def __init__(self, user_dir):
        self.loads, self.unloads, self.patchers = [], [], []
        self.current_loaded_models = []
        fake = self

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device
                if getattr(model, "device", None) is None:
                    model.device = offload_device
                fake.patchers.append(self)

            def detach(self, unpatch_all=True):
                self.model.to(self.offload_device)
                self.model.device = self.offload_device
                return self.model

        class LoadedModel:
            def __init__(self, patcher):
                self.model = patcher

            def model_unload(self, memory_to_free=None, unpatch_weights=True):
                fake.unloads.append(self.model.model.module)
                self.model.detach(unpatch_weights)
                return True

        def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                            force_full_load=False):
            fake.loads.append(([p.model.module for p in models], memory_required, force_full_load))
            for p in models:
                assert isinstance(p, ModelPatcher)
                if not any(lm.model is p for lm in fake.current_loaded_models):
                    fake.current_loaded_models.insert(0, LoadedModel(p))
                p.model.to(p.load_device)
                p.model.device = p.load_device

        mm = types.ModuleType("comfy.model_management")
        mm.current_loaded_models = self.current_loaded_models
        mm.load_models_gpu = load_models_gpu
        mm.soft_empty_cache = lambda force=False: None
        mm.free_memory = lambda *a, **k: []
        mm.get_torch_device = lambda: torch.device("cpu")
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.throw_exception_if_processing_interrupted = lambda: None
        mp = types.ModuleType("comfy.model_patcher")
        mp.ModelPatcher = ModelPatcher
        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                pass

            def update_absolute(self, value, total=None, preview=None):
                pass

        utils.ProgressBar = ProgressBar
        pkg = types.ModuleType("comfy")
        pkg.__path__ = []
        pkg.model_management, pkg.model_patcher, pkg.utils = mm, mp, utils
        fp = types.ModuleType("folder_paths")
        fp.get_user_directory = lambda: str(user_dir)
        self.modules = {"comfy": pkg, "comfy.model_management": mm, "comfy.model_patcher": mp, "comfy.utils": utils,
                        "folder_paths": fp}

    def loaded(self):
        return [lm.model.model.module for lm in self.current_loaded_models]


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch):
    fake = FakeComfy(tmp_path / "user")
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(budget, "_record", None)
    monkeypatch.setattr(adapter, "_model_cache", {})  # fresh networks: no patcher of an earlier fake on them
    adapter._comfy.cache_clear()
    assert adapter.has_comfy() and adapter.manages_models()
    yield fake
    adapter._comfy.cache_clear()


def _bundle(offload=torch.device("cpu")):
    m = tiny_modules("stablevsr")
    return VSRModel("stablevsr", unet=m["unet"], vae=m["vae"], controlnet=m["controlnet"], offload_device=offload)


def test_the_pack_installs_the_comfyui_device_manager():
    assert isinstance(bundle.get_device_manager(), adapter.ComfyDeviceManager)
    assert not adapter.manages_models()  # ... which stays out of the way without ComfyUI


def test_sub_models_load_through_model_patchers(fake_comfy):
    model = _bundle()
    with bundle.reserve_memory(123456), model.on_device("unet", "controlnet") as (unet, cn):
        assert fake_comfy.loads == [([model.unet, model.controlnet], 123456, True)]
        assert [p.model.module for p in fake_comfy.patchers] == [model.unet, model.controlnet]
        for p in fake_comfy.patchers:
            assert p.load_device == model.device and p.offload_device == model.offload_device
            assert type(p.model).__name__.startswith("VSR_")  # the container ComfyUI's log names
    # offload == device ("keep on GPU", or --cpu): they stay loaded; ComfyUI evicts them when it needs room
    assert fake_comfy.loaded() == [model.controlnet, model.unet] and fake_comfy.unloads == []
    with model.on_device("unet"):
        pass
    assert len(fake_comfy.patchers) == 2  # one cached patcher per sub-model
    assert fake_comfy.loads[-1] == ([model.unet], 0, True)


def test_offload_policy_unloads_after_the_block_and_nesting_keeps_the_outer_models(fake_comfy):
    model = _bundle(offload=CPU0)
    with model.on_device("unet", "controlnet"):
        with model.on_device("vae"):
            # the enclosing block's models are passed along so ComfyUI does not evict them
            assert fake_comfy.loads[-1][0] == [model.vae, model.unet, model.controlnet]
            with model.on_device("unet"):  # the same model again: loaded, not released at the inner end
                pass
            assert model.unet in fake_comfy.loaded()
        assert fake_comfy.unloads == [model.vae] and fake_comfy.loaded() == [model.controlnet, model.unet]
    assert set(fake_comfy.unloads) == {model.vae, model.unet, model.controlnet} and fake_comfy.loaded() == []


def test_without_comfyui_the_manager_declines_and_moves_are_plain():
    manager = adapter.ComfyDeviceManager()
    lin = torch.nn.Linear(2, 2)
    assert manager.load([lin], torch.device("cpu"), CPU0) is False
    assert manager.release([lin], CPU0) is False


def _stablevsr_run(models, offload):
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(2, 20, 28, 3, generator=g)
    with comfy_folders(models=models):
        (model,) = N["VSR_LoadDiffusionModel"]().load("stablevsr/StableVSR", "fp32", "offload to CPU")
        model = dataclasses.replace(model, offload_device=offload, _prompt_cache={})
        (lr,) = N["VSR_LatentEncoderLR"]().encode(clip, model, 0)
        up = N["VSR_VideoUpscaler"]().upscale(clip, 4, "bicubic")[0]
        flow = N["VSR_FlowGuidance"]().estimate(up)[0]
        out = N["VSR_StableVSRSampler"]().sample(model, lr, flow, steps=1)
        (latent,) = out["result"]
        N["VSR_TemporalVAEDecode"]().decode(model, latent, mode="per-frame")
    return model, lr


@pytest.fixture(scope="module")
def svr_models(tmp_path_factory):
    from vsr_core.loaders.tiny import write_tiny_stablevsr

    root = tmp_path_factory.mktemp("mm_models")
    write_tiny_stablevsr(root / "vsr" / "stablevsr" / "StableVSR")
    return root


def test_after_a_sampler_run_every_sub_model_rests_on_the_offload_device(fake_comfy, svr_models):
    model, lr = _stablevsr_run(svr_models, CPU0)
    # the text encoder is not kept (the prompt cache was emptied: it was rebuilt for one encode and dropped)
    assert model.text_encoder is None and ("prompt", "") in model._prompt_cache
    nets = {"unet": model.unet, "controlnet": model.controlnet, "vae": model.vae}
    loaded = [m for mods, _, _ in fake_comfy.loads for m in mods]
    for name, net in nets.items():
        assert net is not None and any(m is net for m in loaded), f"{name} never went through load_models_gpu"
        assert any(m is net for m in fake_comfy.unloads), f"{name} was not sent back to the offload device"
    assert fake_comfy.loaded() == []  # nothing of ours is left on the compute device
    assert all(full for _, _, full in fake_comfy.loads)
    # the sampler's load asked ComfyUI for room for its activations on top of the weights
    est = memory.estimate_vram("stablevsr", lr["vsr_lr"].latent_size, model=model)
    sampler_load = next(req for mods, req, _ in fake_comfy.loads if any(m is model.unet for m in mods))
    assert sampler_load == est.activations + memory.OVERHEAD_BYTES
    # the timing record went to ComfyUI's user folder
    assert os.path.isfile(adapter.user_file("diffusion_vsr/timings.json"))


def test_without_offload_comfyui_keeps_them_loaded(fake_comfy, svr_models):
    from vsr_core.models.clip_text import CLIPTextModel

    model, _ = _stablevsr_run(svr_models, torch.device("cpu"))
    assert fake_comfy.unloads == []
    for net in (model.unet, model.controlnet, model.vae):
        assert any(m is net for m in fake_comfy.loaded())
    # the text encoder rebuilt for one encode is not left with ComfyUI (it would keep it alive)
    assert not any(isinstance(m, CLIPTextModel) for m in fake_comfy.loaded())


def test_the_flow_network_runs_borrowed_and_goes_back_to_the_cpu(tmp_path, monkeypatch):
    from vsr_core.loaders.raft import write_raft_checkpoint

    write_raft_checkpoint(tmp_path / "vsr" / "flow" / "raft-tiny.pth", layout="princeton")
    events = []

    class Recorder:
        def load(self, modules, device, offload_device, memory_required=0, keep=()):
            events.append(("load", [type(m).__name__ for m in modules], device))
            return False

        def release(self, modules, offload_device):
            events.append(("release", [type(m).__name__ for m in modules], offload_device))
            return False

    previous = bundle.set_device_manager(Recorder())
    try:
        monkeypatch.setattr(adapter, "get_device", lambda: CPU0)  # a compute device that is not the CPU
        clip = torch.rand(3, 32, 40, 3, generator=torch.Generator().manual_seed(0))
        with comfy_folders(models=tmp_path):
            N["VSR_FlowGuidance"]().estimate(clip, engine="raft-tiny.pth", raft_iterations=1)
    finally:
        bundle.set_device_manager(previous)
    assert events == [("load", ["RAFT"], CPU0), ("release", ["RAFT"], torch.device("cpu"))]


REAL = r"""
import importlib, importlib.util, sys, tempfile
sys.path.insert(0, COMFY)
from comfy.cli_args import args
args.cpu = True
import torch
import comfy.model_management as mm
import folder_paths
folder_paths.set_user_directory(tempfile.mkdtemp())  # the timing record goes there: not into the checkout
spec = importlib.util.spec_from_file_location('somepack', INIT, submodule_search_locations=[REPO])
pack = importlib.util.module_from_spec(spec); sys.modules['somepack'] = pack; spec.loader.exec_module(pack)
adapter = importlib.import_module('somepack.nodes.comfy_adapter')
assert adapter.manages_models()
from vsr_core.loaders.tiny import tiny_modules, write_tiny_stablevsr
from vsr_core.models.bundle import VSRModel

def ours():
    return {id(lm.model.model.module) for lm in mm.current_loaded_models if lm.model is not None
            and hasattr(lm.model.model, 'module')}

m = tiny_modules('stablevsr')
dev = mm.get_torch_device()
model = VSRModel('stablevsr', unet=m['unet'], vae=m['vae'], controlnet=m['controlnet'], device=dev,
                 offload_device=torch.device('cpu', 0))
with model.on_device('unet', 'controlnet'):
    assert ours() == {id(model.controlnet), id(model.unet)}, ours()
    with model.on_device('vae'):
        assert ours() == {id(model.unet), id(model.controlnet), id(model.vae)}
    assert ours() == {id(model.controlnet), id(model.unet)}, ours()
assert ours() == set(), ours()
kept = VSRModel('stablevsr', unet=m['unet'], vae=m['vae'], device=dev, offload_device=dev)
with kept.on_device('unet', 'vae'):
    pass
assert ours() == {id(kept.unet), id(kept.vae)}
mm.unload_all_models()
assert ours() == set()

root = tempfile.mkdtemp()
write_tiny_stablevsr(root + '/vsr/stablevsr/StableVSR')
adapter.set_directory('models', root)
N = pack.NODE_CLASS_MAPPINGS
clip = torch.rand(2, 20, 28, 3)
(model,) = N['VSR_LoadDiffusionModel']().load('stablevsr/StableVSR', 'fp32', 'auto')
(lr,) = N['VSR_LatentEncoderLR']().encode(clip, model, 0)
flow = N['VSR_FlowGuidance']().estimate(N['VSR_VideoUpscaler']().upscale(clip, 4, 'bicubic')[0])[0]
out = N['VSR_StableVSRSampler']().sample(model, lr, flow, steps=1, guidance_tile=-1, unique_id='5')
(frames,) = N['VSR_TemporalVAEDecode']().decode(model, out['result'][0], tile_size=-1)
assert frames.shape == (2, 80, 112, 3)
names = sorted(type(lm.model.model).__name__ for lm in mm.current_loaded_models)
print('LOADED', names)
print('UI', out['ui']['text'][0].replace(chr(10), ' | '))
print('OK')
"""


def test_real_comfyui_model_management(tmp_path):
    """Needs a ComfyUI checkout: VSR_COMFYUI_DIR (and VSR_COMFYUI_PYTHON, a python with its requirements)."""
    comfy_dir = os.environ.get("VSR_COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set VSR_COMFYUI_DIR to a ComfyUI checkout (and VSR_COMFYUI_PYTHON) to run this check")
    python = os.environ.get("VSR_COMFYUI_PYTHON", sys.executable)
    paths = f"COMFY, REPO, INIT = {comfy_dir!r}, {str(REPO)!r}, {str(REPO / '__init__.py')!r}\n"
    code = paths + textwrap.dedent(REAL)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-4000:]
    assert "OK" in out.stdout and "VSR_UNet2DConditionModel" in out.stdout, out.stdout
