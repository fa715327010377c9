// The view's state in the page's address: TensorBoard's hash format, what a shared link carries.
import assert from "node:assert/strict";
import { test } from "node:test";
import { STATIC } from "./helpers.mjs";

const state = await import(new URL("state.js", STATIC).href);

test("a state survives the address, and defaults are left out", () => {
  const view = { ...state.defaultState(), run: "lr=3e-4", sample: "sample_1", layer: "blocks.2.attn", head: 3,
    step: 384, compare: "steps", step2: 0, zoom: { q0: 10, q1: 74, k0: 0, k1: 64 }, metric: "entropy_norm" };
  const params = state.encodeState(view);
  assert.equal(params.scale, undefined); // the default, log
  assert.equal(params.zoom, "10-74,0-64");
  assert.deepEqual(state.decodeState(params), view);
  assert.deepEqual(state.decodeState({}), state.defaultState());
});

test("malformed values keep their defaults", () => {
  const decoded = state.decodeState({ head: "-2", step: "3.5", compare: "nope", zoom: "5-1,0-3", scale: "x" });
  assert.deepEqual(decoded, state.defaultState());
  assert.equal(state.decodeState({ head: "mean" }).head, "mean");
});

test("TensorBoard's hash: its tab and keys kept, ours replaced, values escaped", () => {
  const hash = "#attnviz&regexInput=a%26b&p.attnviz.run=old&p.attnviz.step=3";
  const ours = state.withPrefix({ run: "r&1=2", step: "9" }, state.PREFIX);
  const next = state.replaceHash(hash, ours, state.PREFIX);
  assert.equal(next, "attnviz&regexInput=a%26b&p.attnviz.run=r%261%3D2&p.attnviz.step=9");
  const { tab, params } = state.parseHash(next);
  assert.equal(tab, "attnviz");
  assert.deepEqual(state.unprefix(params, state.PREFIX), { run: "r&1=2", step: "9" });
  assert.equal(params.regexInput, "a&b");
});

test("a wanted step opens on itself, else the latest kept before it, else the first", () => {
  assert.equal(state.stepIndexFor([0, 3, 6], 3), 1);
  assert.equal(state.stepIndexFor([0, 3, 6], 5), 1);
  assert.equal(state.stepIndexFor([3, 6], 1), 0);
  assert.equal(state.stepIndexFor([0, 3, 6], null), 2);
  assert.equal(state.stepIndexFor([], 4), -1);
});
