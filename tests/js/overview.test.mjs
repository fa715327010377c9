// The overview's data: the record of a step, one head's series, the colour range of a metric.
import assert from "node:assert/strict";
import { test } from "node:test";
import { STATIC, overviewRecord } from "./helpers.mjs";

const overview = await import(new URL("overview.js", STATIC).href);
const record = overviewRecord();

test("the record Python wrote: layers, metrics, NaN as null", () => {
  assert.deepEqual([record.step, record.epoch, record.layers], [7, 1, ["a.0", "a.1"]]);
  assert.deepEqual(record.metrics.map((m) => m.name), ["entropy_norm", "distance"]);
  assert.equal(record.metrics[0].values[0][2], null);
});

test("series over steps: a head's value, or the mean of the heads that have one", () => {
  const later = { ...record, step: 9, metrics: record.metrics.map((m) => ({ ...m, values: m.values.map((r) => r.map((v) => (v === null ? null : v / 2))) })) };
  const records = [record, later];
  assert.deepEqual(overview.seriesOf(records, "entropy_norm", "a.0", 1), [{ step: 7, value: 0.8 }, { step: 9, value: 0.4 }]);
  const mean = overview.seriesOf(records, "entropy_norm", "a.0", "mean");
  assert.ok(Math.abs(mean[0].value - 0.85) < 1e-12); // the NaN head left out
  assert.deepEqual(overview.seriesOf(records, "entropy_norm", "a.0", 2), []); // no value: no point
  assert.deepEqual(overview.seriesOf(records, "nope", "a.0", 0), []);
  assert.equal(overview.overviewAt(records, 8), record);
  assert.equal(overview.overviewAt(records, 6), null);
});

test("colour ranges: fixed, or 0 to a nice top as the pictures' colour bars", () => {
  assert.deepEqual(overview.colorRange(record.metrics[0]), [0, 1]);
  assert.deepEqual(overview.colorRange(record.metrics[1]), [0, 10]); // max 9 → 10
  assert.equal(overview.nice(0.31), 0.5);
  assert.equal(overview.nice(2), 2);
});
