// The Attention tab's controls: menus, step slider and its markers, buttons, pointer and window events,
// wired to the controller (tab.js), whose state they read and whose methods they call.

import { THEMES } from "./colors.js";
import { el, setOptions } from "./dom.js";
import { cellText, draw, drawInteractive, showCellHint } from "./draw.js";
import { naturalCompare, shortenMiddle } from "./labels.js";
import { hitOverview } from "./overview.js";
import { followTheme } from "./tensorboard.js";
import { hitPanels } from "./views.js";

const REFRESH_MS = 30_000; // TensorBoard's own auto-reload period
const LAYER_CHARS = 44; // layer names longer than this are shortened in the middle (full name in title)
const COMPARE_OPTIONS = [
  { value: "none", text: "nothing" },
  { value: "steps", text: "two steps" },
  { value: "heads", text: "every head" },
  { value: "runs", text: "two runs" },
];

/**
 * Wires every control and event source to `tab`; once, when the tab is built.
 * @param {import("./tab.js").AttentionTab} tab
 */
export function bindControls(tab) {
  const { ui, state } = tab;
  ui.runSelect.addEventListener("change", () => tab.select({ run: ui.runSelect.value }));
  ui.sampleSelect.addEventListener("change", () => tab.select({ sample: ui.sampleSelect.value }));
  ui.layerSelect.addEventListener("change", () => tab.select({ layer: ui.layerSelect.value }));
  ui.compareSelect.addEventListener("change", () => tab.select({ compare: /** @type {any} */ (ui.compareSelect.value) }));
  ui.step2Select.addEventListener("change", () => tab.select({ step2: Number(ui.step2Select.value) }));
  ui.run2Select.addEventListener("change", () => tab.select({ run2: ui.run2Select.value }));
  ui.headSelect.addEventListener("change", () => setHead(tab, ui.headSelect.value === "mean" ? "mean" : Number(ui.headSelect.value)));
  ui.scaleSelect.addEventListener("change", () => redraw(tab, { scale: /** @type {any} */ (ui.scaleSelect.value) }));
  ui.metricSelect.addEventListener("change", () => redraw(tab, { metric: ui.metricSelect.value }, false));
  ui.heatmapButton.addEventListener("click", () => setView(tab, "heatmap"));
  ui.linesButton.addEventListener("click", () => setView(tab, "lines"));
  ui.zoomReset.addEventListener("click", () => redraw(tab, { zoom: null }));
  ui.stepInput.addEventListener("input", () => tab.setStepIndex(Number(ui.stepInput.value)));
  ui.markers.addEventListener("click", (/** @type {MouseEvent} */ e) => {
    const mark = /** @type {HTMLElement} */ (e.target).closest(".attnviz-marker");
    if (mark) tab.setStepIndex(Number(mark.dataset.index));
  });
  bindStrip(tab);
  bindCanvas(tab);
  bindOverview(tab);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && tab.pinned !== null) tab.togglePin(tab.pinned);
  });
  let width = 0; // the body's width: a new scroll bar narrows it without a window resize
  new ResizeObserver(() => {
    if (ui.body.clientWidth === width || !tab.record) return;
    width = ui.body.clientWidth;
    redraw(tab, {});
  }).observe(ui.body);
  window.addEventListener("focus", () => tab.refresh());
  setInterval(() => tab.refresh(), REFRESH_MS);
  followTheme((dark) => {
    const theme = dark ? THEMES.dark : THEMES.light;
    if (theme !== tab.theme) {
      tab.theme = theme;
      drawInteractive(tab);
    }
  });
  setView(tab, state.view);
}

/**
 * A change that needs the panels painted again (scale, zoom, size, head), not new data.
 * @param {import("./tab.js").AttentionTab} tab
 * @param {Partial<import("./state.js").ViewState>} change
 * @param {boolean} [repaint]
 */
function redraw(tab, change, repaint = true) {
  Object.assign(tab.state, change);
  if (repaint) tab.painted = null;
  draw(tab);
}

/**
 * @param {import("./tab.js").AttentionTab} tab
 * @param {number | "mean"} head
 */
function setHead(tab, head) {
  redraw(tab, { head, compare: tab.state.compare === "heads" ? "none" : tab.state.compare });
  tab.ui.compareSelect.value = tab.state.compare;
  syncCompare(tab);
}

/**
 * @param {import("./tab.js").AttentionTab} tab
 * @param {"heatmap" | "lines"} view
 */
function setView(tab, view) {
  tab.ui.heatmapButton.setAttribute("aria-pressed", String(view === "heatmap"));
  tab.ui.linesButton.setAttribute("aria-pressed", String(view === "lines"));
  if (view === "lines" && tab.state.compare !== "none") {
    tab.state.compare = "none"; // lines show one map
    syncCompare(tab);
  }
  redraw(tab, { view });
}

/** @param {import("./tab.js").AttentionTab} tab */
function bindStrip(tab) {
  const ui = tab.ui;
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
  ui.imageCanvas.addEventListener("mousemove", (/** @type {MouseEvent} */ e) => {
    const layout = tab.imageLayout;
    if (!layout || !tab.record) return;
    const rect = ui.imageCanvas.getBoundingClientRect();
    const c = Math.floor(((e.clientX - rect.left) / layout.width) * layout.cols);
    const r = Math.floor(((e.clientY - rect.top) / layout.height) * layout.rows);
    const inside = r >= 0 && r < layout.rows && c >= 0 && c < layout.cols;
    const token = layout.prefix + r * layout.cols + c;
    tab.setHover(inside && token < tab.record.header.q ? token : null);
  });
  ui.imageCanvas.addEventListener("mouseleave", () => tab.setHover(null));
}

/**
 * The map's canvas: hover a row, click to pin it, drag a rectangle to zoom into it, click a head's
 * small multiple to open it. The lines view hovers the nearest query dot.
 * @param {import("./tab.js").AttentionTab} tab
 */
function bindCanvas(tab) {
  const { ui } = tab;
  const point = (/** @type {MouseEvent} */ e) => {
    const rect = ui.canvas.getBoundingClientRect();
    return { x: e.clientX - rect.left, y: e.clientY - rect.top };
  };
  const hit = (/** @type {{x: number, y: number}} */ p) => {
    const layout = tab.layout;
    if (!layout || !tab.record) return null;
    if (layout.kind === "heatmap") return hitPanels(layout, p.x, p.y);
    const row = Math.round((p.y - layout.top) / layout.rowQ - 0.5); // lines: the nearest query dot
    return row < 0 || row >= layout.q || p.x > layout.width * 0.5 ? null : { panel: 0, row, col: -1 };
  };
  ui.canvas.addEventListener("mousedown", (/** @type {MouseEvent} */ e) => {
    const p = point(e);
    const start = hit(p);
    if (start && tab.layout.kind === "heatmap") tab.drag = { start, x0: p.x, y0: p.y, x1: p.x, y1: p.y, moved: false };
  });
  ui.canvas.addEventListener("mousemove", (/** @type {MouseEvent} */ e) => {
    const p = point(e);
    const found = hit(p);
    if (tab.drag) {
      Object.assign(tab.drag, { x1: p.x, y1: p.y, end: found ?? tab.drag.end });
      tab.drag.moved ||= Math.hypot(p.x - tab.drag.x0, p.y - tab.drag.y0) > 6;
    }
    if (!found) {
      showCellHint(tab);
      tab.setHover(null);
      if (tab.drag) drawInteractive(tab);
      return;
    }
    if (found.col >= 0) ui.cellInfo.textContent = cellText(tab, found);
    tab.setHover(found.row);
    if (tab.drag?.moved) drawInteractive(tab);
  });
  ui.canvas.addEventListener("mouseleave", () => {
    showCellHint(tab);
    tab.setHover(null);
  });
  window.addEventListener("mouseup", (/** @type {MouseEvent} */ e) => {
    const drag = tab.drag;
    tab.drag = null;
    if (!drag) return;
    if (drag.moved && drag.end) return zoomTo(tab, drag.start, drag.end);
    const found = hit(point(e));
    if (!found) return;
    const heads = tab.state.compare === "heads" && tab.painted;
    if (heads) return setHead(tab, tab.painted.plan.maps[found.panel]?.head ?? tab.state.head);
    tab.togglePin(found.row);
  });
}

/**
 * Zooms to the map region between two displayed cells: every map cell of the blocks between them.
 * @param {import("./tab.js").AttentionTab} tab
 * @param {{i: number, j: number}} a
 * @param {{i: number, j: number}} b
 */
function zoomTo(tab, a, b) {
  if (!tab.painted) return;
  const { q, k } = tab.painted.grid;
  const cells = (/** @type {import("./blocks.js").AxisPlan} */ plan, /** @type {number} */ x, /** @type {number} */ y) => {
    let [lo, hi] = [Infinity, -Infinity];
    for (let n = Math.min(x, y); n <= Math.max(x, y); n++) [lo, hi] = [Math.min(lo, plan.first[n]), Math.max(hi, plan.last[n])];
    return [lo, hi + 1];
  };
  const [q0, q1] = cells(q, a.i, b.i);
  const [k0, k1] = cells(k, a.j, b.j);
  redraw(tab, { zoom: { q0, q1, k0, k1 } });
}

/**
 * The overview card: hover a cell for its value, click it to open that layer and head.
 * @param {import("./tab.js").AttentionTab} tab
 */
function bindOverview(tab) {
  const { ui } = tab;
  const cellAt = (/** @type {MouseEvent} */ e) => {
    const layout = tab.overviewLayout;
    if (!layout) return null;
    const rect = ui.overviewCanvas.getBoundingClientRect();
    const found = hitOverview(layout, e.clientX - rect.left, e.clientY - rect.top);
    return found ? { ...found, layer: layout.record.layers[found.row], record: layout.record } : null;
  };
  ui.overviewCanvas.addEventListener("mousemove", (/** @type {MouseEvent} */ e) => {
    const found = cellAt(e);
    if (!found) return;
    const metric = found.record.metrics.find((/** @type {any} */ m) => m.name === tab.state.metric);
    const row = metric ? metric.values[found.row] : [];
    const values = found.head === "mean" ? row.filter((/** @type {any} */ v) => v !== null) : [row[found.head]];
    const value = values.length && values[0] !== null && values[0] !== undefined
      ? (values.reduce((/** @type {number} */ s, /** @type {number} */ v) => s + v, 0) / values.length).toFixed(metric.decimals + 1)
      : "no value";
    const head = found.head === "mean" ? "mean over heads" : `head ${found.head}`;
    ui.overviewHint.dataset.hovering = "1";
    ui.overviewHint.textContent = `${found.layer} · ${head}: ${value}`;
  });
  ui.overviewCanvas.addEventListener("mouseleave", () => {
    delete ui.overviewHint.dataset.hovering;
    draw(tab);
  });
  ui.overviewCanvas.addEventListener("click", (/** @type {MouseEvent} */ e) => {
    const found = cellAt(e);
    if (!found) return;
    const layers = layerValues(tab);
    const clean = found.layer.replace(/[^\p{L}\p{N}_.\-/]/gu, "_"); // sinks/tags.py's clean()
    if (!layers.includes(clean)) {
      ui.overviewHint.textContent = `${found.layer} has no map for ${tab.state.sample} (not in the tab's layers)`;
      return;
    }
    tab.state.head = found.head;
    if (tab.state.compare === "heads") tab.state.compare = "none";
    if (clean !== tab.state.layer) tab.select({ layer: clean });
    else redraw(tab, {});
    syncCompare(tab);
  });
}

/**
 * The layers of the chosen run and sample (tag suffixes).
 * @param {import("./tab.js").AttentionTab} tab
 * @returns {string[]}
 */
function layerValues(tab) {
  const { run, sample } = tab.state;
  return ((tab.runs && run && tab.runs[run]) || [])
    .filter((tag) => tag.startsWith(`${sample}/`))
    .map((tag) => tag.slice(String(sample).length + 1));
}

/**
 * Fills run, sample and layer menus, keeping current choices; a new sample opens on its last layer.
 * @param {import("./tab.js").AttentionTab} tab
 */
export function syncSelectors(tab) {
  const { ui, state } = tab;
  const runs = Object.keys(tab.runs || {});
  state.run = setOptions(ui.runSelect, runs.map((r) => ({ value: r, text: r })), state.run) || null;
  const samples = new Map(); // "sample_<i>" -> [layer, ...]
  for (const tag of (tab.runs && state.run && tab.runs[state.run]) || []) {
    const slash = tag.indexOf("/");
    if (slash < 0) continue;
    const sample = tag.slice(0, slash);
    if (!samples.has(sample)) samples.set(sample, []);
    samples.get(sample).push(tag.slice(slash + 1));
  }
  const sampleNames = [...samples.keys()].sort(naturalCompare);
  const sampleOptions = sampleNames.map((s) => ({ value: s, text: s.replace("_", " ") }));
  state.sample = setOptions(ui.sampleSelect, sampleOptions, state.sample) || null;
  const layers = [...(samples.get(state.sample) || [])].sort(naturalCompare);
  const layerOptions = layers.map((l) => ({ value: l, text: shortenMiddle(l, LAYER_CHARS), title: l }));
  state.layer = setOptions(ui.layerSelect, layerOptions, state.layer, "last") || null;
  setOptions(ui.compareSelect, COMPARE_OPTIONS, state.compare);
}

/**
 * The comparison's menus: the other step (compare "steps"), the other run (compare "runs", among the
 * runs that logged this sample and layer). Returns the other run, or null.
 * @param {import("./tab.js").AttentionTab} tab
 * @returns {string | null}
 */
export function syncCompare(tab) {
  const { ui, state } = tab;
  state.compare = /** @type {any} */ (setOptions(ui.compareSelect, COMPARE_OPTIONS, state.compare));
  const stepField = /** @type {HTMLElement} */ (ui.step2Select.closest(".attnviz-field"));
  const runField = /** @type {HTMLElement} */ (ui.run2Select.closest(".attnviz-field"));
  stepField.hidden = state.compare !== "steps";
  runField.hidden = state.compare !== "runs";
  if (state.compare === "steps") {
    const current = tab.steps[tab.stepIndex];
    const others = tab.steps.map((s) => ({ value: String(s), text: `step ${s}` }));
    const fallback = String(tab.steps.find((s) => s !== current) ?? current ?? "");
    const wanted = state.step2 !== null && tab.steps.includes(state.step2) ? String(state.step2) : fallback;
    const chosen = setOptions(ui.step2Select, others, wanted);
    state.step2 = chosen === "" ? null : Number(chosen);
  }
  if (state.compare !== "runs") return null;
  const tag = tab.tag;
  const runs = Object.entries(tab.runs || {})
    .filter(([run, tags]) => run !== state.run && tag !== null && tags.includes(tag))
    .map(([run]) => ({ value: run, text: run }));
  ui.run2Select.disabled = runs.length === 0;
  if (!runs.length) {
    setOptions(ui.run2Select, [{ value: "", text: "no other run logged this layer" }], "");
    state.run2 = null;
    return null;
  }
  state.run2 = setOptions(ui.run2Select, runs, state.run2) || null;
  return state.run2;
}

/**
 * The step slider, its label and its markers, from `tab.steps`, `tab.stepIndex` and `tab.markers`.
 * @param {import("./tab.js").AttentionTab} tab
 */
export function syncSlider(tab) {
  const { stepInput, stepLabel, markers, markerText } = tab.ui;
  const { steps, stepIndex } = tab;
  stepInput.max = String(Math.max(0, steps.length - 1));
  stepInput.value = String(Math.max(0, stepIndex));
  stepInput.disabled = steps.length < 2;
  const step = steps[stepIndex];
  if (step === undefined) stepLabel.textContent = "step –";
  else if (!tab.record || tab.record.header.step !== step) stepLabel.textContent = `step ${step}`;
  stepInput.setAttribute("aria-valuetext", stepLabel.textContent);
  // a marker sits at the first kept step at or after its own step; its text shows there
  const placed = tab.markers
    .map((m) => ({ ...m, index: steps.findIndex((s) => s >= m.step) }))
    .filter((m) => m.index >= 0);
  markers.replaceChildren(
    ...placed.map((m) => {
      const mark = el("button", { class: "attnviz-marker", type: "button", "data-index": String(m.index),
        title: `step ${m.step}: ${m.texts.join("; ")}`, "aria-label": `marker at step ${m.step}: ${m.texts.join("; ")}` });
      mark.style.left = `calc(8px + (100% - 16px) * ${steps.length > 1 ? m.index / (steps.length - 1) : 0})`;
      return mark;
    }),
  );
  const here = placed.filter((m) => m.index === stepIndex);
  markerText.textContent = here.map((m) => `◆ step ${m.step}: ${m.texts.join("; ")}`).join(" · ");
  markerText.hidden = here.length === 0;
}
