// Canvas drawing: the one LUT → pixels routine, the heatmap and the colour bar.
//
// A map is painted one pixel per (query, key) cell on an offscreen canvas, then scaled up without
// smoothing, so maps of 512+ tokens stay fast.

import { LUT, MASKED_RGB, colorIndex } from "./colors.js";
import { isolate } from "./labels.js";

export const MONO = '11px "Roboto Mono", Menlo, Consolas, monospace';
const MAX_CELL = 40; // CSS px: tiny maps don't become giant blocks
export const LABEL_MIN_CELL = 11; // CSS px: below this, labels would overlap and ticks are drawn instead

/**
 * @typedef {object} HeatmapLayout
 * @property {"heatmap"} kind
 * @property {number} left  CSS px from the canvas' left edge to the first column
 * @property {number} top
 * @property {number} cell  CSS px per cell
 * @property {number} q
 * @property {number} k
 */

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
 * The one LUT → pixels routine: `values` (row-major, width·height) coloured on a scale from 0 to `vmax`
 * into `canvas`, one pixel per value. Hidden and non-finite cells are gray.
 * @param {HTMLCanvasElement} canvas
 * @param {number} width
 * @param {number} height
 * @param {ArrayLike<number>} values
 * @param {number} vmax
 * @param {{hidden?: Uint8Array | null, alpha?: ((t: number) => number) | null}} [options]
 *   alpha: opacity 0–255 from the value's place t in [0, 1] on the scale (default opaque)
 * @returns {HTMLCanvasElement}
 */
export function paintLut(canvas, width, height, values, vmax, { hidden = null, alpha = null } = {}) {
  canvas.width = width;
  canvas.height = height;
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  const image = ctx.createImageData(width, height);
  const data = image.data;
  for (let i = 0; i < width * height; i++) {
    const value = values[i];
    const gray = (hidden && hidden[i]) || !Number.isFinite(value);
    const c = colorIndex(value, vmax) * 3;
    data[i * 4] = gray ? MASKED_RGB[0] : LUT[c];
    data[i * 4 + 1] = gray ? MASKED_RGB[1] : LUT[c + 1];
    data[i * 4 + 2] = gray ? MASKED_RGB[2] : LUT[c + 2];
    data[i * 4 + 3] = alpha ? alpha(gray ? 0 : Math.min(1, Math.max(0, value / vmax || 0))) : 255;
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/**
 * The colour bar: the LUT itself, 256 px wide.
 * @param {HTMLCanvasElement} canvas
 */
export function drawColorbar(canvas) {
  const ramp = Float64Array.from({ length: 256 }, (_, i) => i / 255);
  paintLut(canvas, 256, 1, ramp, 1);
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
 * The heatmap: queries down, keys across, labelled when cells are large enough, the active row framed.
 * @param {HTMLCanvasElement} canvas
 * @param {HTMLCanvasElement} cells  one pixel per cell (paintLut)
 * @param {import("./record.js").Header} header
 * @param {number | null} active  the hovered or pinned query
 * @param {import("./colors.js").Theme} theme
 * @param {{width: number, height: number}} room  CSS px available
 * @returns {HeatmapLayout}
 */
export function drawHeatmap(canvas, cells, header, active, theme, room) {
  const { q, k } = header;
  const measure = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  measure.font = MONO;
  const guess = Math.min(MAX_CELL, room.width / k, room.height / q); // before label margins
  const labelled = guess >= LABEL_MIN_CELL;
  const widest = (/** @type {string[]} */ labels) =>
    Math.max(0, ...labels.map((s) => measure.measureText(s).width));
  const left = labelled ? Math.min(110, widest(header.q_labels) + 12) : 34;
  const upright = widest(header.k_labels) <= guess - 2; // else turned to read upwards
  const top = labelled ? (upright ? 20 : Math.min(90, widest(header.k_labels) + 12)) : 22;
  const cell = Math.max(0.25, Math.min(MAX_CELL, (room.width - left) / k, (room.height - top) / q));
  const width = Math.round(left + cell * k + 10);
  const height = Math.round(top + cell * q + 8);
  const ctx = sizeCanvas(canvas, width, height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(cells, left, top, cell * k, cell * q);
  ctx.strokeStyle = theme.frame;
  ctx.lineWidth = 1;
  ctx.strokeRect(left - 0.5, top - 0.5, cell * k + 1, cell * q + 1);

  ctx.font = MONO;
  if (labelled) {
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    header.q_labels.forEach((label, i) => {
      ctx.fillStyle = i === active ? theme.accent : theme.text;
      ctx.fillText(fitLabel(ctx, label, left - 10), left - 6, top + (i + 0.5) * cell);
    });
    ctx.fillStyle = theme.text;
    if (upright) {
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      header.k_labels.forEach((label, j) => ctx.fillText(isolate(label), left + (j + 0.5) * cell, top - 5));
    } else {
      ctx.save();
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      header.k_labels.forEach((label, j) => {
        ctx.fillText(fitLabel(ctx, label, top - 10), -(top - 6), left + (j + 0.5) * cell);
      });
      ctx.restore();
    }
  } else {
    ctx.font = "10px Roboto, Arial, sans-serif";
    ctx.fillStyle = theme.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const every = tickStep(q, cell * q);
    for (let i = 0; i < q; i += every) ctx.fillText(String(i), left - 4, top + (i + 0.5) * cell);
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    const everyK = tickStep(k, cell * k);
    for (let j = 0; j < k; j += everyK) ctx.fillText(String(j), left + (j + 0.5) * cell, top - 4);
  }

  if (active !== null && active < q) {
    const y = top + active * cell;
    const h = Math.max(cell, 2);
    ctx.strokeStyle = theme.accent;
    ctx.lineWidth = 2;
    ctx.strokeRect(left - 1, y - 1, cell * k + 2, h + 2);
    const right = left + cell * k;
    ctx.fillStyle = theme.accent;
    ctx.beginPath(); // a marker right of the row: findable when rows are a pixel high
    ctx.moveTo(right + 2, y + h / 2);
    ctx.lineTo(right + 7, y + h / 2 - 4);
    ctx.lineTo(right + 7, y + h / 2 + 4);
    ctx.fill();
  }
  // the geometry, also for whoever inspects the page (the browser test probes cells with it)
  Object.assign(canvas.dataset, { left: String(left), top: String(top), cell: String(cell) });
  return { kind: "heatmap", left, top, cell, q, k };
}
