// Living inside TensorBoard's iframe: its reload messages and its light or dark mode.

/**
 * TensorBoard tells iframed plugins when its data reloads (the reload button, auto-reload): the iframe
 * posts "experimental.bootstrap" with a MessagePort to its parent, which then sends JSON messages
 * {type, id, payload, error, isReply} and waits for a reply to each.
 * @param {() => void} onReload
 */
export function listenToTensorBoard(onReload) {
  if (window.parent === window || typeof MessageChannel === "undefined") return;
  const channel = new MessageChannel();
  channel.port1.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || message.isReply) return;
    if (message.type === "experimental.DataReloaded" || message.type === "experimental.RunsChanged") {
      onReload();
    }
    const reply = { type: message.type, id: message.id, payload: null, error: null, isReply: true };
    channel.port1.postMessage(JSON.stringify(reply));
  };
  try {
    window.parent.postMessage("experimental.bootstrap", location.origin, [channel.port2]);
  } catch {
    // a parent of another origin: polling and window focus still reload
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
