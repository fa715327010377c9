// The Attention tab: TensorBoard's frontend for the maps AttentionMonitor writes (see plugin.py).
//
// TensorBoard loads this ES module in an iframe (`/data/plugin_entry.html?name=attnviz`) and calls
// `render()`. Its sibling modules and style.css come from the plugin's `static/` route: TensorBoard's
// Content-Security-Policy lets the iframe load scripts, styles and data from TensorBoard itself only.
//
//   index.js    this entry point: the stylesheet, then the tab
//   tab.js      the controller: selection, loading, pointer, what to redraw
//   model.js    routes and a cache of decoded records
//   record.js   the record format (pure)          matrix.js   head mean, top keys, patches (pure)
//   labels.js   token names, bidi isolation (pure) colors.js   viridis from matplotlib (pure)
//   views.js    canvas: LUT → pixels, heatmap      lines.js    the lines view
//   overlay.js  the image overlay of vision maps  panels.js   token strip, top keys
//   dom.js      the layout                        tensorboard.js  reload messages, dark mode

import { AttentionTab } from "./tab.js";

const STYLESHEET = new URL("./style.css", import.meta.url);

/**
 * Links the stylesheet and resolves once it applies (or failed: the tab still works unstyled), so the
 * first layout measures styled elements.
 * @returns {Promise<void>}
 */
function loadStyle() {
  return new Promise((resolve) => {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = STYLESHEET.href;
    link.addEventListener("load", () => resolve());
    link.addEventListener("error", () => {
      console.warn(`attnviz: could not load ${STYLESHEET.href}`);
      resolve();
    });
    document.head.append(link);
  });
}

/**
 * TensorBoard's entry point: draws the Attention tab into `document.body`.
 * @returns {Promise<void>}
 */
export async function render() {
  await loadStyle();
  const tab = new AttentionTab(document.body);
  await tab.refresh({ force: true });
}
