// The tab pools a map wider than its panel by the pictures' rule (capture/blocks.py): the same blocks,
// labels and words as Python gives for the same axis, records pooled already included.
import assert from "node:assert/strict";
import { test } from "node:test";
import { expected, recordBytes, STATIC } from "./helpers.mjs";

const { axisInfo, blockLabels, blockRange, describe, planAxis, poolingNote } = await import(new URL("blocks.js", STATIC).href);
const { decodeRecord } = await import(new URL("record.js", STATIC).href);
const want = expected();

/** What the tab reads of an axis from a record's header (blocks as the pipeline wrote them). */
function infoOf(axis) {
  const header = { q: axis.length, k: axis.length, image: null, blocks: { q: axis.blocks, k: axis.blocks } };
  return axisInfo(header, "q");
}

for (const [name, axis] of Object.entries(want.axes)) {
  test(`${name}: the blocks, labels and words of capture/blocks.py's rule`, () => {
    const info = infoOf(axis);
    const plan = planAxis(axis.length, axis.limit, info);
    assert.deepEqual([...plan.group], axis.group);
    assert.deepEqual(blockLabels(plan, axis.labels, info), axis.block_labels);
    assert.equal(describe(plan, info), axis.describe);
    assert.ok(plan.blocks <= axis.limit, `${plan.blocks} blocks for a limit of ${axis.limit}`);
  });
}

test("prefix and sink tokens are blocks of their own; nothing pooled when the axis fits", () => {
  const vit = want.axes.registers;
  const plan = planAxis(vit.length, vit.limit, infoOf(vit));
  assert.equal(plan.alone, 5);
  assert.deepEqual([...plan.sizes.slice(0, 5)], [1, 1, 1, 1, 1]);
  assert.equal(planAxis(vit.length, vit.length, infoOf(vit)).pooled, false);
  assert.equal(planAxis(vit.length, null, infoOf(vit)).pooled, false);
  const sinks = want.axes.text_sinks;
  assert.equal(planAxis(sinks.length, sinks.limit, infoOf(sinks)).alone, 4);
});

test("a record without blocks (earlier versions) keeps its first token alone, an image's CLS too", () => {
  const text = axisInfo({ q: 300, k: 300, image: null }, "q");
  assert.deepEqual(text, { alone: 1, grid: null, sizes: null, factor: 1 });
  const plan = planAxis(300, 50, text);
  assert.equal(plan.sizes[0], 1);
  assert.deepEqual([...plan.sizes.slice(1)].every((n) => n === 6 || n === 7), true); // 299 tokens in 49 blocks
  const image = { height: 4, width: 4, grid: [14, 14], prefix: 1 };
  const vit = axisInfo({ q: 197, k: 197, image }, "k");
  assert.deepEqual(vit.grid, { rows: 14, cols: 14, prefix: 1 });
  assert.deepEqual([...planAxis(197, 60, vit).group], want.axes.vit_b16.group);
});

test("the blocks that show a region: every block holding one of its cells", () => {
  const vit = want.axes.vit_b16;
  const plan = planAxis(vit.length, vit.limit, infoOf(vit));
  assert.deepEqual(blockRange(plan, 0, 1), [0, 1]); // CLS alone
  assert.deepEqual(blockRange(plan, 1, 3), [1, 2]); // patches (0,0), (0,1): one square
  // (0,13), then (1,0) and (1,1): the last square of the first row of squares and its first again
  assert.deepEqual(blockRange(plan, 14, 17), [1, 8]);
});

test("the on-screen note says what the pictures' note says", () => {
  const header = { q: 256, k: 256, image: null };
  const [q, k] = ["q", "k"].map((a) => planAxis(256, 100, axisInfo(header, a)));
  const info = axisInfo(header, "q");
  assert.equal(poolingNote(q, k, info, info), want.note.replace(/^pooled (.*): query rows averaged, keys summed$/, "downsampled $1: query rows averaged, keys summed, as the pictures pool"));
  assert.equal(poolingNote(planAxis(256, null, info), planAxis(256, null, info), info, info), "");
});

test("a record's blocks are checked: counts that do not describe its cells are refused", () => {
  const bytes = new Uint8Array(recordBytes("pooled_text"));
  const n = new DataView(bytes.buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n)));
  assert.equal(decodeRecord(bytes.buffer).header.blocks.q.sizes.length, header.q);
  for (const bad of [{ ...header.blocks.q, sizes: [1, 2] }, { ...header.blocks.q, alone: -1 }, { ...header.blocks.q, grid: [3, 3, 1] }]) {
    const crafted = new TextEncoder().encode(JSON.stringify({ ...header, blocks: { q: bad, k: header.blocks.k } }));
    const out = new Uint8Array(4 + crafted.length + bytes.length - 4 - n);
    new DataView(out.buffer).setUint32(0, crafted.length, true);
    out.set(crafted, 4);
    out.set(bytes.subarray(4 + n), 4 + crafted.length);
    assert.throws(() => decodeRecord(out.buffer), /pooling facts of the query axis/);
  }
});
