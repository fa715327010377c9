// Fetching: the plugin's routes, and a byte-bounded cache of decoded records.

import { decodeRecord } from "./record.js";

const PLUGIN_NAME = "attnviz";
const CACHE_BYTES = 96 * 1024 * 1024; // a 512-token, 8-head map is 2 MiB

/**
 * Where the plugin's routes live. TensorBoard serves the tab's iframe at
 * `<prefix>/data/plugin_entry.html?name=attnviz` with `<base href="plugin/attnviz/">`, so the document's
 * base URL is the routes' folder whatever `--path_prefix` is (TensorBoard's example plugins rely on it).
 * `location.href` ignores <base>; without one we use the plugin folder next to plugin_entry.html.
 * @returns {URL}
 */
export function pluginBase() {
  if (document.querySelector("base[href]")) return new URL("./", document.baseURI);
  return new URL(`plugin/${PLUGIN_NAME}/`, location.href);
}

export class HttpError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   */
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * GETs a route; a failed answer becomes an HttpError with the server's message (TensorBoard answers
 * NotFoundError and InvalidArgumentError with plain text).
 * @param {URL} base
 * @param {string} route
 * @param {Record<string, string | number>} [params]
 * @returns {Promise<Response>}
 */
export async function request(base, route, params = {}) {
  const url = new URL(route, base);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
  const response = await fetch(url);
  if (!response.ok) {
    const reason = (await response.text().catch(() => "")).trim() || response.statusText;
    throw new HttpError(response.status, `${route}: ${reason} (HTTP ${response.status})`);
  }
  return response;
}

/** Decoded records by run, tag and step, most recently used last, bounded in bytes. */
export class RecordCache {
  /** @param {URL} base */
  constructor(base) {
    this.base = base;
    /** @type {Map<string, {bytes: number, promise: Promise<import("./record.js").AttnRecord>}>} */
    this.entries = new Map();
    this.bytes = 0;
  }

  /**
   * @param {string} run
   * @param {string} tag
   * @param {number} step
   */
  static key(run, tag, step) {
    return `${run}\u0000${tag}\u0000${step}`;
  }

  /**
   * One step's record, fetched once; a failure is not cached.
   * @param {string} run
   * @param {string} tag
   * @param {number} step
   * @returns {Promise<import("./record.js").AttnRecord>}
   */
  get(run, tag, step) {
    const key = RecordCache.key(run, tag, step);
    const known = this.entries.get(key);
    if (known) {
      this.entries.delete(key);
      this.entries.set(key, known);
      return known.promise;
    }
    const entry = { bytes: 0, promise: Promise.resolve(/** @type {any} */ (null)) };
    entry.promise = request(this.base, "map", { run, tag, step })
      .then((response) => response.arrayBuffer())
      .then((buffer) => {
        const record = decodeRecord(buffer);
        entry.bytes = record.bytes;
        this.bytes += record.bytes;
        this.evict(key);
        return record;
      })
      .catch((error) => {
        this.entries.delete(key);
        throw error;
      });
    this.entries.set(key, entry);
    return entry.promise;
  }

  /** @param {string} keep */
  evict(keep) {
    for (const [key, entry] of this.entries) {
      if (this.bytes <= CACHE_BYTES) break;
      if (key === keep || entry.bytes === 0) continue;
      this.entries.delete(key);
      this.bytes -= entry.bytes;
    }
  }
}
