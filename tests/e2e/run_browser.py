"""Run a shipped workflow the way a user does: in the real frontend, in headless Chromium.

Needs a running ComfyUI with this pack loaded, Chromium (Debian's ``chromium``; no browser download)
and the ``playwright`` Python package. The workflow is loaded with the frontend's own
``app.loadGraphData``, widgets are overridden by node type (``--set TYPE.widget=value``), the graph is
turned into a prompt by the frontend's ``app.graphToPrompt`` and queued; the script waits for the
history entry and prints a JSON summary (status, outputs per node, browser-console errors, and those
that come from this pack's extension). Exit code 0 only when the run succeeded and our extension
logged no error.

    python tests/e2e/run_browser.py --url http://127.0.0.1:8188 --workflow workflows/QuickStart.json \\
        --set VSR_LoadVideoFrames.video=clip.mp4 --set VSR_LoadVideoFrames.frame_load_cap=6
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

PACK_MARKERS = ("DiffusionVSR", "vsr_", "VSR_")

LOAD = """
async ([workflow, overrides, vue]) => {
  const app = window.app ?? window.comfyAPI?.app?.app;
  const settings = app.extensionManager.setting;
  if (Boolean(settings.get("Comfy.VueNodes.Enabled")) !== vue) await settings.set("Comfy.VueNodes.Enabled", vue);
  await app.loadGraphData(workflow, true, true);
  const missing = [];
  for (const [type, widget, value] of overrides) {
    const nodes = app.graph._nodes.filter((n) => n.type === type);
    if (!nodes.length) { missing.push(type); continue; }
    for (const node of nodes) {
      const w = node.widgets?.find((x) => x.name === widget);
      if (!w) { missing.push(`${type}.${widget}`); continue; }
      w.value = value;
      w.callback?.(value);
    }
  }
  return missing;
}
"""

QUEUE = """
async (missing) => {
  const app = window.app ?? window.comfyAPI?.app?.app;
  const prompt = await app.graphToPrompt();
  const api = window.comfyAPI?.api?.api;
  const nodes = Object.keys(prompt.output).length;
  if (api?.queuePrompt) {  // the frontend's own queue call: carries this page's client_id, so the
    try {                  // "executed" messages come back to these nodes as they do for a user
      const body = await api.queuePrompt(0, prompt);
      return {status: 200, body, missing, nodes};
    } catch (e) {
      return {status: 400, body: e?.response ?? String(e), missing, nodes};
    }
  }
  const res = await fetch("/prompt", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({prompt: prompt.output, extra_data: {extra_pnginfo: {workflow: prompt.workflow}}})});
  return {status: res.status, body: await res.json(), missing, nodes};
}
"""


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# what the pack's widgets show: the loader preview, compare sliders, and the save node's video
PREVIEWS = """
() => ({
  preview: [...document.querySelectorAll(".vsr-preview")].map((e) => {
    const v = e.querySelector("video");
    return {caption: e.querySelector(".vsr-preview-caption").textContent, width: v.videoWidth,
            height: v.videoHeight, duration: v.duration, shown: e.getBoundingClientRect().width > 0};
  }),
  vsr_widgets: (window.app ?? window.comfyAPI?.app?.app).graph._nodes.filter((n) => n.type?.startsWith("VSR_")).map((n) =>
    [n.type, (n.widgets ?? []).map((w) => w.name).join(","), !!n.vsrCompare, n.vsrCompare?.element?.isConnected]),
  compare: [...document.querySelectorAll(".vsr-compare")].map((e) => ({
    a: e.querySelector(".vsr-compare-a").naturalWidth, b: e.querySelector(".vsr-compare-b").naturalWidth,
    labels: [...e.querySelectorAll("span")].map((s) => s.textContent),
    shown: e.getBoundingClientRect().width > 0})),
  videos: [...document.querySelectorAll("video")].map((v) => v.currentSrc).filter((s) => s.includes("/view?")),
})
"""


# the pack's text widgets as drawn: does each box hold its text? ``own``: the element's own box is tall enough for
# its content (layout px); ``seen``: the part of it that no clipping ancestor (the node, the canvas) cuts off,
# as a fraction of its drawn height. The classic canvas gives a DOM widget only the height it asked for.
BOXES = """
() => [...document.querySelectorAll('.vsr-progress, .vsr-preview-caption, pre.vsr-metrics, .vsr-compare-caption')]
  .filter((e) => getComputedStyle(e).display !== 'none' && e.textContent.trim() && e.closest('.vsr-preview, '
    + '.vsr-compare, .vsr-progress, .vsr-metrics')?.offsetParent !== null)
  .map((e) => {
    const r = e.getBoundingClientRect();
    let top = r.top, bottom = r.bottom;
    for (let p = e.parentElement; p; p = p.parentElement) {
      if (getComputedStyle(p).overflow === 'visible') continue;
      const q = p.getBoundingClientRect();
      top = Math.max(top, q.top); bottom = Math.min(bottom, q.bottom);
    }
    const lines = Math.round(e.scrollHeight / (parseFloat(getComputedStyle(e).lineHeight) || 16));
    return {kind: e.className, text: e.textContent, height: e.clientHeight, needed: e.scrollHeight, lines,
            own: e.clientHeight > 0 && e.clientHeight + 1 >= e.scrollHeight,
            seen: r.height > 0 ? Math.max(0, bottom - top) / r.height : 0};
  })
"""

# a Video Metrics node showing the six lines of a run with a reference flow (what the node's onExecuted shows)
METRICS_PROBE = """
async (text) => {
  const app = window.app ?? window.comfyAPI?.app?.app;
  const node = LiteGraph.createNode('VSR_VideoMetrics');
  node.pos = [40, 40];
  app.graph.add(node);
  node.onExecuted({text: [text]});
  app.graph.setDirtyCanvas(true, true);
  return node.id;
}
"""
METRICS_TEXT = "\n".join(["PSNR RGB (dB): 31.2047", "PSNR Y (dB): 32.9815", "SSIM RGB: 0.9123", "SSIM Y: 0.9301",
                          "warping error (x255): 3.1416", "warping error of the reference: 2.7183"])


def metrics_boxes(page) -> list[dict]:
    """Add a Video Metrics node showing six lines of figures; return the pack's text boxes as drawn."""
    page.evaluate(METRICS_PROBE, METRICS_TEXT)
    try:
        page.wait_for_function("(t) => [...document.querySelectorAll('pre.vsr-metrics')].some((e) => "
                               "e.textContent === t && e.clientHeight > 0)", arg=METRICS_TEXT, timeout=10_000)
    except Exception:
        pass
    page.wait_for_timeout(500)
    return [b for b in page.evaluate(BOXES) if "vsr-metrics" in b["kind"]]


def wait_for_previews(page, timeout_ms: int = 30_000) -> dict:
    """The widgets' state once every loader preview has settled (shown or failed)."""
    try:
        page.wait_for_function(
            "() => [...document.querySelectorAll('.vsr-preview')].every((e) => e.querySelector('video').videoWidth"
            " > 0 || e.textContent.includes('⚠'))", timeout=timeout_ms)
    except Exception:  # report what is there; the caller's assertions say what is missing
        pass
    page.wait_for_timeout(300)
    return {**page.evaluate(PREVIEWS), "boxes": page.evaluate(BOXES)}


def _queue_and_wait(page, missing: list, timeout: float, result: dict) -> None:
    """Queue the loaded graph the frontend's way and wait for its history entry; fills ``result``."""
    queued = page.evaluate(QUEUE, missing)
    result["queued"] = queued
    # what the frontend's missing-models dialog (fed by the workflow's model hints) shows
    result["dialogs"] = page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText)")
    body = queued.get("body")
    pid = body.get("prompt_id") if isinstance(body, dict) else None
    if queued["status"] != 200 or not pid:
        result["status"] = "rejected"
    else:
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = page.evaluate("async (id) => (await (await fetch('/history/' + id)).json())", pid)
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                result["status"] = entry["status"].get("status_str")
                result["messages"] = [m for m in entry["status"].get("messages", [])
                                      if m[0] in ("execution_error", "execution_interrupted")]
                result["outputs"] = entry.get("outputs", {})
                break
            page.wait_for_timeout(1000)
        else:
            result["status"] = "timeout"
    page.wait_for_timeout(500)
    expected = sum(1 for o in result.get("outputs", {}).values() if o.get("vsr_compare"))
    try:  # the compare widgets appear (the Vue renderer mounts them a little later) and load their pictures
        page.wait_for_function(
            "(n) => { const e = [...document.querySelectorAll('.vsr-compare-b')];"
            " return e.length >= n && e.every((i) => i.complete && i.naturalWidth > 0); }", arg=expected,
            timeout=15_000)
    except Exception:
        pass
    result["after_run"] = page.evaluate(PREVIEWS)
    result["seconds"] = round(time.time() - t0, 1) if pid else None
    result["widgets_text"] = page.evaluate(
        "() => [...document.querySelectorAll('pre.vsr-metrics')].map((e) => e.textContent)")
    result["progress_text"] = page.evaluate(
        "() => [...document.querySelectorAll('div.vsr-progress')].map((e) => e.textContent).filter(Boolean)")
    page.wait_for_timeout(300)  # one more frame for the canvas to lay out the grown nodes
    result["after_run"]["boxes"] = page.evaluate(BOXES)
    result["metrics_boxes"] = metrics_boxes(page)


def run(url: str, workflow: Path, overrides: list[tuple[str, str, object]], timeout: float,
        chromium: str | None = None, vue: bool = False, queue: bool = True, screenshot: str | None = None,
        upload: str | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    wf = json.loads(workflow.read_text())
    console: list[dict] = []
    chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise RuntimeError("Chromium not found (apt install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 2400, "height": 1400})
        page.on("console", lambda m: console.append({"type": m.type, "text": m.text}))
        page.on("pageerror", lambda e: console.append({"type": "pageerror", "text": str(e)}))
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function("() => (window.app ?? window.comfyAPI?.app?.app)?.graph != null", timeout=120_000)
        page.wait_for_timeout(1500)  # extensions finish registering
        missing = page.evaluate(LOAD, [wf, overrides, vue])
        if upload:  # the loader's upload button: its file input, as a user's file chooser fills it
            page.set_input_files("input[type=file][accept^='video']", upload)
            page.wait_for_function(
                "(name) => (window.app ?? window.comfyAPI?.app?.app).graph._nodes.some((n) => "
                "n.type === 'VSR_LoadVideoFrames' && n.widgets.find((w) => w.name === 'video').value === name "
                "&& n.vsrPreviewInfo?.name === name)", arg=Path(upload).name, timeout=60_000)
        result = {"workflow": workflow.name, "vue": vue, "before_run": wait_for_previews(page)}
        result["missing"] = missing
        # what the frontend's missing-models dialog (fed by the workflow's model hints) shows on opening
        result["dialogs_on_load"] = page.evaluate(
            "() => [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText)")
        if queue:
            _queue_and_wait(page, missing, timeout, result)
        if screenshot:
            page.screenshot(path=screenshot)
        browser.close()
    errors = [c for c in console if c["type"] in ("error", "pageerror")]
    result["console_errors"] = errors
    result["pack_console_errors"] = [c for c in errors if any(m in c["text"] for m in PACK_MARKERS)]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8188")
    p.add_argument("--workflow", required=True, type=Path)
    p.add_argument("--set", action="append", default=[], metavar="TYPE.widget=value",
                   help="override a widget on every node of TYPE (value parsed as JSON when possible)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--chromium", default=None)
    p.add_argument("--vue", action="store_true", help="use the Vue node renderer (Nodes 2.0)")
    p.add_argument("--no-queue", action="store_true", help="only load the workflow and report the previews")
    p.add_argument("--screenshot", default=None, help="save a PNG of the page at the end")
    p.add_argument("--upload", default=None, help="upload this video through the loader's button first")
    args = p.parse_args(argv)
    overrides = []
    for item in args.set:
        key, _, value = item.partition("=")
        node_type, _, widget = key.partition(".")
        if not widget:
            p.error(f"--set wants TYPE.widget=value, got {item!r}")
        overrides.append((node_type, widget, _value(value)))
    result = run(args.url, args.workflow, overrides, args.timeout, args.chromium, vue=args.vue,
                 queue=not args.no_queue, screenshot=args.screenshot, upload=args.upload)
    print(json.dumps(result, indent=2))
    if args.no_queue:
        return 0 if not result["missing"] else 1
    ok = result["status"] == "success" and not result["pack_console_errors"] and not result["queued"]["missing"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
