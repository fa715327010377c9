// Matrix maths on a decoded record: one head or the head mean, row totals, pooling by the rule, top keys,
// patch rows. Pure: no DOM, so node's test runner imports it (tests/js).

/**
 * @typedef {object} Matrix
 * @property {Float32Array} values  q·k row-major weights; NaN where a weight was not finite
 * @property {Uint8Array} hidden  q·k, 1 where the key was masked (for the mean: masked for every head)
 * @property {number} max  largest finite visible weight
 * @property {number} q
 * @property {number} k
 * @property {ArrayLike<number> | null} [rowTokens]  tokens per query row of a pooled map (null: one each)
 * @property {ArrayLike<number> | null} [keyTokens]  tokens per key column of a pooled map: coloured per
 *   token, as the pictures colour pooled keys (render/scale.py's `levels` with `sizes`)
 * @property {{totals: Float64Array, counts: Float64Array}} [rows]  cached by rowStats
 * @property {Map<string, Matrix>} [pooled]  cached by poolMatrix, per pair of plans
 * @property {Array<[number, number, number]>} [lines]  cached by the lines view
 */

const HEAD_CACHE = 3; // matrices kept per record: a 2,048-token head is 16 MiB of float32
const POOLED_CACHE = 4; // pooled matrices kept per matrix (zoom levels)

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
  const told = record.header.blocks;
  const matrix = { values, hidden, max, q, k, rowTokens: told?.q.sizes ?? null, keyTokens: told?.k.sizes ?? null };
  record.matrices.set(head, matrix);
  if (record.matrices.size > HEAD_CACHE) record.matrices.delete(record.matrices.keys().next().value);
  return matrix;
}

/**
 * Each row's total weight and number of tokens among its keys that count for the colour scale (visible
 * and finite; a pooled key counts its tokens), as render/scale.py's `levels` counts them. Cached.
 * @param {Matrix} matrix
 * @returns {{totals: Float64Array, counts: Float64Array}}
 */
export function rowStats(matrix) {
  if (matrix.rows) return matrix.rows;
  const { q, k, values, hidden, keyTokens } = matrix;
  const totals = new Float64Array(q);
  const counts = new Float64Array(q);
  for (let i = 0; i < q; i++) {
    let total = 0;
    let count = 0;
    for (let j = 0; j < k; j++) {
      const w = values[i * k + j];
      if (hidden[i * k + j] || !Number.isFinite(w)) continue;
      count += keyTokens ? keyTokens[j] : 1;
      if (w > 0) total += w;
    }
    totals[i] = total;
    counts[i] = count;
  }
  matrix.rows = { totals, counts };
  return matrix.rows;
}

/**
 * The matrix pooled by the plans (blocks.js: the pictures' rule) as capture/blocks.py's `pool` pools a
 * map: keys summed, query rows averaged over the tokens they stand for, a block visible if any of its
 * cells is; each block knows its tokens (for the colour scale). Cached on the matrix.
 * @param {Matrix} matrix
 * @param {import("./blocks.js").AxisPlan} qPlan
 * @param {import("./blocks.js").AxisPlan} kPlan
 * @returns {Matrix}
 */
export function poolMatrix(matrix, qPlan, kPlan) {
  if (!qPlan.pooled && !kPlan.pooled) return matrix;
  matrix.pooled ||= new Map();
  const id = `${qPlan.key}|${kPlan.key}`;
  const known = matrix.pooled.get(id);
  if (known) return known;
  const q = qPlan.blocks;
  const k = kPlan.blocks;
  const tokens = (/** @type {ArrayLike<number> | null | undefined} */ per, /** @type {number} */ i) => (per ? per[i] : 1);
  const rowTokens = new Float64Array(q);
  for (let i = 0; i < matrix.q; i++) rowTokens[qPlan.group[i]] += tokens(matrix.rowTokens, i);
  const keyTokens = new Float64Array(k);
  for (let j = 0; j < matrix.k; j++) keyTokens[kPlan.group[j]] += tokens(matrix.keyTokens, j);
  const values = new Float64Array(q * k);
  const hidden = new Uint8Array(q * k).fill(1);
  for (let i = 0; i < matrix.q; i++) {
    const bi = qPlan.group[i];
    const w = tokens(matrix.rowTokens, i) / rowTokens[bi];
    const from = i * matrix.k;
    const to = bi * k;
    for (let j = 0; j < matrix.k; j++) {
      const at = to + kPlan.group[j];
      values[at] += matrix.values[from + j] * w;
      if (!matrix.hidden[from + j]) hidden[at] = 0;
    }
  }
  let max = 0;
  for (let i = 0; i < q * k; i++) if (!hidden[i] && values[i] > max) max = values[i];
  const pooled = { values: Float32Array.from(values), hidden, max, q, k, rowTokens, keyTokens };
  matrix.pooled.set(id, pooled);
  if (matrix.pooled.size > POOLED_CACHE) matrix.pooled.delete(matrix.pooled.keys().next().value);
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
