// The Attention tab's map record, formats attnviz/3 and attnviz/2: decoding only (tab/record.py encodes).
//
//   uint32 n (little-endian) · n bytes of JSON header · heads·q·k uint8 weights · if header.mask: the
//   visible cells as bits, np.packbits(bitorder="little"), for header.mask.heads (1 or heads) heads ·
//   if header.image: height·width·3 uint8 RGB.
//
// attnviz/3 bytes are log-spaced per head: byte b in 1..254 is floors[h] · (scales[h] / floors[h]) ^
// ((b − 1) / 253), 0 is 0; attnviz/2 bytes were linear, b / 254 · scales[h]. 255 is not finite in both.
// Each head gets a 256-entry table from byte to weight, so nothing else needs to know the format.
//
// Pure: no DOM, so node's test runner imports it (tests/js).

export const FORMAT = "attnviz/3";
export const READABLE = ["attnviz/2", FORMAT];
export const LEVELS = 254;
export const NOT_FINITE = 255;

/**
 * @typedef {object} ImageInfo
 * @property {number} height
 * @property {number} width
 * @property {[number, number]} grid  patch rows and columns
 * @property {number} prefix  tokens before the patches (CLS, registers)
 *
 * @typedef {object} Header
 * @property {string} format
 * @property {number} step
 * @property {number | null} [epoch]  absent in attnviz/2
 * @property {string} layer
 * @property {number} sample
 * @property {number} heads
 * @property {number} q
 * @property {number} k
 * @property {number[]} scales  per head: the largest weight
 * @property {number[]} [floors]  per head: the weight of byte 1 (attnviz/3)
 * @property {string[]} q_labels
 * @property {string[]} k_labels
 * @property {string} note
 * @property {{heads: number} | null} mask
 * @property {ImageInfo | null} image
 * @property {{q: BlocksInfo, k: BlocksInfo} | null} [blocks]  how the tab pools each axis on screen (absent
 *   in records of earlier versions)
 *
 * @typedef {object} BlocksInfo  one axis (tab/record.py's AxisBlocks)
 * @property {number} alone  leading cells never pooled
 * @property {[number, number, number] | null} grid  patch rows, cols and prefix cells, when a patch grid
 * @property {number[] | null} sizes  tokens per cell (null: one each)
 * @property {number} factor  side of the squares the record's patches were pooled in
 *
 * @typedef {object} AttnRecord
 * @property {Header} header
 * @property {Uint8Array} cells  heads·q·k bytes
 * @property {Float32Array[]} tables  per head, the weight of each byte (NaN for 255)
 * @property {Uint8Array | null} visible  maskHeads·q·k, 1 = visible; null: nothing masked
 * @property {number} maskHeads  0, 1 (one mask for all heads) or heads
 * @property {Uint8Array | null} image  height·width·3 RGB
 * @property {number} bytes  size of the record
 */

/**
 * Per head, the weight each byte stands for.
 * @param {Header} header
 * @returns {Float32Array[]}
 */
export function byteTables(header) {
  return header.scales.map((scale, h) => {
    const table = new Float32Array(256);
    if (header.format === "attnviz/2") {
      for (let b = 0; b < 256; b++) table[b] = (b / LEVELS) * scale;
    } else {
      const floor = /** @type {number[]} */ (header.floors)[h];
      const ratio = floor > 0 ? scale / floor : 1;
      for (let b = 1; b < 256; b++) table[b] = floor * ratio ** ((b - 1) / (LEVELS - 1));
    }
    table[NOT_FINITE] = Number.NaN;
    return table;
  });
}

/**
 * Reads one record; throws an Error that says what does not match.
 * @param {ArrayBuffer} buffer
 * @returns {AttnRecord}
 */
export function decodeRecord(buffer) {
  if (buffer.byteLength < 4) throw new Error(`record of ${buffer.byteLength} bytes: too short for a header`);
  const n = new DataView(buffer).getUint32(0, true);
  if (4 + n > buffer.byteLength) throw new Error(`header of ${n} bytes in a ${buffer.byteLength}-byte record`);
  /** @type {Header} */
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  if (!READABLE.includes(header.format)) {
    throw new Error(`record format ${JSON.stringify(header.format)}, this tab reads ${READABLE.join(" and ")}`);
  }
  const { heads, q, k } = header;
  const cellBytes = heads * q * k;
  const maskHeads = header.mask ? header.mask.heads : 0;
  const maskBytes = Math.ceil((maskHeads * q * k) / 8);
  const imageBytes = header.image ? header.image.height * header.image.width * 3 : 0;
  const expected = 4 + n + cellBytes + maskBytes + imageBytes;
  if (buffer.byteLength !== expected) {
    throw new Error(`record of ${buffer.byteLength} bytes, its header describes ${expected}`);
  }
  const floorsOk = header.format === "attnviz/2" || (header.floors && header.floors.length === heads);
  if (header.scales.length !== heads || !floorsOk || header.q_labels.length !== q || header.k_labels.length !== k) {
    throw new Error("record: scale, floor or label counts do not match heads, q and k");
  }
  if (header.blocks) checkBlocks(header.blocks, q, k);
  let offset = 4 + n;
  const cells = new Uint8Array(buffer, offset, cellBytes);
  offset += cellBytes;
  const visible = maskHeads ? unpackBits(new Uint8Array(buffer, offset, maskBytes), maskHeads * q * k) : null;
  offset += maskBytes;
  const image = header.image ? new Uint8Array(buffer, offset, imageBytes) : null;
  return { header, cells, tables: byteTables(header), visible, maskHeads, image, bytes: buffer.byteLength };
}

/**
 * Throws unless `blocks` describes axes of q and k cells: counts, a grid that is its cells, sizes per cell.
 * @param {any} blocks
 * @param {number} q
 * @param {number} k
 */
function checkBlocks(blocks, q, k) {
  const count = (/** @type {any} */ v) => Number.isInteger(v) && v >= 0;
  for (const [axis, n] of /** @type {Array<["q" | "k", number]>} */ ([["q", q], ["k", k]])) {
    const b = blocks[axis];
    const grid = b && b.grid;
    const ok =
      b && count(b.alone) && b.alone <= n && count(b.factor) &&
      (grid === null || (Array.isArray(grid) && grid.length === 3 && grid.every(count) && grid[2] + grid[0] * grid[1] === n)) &&
      (b.sizes === null || (Array.isArray(b.sizes) && b.sizes.length === n && b.sizes.every((s) => count(s) && s > 0)));
    if (!ok) throw new Error(`record: the pooling facts of the ${axis === "q" ? "query" : "key"} axis do not describe its ${n} cells`);
  }
}

/**
 * numpy's packbits(bitorder="little") undone: bit b of byte i is element 8i + b.
 * @param {Uint8Array} packed
 * @param {number} count
 * @returns {Uint8Array}
 */
export function unpackBits(packed, count) {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = (packed[i >> 3] >> (i & 7)) & 1;
  return out;
}

/**
 * The dequantised weight of one cell: NaN if not finite, 0 if masked.
 * @param {AttnRecord} record
 * @param {number} head
 * @param {number} index  row-major (query, key) index within the head
 * @returns {number}
 */
export function weightOf(record, head, index) {
  return record.tables[head][record.cells[head * record.header.q * record.header.k + index]];
}

/**
 * Whether a cell was visible to the head (not padding, not a causal future).
 * @param {AttnRecord} record
 * @param {number} head
 * @param {number} index
 * @returns {boolean}
 */
export function isVisible(record, head, index) {
  if (!record.visible) return true;
  const size = record.header.q * record.header.k;
  return record.visible[(record.maskHeads === 1 ? 0 : head) * size + index] === 1;
}
