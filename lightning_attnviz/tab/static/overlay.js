// The image overlay of vision records: the sample's picture under one query's attention on the patches,
// coloured as the logged overlay pictures (render/overlay.py): each patch's share of the row's weight on
// the patches against an even 1/n, log scale, more opaque where higher.

import { overlayCaption } from "./labels.js";
import { meanReceived, patchRow } from "./matrix.js";
import { SCALES, logPlace, rgba } from "./scale.js";
import { paintPixels, sizeCanvas } from "./views.js";

const ALPHA_MIN = 0.15; // render/overlay.py's ALPHA_MIN and ALPHA: opacity at the bottom and top
const ALPHA = 0.6;

/**
 * @typedef {object} OverlayLayout
 * @property {number} width  CSS px
 * @property {number} height
 * @property {number} rows  patch grid
 * @property {number} cols
 * @property {number} prefix
 */

/** @type {WeakMap<object, HTMLCanvasElement>} the picture of a record, drawn once */
const pictures = new WeakMap();

/**
 * The record's RGB bytes on a canvas of the picture's size.
 * @param {import("./record.js").AttnRecord} record
 * @returns {HTMLCanvasElement}
 */
function pictureOf(record) {
  const known = pictures.get(record);
  if (known) return known;
  const info = /** @type {import("./record.js").ImageInfo} */ (record.header.image);
  const rgb = /** @type {Uint8Array} */ (record.image);
  const canvas = document.createElement("canvas");
  canvas.width = info.width;
  canvas.height = info.height;
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  const pixels = ctx.createImageData(info.width, info.height);
  for (let p = 0, n = info.width * info.height; p < n; p++) {
    pixels.data.set(rgb.subarray(p * 3, p * 3 + 3), p * 4);
    pixels.data[p * 4 + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  pictures.set(record, canvas);
  return canvas;
}

/**
 * Draws the picture and, over it, one row of attention on the patches: the active token's, else the
 * first prefix token's (CLS), else the mean attention each patch receives.
 * @param {HTMLCanvasElement} canvas
 * @param {import("./record.js").AttnRecord} record
 * @param {import("./matrix.js").Matrix} matrix
 * @param {number | null} active
 * @param {number} width  CSS px to draw at
 * @returns {{layout: OverlayLayout | null, caption: string}}
 */
export function drawOverlay(canvas, record, matrix, active, width) {
  const { header } = record;
  const info = /** @type {import("./record.js").ImageInfo} */ (header.image);
  const [rows, cols] = info.grid;
  const prefix = info.prefix;
  const patches = rows * cols;
  if (header.k < prefix + patches) {
    return { layout: null, caption: `the map has ${header.k} keys, the patch grid needs ${prefix + patches}` };
  }
  let values;
  if (active !== null) values = patchRow(matrix, active, prefix, patches);
  else if (prefix > 0) values = patchRow(matrix, 0, prefix, patches);
  else values = meanReceived(matrix, prefix, patches);
  let total = 0;
  let n = 0;
  for (const v of values) if (Number.isFinite(v)) (total += Math.max(v, 0)), (n += 1);
  const placed = Float32Array.from(values, (v) => (Number.isFinite(v) ? logPlace(v, total, n) : Number.NaN));
  const alpha = (/** @type {number} */ t) => Math.round(255 * (ALPHA_MIN + (ALPHA - ALPHA_MIN) * t));
  const overlay = paintPixels(document.createElement("canvas"), cols, rows, rgba(placed, SCALES.log.lut, alpha));
  const height = Math.round((width * info.height) / info.width);
  const ctx = sizeCanvas(canvas, width, height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(pictureOf(record), 0, 0, width, height);
  ctx.drawImage(overlay, 0, 0, width, height);
  if (active !== null && active >= prefix && active < prefix + patches) {
    const r = Math.floor((active - prefix) / cols);
    const c = (active - prefix) % cols;
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.strokeRect((c * width) / cols + 1, (r * height) / rows + 1, width / cols - 2, height / rows - 2);
  }
  const caption = `${overlayCaption(header, active)} · colour: each patch's share vs an even 1/n, log scale`;
  return { layout: { width, height, rows, cols, prefix }, caption };
}
