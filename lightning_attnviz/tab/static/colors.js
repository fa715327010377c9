// Colours: matplotlib's viridis (generated into viridis.js, so the tab and the PNGs agree), the gray
// of masked and non-finite cells (render.py's MASKED_RGB), and the canvas themes.
// Pure: no DOM, so node's test runner imports it (tests/js).

import { VIRIDIS } from "./viridis.js";

/** 256 RGB entries, matplotlib's viridis. */
export const LUT = VIRIDIS;

/** Masked (padding, causal future) and non-finite cells: gray, not a weight. */
export const MASKED_RGB = [215, 215, 215];

/**
 * The LUT entry of `value` on a scale from 0 to `vmax`, as matplotlib picks it: floor(256·t), clipped.
 * @param {number} value
 * @param {number} vmax
 * @returns {number}
 */
export function colorIndex(value, vmax) {
  if (!(vmax > 0)) return 0;
  return Math.max(0, Math.min(255, Math.floor((value / vmax) * 256)));
}

/**
 * @typedef {object} Theme
 * @property {string} text
 * @property {string} muted
 * @property {string} accent
 * @property {string} frame
 * @property {string} line  "r, g, b" of the lines view
 * @property {string} lineActive
 * @property {string} dot
 */

/** Canvas colours, following TensorBoard's light or dark mode. @type {{light: Theme, dark: Theme}} */
export const THEMES = {
  light: {
    text: "#424242",
    muted: "#757575",
    frame: "#9e9e9e",
    dot: "#616161",
    accent: "#e65100",
    line: "33, 102, 172",
    lineActive: "230, 81, 0",
  },
  dark: {
    text: "#dadce0",
    muted: "#a8abb0",
    frame: "#80868b",
    dot: "#bdbdbd",
    accent: "#ffa726",
    line: "120, 180, 240",
    lineActive: "255, 167, 38",
  },
};
