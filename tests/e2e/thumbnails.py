"""Render each shipped workflow's thumbnail (``workflows/<name>.jpg``) from the real frontend.

Needs a running ComfyUI with the pack, Chromium and playwright (see run_browser.py):

    python tests/e2e/thumbnails.py --url http://127.0.0.1:8188
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def render(url: str, workflows: list[Path], size=(1024, 576), chromium: str | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        # litegraph drops titles and widgets below ~0.6 zoom: lay the graph out on a large page
        page = browser.new_page(viewport={"width": size[0] * 2, "height": size[1] * 2})
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function("() => window.app?.graph != null", timeout=120_000)
        page.wait_for_timeout(1500)
        for wf in workflows:
            # the graph canvas's own pixels: no dialogs, banners or side bars over the thumbnail
            data = page.evaluate("""async ([wf, size]) => {
                await window.app.loadGraphData(wf, true, true);
                await new Promise((r) => setTimeout(r, 800));
                const c = window.app.canvas, nodes = window.app.graph._nodes;
                const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - 30));
                const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
                const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
                const W = c.canvas.width, H = c.canvas.height, pad = 20;
                const scale = Math.min((W - 2 * pad) / (x1 - x0), (H - 2 * pad) / (y1 - y0));
                c.ds.scale = scale;
                c.ds.offset = [(W / scale - (x1 - x0)) / 2 - x0, (H / scale - (y1 - y0)) / 2 - y0];
                c.show_info = false;
                c.low_quality_zoom_threshold = 0;  // draw titles and widgets even when zoomed out
                if ("low_quality" in c) c.low_quality = false;
                c.setDirty(true, true);
                c.draw(true, true);
                const thumb = document.createElement("canvas");  // drawn big (readable), saved small
                thumb.width = size[0];
                thumb.height = size[1];
                thumb.getContext("2d").drawImage(c.canvas, 0, 0, size[0], size[1]);
                return thumb.toDataURL("image/jpeg", 0.85);
            }""", [json.loads(wf.read_text()), list(size)])
            target = wf.with_suffix(".jpg")
            target.write_bytes(base64.b64decode(data.split(",", 1)[1]))
            out.append(target)
        browser.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8188")
    p.add_argument("workflows", nargs="*", type=Path)
    args = p.parse_args(argv)
    for t in render(args.url, args.workflows or sorted((REPO / "workflows").glob("*.json"))):
        print("wrote", t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
