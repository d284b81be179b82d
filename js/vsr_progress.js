// Progress that means something on long runs: "frames 12/48 · 3.1 s · ETA 9.4 s" (or step and frame for
// the samplers) on the running VSR node, from the pack's "vsr.progress" messages. A display-only DOM
// widget (not saved in the workflow), so it shows in the classic canvas and in the Vue node renderer.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { LINE_HEIGHT, fitNode, textBoxHeight, widgetHeight } from "./vsr_common.js";

const MARGIN = 4;

function progressElement(node) {
  if (node.vsrProgress) return node.vsrProgress;
  const el = document.createElement("div");
  el.className = "vsr-progress";
  Object.assign(el.style, {
    display: "none", font: "11px monospace", lineHeight: `${LINE_HEIGHT}px`, padding: "2px 6px",
    color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)", borderRadius: "4px",
    whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", boxSizing: "border-box",
  });
  // one line of text, once there is something to show (the node grows to make room: the classic canvas
  // gives a DOM widget no more than it asked for when the node was sized)
  const widget = node.addDOMWidget?.("vsr_progress", "vsr_progress", el, {
    serialize: false, margin: MARGIN,
    getMinHeight: () => (el.style.display === "none" ? 0 : widgetHeight(textBoxHeight(1, 2), MARGIN)),
    getMaxHeight: () => (el.style.display === "none" ? 0 : widgetHeight(textBoxHeight(1, 2), MARGIN)),
  });
  if (widget) widget.serialize = false;
  node.vsrProgress = el;
  return el;
}

function showLine(node, text, title) {
  const el = progressElement(node);
  el.textContent = text;
  el.title = title ?? text;
  if (el.style.display === "none") {
    el.style.display = "";
    fitNode(node);
  } else {
    node.setDirtyCanvas?.(true, false);
  }
}

app.registerExtension({
  name: "DiffusionVSR.Progress",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name ?? "").startsWith("VSR_")) return;
    // made with the node (hidden until a run reports): the Vue renderer does not always mount a DOM widget
    // added while a node runs
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      progressElement(this);
      return r;
    };
    // samplers return their VRAM / time estimate and outcome as ui text: keep it on the node after the run
    if (!/Sampler$/.test(String(nodeData.name))) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text == null) return;
      const lines = (Array.isArray(text) ? text.join("\n") : String(text)).split("\n").filter(Boolean);
      // the outcome on the line; the estimate, any out-of-memory retry and the outcome on hover
      showLine(this, lines[lines.length - 1] ?? "", lines.join("\n"));
    };
  },
  setup() {
    api.addEventListener("vsr.progress", ({ detail }) => {
      const node = app.graph?.getNodeById?.(detail?.node);
      if (!node || !String(node.type ?? "").startsWith("VSR_")) return;
      showLine(node, detail.text);
    });
  },
});
