"""Checkpoint pickles are opened without running code: Lightning training state is stubbed, anything
else is refused before a single opcode runs."""
import pickle
import sys
import types
import zipfile

import pytest
import torch

from vsr_core.loaders.safe_pickle import UnsafeCheckpointError, load_state_dict, safe_load

MARK = "_vsr_safe_pickle_test_ran"


class _Evil:
    """Unpickling it runs exec(...), which marks ``sys``: proof that code ran."""

    def __reduce__(self):
        return (exec, (f"import sys; sys.{MARK} = True",))


class _EvilSystem:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _lightning_ckpt(path, state_dict):
    """Save a Lightning-like checkpoint whose pickle references a pytorch_lightning class, as the
    official MGLD .ckpt files do, without having Lightning installed."""
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_k_models = "val/loss", {"a.ckpt": torch.tensor(0.5)}

    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names[:-1]:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[mod.__name__] = mod
    try:
        torch.save({"epoch": 3, "global_step": 9, "pytorch-lightning_version": "1.9.5",
                    "callbacks": {"ModelCheckpoint": ModelCheckpoint()}, "state_dict": state_dict}, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_lightning_checkpoint_loads_with_stubbed_callbacks(tmp_path):
    sd = {"model.diffusion_model.w": torch.randn(3, 4), "first_stage_model.b": torch.arange(5.0)}
    path = tmp_path / "model.ckpt"
    _lightning_ckpt(path, sd)
    assert "pytorch_lightning" not in sys.modules or not hasattr(sys.modules["pytorch_lightning"], "callbacks")
    with pytest.raises(pickle.UnpicklingError):  # what plain weights_only loading says about it
        torch.load(path, weights_only=True)
    obj = safe_load(path)
    assert obj["global_step"] == 9
    assert "inert" in repr(obj["callbacks"]["ModelCheckpoint"])
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd)
    for k in sd:
        torch.testing.assert_close(loaded[k], sd[k], rtol=0, atol=0)


@pytest.mark.parametrize("payload", [_Evil, _EvilSystem])
def test_malicious_checkpoint_is_refused_and_does_not_run(tmp_path, payload):
    path = tmp_path / "mgldvsr_unet.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": payload()}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*mgldvsr_unet.ckpt") as info:
        load_state_dict(path)
    assert ("exec" in str(info.value)) or ("system" in str(info.value))
    assert not hasattr(sys, MARK)


def test_malicious_legacy_pickle_is_refused(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Evil()}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    with pytest.raises(UnsafeCheckpointError, match="exec"):
        load_state_dict(path)
    assert not hasattr(sys, MARK)


def test_plain_and_safetensors_state_dicts(tmp_path):
    from safetensors.torch import save_file

    sd = {"a": torch.randn(2, 2), "b": torch.ones(3)}
    torch.save(sd, tmp_path / "plain.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    for name in ("plain.pth", "w.safetensors"):
        out = load_state_dict(tmp_path / name)
        assert set(out) == {"a", "b"} and torch.equal(out["a"], sd["a"])
    torch.save({"state_dict": {"a": torch.ones(1), "note": "text"}}, tmp_path / "mixed.ckpt")
    with pytest.raises(ValueError, match="not tensors: note"):
        load_state_dict(tmp_path / "mixed.ckpt")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "absent.ckpt")
