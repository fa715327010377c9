// The tab decodes what the Python encoder wrote exactly as the Python decoder does, both formats.
import assert from "node:assert/strict";
import { test } from "node:test";
import { expected, recordBytes, STATIC } from "./helpers.mjs";

const { decodeRecord, isVisible, weightOf } = await import(new URL("record.js", STATIC).href);
const want = expected();

for (const name of ["causal", "per_head", "vision", "long", "version2"]) {
  test(`${name}: header, weights, mask and image match Python's decode_map`, () => {
    const record = decodeRecord(recordBytes(name));
    const w = want[name];
    const { heads, q, k } = record.header;
    assert.deepEqual([record.header.step, record.header.layer, heads, q, k], [w.step, w.layer, w.heads, w.q, w.k]);
    assert.equal(record.header.epoch ?? null, w.epoch);
    assert.deepEqual(record.header.q_labels, w.q_labels);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < q * k; i++) {
        const expectedWeight = w.weights[h * q * k + i];
        const got = weightOf(record, h, i);
        if (expectedWeight === null) assert.ok(Number.isNaN(got), `head ${h} cell ${i} is NaN`);
        else assert.ok(Math.abs(got - expectedWeight) <= 1e-6 * Math.max(1, expectedWeight), `head ${h} cell ${i}: ${got} vs ${expectedWeight}`);
        const visible = w.visible === null ? 1 : w.visible[(w.visible.length === q * k ? 0 : h) * q * k + i];
        assert.equal(isVisible(record, h, i), visible === 1);
      }
    }
    if (w.image === null) assert.equal(record.image, null);
    else assert.deepEqual([...record.image], w.image);
  });
}

test("attnviz/2's linear bytes: b / 254 · scale, 255 not finite", () => {
  const record = decodeRecord(recordBytes("version2"));
  assert.equal(record.header.format, "attnviz/2");
  assert.ok(Math.abs(weightOf(record, 0, 0) - 0.8) < 1e-6);
  assert.equal(weightOf(record, 0, 1), 0);
  assert.ok(Math.abs(weightOf(record, 0, 2) - (127 / 254) * 0.8) < 1e-6);
  assert.ok(Number.isNaN(weightOf(record, 0, 3)));
});

test("a record of another format or length is refused with a reason", () => {
  const bytes = new Uint8Array(recordBytes("causal"));
  assert.throws(() => decodeRecord(bytes.slice(0, bytes.length - 1).buffer), /bytes, its header describes/);
  const other = bytes.slice();
  const at = Buffer.from(other).indexOf("attnviz/3") + "attnviz/".length;
  other[at] = "1".charCodeAt(0);
  assert.throws(() => decodeRecord(other.buffer), /format "attnviz\/1"/);
  assert.throws(() => decodeRecord(new ArrayBuffer(2)), /too short/);
});
