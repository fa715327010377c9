// Which cells of a record pool together when a map has more cells than its panel has pixels: the one
// rule every picture and stored map follows (capture/blocks.py), applied to the record's cells.
//
//   - the leading `alone` cells (prefix tokens: CLS, registers; sink tokens) are never pooled;
//   - an image's patch grid is pooled in f×f squares of patches aligned to its top-left corner;
//   - any other axis in contiguous blocks whose sizes differ by at most one cell.
//
// The record says per axis which cells stay alone, whether they are a patch grid, and how many tokens
// each cell already stands for when the record itself was pooled (header.blocks, tab/record.py); a
// record without it (older runs) keeps its first token alone and pools an image's grid in squares.
//
// Pure: no DOM, so node's test runner imports it (tests/js), and compares it with the Python rule.

/**
 * @typedef {object} CellGrid  an axis' cells as an image's patch grid
 * @property {number} rows
 * @property {number} cols
 * @property {number} prefix  cells before the patches
 *
 * @typedef {object} AxisInfo  what a record says of one axis
 * @property {number} alone  leading cells never pooled
 * @property {CellGrid | null} grid
 * @property {number[] | null} sizes  tokens per cell when the record is pooled already (null: one each)
 * @property {number} factor  side of the squares the record's patches were pooled in (1: not pooled)
 *
 * @typedef {object} AxisPlan  cell c of the axis goes to displayed block group[c]
 * @property {Int32Array} group
 * @property {number} blocks
 * @property {Int32Array} sizes  cells per block
 * @property {Int32Array} first  per block, its lowest cell
 * @property {Int32Array} last  per block, its highest cell
 * @property {number} alone  leading cells that are blocks of their own
 * @property {CellGrid | null} grid
 * @property {number} factor  side of the squares (1: patches not pooled)
 * @property {boolean} pooled
 * @property {string} key  identifies the plan (for caches)
 */

/**
 * The pooling facts of the query ("q") or key ("k") axis of a record.
 * @param {import("./record.js").Header} header
 * @param {"q" | "k"} axis
 * @returns {AxisInfo}
 */
export function axisInfo(header, axis) {
  const length = header[axis];
  const told = header.blocks ? header.blocks[axis] : null;
  if (told) {
    const grid = told.grid ? { rows: told.grid[0], cols: told.grid[1], prefix: told.grid[2] } : null;
    return { alone: told.alone, grid, sizes: told.sizes ?? null, factor: told.factor ?? 1 };
  }
  const image = header.image;
  const grid = image && image.prefix + image.grid[0] * image.grid[1] === length
    ? { rows: image.grid[0], cols: image.grid[1], prefix: image.prefix }
    : null;
  return { alone: Math.min(length, Math.max(1, grid ? grid.prefix : 0)), grid, sizes: null, factor: 1 };
}

/**
 * The pooling of an axis of `length` cells to at most `limit` blocks (null: none), as
 * capture/blocks.py's `plan_axis` pools tokens.
 * @param {number} length
 * @param {number | null} limit
 * @param {AxisInfo} info
 * @returns {AxisPlan}
 */
export function planAxis(length, limit, info) {
  const g = info.grid;
  const grid = g && g.prefix + g.rows * g.cols === length ? g : null;
  if (limit === null || length <= limit) return makePlan(Int32Array.from({ length }, (_, i) => i), grid, 1);
  const alone = Math.min(length, Math.max(info.alone, grid ? grid.prefix : 0));
  if (!grid) {
    const rest = length - alone;
    if (rest === 0) return makePlan(Int32Array.from({ length }, (_, i) => i), null, 1);
    const size = Math.ceil(rest / Math.max(1, limit - alone));
    const count = Math.ceil(rest / size);
    const group = new Int32Array(length);
    for (let i = 0; i < alone; i++) group[i] = i;
    let at = alone;
    for (let b = 0; b < count; b++) {
      const n = Math.floor(rest / count) + (b < rest % count ? 1 : 0); // sizes differ by at most one
      for (let m = 0; m < n; m++) group[at++] = alone + b;
    }
    return makePlan(group, null, 1);
  }
  let f = 2;
  while (alone + Math.ceil(grid.rows / f) * Math.ceil(grid.cols / f) > limit && f < Math.max(grid.rows, grid.cols)) f += 1;
  // a raw id per cell: prefix and alone cells their own, a patch its square's; blocks in order of first cell
  const ranks = new Map();
  const group = new Int32Array(length);
  for (let c = 0; c < length; c++) {
    const p = c - grid.prefix; // alone ⊇ prefix
    const raw = c < alone ? c : length + Math.floor(Math.floor(p / grid.cols) / f) * grid.cols + Math.floor((p % grid.cols) / f);
    if (!ranks.has(raw)) ranks.set(raw, ranks.size);
    group[c] = ranks.get(raw);
  }
  return makePlan(group, grid, f);
}

/**
 * @param {Int32Array} group
 * @param {CellGrid | null} grid
 * @param {number} factor
 * @returns {AxisPlan}
 */
function makePlan(group, grid, factor) {
  const length = group.length;
  let blocks = 0;
  for (let c = 0; c < length; c++) blocks = Math.max(blocks, group[c] + 1);
  const sizes = new Int32Array(blocks);
  const first = new Int32Array(blocks).fill(length);
  const last = new Int32Array(blocks).fill(-1);
  for (let c = 0; c < length; c++) {
    const b = group[c];
    sizes[b] += 1;
    if (c < first[b]) first[b] = c;
    last[b] = c;
  }
  let alone = 0; // as AxisPlan.alone: leading cells each a block of its own, in order
  while (alone < Math.min(blocks, length) && group[alone] === alone && sizes[alone] === 1) alone += 1;
  const key = blocks === length ? `exact ${length}` : `${length} ${factor} ${Array.from(sizes).join(",")} ${alone}`;
  return { group, blocks, sizes, first, last, alone, grid, factor, pooled: blocks < length, key };
}

/**
 * The blocks that show cells `lo`..`hi - 1`: [first block, end) (a square of patches may hold cells
 * outside the range; so may the blocks between the first and the last).
 * @param {AxisPlan} plan
 * @param {number} lo
 * @param {number} hi
 * @returns {[number, number]}
 */
export function blockRange(plan, lo, hi) {
  let low = plan.blocks;
  let high = -1;
  for (let c = lo; c < hi; c++) {
    low = Math.min(low, plan.group[c]);
    high = Math.max(high, plan.group[c]);
  }
  return [low, high + 1];
}

/**
 * The cells of each block, lowest first.
 * @param {AxisPlan} plan
 * @returns {Int32Array[]}
 */
function members(plan) {
  const out = Array.from(plan.sizes, (n) => new Int32Array(n));
  const filled = new Int32Array(plan.blocks);
  plan.group.forEach((b, c) => {
    out[b][filled[b]++] = c;
  });
  return out;
}

/**
 * Token positions of each cell: [first, last] (a pooled record's cell stands for several tokens).
 * @param {AxisInfo} info
 * @param {number} length
 * @returns {(cell: number) => [number, number]}
 */
function tokensOf(info, length) {
  if (!info.sizes || info.sizes.length !== length) return (c) => [c, c];
  const starts = new Int32Array(length + 1);
  info.sizes.forEach((n, c) => {
    starts[c + 1] = starts[c] + n;
  });
  return (c) => [starts[c], starts[c + 1] - 1];
}

const SQUARE = /^r(\d+)(?:-(\d+))?,c(\d+)(?:-(\d+))?$/;

/**
 * One label per block, as capture/blocks.py's `AxisPlan.labels` labels the tokens a block holds: a
 * cell alone keeps its own label; a square of patches names its patch rows and columns (`r0-1,c2-3`);
 * any other block its token positions (`12–15`).
 * @param {AxisPlan} plan
 * @param {string[]} labels  the record's, one per cell
 * @param {AxisInfo} info
 * @returns {string[]}
 */
export function blockLabels(plan, labels, info) {
  const tokens = tokensOf(info, plan.group.length);
  const grid = plan.grid;
  const squares = grid !== null && (plan.factor > 1 || info.factor > 1);
  return members(plan).map((m) => {
    const one = m.length === 1 && tokens(m[0])[0] === tokens(m[0])[1];
    if (one && (!squares || m[0] < plan.alone)) return labels[m[0]];
    if (grid && m[0] >= grid.prefix) {
      const square = squareOf(m, grid, info.sizes ? labels : null);
      if (square) return square;
    }
    return span(tokens(m[0])[0], tokens(m[m.length - 1])[1], "–");
  });
}

/**
 * `r0-1,c2-3`: the patch rows and columns of cells `m`, from the grid, or (a pooled record, whose
 * cells are squares already) from the cells' own labels; null if a label is not a square's.
 * @param {Int32Array} m
 * @param {CellGrid} grid
 * @param {string[] | null} labels
 */
function squareOf(m, grid, labels) {
  let [r0, r1, c0, c1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const cell of m) {
    let box;
    if (labels) {
      const found = SQUARE.exec(labels[cell]);
      if (!found) return null;
      box = [found[1], found[2] ?? found[1], found[3], found[4] ?? found[3]].map(Number);
    } else {
      const p = cell - grid.prefix;
      const [r, c] = [Math.floor(p / grid.cols), p % grid.cols];
      box = [r, r, c, c];
    }
    [r0, r1, c0, c1] = [Math.min(r0, box[0]), Math.max(r1, box[1]), Math.min(c0, box[2]), Math.max(c1, box[3])];
  }
  return `r${span(r0, r1, "-")},c${span(c0, c1, "-")}`;
}

/**
 * @param {number} low
 * @param {number} high
 * @param {string} dash
 */
function span(low, high, dash) {
  return low === high ? String(low) : `${low}${dash}${high}`;
}

/**
 * How an axis is pooled, in words, counted in tokens as capture/blocks.py's `AxisPlan.describe`
 * ("2048→513 (token 0 kept alone, the rest in blocks of 3–4 tokens)").
 * @param {AxisPlan} plan
 * @param {AxisInfo} info
 */
export function describe(plan, info) {
  const tokens = tokensOf(info, plan.group.length);
  const count = (/** @type {number} */ b) => tokens(plan.last[b])[1] - tokens(plan.first[b])[0] + 1;
  let alone = 0; // leading blocks of one token each
  while (alone < plan.alone && count(alone) === 1 && tokens(alone)[0] === alone) alone += 1;
  const length = tokens(plan.group.length - 1)[1] + 1;
  const prefix = plan.grid ? plan.grid.prefix : 0;
  let kept = "";
  if (alone > 0 && plan.grid && alone === prefix) kept = prefix === 1 ? "CLS kept alone, " : `the ${alone} prefix tokens kept alone, `;
  else if (alone > 0) kept = `token${alone > 1 ? "s" : ""} ${span(0, alone - 1, "–")} kept alone, `;
  let rest = "";
  const factor = plan.factor * info.factor;
  if (plan.grid && factor > 1) rest = `patches in ${factor}×${factor} squares`;
  else if (plan.blocks > alone) {
    let low = Infinity;
    let high = 0;
    for (let b = alone; b < plan.blocks; b++) [low, high] = [Math.min(low, count(b)), Math.max(high, count(b))];
    rest = `the rest in blocks of ${span(low, high, "–")} tokens`;
  }
  return `${length}→${plan.blocks} (${kept}${rest})`.replace(", )", ")");
}

/**
 * The one sentence the tab says of its on-screen pooling ("" when it shows every cell), worded as
 * capture/blocks.py's `pooling_note`.
 * @param {AxisPlan} q
 * @param {AxisPlan} k
 * @param {AxisInfo} qInfo
 * @param {AxisInfo} kInfo
 */
export function poolingNote(q, k, qInfo, kInfo) {
  if (!q.pooled && !k.pooled) return "";
  const [dq, dk] = [describe(q, qInfo), describe(k, kInfo)];
  const what = q.pooled && k.pooled && dq === dk
    ? `${dq} per side`
    : [q.pooled ? `queries ${dq}` : "", k.pooled ? `keys ${dk}` : ""].filter(Boolean).join("; ");
  return `downsampled ${what}: query rows averaged, keys summed, as the pictures pool`;
}
