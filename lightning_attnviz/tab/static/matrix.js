// Matrix maths on a decoded record: one head or the head mean, colour limits, top keys, patch rows.
// Pure: no DOM, so node's test runner imports it (tests/js).

import { isVisible, weightOf } from "./record.js";

/**
 * @typedef {object} Matrix
 * @property {Float64Array} values  q·k row-major weights; NaN where a weight was not finite
 * @property {Uint8Array} hidden  q·k, 1 where the key was masked (for the mean: masked for every head)
 * @property {number} max  largest finite visible weight
 * @property {number} vmax  where colours saturate: the 99.5th percentile of large maps, else max
 * @property {number} q
 * @property {number} k
 * @property {Array<[number, number, number]>} [lines]  cached by the lines view
 */

/**
 * The (q, k) weights of one head, or their mean over heads ("mean"), cached on the record.
 * @param {import("./record.js").AttnRecord & {matrices?: Map<number|string, Matrix>}} record
 * @param {number | "mean"} head
 * @returns {Matrix}
 */
export function matrixOf(record, head) {
  record.matrices ||= new Map();
  const cached = record.matrices.get(head);
  if (cached) return cached;
  const { heads, q, k } = record.header;
  const size = q * k;
  const values = new Float64Array(size);
  const hidden = new Uint8Array(size).fill(1);
  const chosen = head === "mean" ? [...Array(heads).keys()] : [head];
  for (const h of chosen) {
    for (let i = 0; i < size; i++) {
      values[i] += weightOf(record, h, i); // NaN stays NaN in the mean: it is drawn gray too
      if (isVisible(record, h, i)) hidden[i] = 0;
    }
  }
  if (chosen.length > 1) for (let i = 0; i < size; i++) values[i] /= chosen.length;
  let max = 0;
  for (let i = 0; i < size; i++) if (!hidden[i] && values[i] > max) max = values[i];
  const matrix = { values, hidden, max, vmax: saturation(values, hidden, max), q, k };
  record.matrices.set(head, matrix);
  return matrix;
}

/**
 * Where colours saturate: the 99.5th percentile of a large map's visible weights. One hot cell (a causal
 * map's first row is all on key 0) would otherwise leave the rest of a long map at the colormap's bottom.
 * @param {Float64Array} values
 * @param {Uint8Array} hidden
 * @param {number} max
 * @returns {number}
 */
export function saturation(values, hidden, max) {
  if (values.length <= 256) return max;
  const stride = Math.max(1, Math.floor(values.length / 100_000));
  const sample = [];
  for (let i = 0; i < values.length; i += stride) {
    if (!hidden[i] && Number.isFinite(values[i])) sample.push(values[i]);
  }
  if (sample.length === 0) return max;
  sample.sort((a, b) => a - b);
  const high = sample[Math.min(sample.length - 1, Math.floor(0.995 * sample.length))];
  return high > 0 && high < max ? high : max;
}

/**
 * The `count` largest visible, finite weights of a row, largest first (ties: lower key first).
 * @param {Matrix} matrix
 * @param {number} row
 * @param {number} count
 * @returns {Array<{key: number, weight: number}>}
 */
export function topKeys(matrix, row, count) {
  const start = row * matrix.k;
  const keys = [];
  for (let j = 0; j < matrix.k; j++) {
    if (!matrix.hidden[start + j] && Number.isFinite(matrix.values[start + j])) keys.push(j);
  }
  keys.sort((a, b) => matrix.values[start + b] - matrix.values[start + a] || a - b);
  return keys.slice(0, count).map((key) => ({ key, weight: matrix.values[start + key] }));
}

/**
 * One query's weights on the patch tokens, in grid order.
 * @param {Matrix} matrix
 * @param {number} row
 * @param {number} prefix  tokens before the patches
 * @param {number} patches
 * @returns {Float64Array}
 */
export function patchRow(matrix, row, prefix, patches) {
  const start = row * matrix.k + prefix;
  return matrix.values.slice(start, start + patches);
}

/**
 * The mean attention each patch receives over all queries (non-finite weights count as 0).
 * @param {Matrix} matrix
 * @param {number} prefix
 * @param {number} patches
 * @returns {Float64Array}
 */
export function meanReceived(matrix, prefix, patches) {
  const out = new Float64Array(patches);
  for (let i = 0; i < matrix.q; i++) {
    for (let p = 0; p < patches; p++) {
      const value = matrix.values[i * matrix.k + prefix + p];
      if (Number.isFinite(value)) out[p] += value / matrix.q;
    }
  }
  return out;
}

/**
 * The largest finite value (0 for none): colour limits of an overlay.
 * @param {ArrayLike<number>} values
 * @returns {number}
 */
export function finiteMax(values) {
  let max = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > max) max = values[i];
  return max;
}
