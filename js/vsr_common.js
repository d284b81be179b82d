// Shared by the pack's frontend extensions: sizing display-only DOM widgets from their content, so what they
// show is never clipped, in the classic (LiteGraph) canvas, which gives a DOM widget the height its
// getMinHeight asks for and no more, and in the Vue node renderer alike.

export const LINE_HEIGHT = 16; // px; the widgets set this line height on their text

// Grow the node to what its widgets now need (never shrink what the user made larger).
export function fitNode(node) {
  const want = node.computeSize?.();
  if (want && node.size && (want[0] > node.size[0] || want[1] > node.size[1])) {
    node.setSize?.([Math.max(node.size[0], want[0]), Math.max(node.size[1], want[1])]);
  }
  node.setDirtyCanvas?.(true, true);
}

let measure = null;

// Lines ``text`` takes when wrapped (white-space: pre-wrap) in ``width`` px of ``font``.
export function wrappedLines(text, width, font) {
  measure ??= document.createElement("canvas").getContext("2d");
  measure.font = font;
  const perLine = Math.max(1, Math.floor(width / (measure.measureText("0").width || 7)));
  return String(text).split("\n").reduce((n, line) => n + Math.max(1, Math.ceil(line.length / perLine)), 0);
}

// Height in px of a text box holding ``lines`` lines with ``padY`` px of padding above and below (+ 2 px of
// rounding slack).
export function textBoxHeight(lines, padY) {
  return lines * LINE_HEIGHT + 2 * padY + 2;
}

// What a DOM widget must ask for to show ``content`` px: the classic canvas draws the element ``margin`` px
// inside the height it gives the widget, on both sides (the frontend's default margin is 10 px).
export function widgetHeight(content, margin) {
  return content + 2 * margin;
}

const measured = new Map();

// The height ``el`` needs for its text at its current width (an invisible copy of it is measured; cached by
// text and width). Before it is laid out, ``fallback()``.
export function contentHeight(el, fallback) {
  const width = el.clientWidth;
  if (!width || !el.isConnected) return fallback();
  const key = `${width}|${el.textContent}`;
  if (!measured.has(key)) {
    const copy = el.cloneNode(true);
    Object.assign(copy.style, { position: "fixed", left: "-10000px", top: "0", visibility: "hidden",
      width: `${width}px`, height: "auto", maxHeight: "none" });
    document.body.append(copy);
    measured.set(key, Math.ceil(copy.getBoundingClientRect().height) + 1);
    copy.remove();
    if (measured.size > 200) measured.delete(measured.keys().next().value);
  }
  return measured.get(key);
}
