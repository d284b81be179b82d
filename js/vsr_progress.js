// Progress that means something on long runs: "frames 12/48 · 3.1 s · ETA 9.4 s" (or step and frame for
// the samplers) on the running VSR node, from the pack's "vsr.progress" messages. A display-only DOM
// widget (not saved in the workflow), so it shows in the classic canvas and in the Vue node renderer.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

function progressElement(node) {
  if (node.vsrProgress) return node.vsrProgress;
  const el = document.createElement("div");
  el.className = "vsr-progress";
  Object.assign(el.style, {
    display: "none", font: "11px monospace", padding: "2px 6px", color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)", borderRadius: "4px", whiteSpace: "nowrap", overflow: "hidden",
  });
  const widget = node.addDOMWidget?.("vsr_progress", "vsr_progress", el, {
    serialize: false, getMinHeight: () => (el.textContent ? 20 : 0),
  });
  if (widget) widget.serialize = false;
  node.vsrProgress = el;
  return el;
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
      const el = progressElement(this);
      const lines = (Array.isArray(text) ? text.join("\n") : String(text)).split("\n").filter(Boolean);
      el.textContent = lines[lines.length - 1] ?? "";
      el.title = lines.join("\n");  // the estimate, any out-of-memory retry, the outcome
      el.style.display = "";
      this.setDirtyCanvas?.(true, false);
    };
  },
  setup() {
    api.addEventListener("vsr.progress", ({ detail }) => {
      const node = app.graph?.getNodeById?.(detail?.node);
      if (!node || !String(node.type ?? "").startsWith("VSR_")) return;
      const el = progressElement(node);
      el.textContent = detail.text;
      el.style.display = "";
      node.setDirtyCanvas?.(true, false);
    });
  },
});
