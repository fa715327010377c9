// Head means, masks, colour limits and top keys.
import assert from "node:assert/strict";
import { test } from "node:test";
import { expected, recordBytes, STATIC } from "./helpers.mjs";

const { decodeRecord } = await import(new URL("record.js", STATIC).href);
const { matrixOf, topKeys, meanReceived, patchRow, poolMatrix, rowStats } = await import(new URL("matrix.js", STATIC).href);
const { planAxis } = await import(new URL("blocks.js", STATIC).href);
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

test("pooling by plans: rows averaged, keys summed, a block visible if any cell is; unequal blocks too", () => {
  const values = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]); // 5 rows × 3 keys
  const hidden = new Uint8Array(15);
  hidden[3] = hidden[4] = hidden[6] = hidden[7] = 1; // rows 1 and 2's first two keys
  const matrix = { values, hidden, max: 15, q: 5, k: 3 };
  const text = { alone: 1, grid: null, sizes: null, factor: 1 };
  const q = planAxis(5, 3, text); // row 0 alone, rows 1–2, rows 3–4
  const k = planAxis(3, 2, text); // key 0 alone, keys 1–2
  assert.deepEqual([...q.group, ...k.group], [0, 1, 1, 2, 2, 0, 1, 1]);
  const pooled = poolMatrix(matrix, q, k);
  assert.deepEqual([pooled.q, pooled.k], [3, 2]);
  const want = [1, 2 + 3, (4 + 7) / 2, (5 + 6 + 8 + 9) / 2, (10 + 13) / 2, (11 + 12 + 14 + 15) / 2];
  assert.deepEqual([...pooled.values], want);
  assert.deepEqual([...pooled.hidden], [0, 0, 1, 0, 0, 0]);
  assert.equal(poolMatrix(matrix, q, k), pooled, "cached");
  assert.equal(poolMatrix(matrix, planAxis(5, null, text), planAxis(3, null, text)), matrix);
  assert.deepEqual([...pooled.keyTokens], [1, 2]);
  const rows = rowStats(matrix); // hidden and non-finite keys do not count
  assert.deepEqual([...rows.counts], [3, 1, 1, 3, 3]);
  assert.deepEqual([...rows.totals], [6, 6, 9, 33, 42]);
  // a record pooled already: row 1 stands for three tokens, key 2 for four
  const told = { ...matrix, rowTokens: [1, 3, 1, 1, 1], keyTokens: [1, 1, 4], rows: undefined, pooled: undefined };
  const weighted = poolMatrix(told, q, k);
  assert.equal(weighted.values[2], (3 * 4 + 7) / 4);
  assert.deepEqual([...weighted.keyTokens], [1, 5]);
  assert.deepEqual([...rowStats(told).counts], [6, 4, 4, 6, 6]);
});

test("top keys of a long row: one pass, the same as a full sort", () => {
  const k = 2048;
  const values = Float32Array.from({ length: k }, (_, j) => ((j * 7919) % 1000) / 1000);
  const matrix = { values, hidden: new Uint8Array(k), q: 1, k, max: 1 };
  const sorted = [...values.keys()].sort((a, b) => values[b] - values[a] || a - b).slice(0, 5);
  assert.deepEqual(topKeys(matrix, 0, 5).map((x) => x.key), sorted);
});
