// The view's state as text, for the page's address: what a shared link must reproduce.
//
// TensorBoard keeps its state in its own URL's hash, `#<tab>&key=value&…` (tf_storage), and hands a
// plugin the keys `p.<plugin>.<key>` of it (the "experimental.GetURLPluginData" message), so the tab
// stores its state there as `p.attnviz.run=…&p.attnviz.step=…`: a link to TensorBoard opens the tab on
// the same view. Outside TensorBoard the tab's own hash holds the same keys without the prefix.
//
// Pure: no DOM, so node's test runner imports it (tests/js).

export const PREFIX = "p.attnviz.";
export const COMPARE = ["none", "steps", "heads", "runs"];

/**
 * @typedef {{q0: number, q1: number, k0: number, k1: number}} Region
 *
 * @typedef {object} ViewState
 * @property {string | null} run
 * @property {string | null} sample  "sample_<i>"
 * @property {string | null} layer
 * @property {number | "mean"} head
 * @property {number | null} step  null: the latest
 * @property {"none" | "steps" | "heads" | "runs"} compare
 * @property {number | null} step2  the other step (compare "steps")
 * @property {string | null} run2  the other run (compare "runs")
 * @property {"log" | "linear"} scale
 * @property {"heatmap" | "lines"} view
 * @property {Region | null} zoom  null: the whole map
 * @property {string | null} metric  the overview's metric
 */

/** @returns {ViewState} */
export function defaultState() {
  return {
    run: null, sample: null, layer: null, head: "mean", step: null, compare: "none", step2: null,
    run2: null, scale: "log", view: "heatmap", zoom: null, metric: null,
  };
}

/**
 * The state as key → text, defaults left out (a short link says only what differs).
 * @param {ViewState} state
 * @returns {Record<string, string>}
 */
export function encodeState(state) {
  const base = defaultState();
  /** @type {Record<string, string>} */
  const out = {};
  for (const [key, value] of Object.entries(state)) {
    if (value === null || value === undefined || value === /** @type {any} */ (base)[key]) continue;
    out[key] = key === "zoom" ? `${value.q0}-${value.q1},${value.k0}-${value.k1}` : String(value);
  }
  return out;
}

/**
 * A state from key → text; what is missing or malformed keeps its default.
 * @param {Record<string, string>} params
 * @returns {ViewState}
 */
export function decodeState(params) {
  const state = defaultState();
  const text = (/** @type {string} */ key) => (typeof params[key] === "string" && params[key] !== "" ? params[key] : null);
  const integer = (/** @type {string} */ key) => {
    const value = text(key);
    return value !== null && /^-?\d+$/.test(value) ? Number(value) : null;
  };
  state.run = text("run");
  state.sample = text("sample");
  state.layer = text("layer");
  state.run2 = text("run2");
  state.metric = text("metric");
  state.step = integer("step");
  state.step2 = integer("step2");
  const head = integer("head");
  if (head !== null && head >= 0) state.head = head;
  const compare = text("compare");
  if (compare && COMPARE.includes(compare)) state.compare = /** @type {any} */ (compare);
  if (text("scale") === "linear") state.scale = "linear";
  if (text("view") === "lines") state.view = "lines";
  const zoom = /^(\d+)-(\d+),(\d+)-(\d+)$/.exec(text("zoom") || "");
  if (zoom) {
    const [q0, q1, k0, k1] = zoom.slice(1).map(Number);
    if (q1 > q0 && k1 > k0) state.zoom = { q0, q1, k0, k1 };
  }
  return state;
}

/**
 * TensorBoard's hash, `<tab>&key=value&…`, as its tab and its keys (tf_storage's reading of it).
 * @param {string} hash  with or without the leading "#"
 * @returns {{tab: string, params: Record<string, string>}}
 */
export function parseHash(hash) {
  let tab = "";
  /** @type {Record<string, string>} */
  const params = {};
  for (const part of hash.replace(/^#/, "").split("&")) {
    if (!part) continue;
    const pieces = part.split("=");
    if (pieces.length === 1) tab = pieces[0];
    else if (pieces.length === 2) params[decodeURIComponent(pieces[0])] = decodeURIComponent(pieces[1]);
  }
  return { tab, params };
}

/**
 * A hash with `ours` (already prefixed keys) in place of every key starting with `prefix`; TensorBoard's
 * own keys are kept in their order.
 * @param {string} hash
 * @param {Record<string, string>} ours
 * @param {string} prefix
 * @returns {string}  without the leading "#"
 */
export function replaceHash(hash, ours, prefix) {
  const { tab, params } = parseHash(hash);
  const kept = Object.entries(params).filter(([key]) => !key.startsWith(prefix));
  const parts = [...kept, ...Object.entries(ours)].map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return [tab, ...parts].filter(Boolean).join("&");
}

/**
 * `params` with keys that start with `prefix`, the prefix taken off.
 * @param {Record<string, string>} params
 * @param {string} prefix
 * @returns {Record<string, string>}
 */
export function unprefix(params, prefix) {
  /** @type {Record<string, string>} */
  const out = {};
  for (const [key, value] of Object.entries(params)) if (key.startsWith(prefix)) out[key.slice(prefix.length)] = value;
  return out;
}

/**
 * @param {Record<string, string>} params
 * @param {string} prefix
 * @returns {Record<string, string>}
 */
export function withPrefix(params, prefix) {
  return Object.fromEntries(Object.entries(params).map(([key, value]) => [prefix + key, value]));
}

/**
 * The kept step to show for a wanted one: the step itself, else the latest before it, else the first.
 * @param {number[]} steps  ascending
 * @param {number | null} wanted  null: the latest
 * @returns {number}  an index into `steps`, -1 when there are none
 */
export function stepIndexFor(steps, wanted) {
  if (!steps.length) return -1;
  if (wanted === null) return steps.length - 1;
  const before = steps.findLastIndex((s) => s <= wanted);
  return before >= 0 ? before : 0;
}
