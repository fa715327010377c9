// The tab's colours are the pictures': the same tables, and the same place on them for the same map.
import assert from "node:assert/strict";
import { test } from "node:test";
import { expected, recordBytes, STATIC } from "./helpers.mjs";

const { decodeRecord } = await import(new URL("record.js", STATIC).href);
const { matrixOf, poolMatrix } = await import(new URL("matrix.js", STATIC).href);
const { axisInfo, planAxis } = await import(new URL("blocks.js", STATIC).href);
const { SCALES, changePlaces, entry, logPlace, places, rgba } = await import(new URL("scale.js", STATIC).href);
const { VIRIDIS } = await import(new URL("viridis.js", STATIC).href);
const { RDBU } = await import(new URL("rdbu.js", STATIC).href);
const want = expected();

test("the colour tables are render/scale.py's, entry for entry", () => {
  assert.deepEqual([...VIRIDIS], want.viridis.flat());
  assert.deepEqual([...RDBU], want.rdbu.flat());
  for (const [i, rgb] of [0, 128, 255].entries()) {
    // matplotlib's own viridis (truncated to bytes) differs from the rounded table by at most 1
    const ours = [...VIRIDIS.slice(rgb * 3, rgb * 3 + 3)];
    ours.forEach((c, j) => assert.ok(Math.abs(c - want.viridis_matplotlib[i][j]) <= 1));
  }
});

/** Each place within 1e-4 of Python's, and so on the same or the next table entry. */
function assertPlaces(got, expectedPlaces, label) {
  assert.equal(got.length, expectedPlaces.length, label);
  let same = 0;
  for (let i = 0; i < got.length; i++) {
    const e = expectedPlaces[i];
    if (e === null) {
      assert.ok(Number.isNaN(got[i]), `${label} ${i}: hidden`);
      continue;
    }
    assert.ok(Math.abs(got[i] - e) < 1e-4, `${label} ${i}: ${got[i]} vs ${e}`);
    assert.ok(Math.abs(entry(got[i]) - entry(e)) <= 1);
    if (entry(got[i]) === entry(e)) same += 1;
  }
  assert.ok(same >= 0.99 * expectedPlaces.filter((e) => e !== null).length, `${label}: entries match`);
}

test("places on the log scale match render/scale.py's levels, masked cells gray", () => {
  for (const name of ["causal", "long"]) {
    const matrix = matrixOf(decodeRecord(recordBytes(name)), "mean");
    const got = places(matrix, "log", { q0: 0, q1: matrix.q, k0: 0, k1: matrix.k });
    assertPlaces(got, want.places[name], name);
  }
});

test("a map wider than its panel is pooled by the pictures' rule and placed as Python places those blocks", () => {
  const matrix = matrixOf(decodeRecord(recordBytes("long")), "mean"); // 256 tokens, shown in 86 blocks
  const info = axisInfo(decodeRecord(recordBytes("long")).header, "q");
  const plan = planAxis(256, 100, info);
  assert.equal(plan.sizes[0], 1, "token 0 alone");
  const pooled = poolMatrix(matrix, plan, plan);
  const all = { q0: 0, q1: plan.blocks, k0: 0, k1: plan.blocks };
  assertPlaces(places(pooled, "log", all), want.places.long_pooled, "pooled");
});

test("a record pooled already is pooled further with its rows weighted by the tokens they stand for", () => {
  const record = decodeRecord(recordBytes("pooled_text")); // 300 tokens pooled to 100 cells by the pipeline
  const matrix = matrixOf(record, "mean");
  const [qInfo, kInfo] = [axisInfo(record.header, "q"), axisInfo(record.header, "k")];
  assert.equal(qInfo.alone, 2, "the two sink tokens the pipeline kept alone");
  const q = planAxis(record.header.q, 40, qInfo);
  const k = planAxis(record.header.k, 40, kInfo);
  const exact = { q0: 0, q1: matrix.q, k0: 0, k1: matrix.k };
  assertPlaces(places(matrix, "log", exact), want.places.pooled_text, "as the pipeline pooled it, per token");
  const pooled = poolMatrix(matrix, q, k);
  const all = { q0: 0, q1: q.blocks, k0: 0, k1: k.blocks };
  assertPlaces(places(pooled, "log", all), want.places.pooled_text_pooled, "pooled twice");
  assert.equal(poolMatrix(matrix, q, k), pooled, "cached");
});

test("a zoomed region keeps each cell's place in its whole row", () => {
  const matrix = matrixOf(decodeRecord(recordBytes("long")), "mean");
  const region = { q0: 200, q1: 210, k0: 100, k1: 140 };
  const got = places(matrix, "log", region);
  for (let i = 0; i < 10; i++) {
    for (let j = 0; j < 40; j++) {
      const e = want.places.long[(200 + i) * 256 + 100 + j];
      if (e === null) assert.ok(Number.isNaN(got[i * 40 + j]));
      else assert.ok(Math.abs(got[i * 40 + j] - e) < 1e-4);
    }
  }
});

test("the log scale's landmarks: uniform at 0.4, one-hot at 1, 1/n² and below at 0", () => {
  assert.equal(logPlace(1 / 64, 1, 64), 0.4);
  assert.ok(Math.abs(logPlace(1 / 8, 1, 64) - 0.7) < 1e-12); // 1/√n
  assert.equal(logPlace(1, 1, 64), 1);
  assert.equal(logPlace(1 / 64 ** 2, 1, 64), 0);
  assert.equal(logPlace(0, 1, 64), 0);
  assert.equal(logPlace(1, 1, 1), 1); // a row of one key
  assert.deepEqual(SCALES.log.ticks.map(([t]) => t), [0, 0.2, 0.4, 0.7, 1]);
});

test("linear is the weight from 0 to 1; change is white at 0 and ±span at the ends", () => {
  const a = { values: Float32Array.from([0.2, 0.5, 0.3, 0]), hidden: Uint8Array.from([0, 0, 0, 1]), q: 2, k: 2, max: 0.5 };
  const b = { values: Float32Array.from([0.6, 0.1, 0.3, 0]), hidden: Uint8Array.from([0, 0, 0, 1]), q: 2, k: 2, max: 0.6 };
  const all = { q0: 0, q1: 2, k0: 0, k1: 2 };
  const linear = places(b, "linear", all);
  assert.ok(Math.abs(linear[0] - 0.6) < 1e-6 && Number.isNaN(linear[3]));
  const change = changePlaces(a, b, all);
  assert.ok(Math.abs(change.span - 0.4) < 1e-6);
  assert.deepEqual([...change.places].slice(0, 3).map((t) => entry(t)), [255, 0, 128]); // +span, −span, 0
  const pixels = rgba(change.places, SCALES.change.lut);
  assert.deepEqual([...pixels.slice(8, 11)], [...RDBU.slice(128 * 3, 128 * 3 + 3)]); // no change: the middle
  assert.deepEqual([...pixels.slice(12, 15)], [215, 215, 215]); // masked: gray
});
