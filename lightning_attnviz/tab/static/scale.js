// The colour scales, as the logged pictures draw them (render/scale.py): a cell's place t in [0, 1] on a
// colour table, entry round(255 t).
//
//   log      the default, the PNGs' scale: the cell's share of its row's weight against uniform 1/n (n:
//            the row's visible keys) on a log scale with base n; 1/n² and below at 0, uniform at 0.4,
//            one-hot at 1. No free parameter: the same colour means the same thing at every step. A
//            pooled key shows its share per token against n visible tokens, as the pictures do.
//   linear   the weight itself, 0 to 1, fixed: a chosen view, not a per-step stretch.
//   change   a difference of weights on a diverging table, white at 0, ±span at the ends.
//
// Pure: no DOM, so node's test runner imports it (tests/js).

import { RDBU } from "./rdbu.js";
import { rowStats } from "./matrix.js";
import { VIRIDIS } from "./viridis.js";

export const UNIFORM_AT = 0.4; // render/scale.py's UNIFORM_AT
export const MASKED_RGB = [215, 215, 215]; // render/scale.py's MASKED_RGB: hidden and non-finite cells

/**
 * @typedef {object} Scale
 * @property {string} name  what the menu says
 * @property {string} meaning  said beside the colour bar
 * @property {Uint8ClampedArray} lut
 * @property {Array<[number, string, string]>} ticks  place, label, word under it
 */

/** @type {Record<"log" | "linear" | "change", Scale>} */
export const SCALES = {
  log: {
    name: "share vs uniform, log (as the pictures)",
    meaning: "colour: the cell's share of its row's weight against uniform 1/n (n = visible keys in the row), log scale — the logged pictures' scale, the same at every step",
    lut: VIRIDIS,
    ticks: [
      [0, "≤1/n²", ""],
      [UNIFORM_AT / 2, "1/n√n", ""],
      [UNIFORM_AT, "1/n", "uniform"],
      [UNIFORM_AT + (1 - UNIFORM_AT) / 2, "1/√n", ""],
      [1, "1", "one-hot"],
    ],
  },
  linear: {
    name: "weight, linear 0–1",
    meaning: "colour: the weight itself, linear from 0 to 1, the same at every step",
    lut: VIRIDIS,
    ticks: [
      [0, "0", ""],
      [0.25, ".25", ""],
      [0.5, ".5", ""],
      [0.75, ".75", ""],
      [1, "1", ""],
    ],
  },
  change: {
    name: "change",
    meaning: "",
    lut: RDBU,
    ticks: [],
  },
};

/**
 * A weight's place on the log scale, as render/scale.py's `levels`.
 * @param {number} weight
 * @param {number} total  the row's total weight over its visible keys
 * @param {number} n  the row's visible keys
 * @returns {number}
 */
export function logPlace(weight, total, n) {
  const share = total > 0 ? Math.max(weight, 0) / total : 0;
  const v = n > 1 ? 1 + Math.log(share) / Math.log(n) : share > 0 ? 1 : -1;
  const t = v < 0 ? (v + 1) * UNIFORM_AT : UNIFORM_AT + v * (1 - UNIFORM_AT);
  return Math.min(1, Math.max(0, t)); // v = -Infinity (share 0) lands at 0
}

/**
 * The places of a region of `matrix` on the log or linear scale; NaN where hidden or not finite.
 * @param {import("./matrix.js").Matrix} matrix
 * @param {"log" | "linear"} scale
 * @param {{q0: number, q1: number, k0: number, k1: number}} region  rows q0..q1-1, keys k0..k1-1
 * @returns {Float32Array}  (q1 - q0)·(k1 - k0), row-major
 */
export function places(matrix, scale, region) {
  const { q0, q1, k0, k1 } = region;
  const width = k1 - k0;
  const out = new Float32Array((q1 - q0) * width);
  const rows = scale === "log" ? rowStats(matrix) : null;
  const tokens = matrix.keyTokens; // a pooled key: its share per token, as the pictures colour it
  for (let i = q0; i < q1; i++) {
    const base = (i - q0) * width;
    for (let j = k0; j < k1; j++) {
      const at = i * matrix.k + j;
      const w = matrix.values[at];
      if (matrix.hidden[at] || !Number.isFinite(w)) out[base + j - k0] = Number.NaN;
      else if (rows) out[base + j - k0] = logPlace(tokens ? w / tokens[j] : w, rows.totals[i], rows.counts[i]);
      else out[base + j - k0] = Math.min(1, Math.max(0, w));
    }
  }
  return out;
}

/**
 * The change `after − before` of two matrices of one shape, placed on a ±span diverging scale (span:
 * the largest change in the region, as the evolution picture's Δ panel); gray where either hides it.
 * @param {import("./matrix.js").Matrix} before
 * @param {import("./matrix.js").Matrix} after
 * @param {{q0: number, q1: number, k0: number, k1: number}} region
 * @returns {{places: Float32Array, span: number, deltas: Float32Array}}
 */
export function changePlaces(before, after, region) {
  const { q0, q1, k0, k1 } = region;
  const width = k1 - k0;
  const deltas = new Float32Array((q1 - q0) * width);
  let span = 0;
  for (let i = q0; i < q1; i++) {
    for (let j = k0; j < k1; j++) {
      const at = i * after.k + j;
      const hidden = before.hidden[at] || after.hidden[at];
      const d = hidden ? Number.NaN : after.values[at] - before.values[at];
      deltas[(i - q0) * width + j - k0] = d;
      if (Number.isFinite(d) && Math.abs(d) > span) span = Math.abs(d);
    }
  }
  span = Math.max(span, 1e-6);
  const out = deltas.map((d) => (Number.isFinite(d) ? Math.min(1, Math.max(0, (d / span + 1) / 2)) : Number.NaN));
  return { places: out, span, deltas };
}

/**
 * The colour table entry of a place: round(255 t), as the pictures index theirs.
 * @param {number} t
 * @returns {number}
 */
export function entry(t) {
  return Math.min(255, Math.max(0, Math.round(t * 255)));
}

/**
 * RGBA pixels of `places` on `lut`: one pixel per place; NaN places gray (masked or not finite).
 * @param {Float32Array} placesOf
 * @param {Uint8ClampedArray} lut
 * @param {((t: number) => number) | null} [alpha]  opacity 0–255 from the place (default opaque)
 * @returns {Uint8ClampedArray}
 */
export function rgba(placesOf, lut, alpha = null) {
  const data = new Uint8ClampedArray(placesOf.length * 4);
  for (let i = 0; i < placesOf.length; i++) {
    const t = placesOf[i];
    const gray = Number.isNaN(t);
    const c = gray ? 0 : entry(t) * 3;
    data[i * 4] = gray ? MASKED_RGB[0] : lut[c];
    data[i * 4 + 1] = gray ? MASKED_RGB[1] : lut[c + 1];
    data[i * 4 + 2] = gray ? MASKED_RGB[2] : lut[c + 2];
    data[i * 4 + 3] = alpha ? (gray ? 0 : alpha(t)) : 255;
  }
  return data;
}
