// The overview: the layer × head matrix of one metric at the current step (the matrices the logged
// attention/stats/<metric> pictures show, from the run's overview records), and one head's metric over
// all steps as a small line. Colours as the pictures': viridis from the metric's low to its high.
//
// The helpers at the top are pure (node's test runner imports them); the drawing needs a canvas.

import { MASKED_RGB, entry } from "./scale.js";
import { sizeCanvas } from "./views.js";
import { VIRIDIS } from "./viridis.js";

/**
 * @typedef {object} OverviewMetric
 * @property {string} name
 * @property {string} title
 * @property {string} meaning
 * @property {number | null} low
 * @property {number | null} high
 * @property {string[]} ends
 * @property {number} decimals
 * @property {Array<Array<number | null>>} values  layers × heads, null: no value
 *
 * @typedef {object} OverviewRecord
 * @property {number} step
 * @property {number | null} epoch
 * @property {string[]} layers
 * @property {OverviewMetric[]} metrics
 *
 * @typedef {object} OverviewLayout
 * @property {number} left
 * @property {number} top
 * @property {number} cellW
 * @property {number} cellH
 * @property {number} rows
 * @property {number} cols  heads, then the mean column
 */

/**
 * The record of `step`, else of the latest step before it, else null.
 * @param {OverviewRecord[]} records  in step order
 * @param {number} step
 * @returns {OverviewRecord | null}
 */
export function overviewAt(records, step) {
  let found = null;
  for (const record of records) if (record.step <= step) found = record;
  return found;
}

/**
 * A row's value for `head`, or the row's mean over its heads' values ("mean"); NaN for none.
 * @param {Array<number | null>} row
 * @param {number | "mean"} head
 * @returns {number}
 */
export function valueOf(row, head) {
  if (head !== "mean") return row[head] ?? Number.NaN;
  const known = /** @type {number[]} */ (row.filter((v) => v !== null && Number.isFinite(v)));
  return known.length ? known.reduce((a, b) => a + b, 0) / known.length : Number.NaN;
}

/**
 * One head's (or the layer's mean) value of a metric at every step that has it.
 * @param {OverviewRecord[]} records
 * @param {string} metric
 * @param {string} layer
 * @param {number | "mean"} head
 * @returns {Array<{step: number, value: number}>}
 */
export function seriesOf(records, metric, layer, head) {
  const out = [];
  for (const record of records) {
    const m = record.metrics.find((x) => x.name === metric);
    const row = record.layers.indexOf(layer);
    if (!m || row < 0) continue;
    const value = valueOf(m.values[row], head);
    if (Number.isFinite(value)) out.push({ step: record.step, value });
  }
  return out;
}

/**
 * The next 1, 2 or 5 × 10^k at or above `value` (render/stats.py's `_nice`: a colour bar's top).
 * @param {number} value
 */
export function nice(value) {
  if (!(value > 0) || !Number.isFinite(value)) return 1;
  const base = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * base).find((v) => v >= value * (1 - 1e-9)) ?? 10 * base;
}

/**
 * The colour range of a metric's matrix: its fixed range, or 0 to a nice top of its values.
 * @param {OverviewMetric} metric
 * @returns {[number, number]}
 */
export function colorRange(metric) {
  const low = metric.low ?? 0;
  if (metric.high !== null) return [low, metric.high];
  let max = 0;
  for (const row of metric.values) for (const v of row) if (v !== null && v > max) max = v;
  return [low, nice(max)];
}

/**
 * The matrix: layers down (first on top), heads across, then the layer's mean over heads; the chosen
 * head outlined. Returns where the cells are, for the pointer.
 * @param {HTMLCanvasElement} canvas
 * @param {OverviewRecord} record
 * @param {OverviewMetric} metric
 * @param {{row: number, head: number | "mean"} | null} chosen
 * @param {import("./colors.js").Theme} theme
 * @param {number} width  CSS px
 * @returns {OverviewLayout}
 */
export function drawOverview(canvas, record, metric, chosen, theme, width) {
  const rows = record.layers.length;
  const heads = Math.max(1, ...metric.values.map((r) => r.length));
  const cols = heads + 1;
  const left = 26;
  const top = 14;
  const cellW = Math.max(3, Math.min(22, (width - left - 6) / (cols + 0.5)));
  const cellH = Math.max(3, Math.min(16, 180 / rows));
  const gap = cellW / 2; // between the heads and the mean column
  const ctx = sizeCanvas(canvas, width, Math.round(top + rows * cellH + 4));
  const [low, high] = colorRange(metric);
  const x = (/** @type {number} */ c) => left + c * cellW + (c === heads ? gap : 0);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = valueOf(metric.values[r], c === heads ? "mean" : c);
      const rgb = Number.isFinite(v) ? VIRIDIS.subarray(entry((v - low) / (high - low)) * 3) : MASKED_RGB;
      ctx.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
      ctx.fillRect(x(c), top + r * cellH, cellW - (cellW > 6 ? 1 : 0), cellH - (cellH > 6 ? 1 : 0));
    }
  }
  ctx.font = "10px Roboto, Arial, sans-serif";
  ctx.fillStyle = theme.muted;
  ctx.textBaseline = "bottom";
  ctx.textAlign = "center";
  const every = Math.max(1, Math.ceil(14 / cellW));
  for (let c = 0; c < heads; c += every) ctx.fillText(String(c), x(c) + cellW / 2, top - 2);
  ctx.fillText("μ", x(heads) + cellW / 2, top - 2);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const everyRow = Math.max(1, Math.ceil(11 / cellH));
  for (let r = 0; r < rows; r += everyRow) ctx.fillText(`L${r}`, left - 4, top + (r + 0.5) * cellH);
  if (chosen && chosen.row >= 0) {
    const c = chosen.head === "mean" ? heads : chosen.head;
    ctx.strokeStyle = theme.accent;
    ctx.lineWidth = 2;
    ctx.strokeRect(x(c) - 1, top + chosen.row * cellH - 1, cellW + 1, cellH + 1);
  }
  Object.assign(canvas.dataset, { left: String(left), top: String(top), cellW: String(cellW), cellH: String(cellH) });
  return { left, top, cellW, cellH, rows, cols, gap, heads };
}

/**
 * The layer row and head (or "mean") under a point of the overview, or null.
 * @param {OverviewLayout & {gap: number, heads: number}} layout
 * @param {number} x
 * @param {number} y
 * @returns {{row: number, head: number | "mean"} | null}
 */
export function hitOverview(layout, x, y) {
  const row = Math.floor((y - layout.top) / layout.cellH);
  let col = Math.floor((x - layout.left) / layout.cellW);
  if (col >= layout.heads) col = Math.floor((x - layout.left - layout.gap) / layout.cellW);
  if (row < 0 || row >= layout.rows || col < 0 || col > layout.heads) return null;
  return { row, head: col === layout.heads ? "mean" : col };
}

/**
 * A small line of one head's metric over the steps, the current step and the markers marked.
 * @param {HTMLCanvasElement} canvas
 * @param {Array<{step: number, value: number}>} series
 * @param {number | null} current
 * @param {number[]} marked  steps with markers
 * @param {[number, number]} range  the metric's colour range, the line's vertical range
 * @param {import("./colors.js").Theme} theme
 * @param {number} width
 */
export function drawSparkline(canvas, series, current, marked, range, theme, width) {
  const height = 56;
  const ctx = sizeCanvas(canvas, width, height);
  const [pad, top, bottom] = [30, 6, height - 14];
  canvas.dataset.points = String(series.length);
  if (!series.length) return;
  const steps = series.map((p) => p.step);
  const first = Math.min(...steps);
  const last = Math.max(...steps, first + 1);
  const low = Math.min(range[0], ...series.map((p) => p.value));
  const high = Math.max(range[1], ...series.map((p) => p.value));
  const px = (/** @type {number} */ s) => pad + ((s - first) / (last - first)) * (width - pad - 6);
  const py = (/** @type {number} */ v) => bottom - ((v - low) / (high - low || 1)) * (bottom - top);
  ctx.strokeStyle = theme.frame;
  ctx.lineWidth = 1;
  ctx.strokeRect(pad - 0.5, top - 0.5, width - pad - 5, bottom - top + 1);
  ctx.strokeStyle = `rgba(${theme.lineActive}, 0.55)`;
  for (const m of marked) if (m >= first && m <= last) {
    ctx.beginPath();
    ctx.moveTo(px(m), top);
    ctx.lineTo(px(m), bottom);
    ctx.stroke();
  }
  ctx.strokeStyle = `rgb(${theme.line})`;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  series.forEach((p, i) => (i ? ctx.lineTo(px(p.step), py(p.value)) : ctx.moveTo(px(p.step), py(p.value))));
  ctx.stroke();
  const now = series.find((p) => p.step === current);
  if (now) {
    ctx.fillStyle = theme.accent;
    ctx.beginPath();
    ctx.arc(px(now.step), py(now.value), 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.font = "10px Roboto, Arial, sans-serif";
  ctx.fillStyle = theme.muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(String(+high.toPrecision(2)), pad - 3, top + 2);
  ctx.fillText(String(+low.toPrecision(2)), pad - 3, bottom - 2);
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(`step ${first}`, pad, bottom + 2);
  ctx.textAlign = "right";
  ctx.fillText(`${last}`, width - 6, bottom + 2);
}
