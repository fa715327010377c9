// Matrix maths on a decoded record: one head or the head mean, row totals, block pooling, top keys,
// patch rows. Pure: no DOM, so node's test runner imports it (tests/js).

/**
 * @typedef {object} Matrix
 * @property {Float32Array} values  q·k row-major weights; NaN where a weight was not finite
 * @property {Uint8Array} hidden  q·k, 1 where the key was masked (for the mean: masked for every head)
 * @property {number} max  largest finite visible weight
 * @property {number} q
 * @property {number} k
 * @property {number} [block]  pooled: cells per block along each axis (1 or absent: exact)
 * @property {{totals: Float64Array, counts: Int32Array}} [rows]  cached by rowStats
 * @property {Map<number, Matrix>} [pooled]  cached by poolMatrix
 * @property {Array<[number, number, number]>} [lines]  cached by the lines view
 */

const HEAD_CACHE = 3; // matrices kept per record: a 2,048-token head is 16 MiB of float32

/**
 * The (q, k) weights of one head, or their mean over heads ("mean"), cached on the record.
 * @param {import("./record.js").AttnRecord & {matrices?: Map<number|string, Matrix>}} record
 * @param {number | "mean"} head
 * @returns {Matrix}
 */
export function matrixOf(record, head) {
  record.matrices ||= new Map();
  const cached = record.matrices.get(head);
  if (cached) {
    record.matrices.delete(head); // most recently used last
    record.matrices.set(head, cached);
    return cached;
  }
  const { heads, q, k } = record.header;
  const size = q * k;
  const values = new Float32Array(size);
  const hidden = new Uint8Array(size).fill(1);
  const chosen = head === "mean" ? [...Array(heads).keys()] : [head];
  for (const h of chosen) {
    const table = record.tables[h];
    const cells = record.cells.subarray(h * size, (h + 1) * size);
    for (let i = 0; i < size; i++) values[i] += table[cells[i]]; // NaN stays NaN in the mean: drawn gray
    if (!record.visible) hidden.fill(0);
    else {
      const m = record.maskHeads === 1 ? 0 : h;
      const bits = record.visible.subarray(m * size, (m + 1) * size);
      for (let i = 0; i < size; i++) if (bits[i]) hidden[i] = 0;
    }
  }
  if (chosen.length > 1) for (let i = 0; i < size; i++) values[i] /= chosen.length;
  let max = 0;
  for (let i = 0; i < size; i++) if (!hidden[i] && values[i] > max) max = values[i];
  const matrix = { values, hidden, max, q, k };
  record.matrices.set(head, matrix);
  if (record.matrices.size > HEAD_CACHE) record.matrices.delete(record.matrices.keys().next().value);
  return matrix;
}

/**
 * Each row's total weight and number of keys that count for the colour scale (visible and finite),
 * as render/scale.py's `levels` counts them. Cached on the matrix.
 * @param {Matrix} matrix
 * @returns {{totals: Float64Array, counts: Int32Array}}
 */
export function rowStats(matrix) {
  if (matrix.rows) return matrix.rows;
  const { q, k, values, hidden } = matrix;
  const totals = new Float64Array(q);
  const counts = new Int32Array(q);
  for (let i = 0; i < q; i++) {
    let total = 0;
    let count = 0;
    for (let j = i * k, end = j + k; j < end; j++) {
      const w = values[j];
      if (hidden[j] || !Number.isFinite(w)) continue;
      count += 1;
      if (w > 0) total += w;
    }
    totals[i] = total;
    counts[i] = count;
  }
  matrix.rows = { totals, counts };
  return matrix.rows;
}

/**
 * The matrix block-pooled by `block` along both axes, as render/scale.py's `_bound` pools a long map:
 * query rows averaged, keys summed, a block visible if any of its cells is. A partial last block is
 * averaged over the rows it has. Cached on the matrix.
 * @param {Matrix} matrix
 * @param {number} block
 * @returns {Matrix}
 */
export function poolMatrix(matrix, block) {
  if (block <= 1) return matrix;
  matrix.pooled ||= new Map();
  const known = matrix.pooled.get(block);
  if (known) return known;
  const q = Math.ceil(matrix.q / block);
  const k = Math.ceil(matrix.k / block);
  const values = new Float32Array(q * k);
  const hidden = new Uint8Array(q * k).fill(1);
  for (let i = 0; i < matrix.q; i++) {
    const pi = Math.floor(i / block);
    const rows = Math.min(block, matrix.q - pi * block);
    for (let j = 0; j < matrix.k; j++) {
      const at = pi * k + Math.floor(j / block);
      values[at] += matrix.values[i * matrix.k + j] / rows;
      if (!matrix.hidden[i * matrix.k + j]) hidden[at] = 0;
    }
  }
  let max = 0;
  for (let i = 0; i < q * k; i++) if (!hidden[i] && values[i] > max) max = values[i];
  const pooled = { values, hidden, max, q, k, block };
  matrix.pooled.set(block, pooled);
  return pooled;
}

/**
 * The `count` largest visible, finite weights of a row, largest first (ties: lower key first), by
 * one pass that keeps the best `count`: a 2,048-key row costs no sort.
 * @param {Matrix} matrix
 * @param {number} row
 * @param {number} count
 * @returns {Array<{key: number, weight: number}>}
 */
export function topKeys(matrix, row, count) {
  const start = row * matrix.k;
  /** @type {Array<{key: number, weight: number}>} */
  const best = [];
  for (let j = 0; j < matrix.k; j++) {
    const weight = matrix.values[start + j];
    if (matrix.hidden[start + j] || !Number.isFinite(weight)) continue;
    if (best.length === count && weight <= best[count - 1].weight) continue;
    let at = best.length;
    while (at > 0 && best[at - 1].weight < weight) at -= 1; // after equal weights: lower key first
    best.splice(at, 0, { key: j, weight });
    if (best.length > count) best.pop();
  }
  return best;
}

/**
 * One query's weights on the patch tokens, in grid order.
 * @param {Matrix} matrix
 * @param {number} row
 * @param {number} prefix  tokens before the patches
 * @param {number} patches
 * @returns {Float32Array}
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
