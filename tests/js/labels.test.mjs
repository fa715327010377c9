// Token names, layer names, bidi isolation and the colour table.
import assert from "node:assert/strict";
import { test } from "node:test";
import { STATIC } from "./helpers.mjs";

const labels = await import(new URL("labels.js", STATIC).href);

test("top-key lines carry the key's position: repeated tokens stay apart", () => {
  assert.equal(labels.topKeyLine("i", 3, 0.9891), "\u2068i\u2069@3  0.989");
  assert.equal(labels.topKeyLine("i", 5, 0.004), "\u2068i\u2069@5  0.004");
  assert.equal(labels.topKeyLine("7", 7, 0.5), "@7  0.500");
  assert.equal(labels.formatWeight(0.00012345), "0.00012"); // a long row's weights keep two digits
  assert.equal(labels.formatWeight(0), "0.000");
});

test("bidi controls in labels are isolated", () => {
  assert.equal(labels.isolate("\u202etxt.exe"), "\u2068\u202etxt.exe\u2069");
  const header = { q_labels: ["\u202eabc"], image: null };
  assert.equal(labels.tokenName(header, 0), "query 0 · \u2068\u202eabc\u2069");
});

test("long layer names are shortened in the middle, both ends kept", () => {
  const name = "model.encoder.layers.11.self_attention.attention_probabilities";
  const short = labels.shortenMiddle(name, 30);
  assert.equal(short.length, 30);
  assert.ok(short.startsWith("model.encoder.") && short.endsWith("probabilities") && short.includes("…"));
  assert.equal(labels.shortenMiddle("blocks.0", 30), "blocks.0");
  assert.deepEqual(["b.10", "b.2", "b.1"].sort(labels.naturalCompare), ["b.1", "b.2", "b.10"]);
});

test("the vision caption says what it shows once", () => {
  const header = { q_labels: ["CLS", "p0"], image: { prefix: 1, grid: [1, 1] } };
  assert.equal(labels.overlayCaption(header, null), "query 0 · \u2068CLS\u2069 → patches · hover a patch");
  assert.equal(labels.overlayCaption(header, 1), "where patch (0, 0) · \u2068p0\u2069 attends");
  const noPrefix = { q_labels: ["0"], image: { prefix: 0, grid: [1, 1] } };
  assert.equal(labels.overlayCaption(noPrefix, null), "mean attention received · hover a patch");
});
