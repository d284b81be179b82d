"""The frontend extension uses only the frontend's public modules and parses as an ES module
(its behaviour in a real ComfyUI and browser is checked by tests/e2e)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

JS = sorted((Path(__file__).resolve().parents[1] / "js").glob("*.js"))
PUBLIC = {"../../scripts/app.js", "../../scripts/api.js"}


def test_there_is_a_frontend_extension():
    assert {p.name for p in JS} >= {"vsr_video.js", "vsr_progress.js", "vsr_metrics.js", "vsr_common.js"}


@pytest.mark.parametrize("path", JS, ids=lambda p: p.name)
def test_imports_only_the_public_app_and_api_modules(path):
    text = path.read_text()
    imported = set(re.findall(r"""^\s*import\s[^'"]*['"]([^'"]+)['"]""", text, flags=re.M))
    siblings = {m for m in imported if m.startswith("./")}  # the pack's own shared module(s), served beside it
    assert all((path.parent / m).is_file() for m in siblings), siblings
    assert (imported - siblings) <= PUBLIC, imported
    assert imported or path.name == "vsr_common.js", "an extension that imports nothing cannot register itself"
    # the pack's folder name is not ours to know (ComfyUI-Manager renames it): no hard-coded extension URLs
    assert "/extensions/" not in text


@pytest.mark.parametrize("path", JS, ids=lambda p: p.name)
def test_parses_as_an_es_module(path, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: syntax not checked here (tests/e2e loads it in a browser)")
    copy = tmp_path / (path.stem + ".mjs")
    copy.write_text(path.read_text())
    done = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
