// The Attention tab's record, format attnviz/2: decoding only (record.py beside the plugin encodes it).
//
//   uint32 n (little-endian) · n bytes of JSON header · heads·q·k uint8 weights
//   (w = byte / 254 · scales[h]; 255 = not finite; masked cells 0) · if header.mask: the visible cells
//   as bits, np.packbits(bitorder="little"), for header.mask.heads (1 or heads) heads · if header.image:
//   height·width·3 uint8 RGB.
//
// Pure: no DOM, so node's test runner imports it (tests/js).

export const FORMAT = "attnviz/2";
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
 * @property {string} layer
 * @property {number} sample
 * @property {number} heads
 * @property {number} q
 * @property {number} k
 * @property {number[]} scales  per head: the weight of byte 254
 * @property {string[]} q_labels
 * @property {string[]} k_labels
 * @property {string} note
 * @property {{heads: number} | null} mask
 * @property {ImageInfo | null} image
 *
 * @typedef {object} AttnRecord
 * @property {Header} header
 * @property {Uint8Array} cells  heads·q·k quantised weights
 * @property {Uint8Array | null} visible  maskHeads·q·k, 1 = visible; null: nothing masked
 * @property {number} maskHeads  0, 1 (one mask for all heads) or heads
 * @property {Uint8Array | null} image  height·width·3 RGB
 * @property {number} bytes  size of the record
 */

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
  if (header.format !== FORMAT) {
    throw new Error(`record format ${JSON.stringify(header.format)}, this tab reads ${FORMAT}`);
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
  if (header.scales.length !== heads || header.q_labels.length !== q || header.k_labels.length !== k) {
    throw new Error("record: scale or label counts do not match heads, q and k");
  }
  let offset = 4 + n;
  const cells = new Uint8Array(buffer, offset, cellBytes);
  offset += cellBytes;
  const visible = maskHeads ? unpackBits(new Uint8Array(buffer, offset, maskBytes), maskHeads * q * k) : null;
  offset += maskBytes;
  const image = header.image ? new Uint8Array(buffer, offset, imageBytes) : null;
  return { header, cells, visible, maskHeads, image, bytes: buffer.byteLength };
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
  const byte = record.cells[head * record.header.q * record.header.k + index];
  return byte === NOT_FINITE ? Number.NaN : (byte / LEVELS) * record.header.scales[head];
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
