// The Attention tab's controls: menus, step slider, buttons, pointer and window events, wired to the
// controller (tab.js), whose state they read and whose methods they call.

import { THEMES } from "./colors.js";
import { setOptions } from "./dom.js";
import { naturalCompare, shortenMiddle } from "./labels.js";
import { followTheme, listenToTensorBoard } from "./tensorboard.js";

const REFRESH_MS = 30_000; // TensorBoard's own auto-reload period
const LAYER_CHARS = 44; // layer names longer than this are shortened in the middle (full name in title)

/**
 * Wires every control and event source to `tab`; once, when the tab is built.
 * @param {import("./tab.js").AttentionTab} tab
 */
export function bindControls(tab) {
  const ui = tab.ui;
  ui.runSelect.addEventListener("change", () => tab.select({ run: ui.runSelect.value }));
  ui.sampleSelect.addEventListener("change", () => tab.select({ sample: ui.sampleSelect.value }));
  ui.layerSelect.addEventListener("change", () => tab.select({ layer: ui.layerSelect.value }));
  ui.headSelect.addEventListener("change", () => {
    tab.head = ui.headSelect.value === "mean" ? "mean" : Number(ui.headSelect.value);
    tab.draw();
  });
  ui.heatmapButton.addEventListener("click", () => tab.setView("heatmap"));
  ui.linesButton.addEventListener("click", () => tab.setView("lines"));
  ui.stepInput.addEventListener("input", () => tab.setStepIndex(Number(ui.stepInput.value)));
  const tokenOf = (/** @type {Event} */ event) => /** @type {HTMLElement} */ (event.target).closest(".attnviz-token");
  ui.strip.addEventListener("mouseover", (/** @type {Event} */ e) => {
    const token = tokenOf(e);
    if (token) tab.setHover(Number(token.dataset.index));
  });
  ui.strip.addEventListener("mouseleave", () => tab.setHover(null));
  ui.strip.addEventListener("click", (/** @type {Event} */ e) => {
    const token = tokenOf(e);
    if (token) tab.togglePin(Number(token.dataset.index));
  });
  ui.canvas.addEventListener("mousemove", (/** @type {MouseEvent} */ e) => tab.onCanvasMove(e));
  ui.canvas.addEventListener("mouseleave", () => {
    tab.showCellHint();
    tab.setHover(null);
  });
  ui.canvas.addEventListener("click", (/** @type {MouseEvent} */ e) => {
    const hit = tab.hitCanvas(e);
    if (hit) tab.togglePin(hit.row);
  });
  ui.imageCanvas.addEventListener("mousemove", (/** @type {MouseEvent} */ e) => tab.onImageMove(e));
  ui.imageCanvas.addEventListener("mouseleave", () => tab.setHover(null));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && tab.pinned !== null) tab.togglePin(tab.pinned);
  });
  window.addEventListener("resize", () => tab.draw());
  window.addEventListener("focus", () => tab.refresh());
  setInterval(() => tab.refresh(), REFRESH_MS);
  listenToTensorBoard(() => tab.refresh({ force: true }));
  followTheme((dark) => {
    const theme = dark ? THEMES.dark : THEMES.light;
    if (theme !== tab.theme) {
      tab.theme = theme;
      tab.drawInteractive();
    }
  });
  tab.setView("heatmap");
}

/**
 * Fills run, sample and layer menus, keeping current choices; a new sample opens on its last layer.
 * @param {import("./tab.js").AttentionTab} tab
 */
export function syncSelectors(tab) {
  const ui = tab.ui;
  const runs = Object.keys(tab.runs || {});
  tab.run = setOptions(ui.runSelect, runs.map((r) => ({ value: r, text: r })), tab.run) || null;
  const samples = new Map(); // "sample_<i>" -> [layer, ...]
  for (const tag of (tab.runs && tab.run && tab.runs[tab.run]) || []) {
    const slash = tag.indexOf("/");
    if (slash < 0) continue;
    const sample = tag.slice(0, slash);
    if (!samples.has(sample)) samples.set(sample, []);
    samples.get(sample).push(tag.slice(slash + 1));
  }
  const sampleNames = [...samples.keys()].sort(naturalCompare);
  const sampleOptions = sampleNames.map((s) => ({ value: s, text: s.replace("_", " ") }));
  tab.sample = setOptions(ui.sampleSelect, sampleOptions, tab.sample) || null;
  const layers = [...(samples.get(tab.sample) || [])].sort(naturalCompare);
  const layerOptions = layers.map((l) => ({ value: l, text: shortenMiddle(l, LAYER_CHARS), title: l }));
  tab.layer = setOptions(ui.layerSelect, layerOptions, tab.layer, "last") || null;
}

/**
 * The step slider and its label, from `tab.steps` and `tab.stepIndex`.
 * @param {import("./tab.js").AttentionTab} tab
 */
export function syncSlider(tab) {
  const { stepInput, stepLabel } = tab.ui;
  stepInput.max = String(Math.max(0, tab.steps.length - 1));
  stepInput.value = String(Math.max(0, tab.stepIndex));
  stepInput.disabled = tab.steps.length < 2;
  const step = tab.steps[tab.stepIndex];
  stepLabel.textContent = step === undefined ? "step –" : `step ${step}`;
  stepInput.setAttribute("aria-valuetext", stepLabel.textContent);
}
