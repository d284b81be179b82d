// Video on the node.
//  * "Load Video Frames (VSR)": an upload button and an inline preview of exactly the frames the node will
//    load (skip_first_frames, select_every_nth, frame_load_cap), made by the pack's /vsr/preview route,
//    with a line saying what is selected. It follows the widgets as they change, before any run.
//  * A compare slider on any VSR node whose result carries "vsr_compare" frame pairs (Save Video with
//    compare_with connected, Video Metrics): move the pointer across the image, pick the frame below.
// Display-only DOM widgets (never saved in the workflow), so they work in the classic canvas and in the
// Vue node renderer; only the frontend's public app/api modules are imported.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { LINE_HEIGHT, fitNode, widgetHeight } from "./vsr_common.js";

const MARGIN = 10; // the frontend's default DOM widget margin

const LOADER = "VSR_LoadVideoFrames";
const COMPARE_NODES = ["VSR_SaveVideo", "VSR_VideoMetrics"];
const VIDEO_OUTPUT_NODES = ["VSR_SaveVideo", "VSR_StreamUpscaleVideo"];
const WATCHED = ["video", "path", "skip_first_frames", "select_every_nth", "frame_load_cap"];
const VIDEO_TYPES = "video/*,.mkv,.mov,.webm,.avi,.m4v,.gif,.mpg,.mpeg,.ts,.wmv,.flv";

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function styled(tag, style, className) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  Object.assign(el.style, style);
  return el;
}

function chain(obj, key, fn) {
  const prev = obj[key];
  obj[key] = function () {
    const r = prev?.apply(this, arguments);
    fn.apply(this, arguments);
    return r;
  };
}

// ---------------------------------------------------------------------------------------- loader preview

function addLoaderPreview(node) {
  const box = styled("div", { display: "flex", flexDirection: "column", gap: "2px", width: "100%" }, "vsr-preview");
  // the picture takes what is left; the caption line always keeps its own height
  const video = styled("video", { width: "100%", flex: "1 1 auto", minHeight: "0", objectFit: "contain",
    background: "#000", borderRadius: "4px", display: "none" });
  Object.assign(video, { muted: true, loop: true, autoplay: true, playsInline: true, controls: false });
  const caption = styled("div", { font: "11px monospace", lineHeight: `${LINE_HEIGHT}px`, flex: "0 0 auto",
    color: "var(--input-text, #ddd)", opacity: "0.85", whiteSpace: "nowrap", overflow: "hidden",
    textOverflow: "ellipsis" }, "vsr-preview-caption");
  caption.textContent = "Pick a video to preview the frames this node will load.";
  box.append(video, caption);
  let aspect = 9 / 16;
  const captionHeight = LINE_HEIGHT + 2;
  const dom = node.addDOMWidget?.("vsr_preview", "vsr_preview", box, {
    serialize: false, hideOnZoom: false,
    margin: MARGIN,
    getMinHeight: () => widgetHeight(captionHeight +
      (video.style.display === "none" ? 0 : Math.max(60, ((node.size?.[0] ?? 300) - 2 * MARGIN) * aspect) + 2), MARGIN),
  });
  if (dom) dom.serialize = false;
  video.addEventListener("loadedmetadata", () => {
    if (video.videoWidth) aspect = video.videoHeight / video.videoWidth;
    fitNode(node);
  });

  let timer = null;
  let request = 0;
  let url = null;
  async function refresh() {
    const mine = ++request;
    const name = widget(node, "video")?.value ?? "";
    const path = widget(node, "path")?.value ?? "";
    if (!name && !path) return;
    const q = new URLSearchParams({ video: name, path, skip: widget(node, "skip_first_frames")?.value ?? 0,
      nth: widget(node, "select_every_nth")?.value ?? 1, cap: widget(node, "frame_load_cap")?.value ?? 0 });
    caption.textContent = "preparing preview…";
    try {
      const res = await api.fetchApi(`/vsr/preview?${q}`, { cache: "no-store" });
      if (mine !== request) return;  // a newer request is on its way
      if (!res.ok) {
        const err = await res.json().catch(() => ({}));
        video.style.display = "none";
        caption.textContent = `⚠ ${err.error ?? res.statusText}`;
        fitNode(node);
        return;
      }
      const info = JSON.parse(res.headers.get("X-VSR-Info") ?? "{}");
      const blob = await res.blob();
      if (mine !== request) return;
      if (url) URL.revokeObjectURL(url);
      url = URL.createObjectURL(blob);
      video.src = url;
      video.style.display = "";
      caption.textContent = describe(info);
      caption.title = caption.textContent;
      node.vsrPreviewInfo = info;
    } catch (e) {
      if (mine === request) caption.textContent = `⚠ preview failed: ${e}`;
    }
  }
  node.vsrRefreshPreview = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  };
  for (const name of WATCHED) {
    const w = widget(node, name);
    if (w) chain(w, "callback", () => node.vsrRefreshPreview());
  }
  chain(node, "onRemoved", () => url && URL.revokeObjectURL(url));
}

function describe(info) {
  const fps = (x) => (Math.round(x * 100) / 100).toString();
  let s = `${info.width}×${info.height} · ${info.selected}/${info.source_frames} frames @ ${fps(info.fps)} fps`;
  s += ` · source ${info.first}…${info.last}`;
  if (info.shown < info.selected) s += ` · preview: first ${info.shown}`;
  return s;
}

function addUploadButton(node) {
  const combo = widget(node, "video");
  const input = Object.assign(document.createElement("input"), { type: "file", accept: VIDEO_TYPES });
  input.style.display = "none";
  document.body.append(input);
  input.addEventListener("change", async () => {
    const file = input.files?.[0];
    if (!file) return;
    const body = new FormData();
    body.append("image", file);  // ComfyUI's upload route takes any file under this field
    body.append("type", "input");
    const res = await api.fetchApi("/upload/image", { method: "POST", body });
    input.value = "";
    if (!res.ok) {
      alert(`Upload of ${file.name} failed: ${res.status} ${res.statusText}`);
      return;
    }
    const data = await res.json();
    const name = data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
    const values = combo?.options?.values;
    if (Array.isArray(values) && !values.includes(name)) values.push(name);
    if (combo) {
      combo.value = name;
      combo.callback?.(name);
    }
  });
  const button = node.addWidget("button", "choose video to upload", null, () => input.click(), { serialize: false });
  if (button) button.serialize = false;
  chain(node, "onRemoved", () => input.remove());
  node.vsrUploadInput = input;
}

// ----------------------------------------------------------------------------------------- compare slider

function compareWidget(node) {
  if (node.vsrCompare) return node.vsrCompare;
  const box = styled("div", { display: "none", flexDirection: "column", gap: "2px", width: "100%" }, "vsr-compare");
  const stage = styled("div", { position: "relative", width: "100%", overflow: "hidden", cursor: "ew-resize",
    background: "#000", borderRadius: "4px" });
  const under = styled("img", { display: "block", width: "100%", height: "auto" }, "vsr-compare-b");
  const over = styled("img", { position: "absolute", left: "0", top: "0", width: "100%", height: "100%" },
    "vsr-compare-a");
  const line = styled("div", { position: "absolute", top: "0", bottom: "0", width: "2px", background: "#fff",
    boxShadow: "0 0 2px #000", pointerEvents: "none" });
  const tagStyle = { position: "absolute", top: "4px", font: "11px sans-serif", padding: "1px 4px",
    background: "rgba(0,0,0,.6)", color: "#fff", borderRadius: "3px", pointerEvents: "none" };
  const left = styled("span", { ...tagStyle, left: "4px" });
  const right = styled("span", { ...tagStyle, right: "4px" });
  stage.append(under, over, line, left, right);
  const slider = styled("input", { width: "100%", flex: "0 0 auto" }, "vsr-compare-frame");
  Object.assign(slider, { type: "range", min: 0, max: 0, step: 1, value: 0 });
  const caption = styled("div", { font: "11px monospace", lineHeight: `${LINE_HEIGHT}px`, flex: "0 0 auto",
    color: "var(--input-text, #ddd)", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" },
  "vsr-compare-caption");
  box.append(stage, slider, caption);
  let aspect = 9 / 16;
  const state = { pairs: [], split: 0.5 };
  const dom = node.addDOMWidget?.("vsr_compare", "vsr_compare", box, {
    serialize: false, hideOnZoom: false,
    margin: MARGIN,
    getMinHeight: () => (state.pairs.length
      ? widgetHeight(Math.max(80, ((node.size?.[0] ?? 300) - 2 * MARGIN) * aspect) +
        (state.pairs.length > 1 ? 24 : 0) + LINE_HEIGHT + 8, MARGIN)
      : 0),
  });
  if (dom) dom.serialize = false;
  under.addEventListener("load", () => {
    if (under.naturalWidth) aspect = under.naturalHeight / under.naturalWidth;
    fitNode(node);
  });

  const setSplit = (f) => {
    state.split = Math.min(1, Math.max(0, f));
    over.style.clipPath = `inset(0 ${100 - state.split * 100}% 0 0)`;
    line.style.left = `calc(${state.split * 100}% - 1px)`;
  };
  const move = (e) => {
    const r = stage.getBoundingClientRect();
    if (r.width > 0) setSplit((e.clientX - r.left) / r.width);
  };
  stage.addEventListener("pointermove", move);
  stage.addEventListener("pointerdown", move);
  const view = (p) => api.apiURL(`/view?${new URLSearchParams({ ...p, rand: Math.random() })}`);
  const show = (i) => {
    const p = state.pairs[i];
    if (!p) return;
    under.src = view(p.b);
    over.src = view(p.a);
    [left.textContent, right.textContent] = p.labels ?? ["input", "output"];
    caption.textContent = `frame ${p.index + 1}/${p.frames}` + (state.pairs.length > 1 ? " · slider: pick a frame" : "");
  };
  slider.addEventListener("input", () => show(Number(slider.value)));
  setSplit(0.5);
  node.vsrCompare = {
    element: box,
    set(pairs) {
      state.pairs = pairs ?? [];
      slider.max = Math.max(0, state.pairs.length - 1);
      slider.value = 0;
      slider.style.display = state.pairs.length > 1 ? "" : "none";
      box.style.display = state.pairs.length ? "flex" : "none";
      show(0);
      fitNode(node);
    },
    setSplit,
  };
  return node.vsrCompare;
}

// --------------------------------------------------------------------------------------------- extension

app.registerExtension({
  name: "DiffusionVSR.Video",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name ?? "").startsWith("VSR_")) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      if (message?.vsr_compare?.length) compareWidget(this).set(message.vsr_compare);
    });
    if (COMPARE_NODES.includes(nodeData.name)) {
      // made with the node, hidden until a result arrives: the Vue renderer does not always mount a DOM
      // widget added while a run finishes
      chain(nodeType.prototype, "onNodeCreated", function () {
        compareWidget(this);
      });
    }
    if (VIDEO_OUTPUT_NODES.includes(nodeData.name)) {
      // the Vue node renderer shows an output as a video only when the node says so (mp4/mkv), and as
      // pictures otherwise (a PNG sequence shows its first frame)
      chain(nodeType.prototype, "onNodeCreated", function () {
        this.previewMediaType = "video";
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        this.previewMediaType = message?.animated?.[0] === false ? "image" : "video";
      });
    }
    if (nodeData.name === "VSR_StreamUpscaleVideo") {
      chain(nodeType.prototype, "onNodeCreated", function () {
        addUploadButton(this);
      });
    }
    if (nodeData.name !== LOADER) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      addUploadButton(this);
      addLoaderPreview(this);
      this.vsrRefreshPreview();
    });
    // a loaded workflow sets the widget values after creation: preview what it selects
    chain(nodeType.prototype, "onConfigure", function () {
      this.vsrRefreshPreview?.();
    });
  },
});
