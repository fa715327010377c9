// Living inside TensorBoard's iframe: its reload messages, its URL (where the view's state lives) and its
// light or dark mode.

import { PREFIX, parseHash, replaceHash, unprefix, withPrefix } from "./state.js";

const PLUGIN_NAME = "attnviz";
const REPLY_MS = 1500; // how long to wait for TensorBoard to answer a message

/**
 * TensorBoard's side of the iframe: the iframe posts "experimental.bootstrap" with a MessagePort to its
 * parent, which then exchanges JSON messages {type, id, payload, error, isReply} with it, each answered.
 * TensorBoard sends "experimental.DataReloaded" (reload button, auto-reload) and answers
 * "experimental.GetURLPluginData" with the `p.<plugin>.*` keys of its URL.
 */
export class TensorBoardLink {
  /** @param {() => void} onReload */
  constructor(onReload) {
    this.port = null;
    this.nextId = 0;
    /** @type {Map<number, (payload: any) => void>} */
    this.waiting = new Map();
    if (window.parent === window || typeof MessageChannel === "undefined") return;
    const channel = new MessageChannel();
    channel.port1.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!message) return;
      if (message.isReply) {
        this.waiting.get(message.id)?.(message.error ? null : message.payload);
        this.waiting.delete(message.id);
        return;
      }
      if (message.type === "experimental.DataReloaded" || message.type === "experimental.RunsChanged") onReload();
      const reply = { type: message.type, id: message.id, payload: null, error: null, isReply: true };
      channel.port1.postMessage(JSON.stringify(reply));
    };
    try {
      window.parent.postMessage("experimental.bootstrap", location.origin, [channel.port2]);
      this.port = channel.port1;
    } catch {
      // a parent of another origin: polling and window focus still reload
    }
  }

  /**
   * Sends a message to TensorBoard; its answer's payload, or null when none comes in time.
   * @param {string} type
   * @param {any} payload
   * @returns {Promise<any>}
   */
  send(type, payload) {
    if (!this.port) return Promise.resolve(null);
    const id = this.nextId++;
    const port = this.port;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      port.postMessage(JSON.stringify({ type, id, payload, error: null, isReply: false }));
      setTimeout(() => {
        if (this.waiting.delete(id)) resolve(null);
      }, REPLY_MS);
    });
  }

  /**
   * The view's state from the address: the `p.attnviz.*` keys of TensorBoard's hash, read directly
   * when the iframe may (same origin; TensorBoard 2.x answers GetURLPluginData from the hash as it was
   * when its page loaded, before its router put the hash in place, so that answer is often empty),
   * else asked of TensorBoard; outside TensorBoard, the iframe's own hash.
   * @returns {Promise<Record<string, string>>}
   */
  async readAddress() {
    const outer = outerLocation();
    if (outer) return unprefix(parseHash(outer.hash).params, PREFIX);
    const data = await this.send("experimental.GetURLPluginData", { pluginName: PLUGIN_NAME });
    if (data && Object.keys(data).length) return data;
    return parseHash(location.hash).params;
  }

  /**
   * Puts the view's state into the address bar the user sees (TensorBoard's hash, replacing its
   * `p.attnviz.*` keys and keeping its own), without a history entry per slider move.
   * @param {Record<string, string>} params
   */
  writeAddress(params) {
    const outer = outerLocation();
    if (outer) {
      const hash = replaceHash(outer.hash, withPrefix(params, PREFIX), PREFIX);
      const url = new URL(outer.href);
      url.hash = hash;
      if (url.href !== outer.href) window.parent.history.replaceState(window.parent.history.state, "", url.href);
      return;
    }
    const hash = replaceHash(location.hash, params, "");
    if (`#${hash}` !== location.hash) history.replaceState(history.state, "", `#${hash}`);
  }
}

/** TensorBoard's location when the iframe may read and write it (same origin), else null. */
function outerLocation() {
  try {
    if (window.parent === window) return null;
    const outer = window.parent.location;
    return outer.href ? outer : null;
  } catch {
    return null;
  }
}

/**
 * Follows TensorBoard's dark mode (it toggles `dark-mode` on its <body>).
 * @param {(dark: boolean) => void} onChange  called now and on every change
 */
export function followTheme(onChange) {
  let outer = null;
  try {
    outer = window.parent !== window ? window.parent.document.body : null;
  } catch {
    outer = null; // a parent of another origin: stay light
  }
  const apply = () => {
    const dark = Boolean(outer && outer.classList.contains("dark-mode"));
    document.body.classList.toggle("attnviz-dark", dark);
    document.documentElement.style.colorScheme = dark ? "dark" : "light";
    onChange(dark);
  };
  apply();
  if (outer) new MutationObserver(apply).observe(outer, { attributes: true, attributeFilter: ["class"] });
}
