// Composing the tab from the controller's state: the map panels (or the lines view), the image overlay,
// the colour scale card, the overview card, and the address. `draw` runs when the selection or the
// size changes; `drawInteractive` when only the hovered or pinned query does.

import { blockLabels, poolingNote } from "./blocks.js";
import { gridFor, paintPanels, planPanels } from "./compare.js";
import { setOptions, setTicks } from "./dom.js";
import { formatWeight, isolate } from "./labels.js";
import { LINES_TOP_K, drawLines } from "./lines.js";
import { matrixOf } from "./matrix.js";
import { colorRange, drawOverview, drawSparkline, overviewAt, seriesOf } from "./overview.js";
import { drawOverlay } from "./overlay.js";
import { buildStrip, markStrip, showTopKeys } from "./panels.js";
import { SCALES } from "./scale.js";
import { drawBar, drawPanels } from "./views.js";

/** @typedef {import("./tab.js").AttentionTab} Tab */

const SCALE_OPTIONS = Object.entries({ log: SCALES.log.name, linear: SCALES.linear.name }).map(([value, text]) => ({
  value,
  text,
}));

/**
 * Everything that depends on the records, the head, the scale, the comparison or the size.
 * @param {Tab} tab
 */
export function draw(tab) {
  const { record, ui, state } = tab;
  if (!record || ui.main.hidden) return;
  const { header } = record;
  const labels = header.q_labels.join("\u0000");
  if (tab.tokens === null || tab.tokensFor !== labels) {
    tab.tokens = buildStrip(ui.strip, header.q_labels);
    tab.tokensFor = labels;
  }
  const options = [{ value: "mean", text: header.heads > 1 ? `mean of ${header.heads}` : "mean" }];
  for (let h = 0; h < header.heads; h++) options.push({ value: String(h), text: `head ${h}` });
  const head = setOptions(ui.headSelect, options, String(state.head));
  state.head = head === "mean" ? "mean" : Number(head);
  setOptions(ui.scaleSelect, SCALE_OPTIONS, state.scale);
  ui.heatmapButton.setAttribute("aria-pressed", String(state.view === "heatmap")); // also when the address chose
  ui.linesButton.setAttribute("aria-pressed", String(state.view === "lines"));
  const headText = state.head === "mean" ? "mean over heads" : `head ${state.head}`;
  ui.info.textContent = `${header.q} queries × ${header.k} keys · ${header.heads} heads · ${headText}`;
  ui.note.textContent = header.note || "";
  ui.note.hidden = !header.note;
  ui.stepLabel.textContent = stepText(header);
  ui.stepInput.setAttribute("aria-valuetext", ui.stepLabel.textContent);
  drawOverviewCard(tab); // first: the side column has its final width when the plot's room is measured
  const lines = state.view === "lines" && state.compare === "none";
  if (!tab.painted) showCellHint(tab); // a new picture: the text of a cell of the old one goes
  tab.painted = lines ? null : tab.painted || paint(tab);
  drawScale(tab);
  tab.writeAddress();
  drawInteractive(tab);
  if (tab.selectedAt !== null) {
    // from the choice (or the page's start) to its picture: the browser test reads it
    ui.canvas.dataset.drawnMs = (performance.now() - tab.selectedAt).toFixed(1);
    tab.selectedAt = null;
  }
}

/**
 * "step 384 · epoch 3" (records before the epoch was written: "step 384").
 * @param {import("./record.js").Header} header
 */
export function stepText(header) {
  return header.epoch === undefined || header.epoch === null
    ? `step ${header.step}`
    : `step ${header.step} · epoch ${header.epoch}`;
}

/**
 * The panels of the view, painted once per selection.
 * @param {Tab} tab
 */
function paint(tab) {
  const { state } = tab;
  const record = /** @type {import("./record.js").AttnRecord} */ (tab.record);
  const runLabel = (/** @type {0 | 1} */ which) => String(which ? state.run2 : state.run);
  const plan = planPanels({ compare: state.compare, head: state.head, runLabel }, record, tab.other);
  const count = plan.maps.length + (plan.change ? 1 : 0);
  const room = plotRoom(tab, count > 1);
  const rowsOfPanels = Math.ceil(count / plan.perRow);
  const panelRoom = { width: (room.width - 60) / plan.perRow - 16, height: (room.height - 30) / rowsOfPanels - 40 };
  const grid = gridFor(record.header, state.zoom, panelRoom);
  const started = performance.now();
  const { panels, span } = paintPanels(plan, grid, state.scale);
  const selected = state.compare === "heads" ? panels.map((_, n) => plan.maps[n]?.head === state.head) : [];
  panels.forEach((p, n) => Object.assign(p, { selected: Boolean(selected[n]) }));
  tab.ui.canvas.dataset.paintMs = (performance.now() - started).toFixed(1);
  return { plan, grid, panels, span, room };
}

/**
 * CSS px for the plot: the window minus the token strip and the side column, and what is above.
 * @param {Tab} tab
 * @param {boolean} several  panels side by side get more width
 */
function plotRoom(tab, several) {
  const { ui } = tab;
  const vision = Boolean(tab.record && tab.record.header.image);
  // the body less its padding, the token strip, the side column and the gaps between them
  const free = ui.body.clientWidth - 2 * 16 - ui.strip.offsetWidth - ui.side.offsetWidth - 2 * 16;
  const width = Math.max(240, Math.min(free - 4, several ? 1100 : 660));
  const top = ui.canvas.getBoundingClientRect().top + window.scrollY;
  const height = vision ? 320 : Math.max(240, Math.min(window.innerHeight - top - 70, several ? 760 : 660));
  return { width: Math.min(width, vision && !several ? 420 : width), height };
}

/**
 * Everything that also depends on the hovered or pinned query.
 * @param {Tab} tab
 */
export function drawInteractive(tab) {
  const { record, ui, state } = tab;
  if (!record || ui.main.hidden) return;
  const matrix = matrixOf(record, state.head);
  const vision = Boolean(record.header.image);
  ui.imagePanel.hidden = !vision;
  ui.mapTitle.hidden = !vision;
  tab.imageLayout = null;
  if (vision) {
    const width = Math.max(240, Math.min(ui.body.clientWidth - ui.strip.offsetWidth - ui.side.offsetWidth - 64, 480));
    const { layout, caption } = drawOverlay(ui.imageCanvas, record, matrix, tab.active, width);
    ui.imageCanvas.hidden = !layout;
    ui.imageCaption.textContent = caption;
    tab.imageLayout = layout;
  }
  const painted = tab.painted;
  if (painted) {
    tab.layout = drawPanels(ui.canvas, painted.panels, {
      grid: painted.grid, perRow: painted.plan.perRow, header: record.header, active: tab.active, theme: tab.theme,
      room: painted.room,
    });
    drawDrag(tab);
    ui.zoomInfo.textContent = zoomText(record.header, painted.grid, painted.plan.notice);
    ui.zoomReset.hidden = state.zoom === null;
  } else {
    tab.layout = drawLines(ui.canvas, matrix, record.header, tab.active, tab.theme, plotRoom(tab, false));
    ui.zoomInfo.textContent = "";
    ui.zoomReset.hidden = true;
  }
  if (!tab.hover) showCellHint(tab);
  showTopKeys(ui, record.header, matrix, tab.active, tab.active !== null && tab.active === tab.pinned);
  if (tab.tokens) markStrip(ui.strip, tab.tokens, tab.active, tab.pinned);
  ui.strip.style.maxHeight = `${Math.max(200, ui.plot.clientHeight)}px`;
}

/**
 * What the plot shows of the map: all of it or a region, every cell or pooled by the rule, and how to
 * zoom.
 * @param {import("./record.js").Header} header
 * @param {import("./views.js").Grid} grid
 * @param {string} notice
 */
export function zoomText(header, grid, notice) {
  const { region } = grid;
  const whole = region.q0 === 0 && region.k0 === 0 && region.q1 === header.q && region.k1 === header.k;
  const part = whole
    ? `all ${header.q} × ${header.k} cells`
    : `queries ${region.q0}–${region.q1 - 1} × keys ${region.k0}–${region.k1 - 1} of ${header.q} × ${header.k}`;
  const pooled = grid.pooled ? ` · ${poolingNote(grid.q, grid.k, grid.qInfo, grid.kInfo)}` : "";
  const hint = grid.pooled || !whole || header.q > 32 ? " · drag over the map to zoom" : "";
  return [`${part}${pooled}${hint}`, notice].filter(Boolean).join(" · ");
}

/** @param {Tab} tab */
function drawDrag(tab) {
  const { drag, layout, ui } = tab;
  if (!drag || !drag.moved || !layout) return;
  const ctx = /** @type {CanvasRenderingContext2D} */ (ui.canvas.getContext("2d"));
  ctx.save();
  ctx.setLineDash([4, 3]);
  ctx.strokeStyle = tab.theme.accent;
  ctx.lineWidth = 1.5;
  ctx.strokeRect(Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1), Math.abs(drag.x1 - drag.x0), Math.abs(drag.y1 - drag.y0));
  ctx.restore();
}

/** @param {Tab} tab */
export function showCellHint(tab) {
  const { state, ui } = tab;
  ui.cellInfo.textContent =
    state.view === "lines" && state.compare === "none"
      ? `left: queries · right: their top ${LINES_TOP_K} keys, opacity: how far above uniform · hover a query, click to pin it`
      : "rows: queries · columns: keys · gray: masked · hover a row, click to pin it";
}

/**
 * The text under the plot for a hovered cell of panel `n`: its query and key (a pooled block: the
 * tokens it holds, named as the pictures name them) and its weight or change.
 * @param {Tab} tab
 * @param {{panel: number, row: number, col: number, i: number, j: number}} hit
 */
export function cellText(tab, hit) {
  const painted = tab.painted;
  const header = /** @type {import("./record.js").AttnRecord} */ (tab.record).header;
  if (!painted) return "";
  const { grid, panels } = painted;
  const panel = panels[hit.panel];
  grid.labels ||= {
    q: grid.q.pooled ? blockLabels(grid.q, header.q_labels, grid.qInfo) : header.q_labels,
    k: grid.k.pooled ? blockLabels(grid.k, header.k_labels, grid.kInfo) : header.k_labels,
  };
  const one = (/** @type {import("./blocks.js").AxisPlan} */ plan, /** @type {number} */ b) =>
    !plan.pooled || (b < plan.alone && plan.sizes[b] === 1);
  const query = one(grid.q, hit.i) ? `query ${hit.row} ${isolate(header.q_labels[hit.row])}` : `queries ${isolate(grid.labels.q[hit.i])}`;
  const key = one(grid.k, hit.j) ? `key ${hit.col} ${isolate(header.k_labels[hit.col])}` : `keys ${isolate(grid.labels.k[hit.j])}`;
  const index = (hit.i - grid.row0) * grid.cols + (hit.j - grid.col0);
  const m = panel.matrix;
  const at = hit.i * m.k + hit.j;
  let value;
  if (panel.deltas) value = Number.isFinite(panel.deltas[index]) ? `change ${formatSigned(panel.deltas[index])}` : "masked";
  else value = m.hidden[at] ? "masked" : formatWeight(m.values[at]);
  const title = panel.title ? `${panel.title}: ` : "";
  const block = grid.pooled && !panel.deltas && !(one(grid.q, hit.i) && one(grid.k, hit.j));
  return `${title}${query} → ${key}: ${value}${block ? " (block: rows averaged, keys summed)" : ""}`;
}

/** @param {number} value */
function formatSigned(value) {
  return `${value >= 0 ? "+" : "−"}${formatWeight(Math.abs(value))}`;
}

/**
 * The colour scale card: the chosen scale's bar, ticks and meaning, and the change scale when shown.
 * @param {Tab} tab
 */
function drawScale(tab) {
  const { ui, state, painted } = tab;
  const scale = SCALES[state.scale];
  drawBar(ui.colorbar, scale.lut);
  setTicks(ui.ticks, scale.ticks);
  ui.scaleMeaning.textContent = scale.meaning;
  const span = painted ? painted.span : null;
  ui.changeBox.hidden = span === null;
  if (span !== null) {
    drawBar(ui.changeBar, SCALES.change.lut);
    const s = formatWeight(span);
    setTicks(ui.changeTicks, [[0, `−${s}`, "less"], [0.5, "0", "same"], [1, `+${s}`, "more"]]);
    ui.changeMeaning.textContent =
      `${painted.plan.changeTitle.replace(/^change: /, "")}, weight by weight: red = more weight on that key in ` +
      `the right map than in the left, blue = less, white = the same; the ends are ±${s}, the largest change shown`;
  }
}

/**
 * The overview card: the chosen metric's layer × head matrix at this step, and the chosen head's line.
 * @param {Tab} tab
 */
function drawOverviewCard(tab) {
  const { ui, state } = tab;
  const header = /** @type {import("./record.js").AttnRecord} */ (tab.record).header;
  const here = overviewAt(tab.overviews, header.step);
  ui.overviewCard.hidden = !here;
  tab.overviewLayout = null;
  if (!here) return;
  const names = here.metrics.map((/** @type {any} */ m) => ({ value: m.name, text: m.name, title: m.title }));
  state.metric = setOptions(ui.metricSelect, names, state.metric) || null;
  const metric = here.metrics.find((/** @type {any} */ m) => m.name === state.metric);
  if (!metric) return;
  const exact = here.step === header.step ? "" : ` (step ${here.step})`;
  ui.overviewTitle.textContent = `${metric.title} · ${stepText(here)}${exact}`;
  ui.overviewTitle.title = metric.meaning;
  const row = here.layers.indexOf(header.layer);
  const width = ui.overviewCard.clientWidth - 26 || 240;
  tab.overviewLayout = drawOverview(ui.overviewCanvas, here, metric, { row, head: state.head }, tab.theme, width);
  tab.overviewLayout.record = here;
  if (!ui.overviewHint.dataset.hovering) {
    ui.overviewHint.textContent = "rows: layers (L0 first) · columns: heads, μ their mean · click a cell to open that head";
  }
  const headName = state.head === "mean" ? "mean over heads" : `head ${state.head}`;
  const series = row >= 0 ? seriesOf(tab.overviews, metric.name, header.layer, state.head) : [];
  ui.sparkTitle.textContent = row >= 0 ? `${metric.name} over steps · ${headName}` : `${header.layer} is not in the overview`;
  const marked = tab.markers.map((m) => m.step);
  drawSparkline(ui.sparkline, series, header.step, marked, colorRange(metric), tab.theme, width);
}
