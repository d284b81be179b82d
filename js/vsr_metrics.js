// Shows the figures of "Video Metrics (VSR)" on the node after a run (PSNR, SSIM, warping error).
// Uses only the frontend's public app object and the node's DOM-widget API, so it works in the classic
// canvas and in the Vue node renderer.
import { app } from "../../scripts/app.js";

const NODE = "VSR_VideoMetrics";
const PLACEHOLDER = "Run the graph: PSNR / SSIM (RGB and Y) and, with a reference flow, the warping error appear here.";

function showText(node, text) {
  if (node.vsrFigures) node.vsrFigures.textContent = text;
}

app.registerExtension({
  name: "DiffusionVSR.VideoMetrics",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const el = document.createElement("pre");
      el.className = "vsr-metrics";
      Object.assign(el.style, {
        margin: "0", padding: "4px 6px", whiteSpace: "pre-wrap", overflow: "auto",
        font: "12px monospace", color: "var(--input-text, #ddd)",
        background: "var(--comfy-input-bg, #222)", borderRadius: "4px",
      });
      el.textContent = PLACEHOLDER;
      this.vsrFigures = el;
      const widget = this.addDOMWidget?.("figures", "vsr_figures", el, { serialize: false, getMinHeight: () => 96 });
      if (widget) widget.serialize = false;  // display only: keeps widgets_values to the real inputs
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text != null) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
