// Canvas drawing: cells → pixels, and the panels of the heatmap view (one map, or side by side).
//
// A map is painted one pixel per displayed cell on an offscreen canvas, then scaled up without
// smoothing: large maps stay fast, and cells stay sharp squares.

import { isolate } from "./labels.js";

export const MONO = '11px "Roboto Mono", Menlo, Consolas, monospace';
const TITLE_FONT = '500 12px Roboto, Arial, sans-serif';
const MAX_CELL = 40; // CSS px: tiny maps don't become giant blocks
export const LABEL_MIN_CELL = 11; // CSS px: below this, labels would overlap and ticks are drawn instead
const GAP = 16; // CSS px between panels
const TITLE_H = 18; // CSS px of a panel's title

/**
 * A canvas sized in CSS pixels, backed at the device pixel ratio; returns its cleared 2D context.
 * @param {HTMLCanvasElement} canvas
 * @param {number} width
 * @param {number} height
 * @returns {CanvasRenderingContext2D}
 */
export function sizeCanvas(canvas, width, height) {
  const ratio = globalThis.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(width * ratio));
  const h = Math.max(1, Math.round(height * ratio));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return ctx;
}

/**
 * `pixels` (RGBA, width·height) onto `canvas`, one pixel each.
 * @param {HTMLCanvasElement} canvas
 * @param {number} width
 * @param {number} height
 * @param {Uint8ClampedArray} pixels
 * @returns {HTMLCanvasElement}
 */
export function paintPixels(canvas, width, height, pixels) {
  canvas.width = width;
  canvas.height = height;
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  const image = ctx.createImageData(width, height);
  image.data.set(pixels);
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/**
 * Labels every n-th token so that labels are at least ~36 px apart.
 * @param {number} count
 * @param {number} size  CSS px for all `count`
 */
export function tickStep(count, size) {
  const steps = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500, 1000];
  return steps.find((n) => (size / count) * n >= 36) ?? count;
}

/**
 * `text` cut with an ellipsis to fit `maxWidth` CSS px, then isolated (see labels.isolate).
 * @param {CanvasRenderingContext2D} ctx
 * @param {string} text
 * @param {number} maxWidth
 */
export function fitLabel(ctx, text, maxWidth) {
  let cut = text;
  if (ctx.measureText(cut).width > maxWidth) {
    while (cut.length > 1 && ctx.measureText(`${cut}…`).width > maxWidth) cut = cut.slice(0, -1);
    cut = `${cut}…`;
  }
  return isolate(cut);
}

/**
 * @typedef {object} Panel
 * @property {HTMLCanvasElement} cells  one pixel per displayed cell
 * @property {string} title  "" for none
 * @property {boolean} [selected]  outlined (the head a small multiple stands for)
 *
 * @typedef {object} Grid  what is displayed: `rows` × `cols` blocks of the map pooled by the plans
 *   (blocks.js; every block one cell when not pooled), from block `row0` and `col0`
 * @property {import("./blocks.js").AxisPlan} q
 * @property {import("./blocks.js").AxisPlan} k
 * @property {import("./blocks.js").AxisInfo} qInfo
 * @property {import("./blocks.js").AxisInfo} kInfo
 * @property {number} row0
 * @property {number} col0
 * @property {number} rows
 * @property {number} cols
 * @property {boolean} pooled
 * @property {{q0: number, q1: number, k0: number, k1: number}} region  the map cells asked for
 * @property {{q: string, k: string}} [groups]  the plans' groups as text, for the page's inspectors
 * @property {{q: string[], k: string[]}} [labels]  per block, as the pictures label it (cached on hover)
 *
 * @typedef {object} PanelsLayout
 * @property {"heatmap"} kind
 * @property {number} left  CSS px from the canvas' left edge to the first panel's first column
 * @property {number} top  to the first panel's first row
 * @property {number} cell  CSS px per displayed cell
 * @property {number} perRow  panels per row
 * @property {number} stepX  CSS px from one panel's origin to the next one's
 * @property {number} stepY
 * @property {number} count
 * @property {Grid} grid
 */

/**
 * The heatmap view: one panel (a map) or several side by side (steps, runs, heads), queries down and
 * keys across, labelled with the tokens when cells are large enough, the active row framed.
 * @param {HTMLCanvasElement} canvas
 * @param {Panel[]} panels
 * @param {{grid: Grid, perRow: number, header: import("./record.js").Header, active: number | null,
 *   theme: import("./colors.js").Theme, room: {width: number, height: number}}} options
 * @returns {PanelsLayout}
 */
export function drawPanels(canvas, panels, { grid, perRow, header, active, theme, room }) {
  const measure = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  measure.font = MONO;
  const rowsOfPanels = Math.ceil(panels.length / perRow);
  const titled = panels.some((p) => p.title);
  const titleH = titled ? TITLE_H : 0;
  const across = perRow * grid.cols + (perRow - 1) * (GAP / LABEL_MIN_CELL);
  const guess = Math.min(MAX_CELL, room.width / across, room.height / (rowsOfPanels * grid.rows));
  const labelled = !grid.pooled && guess >= LABEL_MIN_CELL;
  const qLabels = header.q_labels.slice(grid.row0, grid.row0 + grid.rows);
  const kLabels = header.k_labels.slice(grid.col0, grid.col0 + grid.cols);
  const widest = (/** @type {string[]} */ labels) => Math.max(0, ...labels.map((s) => measure.measureText(s).width));
  const left = labelled ? Math.min(110, widest(qLabels) + 12) : 40;
  const upright = widest(kLabels) <= guess - 2; // else turned to read upwards
  const keyH = labelled ? (upright ? 20 : Math.min(90, widest(kLabels) + 12)) : 22;
  const top = titleH + keyH;
  const cellW = (room.width - left - (perRow - 1) * GAP - 12) / (perRow * grid.cols);
  const cellH = (room.height - rowsOfPanels * top - (rowsOfPanels - 1) * GAP) / (rowsOfPanels * grid.rows);
  const cell = Math.max(0.25, Math.min(MAX_CELL, cellW, cellH));
  const stepX = cell * grid.cols + GAP;
  const stepY = top + cell * grid.rows + GAP;
  const width = Math.round(left + perRow * stepX - GAP + 12);
  const height = Math.round(rowsOfPanels * stepY - GAP + 8);
  const ctx = sizeCanvas(canvas, width, height);
  ctx.imageSmoothingEnabled = false;
  panels.forEach((panel, n) => {
    const x = left + (n % perRow) * stepX;
    const y = top + Math.floor(n / perRow) * stepY;
    ctx.drawImage(panel.cells, x, y, cell * grid.cols, cell * grid.rows);
    ctx.strokeStyle = panel.selected ? theme.accent : theme.frame;
    ctx.lineWidth = panel.selected ? 2 : 1;
    ctx.strokeRect(x - 0.5, y - 0.5, cell * grid.cols + 1, cell * grid.rows + 1);
    if (panel.title) {
      ctx.font = TITLE_FONT;
      ctx.fillStyle = theme.text;
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.fillText(fitLabel(ctx, panel.title, stepX - GAP), x, y - top + 1);
    }
    const labels = { labelled, upright, qLabels, kLabels, rowLabels: n % perRow === 0 };
    drawAxes(ctx, x, y, cell, grid, labels, theme);
    drawActive(ctx, x, y, cell, grid, active, theme);
  });
  // the geometry, also for whoever inspects the page (the browser test probes cells with it): map cell
  // (r, c) is displayed block (qGroup[r] - row0, kGroup[c] - col0)
  grid.groups ||= { q: grid.q.group.join(","), k: grid.k.group.join(",") };
  Object.assign(canvas.dataset, {
    left: String(left), top: String(top), cell: String(cell), stepX: String(stepX), stepY: String(stepY),
    perRow: String(perRow), q0: String(grid.region.q0), k0: String(grid.region.k0), row0: String(grid.row0),
    col0: String(grid.col0), pooled: grid.pooled ? "1" : "0", qGroup: grid.groups.q, kGroup: grid.groups.k,
    titles: JSON.stringify(panels.map((p) => p.title)),
  });
  return { kind: "heatmap", left, top, cell, perRow, stepX, stepY, count: panels.length, grid };
}

/**
 * Token labels (or position ticks) along a panel's rows and columns.
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} x
 * @param {number} y
 * @param {number} cell
 * @param {Grid} grid
 * @param {{labelled: boolean, upright: boolean, qLabels: string[], kLabels: string[], rowLabels: boolean}} labels
 * @param {import("./colors.js").Theme} theme
 */
function drawAxes(ctx, x, y, cell, grid, { labelled, upright, qLabels, kLabels, rowLabels }, theme) {
  ctx.font = labelled ? MONO : "10px Roboto, Arial, sans-serif";
  ctx.fillStyle = labelled ? theme.text : theme.muted;
  if (labelled) {
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    if (rowLabels) qLabels.forEach((label, i) => ctx.fillText(fitLabel(ctx, label, x - 10), x - 6, y + (i + 0.5) * cell));
    if (upright) {
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      kLabels.forEach((label, j) => ctx.fillText(isolate(label), x + (j + 0.5) * cell, y - 5));
    } else {
      ctx.save();
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      kLabels.forEach((label, j) => ctx.fillText(fitLabel(ctx, label, 80), -(y - 6), x + (j + 0.5) * cell));
      ctx.restore();
    }
    return;
  }
  // positions of the map (not of the displayed cells): a zoomed or pooled map says where it is
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  if (rowLabels) {
    const every = tickStep(grid.rows, cell * grid.rows);
    for (let i = 0; i < grid.rows; i += every) ctx.fillText(String(grid.q.first[grid.row0 + i]), x - 4, y + (i + 0.5) * cell);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  const everyK = tickStep(grid.cols, cell * grid.cols);
  for (let j = 0; j < grid.cols; j += everyK) ctx.fillText(String(grid.k.first[grid.col0 + j]), x + (j + 0.5) * cell, y - 4);
}

/**
 * Frames the active query's row (a map row: a pooled view frames the block holding it).
 * @param {CanvasRenderingContext2D} ctx
 * @param {number} x
 * @param {number} y
 * @param {number} cell
 * @param {Grid} grid
 * @param {number | null} active
 * @param {import("./colors.js").Theme} theme
 */
function drawActive(ctx, x, y, cell, grid, active, theme) {
  if (active === null) return;
  if (active < 0 || active >= grid.q.group.length) return;
  const row = grid.q.group[active] - grid.row0;
  if (row < 0 || row >= grid.rows) return;
  const top = y + row * cell;
  const h = Math.max(cell, 2);
  ctx.strokeStyle = theme.accent;
  ctx.lineWidth = 2;
  ctx.strokeRect(x - 1, top - 1, cell * grid.cols + 2, h + 2);
  const right = x + cell * grid.cols;
  ctx.fillStyle = theme.accent;
  ctx.beginPath(); // a marker right of the row: findable when rows are a pixel high
  ctx.moveTo(right + 2, top + h / 2);
  ctx.lineTo(right + 7, top + h / 2 - 4);
  ctx.lineTo(right + 7, top + h / 2 + 4);
  ctx.fill();
}

/**
 * Which panel and map cell a point (CSS px from the canvas' corner) falls on, or null.
 * @param {PanelsLayout} layout
 * @param {number} x
 * @param {number} y
 * @returns {{panel: number, row: number, col: number, i: number, j: number} | null}  row and col: the
 *   first map cell of the displayed block i, j (the cell itself when not pooled)
 */
export function hitPanels(layout, x, y) {
  const { left, top, cell, perRow, stepX, stepY, count, grid } = layout;
  const px = Math.floor((x - left + (stepX - cell * grid.cols) / 2) / stepX);
  const py = Math.floor((y - top + (stepY - cell * grid.rows) / 2) / stepY);
  const panel = py * perRow + px;
  if (px < 0 || px >= perRow || py < 0 || panel >= count) return null;
  const col = Math.floor((x - left - px * stepX) / cell);
  const row = Math.floor((y - top - py * stepY) / cell);
  if (row < 0 || row >= grid.rows || col < 0 || col >= grid.cols) return null;
  const i = grid.row0 + row;
  const j = grid.col0 + col;
  return { panel, row: grid.q.first[i], col: grid.k.first[j], i, j };
}

/**
 * A colour bar: the table as a ramp, one pixel per entry.
 * @param {HTMLCanvasElement} canvas
 * @param {Uint8ClampedArray} lut
 */
export function drawBar(canvas, lut) {
  const pixels = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    pixels.set(lut.subarray(i * 3, i * 3 + 3), i * 4);
    pixels[i * 4 + 3] = 255;
  }
  paintPixels(canvas, 256, 1, pixels);
}
