// Shows the figures of "Video Metrics (VSR)" on the node after a run (PSNR, SSIM, warping error).
// Uses only the frontend's public app object and the node's DOM-widget API, so it works in the classic
// canvas and in the Vue node renderer.
import { app } from "../../scripts/app.js";
import { LINE_HEIGHT, contentHeight, fitNode, textBoxHeight, widgetHeight, wrappedLines } from "./vsr_common.js";

const NODE = "VSR_VideoMetrics";
const PLACEHOLDER = "Run the graph: PSNR / SSIM (RGB and Y) and, with a reference flow, the warping error appear here.";

const FONT = "12px monospace";
const PAD = 4;
const MARGIN = 6;

function showText(node, text) {
  if (!node.vsrFigures) return;
  node.vsrFigures.textContent = text;
  fitNode(node);
}

// every line of the figures, wrapped at the node's width: the classic canvas gives the box no more
function figuresHeight(node, el) {
  const estimate = () => textBoxHeight(wrappedLines(el.textContent, (node.size?.[0] ?? 300) - 2 * MARGIN - 12, FONT),
    PAD);
  return widgetHeight(contentHeight(el, estimate), MARGIN);
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
        margin: "0", padding: `${PAD}px 6px`, whiteSpace: "pre-wrap", overflowWrap: "anywhere", overflow: "hidden",
        font: FONT, lineHeight: `${LINE_HEIGHT}px`, color: "var(--input-text, #ddd)", boxSizing: "border-box",
        background: "var(--comfy-input-bg, #222)", borderRadius: "4px",
      });
      el.textContent = PLACEHOLDER;
      this.vsrFigures = el;
      const widget = this.addDOMWidget?.("figures", "vsr_figures", el, {
        serialize: false, margin: MARGIN, getMinHeight: () => figuresHeight(this, el),
      });
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
