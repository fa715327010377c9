// Head means, masks, colour limits and top keys.
import assert from "node:assert/strict";
import { test } from "node:test";
import { expected, recordBytes, STATIC } from "./helpers.mjs";

const { decodeRecord } = await import(new URL("record.js", STATIC).href);
const { matrixOf, topKeys, meanReceived, patchRow, saturation } = await import(new URL("matrix.js", STATIC).href);
const want = expected();

test("the head mean is the mean of the decoded heads; masked cells are hidden", () => {
  const record = decodeRecord(recordBytes("causal"));
  const { heads, q, k } = record.header;
  const mean = matrixOf(record, "mean");
  const w = want.causal;
  for (let i = 0; i < q * k; i++) {
    let sum = 0;
    for (let h = 0; h < heads; h++) sum += w.weights[h * q * k + i] ?? Number.NaN;
    if (Number.isNaN(sum)) assert.ok(Number.isNaN(mean.values[i]));
    else assert.ok(Math.abs(mean.values[i] - sum / heads) < 1e-6); // Python's are float32
    assert.equal(mean.hidden[i], w.visible[i] ? 0 : 1);
  }
  assert.equal(matrixOf(record, "mean"), mean, "cached per record and head");
  const head1 = matrixOf(record, 1).values;
  for (let j = 0; j < k; j++) assert.ok(Math.abs(head1[j] - w.weights[q * k + j]) < 1e-6);
});

test("top keys: largest first, positions kept, masked and NaN cells skipped", () => {
  const values = Float64Array.from([0.1, 0.5, Number.NaN, 0.3, 0.9, 0.1]);
  const hidden = Uint8Array.from([0, 0, 0, 0, 1, 0]); // key 4 is masked: never a top key
  const matrix = { values, hidden, q: 1, k: 6, max: 0.5, vmax: 0.5 };
  assert.deepEqual(topKeys(matrix, 0, 3), [
    { key: 1, weight: 0.5 },
    { key: 3, weight: 0.3 },
    { key: 0, weight: 0.1 }, // ties: the lower key first
  ]);
  assert.equal(topKeys(matrix, 0, 10).length, 4);
});

test("per-head masks: a head sees its own mask, the mean hides what every head masked", () => {
  const record = decodeRecord(recordBytes("per_head"));
  const { q, k } = record.header;
  const v = want.per_head.visible;
  for (let i = 0; i < q * k; i++) {
    assert.equal(matrixOf(record, 1).hidden[i], v[q * k + i] ? 0 : 1);
    assert.equal(matrixOf(record, "mean").hidden[i], v[i] || v[q * k + i] ? 0 : 1);
  }
});

test("patch rows and the mean attention received", () => {
  const record = decodeRecord(recordBytes("vision"));
  const matrix = matrixOf(record, "mean");
  assert.deepEqual([...patchRow(matrix, 0, 1, 4)], [...matrix.values.slice(1, 5)]);
  const received = meanReceived(matrix, 1, 4);
  const column = (p) => [0, 1, 2, 3, 4].reduce((sum, i) => sum + matrix.values[i * 5 + 1 + p] / 5, 0);
  for (let p = 0; p < 4; p++) assert.ok(Math.abs(received[p] - column(p)) < 1e-12);
});

test("colours saturate at the 99.5th percentile of large maps only", () => {
  const small = Float64Array.from({ length: 100 }, (_, i) => i / 100);
  assert.equal(saturation(small, new Uint8Array(100), 0.99), 0.99);
  const big = new Float64Array(10_000).fill(0.01);
  big[0] = 1;
  assert.equal(saturation(big, new Uint8Array(10_000), 1), 0.01);
});
