// What the heatmap view shows side by side: one map; two steps and their change; two runs and their
// change; every head of the layer. Each panel is painted once per selection, one pixel per displayed
// cell, on the one colour scale chosen; a map too large for its room is shown pooled by the pictures'
// rule (blocks.js: first tokens alone, squares of patches, contiguous blocks; queries averaged, keys
// summed), and a zoomed region at full resolution once it fits.

import { axisInfo, blockRange, planAxis } from "./blocks.js";
import { matrixOf, poolMatrix } from "./matrix.js";
import { SCALES, changePlaces, places, rgba } from "./scale.js";
import { paintPixels } from "./views.js";

/**
 * @typedef {import("./record.js").AttnRecord} AttnRecord
 * @typedef {import("./matrix.js").Matrix} Matrix
 * @typedef {import("./state.js").Region} Region
 *
 * @typedef {object} Source  one map of a panel: a record's head (or head mean) and its title
 * @property {AttnRecord} record
 * @property {number | "mean"} head
 * @property {string} title
 *
 * @typedef {object} Plan  what to paint
 * @property {Source[]} maps  one per panel; a change panel follows when `change`
 * @property {boolean} change  a last panel: maps[1] − maps[0]
 * @property {string} changeTitle  that panel's title, and what its colours mean
 * @property {number} perRow
 * @property {string} notice  said under the plot ("" for nothing)
 */

/**
 * The panels of the current selection.
 * @param {{compare: string, head: number | "mean", runLabel: (which: 0 | 1) => string}} view
 * @param {AttnRecord} a  the selected run and step
 * @param {AttnRecord | null} b  the other step or run (compare "steps" / "runs")
 * @returns {Plan}
 */
export function planPanels(view, a, b) {
  const stepTitle = (/** @type {AttnRecord} */ r) =>
    r.header.epoch === undefined || r.header.epoch === null
      ? `step ${r.header.step}`
      : `step ${r.header.step} · epoch ${r.header.epoch}`;
  const one = { maps: [{ record: a, head: view.head, title: "" }], change: false, changeTitle: "", perRow: 1, notice: "" };
  if (view.compare === "heads") {
    const heads = a.header.heads;
    const maps = [...Array(heads).keys()].map((h) => ({ record: a, head: h, title: `head ${h}` }));
    maps.push({ record: a, head: /** @type {"mean"} */ ("mean"), title: "mean of heads" });
    const perRow = Math.ceil(Math.sqrt(maps.length * 1.5));
    return { maps, change: false, changeTitle: "", perRow, notice: "click a head to open it" };
  }
  if ((view.compare !== "steps" && view.compare !== "runs") || !b) return one;
  const same = a.header.q === b.header.q && a.header.k === b.header.k;
  if (!same) {
    const notice = `the other map is ${b.header.q} × ${b.header.k}, this one ${a.header.q} × ${a.header.k}: not comparable cell by cell`;
    return { ...one, notice };
  }
  const title = (/** @type {AttnRecord} */ r, /** @type {0 | 1} */ which) =>
    view.compare === "runs" ? `${view.runLabel(which)} · ${stepTitle(r)}` : stepTitle(r);
  // two steps: the earlier on the left, so the change reads forward in training
  const [left, right] = view.compare === "steps" && b.header.step < a.header.step ? [b, a] : [a, b];
  const changeTitle =
    view.compare === "runs"
      ? `change: ${view.runLabel(1)} − ${view.runLabel(0)}`
      : `change: step ${right.header.step} − step ${left.header.step}`;
  return {
    maps: [
      { record: left, head: view.head, title: title(left, left === a ? 0 : 1) },
      { record: right, head: view.head, title: title(right, right === a ? 0 : 1) },
    ],
    change: true,
    changeTitle,
    perRow: 3,
    notice: "",
  };
}

/**
 * The displayed grid: the zoomed region (or the whole map) of the map pooled by the pictures' rule
 * (blocks.js) to about one CSS pixel of `panelRoom` per displayed cell at least: the whole map is
 * pooled, so a cell's colour keeps its place in its whole row, and the blocks that show the region are
 * displayed.
 * @param {import("./record.js").Header} header
 * @param {Region | null} zoom
 * @param {{width: number, height: number}} panelRoom  CSS px for one panel
 * @returns {import("./views.js").Grid}
 */
export function gridFor(header, zoom, panelRoom) {
  const region = clipRegion(zoom, header);
  const reduce = Math.max(
    (region.q1 - region.q0) / Math.max(panelRoom.height, 1),
    (region.k1 - region.k0) / Math.max(panelRoom.width, 1),
  );
  const limit = (/** @type {number} */ n) => (reduce > 1 ? Math.max(1, Math.floor(n / reduce)) : null);
  const qInfo = axisInfo(header, "q");
  const kInfo = axisInfo(header, "k");
  const q = planAxis(header.q, limit(header.q), qInfo);
  const k = planAxis(header.k, limit(header.k), kInfo);
  const [row0, row1] = blockRange(q, region.q0, region.q1);
  const [col0, col1] = blockRange(k, region.k0, region.k1);
  const pooled = q.pooled || k.pooled;
  return { q, k, qInfo, kInfo, row0, col0, rows: row1 - row0, cols: col1 - col0, pooled, region };
}

/**
 * `zoom` within the map, or the whole map.
 * @param {Region | null} zoom
 * @param {{q: number, k: number}} size
 * @returns {Region}
 */
export function clipRegion(zoom, size) {
  if (!zoom) return { q0: 0, q1: size.q, k0: 0, k1: size.k };
  const q0 = Math.max(0, Math.min(zoom.q0, size.q - 1));
  const k0 = Math.max(0, Math.min(zoom.k0, size.k - 1));
  return { q0, q1: Math.max(q0 + 1, Math.min(zoom.q1, size.q)), k0, k1: Math.max(k0 + 1, Math.min(zoom.k1, size.k)) };
}

/**
 * The matrix a panel shows (pooled by the grid's plans), and the grid's displayed blocks in its cells.
 * @param {Matrix} matrix
 * @param {import("./views.js").Grid} grid
 * @returns {{shown: Matrix, region: Region}}
 */
export function shownMatrix(matrix, grid) {
  const shown = poolMatrix(matrix, grid.q, grid.k);
  return { shown, region: { q0: grid.row0, q1: grid.row0 + grid.rows, k0: grid.col0, k1: grid.col0 + grid.cols } };
}

/**
 * Paints every panel of `plan` on `grid`: offscreen canvases, one pixel per displayed cell.
 * @param {Plan} plan
 * @param {import("./views.js").Grid} grid
 * @param {"log" | "linear"} scale
 * @returns {{panels: Array<{cells: HTMLCanvasElement, title: string, matrix: Matrix, deltas?: Float32Array}>, span: number | null}}
 */
export function paintPanels(plan, grid, scale) {
  const panels = [];
  const shown = plan.maps.map((source) => shownMatrix(matrixOf(source.record, source.head), grid));
  plan.maps.forEach((source, n) => {
    const { shown: m, region } = shown[n];
    const pixels = rgba(places(m, scale, region), SCALES[scale].lut);
    const cells = paintPixels(document.createElement("canvas"), grid.cols, grid.rows, pixels);
    panels.push({ cells, title: source.title, matrix: m });
  });
  let span = null;
  if (plan.change) {
    const change = changePlaces(shown[0].shown, shown[1].shown, shown[0].region);
    const cells = paintPixels(document.createElement("canvas"), grid.cols, grid.rows, rgba(change.places, SCALES.change.lut));
    panels.push({ cells, title: plan.changeTitle, matrix: shown[1].shown, deltas: change.deltas });
    span = change.span;
  }
  return { panels, span };
}
