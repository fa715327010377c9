// Shared by the node unit tests: where the frontend modules are, and the fixtures Python made.
import { readFileSync } from "node:fs";
import { join } from "node:path";

export const STATIC = new URL("../../lightning_attnviz/tab/static/", import.meta.url);

const dir = process.env.ATTNVIZ_JS_FIXTURES;
if (!dir) throw new Error("ATTNVIZ_JS_FIXTURES is not set: run scripts/test_js.sh");

/** @returns {any} what the Python decoder read from each record, and matplotlib's colours */
export function expected() {
  return JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));
}

/** @param {string} name @returns {ArrayBuffer} a record the Python encoder wrote */
export function recordBytes(name) {
  const bytes = readFileSync(join(dir, `${name}.bin`));
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}
