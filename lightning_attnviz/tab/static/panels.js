// The DOM panels beside the plot: the token strip and the top-keys card.

import { el } from "./dom.js";
import { isolate, tokenName, topKeyLine } from "./labels.js";
import { topKeys } from "./matrix.js";

const TOP_KEYS = 5; // keys listed for the hovered query

/**
 * One row per query token (index and isolated label) in the strip; returns the rows.
 * @param {HTMLElement} strip
 * @param {string[]} labels
 * @returns {HTMLElement[]}
 */
export function buildStrip(strip, labels) {
  const tokens = labels.map((label, i) =>
    el("div", { class: "attnviz-token", "data-index": String(i), title: `query ${i}: ${isolate(label)}` }, [
      el("i", { text: String(i) }),
      el("b", { text: isolate(label) }),
    ]),
  );
  strip.replaceChildren(el("div", { class: "attnviz-strip-title", text: "Queries" }), ...tokens);
  return tokens;
}

/**
 * Marks the active and pinned tokens, and scrolls the active one into the strip's view by hand
 * (scrollIntoView would also scroll TensorBoard's page around the iframe).
 * @param {HTMLElement} strip
 * @param {HTMLElement[]} tokens
 * @param {number | null} active
 * @param {number | null} pinned
 */
export function markStrip(strip, tokens, active, pinned) {
  for (const token of strip.querySelectorAll(".attnviz-active, .attnviz-pinned")) {
    token.classList.remove("attnviz-active", "attnviz-pinned");
  }
  const token = active === null ? undefined : tokens[active];
  if (token) {
    token.classList.add("attnviz-active");
    if (!strip.matches(":hover")) {
      // a hover from the canvas or the image, not from the strip itself
      if (token.offsetTop < strip.scrollTop) strip.scrollTop = token.offsetTop;
      else if (token.offsetTop + token.offsetHeight > strip.scrollTop + strip.clientHeight) {
        strip.scrollTop = token.offsetTop + token.offsetHeight - strip.clientHeight;
      }
    }
  }
  if (pinned !== null && tokens[pinned]) tokens[pinned].classList.add("attnviz-pinned");
}

/**
 * The top-keys card: the active query's strongest keys, each with its position ("i@3  0.989").
 * @param {{topTitle: HTMLElement, topKeysBox: HTMLElement}} ui
 * @param {import("./record.js").Header} header
 * @param {import("./matrix.js").Matrix} matrix
 * @param {number | null} active
 * @param {boolean} pinned  whether the active query is the pinned one
 */
export function showTopKeys(ui, header, matrix, active, pinned) {
  if (active === null || active >= header.q) {
    ui.topTitle.textContent = "Hover a query token or a heatmap row.";
    ui.topTitle.className = "attnviz-hint";
    ui.topKeysBox.textContent = "";
    return;
  }
  ui.topTitle.textContent = `${tokenName(header, active)}${pinned ? " (pinned)" : ""}`;
  ui.topTitle.className = "";
  ui.topKeysBox.textContent = topKeys(matrix, active, TOP_KEYS)
    .map(({ key, weight }) => topKeyLine(header.k_labels[key], key, weight))
    .join("\n");
}
