// Shared by the node unit tests: where the frontend modules are, and the fixtures Python made.
//
// scripts/test_js.sh makes the fixtures once and names their folder in ATTNVIZ_JS_FIXTURES; without it
// (`node --test tests/js/*.test.mjs` from the repository root) each test file makes its own with the
// project's Python ($PYTHON, else .venv/bin/python, else python3).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const STATIC = new URL("../../lightning_attnviz/tab/static/", import.meta.url);
const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** The fixtures' folder: ATTNVIZ_JS_FIXTURES, or one made now. */
function fixtures() {
  if (process.env.ATTNVIZ_JS_FIXTURES) return process.env.ATTNVIZ_JS_FIXTURES;
  const venv = join(ROOT, ".venv", "bin", "python");
  const python = process.env.PYTHON || (existsSync(venv) ? venv : "python3");
  const dir = mkdtempSync(join(tmpdir(), "attnviz-js-"));
  const env = { ...process.env, PYTHONPATH: [ROOT, process.env.PYTHONPATH].filter(Boolean).join(":") };
  execFileSync(python, [join(ROOT, "tests", "js", "make_fixtures.py"), dir], { env, stdio: "inherit" });
  process.env.ATTNVIZ_JS_FIXTURES = dir;
  return dir;
}

const dir = fixtures();

/** @returns {any} what the Python decoder read from each record, and the pictures' colours */
export function expected() {
  return JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));
}

/** @param {string} name @returns {ArrayBuffer} a record the Python encoder wrote */
export function recordBytes(name) {
  const bytes = readFileSync(join(dir, `${name}.bin`));
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

/** @returns {any} the overview record Python wrote */
export function overviewRecord() {
  return JSON.parse(readFileSync(join(dir, "overview.json"), "utf8"));
}
