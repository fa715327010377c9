// The canvas themes, following TensorBoard's light or dark mode. (The colour tables and scales are
// scale.js's, the same as the logged pictures'.) Pure: no DOM.

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
