// The Attention tab: TensorBoard's frontend for the maps AttentionMonitor writes (see tb_plugin.py).
//
// A plain ES module with no build step and no imports: TensorBoard's Content-Security-Policy only lets
// the plugin iframe load scripts from, and fetch from, TensorBoard itself. TensorBoard loads this file
// in an iframe (`/data/plugin_entry.html?name=attnviz`) and calls `render()`; we draw into
// `document.body`.
//
// Everything is drawn on canvases, one pixel per (query, key) cell, scaled without smoothing, so maps
// of 512+ tokens stay fast. The only per-token DOM elements are the query labels of the token strip.

const PLUGIN_NAME = "attnviz";
const MAP_FORMAT = "attnviz/1";
const EMPTY_MESSAGE = "No attention data yet. AttentionMonitor writes it while training runs.";
const REFRESH_MS = 30_000; // TensorBoard's own auto-reload period
const TOP_KEYS = 5; // keys listed for the hovered query
const LINES_TOP_K = 3; // keys drawn per query in the lines view
const CACHE_BYTES = 96 * 1024 * 1024; // fetched steps kept in memory (a 512-token, 8-head map is 2 MiB)
const MAX_CELL = 40; // CSS px: tiny maps don't become giant blocks
const LABEL_MIN_CELL = 11; // CSS px: below this, token labels would overlap and ticks are drawn instead
const MAX_PLOT = 620; // CSS px: the heatmap's largest side

// Where the plugin's routes live. TensorBoard's plugin_entry.html (backend/application.py,
// `_serve_plugin_entry`) is served at `<prefix>/data/plugin_entry.html?name=attnviz` and contains
// `<base href="plugin/attnviz/">`, so the document's base URL is `<prefix>/data/plugin/attnviz/`:
// exactly the routes' folder, whatever `--path_prefix` is. TensorBoard's own example plugins rely on
// this (`fetch("./tags")`). Note that `location.href` ignores <base>: `new URL("./runs", location.href)`
// would point at `<prefix>/data/runs`. Without a <base> (the module loaded some other way) we fall
// back to the plugin folder next to `data/plugin_entry.html`.
function pluginBase() {
  if (document.querySelector("base[href]")) return new URL("./", document.baseURI);
  return new URL(`plugin/${PLUGIN_NAME}/`, location.href);
}

// ---------------------------------------------------------------------------------------------------
// Data: routes, the binary map format, weights

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(base, route, params = {}) {
  const url = new URL(route, base);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
  const response = await fetch(url);
  if (!response.ok) {
    let reason = response.statusText;
    try {
      reason = (await response.json()).error || reason;
    } catch {
      // not a JSON body: keep the status text
    }
    throw new HttpError(response.status, `${route}: ${reason} (HTTP ${response.status})`);
  }
  return response;
}

/**
 * One step of one sample and layer, as `map` serves it (format attnviz/1, little-endian):
 * uint32 n, n bytes of JSON header, heads·q·k uint8 weights (weight = byte / 255 · scale[head]),
 * then for images height·width·3 uint8 RGB.
 */
function parseMap(buffer) {
  if (buffer.byteLength < 4) throw new Error(`map: ${buffer.byteLength} bytes, too short for a header`);
  const headerLength = new DataView(buffer).getUint32(0, true);
  if (4 + headerLength > buffer.byteLength) {
    throw new Error(`map: header of ${headerLength} bytes in a ${buffer.byteLength}-byte record`);
  }
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  if (header.format !== MAP_FORMAT) {
    throw new Error(`map: format ${JSON.stringify(header.format)}, this tab reads ${MAP_FORMAT}`);
  }
  const { heads, q, k } = header;
  const cells = heads * q * k;
  const imageBytes = header.image ? header.image.height * header.image.width * 3 : 0;
  const expected = 4 + headerLength + cells + imageBytes;
  if (buffer.byteLength !== expected) {
    throw new Error(`map: ${buffer.byteLength} bytes, the header describes ${expected}`);
  }
  if (header.scale.length !== heads || header.q_labels.length !== q || header.k_labels.length !== k) {
    throw new Error("map: scale or label counts do not match heads, q and k");
  }
  const weights = new Uint8Array(buffer, 4 + headerLength, cells);
  const image = header.image ? new Uint8Array(buffer, 4 + headerLength + cells, imageBytes) : null;
  return { header, weights, image, bytes: buffer.byteLength, matrices: new Map() };
}

/** The (q, k) weights of one head, or their mean over heads ("mean"), row-major, cached per map. */
function matrixOf(map, head) {
  const cached = map.matrices.get(head);
  if (cached) return cached;
  const { heads, q, k, scale } = map.header;
  const size = q * k;
  const out = new Float64Array(size);
  const chosen = head === "mean" ? [...Array(heads).keys()] : [head];
  for (const h of chosen) {
    const offset = h * size;
    const s = scale[h];
    for (let i = 0; i < size; i++) out[i] += (map.weights[offset + i] / 255) * s;
  }
  if (chosen.length > 1) for (let i = 0; i < size; i++) out[i] /= chosen.length;
  let max = 0;
  for (let i = 0; i < size; i++) if (out[i] > max) max = out[i];
  // Colours saturate at the 99.5th percentile: one hot cell (a causal map's first row is all on key 0)
  // would otherwise leave the rest of a long map at the bottom of the colormap.
  let vmax = max;
  if (size > 256) {
    const stride = Math.max(1, Math.floor(size / 100_000));
    const sample = new Float64Array(Math.ceil(size / stride));
    for (let i = 0, n = 0; i < size; i += stride, n++) sample[n] = out[i];
    sample.sort();
    const high = sample[Math.min(sample.length - 1, Math.floor(0.995 * sample.length))];
    if (high > 0 && high < max) vmax = high;
  }
  const matrix = { values: out, max, vmax, q, k };
  map.matrices.set(head, matrix);
  return matrix;
}

/** The `count` largest weights of a row, largest first (ties: the lower key index first). */
function topKeys(matrix, row, count) {
  const start = row * matrix.k;
  const order = [];
  for (let j = 0; j < matrix.k; j++) order.push(j);
  order.sort((a, b) => matrix.values[start + b] - matrix.values[start + a] || a - b);
  return order.slice(0, count).map((j) => ({ key: j, weight: matrix.values[start + j] }));
}

// ---------------------------------------------------------------------------------------------------
// Colours

const VIRIDIS = [
  [68, 1, 84],
  [72, 40, 120],
  [62, 73, 137],
  [49, 104, 142],
  [38, 130, 142],
  [31, 158, 137],
  [53, 183, 121],
  [110, 206, 88],
  [253, 231, 37],
];

/** 256 RGB entries interpolated between viridis' anchor colours. */
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (VIRIDIS.length - 1);
    const lo = Math.min(Math.floor(x), VIRIDIS.length - 2);
    const t = x - lo;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = VIRIDIS[lo][c] + (VIRIDIS[lo + 1][c] - VIRIDIS[lo][c]) * t;
  }
  return lut;
})();

function lutIndex(value, max) {
  return max > 0 ? Math.max(0, Math.min(255, Math.round((value / max) * 255))) : 0;
}

function formatWeight(weight) {
  return weight.toFixed(3);
}

/** Canvas colours, following TensorBoard's light or dark mode. */
const THEMES = {
  light: {
    text: "#424242",
    muted: "#757575",
    frame: "#9e9e9e",
    dot: "#616161",
    accent: "#e65100",
    line: "33, 102, 172",
    lineActive: "230, 81, 0",
  },
  dark: {
    text: "#dadce0",
    muted: "#a8abb0",
    frame: "#80868b",
    dot: "#bdbdbd",
    accent: "#ffa726",
    line: "120, 180, 240",
    lineActive: "255, 167, 38",
  },
};

// ---------------------------------------------------------------------------------------------------
// Style

const CSS = `
.attnviz {
  --fg: #212121; --text: #424242; --muted: #616161; --faint: #9e9e9e; --bg: #fff; --panel: #fafafa;
  --border: #e0e0e0; --control: #bdbdbd; --accent: #f57c00; --accent-text: #e65100; --hover: #fff3e0;
  --message-bg: #fff3e0; --message-fg: #5d4037; --error-bg: #ffebee; --error-fg: #b71c1c; --note: #8d6e63;
  font: 13px/1.4 Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
}
body.attnviz-dark .attnviz {
  --fg: #e8eaed; --text: #dadce0; --muted: #a8abb0; --faint: #80868b; --bg: #303030; --panel: #383838;
  --border: #4a4a4a; --control: #666; --accent: #ef6c00; --accent-text: #ffa726; --hover: #4a3b2c;
  --message-bg: #4a3b2c; --message-fg: #ffe0b2; --error-bg: #5c2b2b; --error-fg: #ffcdd2; --note: #bcaaa4;
}
body { margin: 0; background: #fff; }
body.attnviz-dark { background: #303030; }
.attnviz [hidden] { display: none !important; }
.attnviz-toolbar {
  display: flex; flex-wrap: wrap; align-items: flex-end; gap: 10px 18px;
  padding: 10px 16px; border-bottom: 1px solid var(--border); background: var(--panel);
}
.attnviz-field { display: flex; flex-direction: column; gap: 3px; }
.attnviz-field-title, .attnviz-card h3, .attnviz-strip-title {
  margin: 0; font-size: 11px; font-weight: 500; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em;
}
.attnviz select {
  font: inherit; color: var(--fg); padding: 4px 6px; border: 1px solid var(--control); border-radius: 4px;
  background: var(--bg); max-width: 260px;
}
.attnviz select:focus-visible, .attnviz input:focus-visible, .attnviz button:focus-visible {
  outline: 2px solid var(--accent); outline-offset: 1px;
}
.attnviz-toggle {
  display: inline-flex; border: 1px solid var(--control); border-radius: 4px; overflow: hidden;
}
.attnviz-toggle button {
  font: inherit; border: 0; padding: 4px 12px; background: var(--bg); color: var(--text); cursor: pointer;
}
.attnviz-toggle button + button { border-left: 1px solid var(--control); }
.attnviz-toggle button[aria-pressed="true"] { background: var(--accent); color: #fff; }
.attnviz-stepfield { flex: 1 1 240px; min-width: 200px; }
.attnviz-steprow { display: flex; align-items: center; gap: 10px; }
#attnviz-step { flex: 1; accent-color: var(--accent); }
#attnviz-step-label { font-variant-numeric: tabular-nums; min-width: 76px; font-weight: 500; }
.attnviz-message { margin: 40px auto; max-width: 560px; padding: 18px 22px; border-radius: 6px;
  background: var(--message-bg); color: var(--message-fg); font-size: 14px; text-align: center; }
.attnviz-error { margin: 10px 16px 0; padding: 8px 12px; border-radius: 4px; background: var(--error-bg);
  color: var(--error-fg); }
.attnviz-body { display: flex; gap: 16px; padding: 12px 16px; align-items: flex-start; }
.attnviz-stale .attnviz-plot, .attnviz-stale .attnviz-side { opacity: 0.35; }
.attnviz-strip { flex: 0 0 150px; position: relative; overflow-y: auto; border: 1px solid var(--border);
  border-radius: 4px; padding: 4px 0; }
.attnviz-strip-title { padding: 2px 8px 4px; }
.attnviz-token {
  display: flex; gap: 6px; align-items: baseline; padding: 0 8px; cursor: pointer; white-space: nowrap;
  font: 12px/18px "Roboto Mono", Menlo, Consolas, monospace; user-select: none;
}
.attnviz-token > i {
  font-style: normal; color: var(--faint); min-width: 2.5em; text-align: right; font-size: 10px;
}
.attnviz-token > b { font-weight: 400; overflow: hidden; text-overflow: ellipsis; }
.attnviz-token:hover, .attnviz-token.attnviz-active { background: var(--hover); }
.attnviz-token.attnviz-pinned > b { font-weight: 700; color: var(--accent-text); }
.attnviz-plot { flex: 1 1 auto; min-width: 0; overflow: auto; }
.attnviz-plot canvas { display: block; }
.attnviz-cell { min-height: 18px; margin-top: 6px; color: var(--muted); font-size: 12px;
  font-variant-numeric: tabular-nums; }
.attnviz-side { flex: 0 0 270px; display: flex; flex-direction: column; gap: 14px; }
.attnviz-card { border: 1px solid var(--border); border-radius: 4px; padding: 10px 12px; }
.attnviz-card h3 { margin-bottom: 6px; }
/* fixed heights: the cards below must not move under the pointer when a hover fills this one */
#attnviz-topkeys-title {
  font-weight: 500; margin-bottom: 4px; height: 18px; line-height: 18px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis;
}
#attnviz-topkeys {
  margin: 0; white-space: pre; font: 12px/19px "Roboto Mono", Menlo, Consolas, monospace; height: 95px;
  overflow: hidden; text-overflow: ellipsis;
}
.attnviz-hint { color: var(--muted); font-size: 12px; }
.attnviz-colorbar { display: flex; align-items: center; gap: 6px; font-size: 11px; color: var(--muted);
  font-variant-numeric: tabular-nums; }
.attnviz-colorbar canvas { flex: 1 1 0; width: 0; min-width: 0; height: 10px; border-radius: 2px; }
.attnviz-info { font-size: 12px; color: var(--muted); margin-top: 6px; }
.attnviz-note { font-size: 12px; color: var(--note); margin-top: 4px; }
#attnviz-image { display: block; margin: 0 auto; cursor: crosshair; }
.attnviz-caption { font-size: 12px; color: var(--muted); margin-top: 6px; text-align: center; }
`;

// ---------------------------------------------------------------------------------------------------
// Small DOM helpers

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "role" || key.startsWith("aria-") || key.startsWith("data-"))
      node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function field(label, control, extraClass = "") {
  return el("label", { class: `attnviz-field ${extraClass}` }, [
    el("span", { class: "attnviz-field-title", text: label }),
    control,
  ]);
}

function setOptions(select, options, wanted) {
  // options: [[value, text], ...]; keeps `wanted` when offered, else the first option
  const values = options.map(([value]) => value);
  const same =
    select.options.length === options.length &&
    options.every(([value, text], i) => select.options[i].value === value && select.options[i].text === text);
  if (!same) select.replaceChildren(...options.map(([value, text]) => el("option", { value, text })));
  select.value = values.includes(wanted) ? wanted : (values[0] ?? "");
  return select.value;
}

/** A canvas sized in CSS pixels, backed at the device pixel ratio; returns its 2D context. */
function sizeCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(width * ratio));
  const h = Math.max(1, Math.round(height * ratio));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return ctx;
}

function tickStep(count, size) {
  // label every n-th token so that labels are at least ~36 px apart
  const steps = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500, 1000];
  return steps.find((n) => (size / count) * n >= 36) ?? count;
}

function truncate(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(`${cut}…`).width > maxWidth) cut = cut.slice(0, -1);
  return `${cut}…`;
}

// ---------------------------------------------------------------------------------------------------
// The tab

class AttentionTab {
  constructor(root) {
    this.base = pluginBase();
    this.root = root;
    this.runs = null; // {run: [tag, ...]} as last fetched
    this.run = null;
    this.sample = null;
    this.layer = null;
    this.head = "mean";
    this.view = "heatmap";
    this.steps = [];
    this.stepIndex = -1;
    this.map = null; // the parsed map on screen
    this.hover = null; // query index under the pointer
    this.pinned = null; // query index clicked
    this.generation = 0; // bumped on every selection change: late answers for an old one are dropped
    this.cache = new Map(); // "run\0tag\0step" -> Promise of a parsed map (insertion order = age)
    this.cachedBytes = 0;
    this.refreshing = null;
    this.lastRefresh = 0;
    this.layout = null; // geometry of the main canvas, for hit testing
    this.imageLayout = null;
    this.theme = THEMES.light;
  }

  // -- building ----------------------------------------------------------------------------------

  build() {
    document.head.append(el("style", { text: CSS }));
    this.runSelect = el("select", { id: "attnviz-run" });
    this.sampleSelect = el("select", { id: "attnviz-sample" });
    this.layerSelect = el("select", { id: "attnviz-layer" });
    this.headSelect = el("select", { id: "attnviz-head" });
    this.heatmapButton = el("button", { id: "attnviz-view-heatmap", type: "button", text: "heatmap" });
    this.linesButton = el("button", { id: "attnviz-view-lines", type: "button", text: "lines" });
    this.stepInput = el("input", {
      id: "attnviz-step",
      type: "range",
      min: "0",
      max: "0",
      step: "1",
      value: "0",
    });
    this.stepLabel = el("span", { id: "attnviz-step-label", text: "step –" });

    this.toolbar = el("div", { class: "attnviz-toolbar" }, [
      field("Run", this.runSelect),
      field("Sample", this.sampleSelect),
      field("Layer", this.layerSelect),
      field("Head", this.headSelect),
      el("div", { class: "attnviz-field" }, [
        el("span", { class: "attnviz-field-title", text: "View" }),
        el("div", { class: "attnviz-toggle", role: "group" }, [this.heatmapButton, this.linesButton]),
      ]),
      field(
        "Step",
        el("span", { class: "attnviz-steprow" }, [this.stepInput, this.stepLabel]),
        "attnviz-stepfield",
      ),
    ]);

    this.errorBox = el("div", { class: "attnviz-error", id: "attnviz-error", role: "alert", hidden: true });
    this.emptyBox = el("div", {
      class: "attnviz-message",
      id: "attnviz-empty",
      text: EMPTY_MESSAGE,
      hidden: true,
    });

    this.strip = el("div", { class: "attnviz-strip", id: "attnviz-tokens" });
    this.canvas = el("canvas", { id: "attnviz-map" });
    this.cellInfo = el("div", { class: "attnviz-cell", id: "attnviz-cell" });
    this.plot = el("div", { class: "attnviz-plot" }, [this.canvas, this.cellInfo]);

    this.topTitle = el("div", { id: "attnviz-topkeys-title", class: "attnviz-hint" });
    this.topKeysBox = el("pre", { id: "attnviz-topkeys" });
    this.colorbar = el("canvas", { width: 256, height: 1 });
    this.colorMax = el("span", { text: "" });
    this.info = el("div", { class: "attnviz-info" });
    this.note = el("div", { class: "attnviz-note", hidden: true });
    this.imageCanvas = el("canvas", { id: "attnviz-image" });
    this.imageCaption = el("div", { class: "attnviz-caption" });
    this.imageCard = el("div", { class: "attnviz-card", hidden: true }, [
      el("h3", { text: "Attention over the image" }),
      this.imageCanvas,
      this.imageCaption,
    ]);
    const side = el("div", { class: "attnviz-side" }, [
      el("div", { class: "attnviz-card" }, [el("h3", { text: "Top keys" }), this.topTitle, this.topKeysBox]),
      this.imageCard,
      el("div", { class: "attnviz-card" }, [
        el("h3", { text: "Scale" }),
        el("div", { class: "attnviz-colorbar" }, [el("span", { text: "0" }), this.colorbar, this.colorMax]),
        this.info,
        this.note,
      ]),
    ]);
    this.body = el("div", { class: "attnviz-body" }, [this.strip, this.plot, side]);
    this.main = el("div", { hidden: true }, [this.toolbar, this.body]);
    this.app = el("div", { class: "attnviz" }, [this.errorBox, this.emptyBox, this.main]);
    this.root.append(this.app);
    this.drawColorbar();
    this.setView("heatmap");
    this.bind();
  }

  bind() {
    this.runSelect.addEventListener("change", () => this.select({ run: this.runSelect.value }));
    this.sampleSelect.addEventListener("change", () => this.select({ sample: this.sampleSelect.value }));
    this.layerSelect.addEventListener("change", () => this.select({ layer: this.layerSelect.value }));
    this.headSelect.addEventListener("change", () => {
      this.head = this.headSelect.value === "mean" ? "mean" : Number(this.headSelect.value);
      this.draw();
    });
    this.heatmapButton.addEventListener("click", () => this.setView("heatmap"));
    this.linesButton.addEventListener("click", () => this.setView("lines"));
    this.stepInput.addEventListener("input", () => this.setStepIndex(Number(this.stepInput.value)));

    this.strip.addEventListener("mouseover", (event) => {
      const token = event.target.closest(".attnviz-token");
      if (token) this.setHover(Number(token.dataset.index));
    });
    this.strip.addEventListener("mouseleave", () => this.setHover(null));
    this.strip.addEventListener("click", (event) => {
      const token = event.target.closest(".attnviz-token");
      if (token) this.togglePin(Number(token.dataset.index));
    });

    this.canvas.addEventListener("mousemove", (event) => this.onCanvasMove(event));
    this.canvas.addEventListener("mouseleave", () => {
      this.showCellHint();
      this.setHover(null);
    });
    this.canvas.addEventListener("click", (event) => {
      const hit = this.hitCanvas(event);
      if (hit) this.togglePin(hit.row);
    });
    this.imageCanvas.addEventListener("mousemove", (event) => this.onImageMove(event));
    this.imageCanvas.addEventListener("mouseleave", () => this.setHover(null));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.pinned !== null) this.togglePin(this.pinned);
    });

    window.addEventListener("resize", () => this.draw());
    window.addEventListener("focus", () => this.refresh());
    setInterval(() => this.refresh(), REFRESH_MS);
    this.listenToTensorBoard();
    this.followTheme();
  }

  /** Light or dark like TensorBoard around us: it toggles `dark-mode` on its <body>. */
  followTheme() {
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
      const theme = dark ? THEMES.dark : THEMES.light;
      if (theme !== this.theme) {
        this.theme = theme;
        this.drawInteractive();
      }
    };
    apply();
    if (outer) new MutationObserver(apply).observe(outer, { attributes: true, attributeFilter: ["class"] });
  }

  /**
   * TensorBoard tells iframed plugins when its data reloads (the reload button, auto-reload): the
   * iframe posts "experimental.bootstrap" with a MessagePort to its parent, which then sends
   * JSON messages {type, id, payload, error, isReply} and waits for a reply to each.
   */
  listenToTensorBoard() {
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
        this.refresh({ force: true });
      }
      channel.port1.postMessage(
        JSON.stringify({ type: message.type, id: message.id, payload: null, error: null, isReply: true }),
      );
    };
    try {
      window.parent.postMessage("experimental.bootstrap", location.origin, [channel.port2]);
    } catch {
      // a parent of another origin: the 30 s refresh and window focus still reload
    }
  }

  // -- loading -----------------------------------------------------------------------------------

  async start() {
    this.build();
    await this.refresh({ force: true });
  }

  /** Re-fetch runs and steps, keeping the selection; at most one at a time. */
  refresh({ force = false } = {}) {
    if (this.refreshing) return this.refreshing;
    if (!force && performance.now() - this.lastRefresh < 2000) return Promise.resolve();
    this.lastRefresh = performance.now();
    this.refreshing = this.reloadRuns()
      .catch((error) => this.showError(error))
      .finally(() => {
        this.refreshing = null;
      });
    return this.refreshing;
  }

  async reloadRuns() {
    const runs = await (await request(this.base, "runs")).json();
    const changed = JSON.stringify(runs) !== JSON.stringify(this.runs);
    this.runs = runs;
    const empty = Object.keys(runs).length === 0;
    this.emptyBox.hidden = !empty;
    this.main.hidden = empty;
    if (empty) {
      this.hideError();
      return;
    }
    if (changed) this.syncSelectors();
    await this.reloadSteps(this.generation);
    this.hideError();
  }

  tagsOf(run) {
    return (this.runs && this.runs[run]) || [];
  }

  get tag() {
    return this.sample !== null && this.layer !== null ? `${this.sample}/${this.layer}` : null;
  }

  /** Fills run, sample and layer selectors from `this.runs`, keeping the current choices if offered. */
  syncSelectors() {
    const runs = Object.keys(this.runs);
    this.run = setOptions(
      this.runSelect,
      runs.map((r) => [r, r]),
      this.run,
    );
    const samples = new Map(); // "sample_<i>" -> [layer, ...]
    for (const tag of this.tagsOf(this.run)) {
      const slash = tag.indexOf("/");
      if (slash < 0) continue;
      const sample = tag.slice(0, slash);
      if (!samples.has(sample)) samples.set(sample, []);
      samples.get(sample).push(tag.slice(slash + 1));
    }
    const sampleNames = [...samples.keys()].sort(
      (a, b) => Number(a.replace(/\D+/g, "")) - Number(b.replace(/\D+/g, "")) || a.localeCompare(b),
    );
    this.sample = setOptions(
      this.sampleSelect,
      sampleNames.map((s) => [s, s.replace("_", " ")]),
      this.sample,
    );
    this.sample ||= null;
    const layers = samples.get(this.sample) || [];
    this.layer =
      setOptions(
        this.layerSelect,
        layers.map((l) => [l, l]),
        this.layer,
      ) || null;
  }

  select(change) {
    Object.assign(this, change);
    this.generation += 1;
    this.syncSelectors();
    this.reloadSteps(this.generation).catch((error) => this.showError(error));
  }

  async reloadSteps(generation) {
    const run = this.run;
    const tag = this.tag;
    if (!run || !tag) return;
    const steps = await (await request(this.base, "steps", { run, tag })).json();
    if (generation !== this.generation) return;
    const previous = this.steps;
    const previousStep = previous[this.stepIndex];
    const followLatest = this.stepIndex < 0 || this.stepIndex === previous.length - 1;
    this.steps = steps;
    if (steps.length === 0) {
      this.stepIndex = -1;
      this.syncSlider();
      return;
    }
    let index = followLatest ? steps.length - 1 : steps.indexOf(previousStep);
    if (index < 0) {
      // that step is gone: the closest one before it
      index = Math.max(
        0,
        steps.findLastIndex((s) => s <= previousStep),
      );
    }
    const sameStep =
      steps[index] === previousStep && this.map && this.mapKey === this.keyOf(run, tag, steps[index]);
    this.stepIndex = index;
    this.syncSlider();
    if (!sameStep) await this.loadMap(generation);
  }

  syncSlider() {
    const last = Math.max(0, this.steps.length - 1);
    this.stepInput.max = String(last);
    this.stepInput.value = String(Math.max(0, this.stepIndex));
    this.stepInput.disabled = this.steps.length < 2;
    const step = this.steps[this.stepIndex];
    this.stepLabel.textContent = step === undefined ? "step –" : `step ${step}`;
    this.stepInput.setAttribute("aria-valuetext", this.stepLabel.textContent);
  }

  setStepIndex(index) {
    if (index === this.stepIndex || index < 0 || index >= this.steps.length) return;
    this.stepIndex = index;
    this.syncSlider();
    this.loadMap(this.generation).catch((error) => this.showError(error));
  }

  keyOf(run, tag, step) {
    return `${run}\u0000${tag}\u0000${step}`;
  }

  fetchMap(run, tag, step) {
    const key = this.keyOf(run, tag, step);
    let entry = this.cache.get(key);
    if (entry) {
      this.cache.delete(key); // most recently used last
      this.cache.set(key, entry);
      return entry.promise;
    }
    entry = { bytes: 0, promise: null };
    entry.promise = request(this.base, "map", { run, tag, step })
      .then((response) => response.arrayBuffer())
      .then((buffer) => {
        const map = parseMap(buffer);
        entry.bytes = map.bytes;
        this.cachedBytes += map.bytes;
        this.evict(key);
        return map;
      })
      .catch((error) => {
        this.cache.delete(key); // a failure is not cached
        throw error;
      });
    this.cache.set(key, entry);
    return entry.promise;
  }

  evict(keep) {
    for (const [key, entry] of this.cache) {
      if (this.cachedBytes <= CACHE_BYTES) break;
      if (key === keep || entry.bytes === 0) continue;
      this.cache.delete(key);
      this.cachedBytes -= entry.bytes;
    }
  }

  async loadMap(generation) {
    const run = this.run;
    const tag = this.tag;
    const step = this.steps[this.stepIndex];
    if (!run || !tag || step === undefined) return;
    const map = await this.fetchMap(run, tag, step);
    // a newer selection or step was made while this one loaded
    if (
      generation !== this.generation ||
      this.steps[this.stepIndex] !== step ||
      this.tag !== tag ||
      this.run !== run
    ) {
      return;
    }
    const key = this.keyOf(run, tag, step);
    const sameTokens =
      this.map && this.map.header.q_labels.join("\u0000") === map.header.q_labels.join("\u0000");
    this.map = map;
    this.mapKey = key;
    if (!sameTokens) this.buildStrip();
    if (this.hover !== null && this.hover >= map.header.q) this.hover = null;
    if (this.pinned !== null && this.pinned >= map.header.q) this.pinned = null;
    this.syncHeads();
    this.hideError();
    this.draw();
  }

  syncHeads() {
    const heads = this.map.header.heads;
    const options = [["mean", heads > 1 ? `mean of ${heads}` : "mean"]];
    for (let h = 0; h < heads; h++) options.push([String(h), `head ${h}`]);
    const value = setOptions(this.headSelect, options, String(this.head));
    this.head = value === "mean" ? "mean" : Number(value);
  }

  // -- hover -------------------------------------------------------------------------------------

  get active() {
    return this.hover ?? this.pinned;
  }

  setHover(index) {
    if (index === this.hover) return;
    this.hover = index;
    this.drawInteractive();
  }

  togglePin(index) {
    this.pinned = this.pinned === index ? null : index;
    this.drawInteractive();
  }

  hitCanvas(event) {
    const layout = this.layout;
    if (!layout || !this.map) return null;
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    if (layout.kind === "heatmap") {
      const col = Math.floor((x - layout.left) / layout.cellW);
      const row = Math.floor((y - layout.top) / layout.cellH);
      if (row < 0 || row >= layout.q || col < 0 || col >= layout.k) return null;
      return { row, col };
    }
    // lines: the query whose dot is nearest in height
    const row = Math.round((y - layout.top) / layout.rowQ - 0.5);
    if (row < 0 || row >= layout.q || x > layout.width * 0.5) return null;
    return { row, col: null };
  }

  onCanvasMove(event) {
    const hit = this.hitCanvas(event);
    if (!hit) {
      this.showCellHint();
      this.setHover(null);
      return;
    }
    if (hit.col !== null) {
      const { header } = this.map;
      const matrix = matrixOf(this.map, this.head);
      const weight = matrix.values[hit.row * matrix.k + hit.col];
      this.cellInfo.textContent =
        `query ${hit.row} “${header.q_labels[hit.row]}” → ` +
        `key ${hit.col} “${header.k_labels[hit.col]}”: ` +
        formatWeight(weight);
    }
    this.setHover(hit.row);
  }

  onImageMove(event) {
    const layout = this.imageLayout;
    if (!layout) return;
    const rect = this.imageCanvas.getBoundingClientRect();
    const c = Math.floor(((event.clientX - rect.left) / layout.width) * layout.cols);
    const r = Math.floor(((event.clientY - rect.top) / layout.height) * layout.rows);
    if (r < 0 || r >= layout.rows || c < 0 || c >= layout.cols) {
      this.setHover(null);
      return;
    }
    const token = layout.prefix + r * layout.cols + c;
    this.setHover(token < this.map.header.q ? token : null);
  }

  // -- drawing -----------------------------------------------------------------------------------

  showCellHint() {
    this.cellInfo.textContent =
      this.view === "heatmap"
        ? "rows: queries · columns: keys · hover a row, click to pin it"
        : `left: queries · right: their top ${LINES_TOP_K} keys, opacity ∝ weight · ` +
          "hover a query, click to pin it";
  }

  setView(view) {
    this.view = view;
    this.heatmapButton.setAttribute("aria-pressed", String(view === "heatmap"));
    this.linesButton.setAttribute("aria-pressed", String(view === "lines"));
    this.draw();
  }

  buildStrip() {
    const { q_labels: labels } = this.map.header;
    const tokens = labels.map((label, i) =>
      el("div", { class: "attnviz-token", "data-index": String(i), title: `query ${i}: ${label}` }, [
        el("i", { text: String(i) }),
        el("b", { text: label }),
      ]),
    );
    this.strip.replaceChildren(el("div", { class: "attnviz-strip-title", text: "Queries" }), ...tokens);
    this.tokenElements = tokens;
  }

  /** Everything that depends on the map, the head or the size. */
  draw() {
    if (!this.map || this.main.hidden) return;
    const matrix = matrixOf(this.map, this.head);
    this.cells = this.renderCells(matrix);
    const clipped = matrix.vmax < matrix.max;
    this.colorMax.textContent = `${formatWeight(matrix.vmax)}${clipped ? "+" : ""}`;
    const { header } = this.map;
    const headText = this.head === "mean" ? "mean over heads" : `head ${this.head}`;
    this.info.textContent =
      `${header.q} queries × ${header.k} keys · ${header.heads} heads · ${headText}` +
      (clipped
        ? ` · colours saturate above ${formatWeight(matrix.vmax)} ` +
          `(99.5th percentile; max ${formatWeight(matrix.max)})`
        : "");
    this.showCellHint();
    this.note.textContent = header.note || "";
    this.note.hidden = !header.note;
    this.drawInteractive();
  }

  /** Everything that also depends on the hovered or pinned query. */
  drawInteractive() {
    if (!this.map || this.main.hidden) return;
    if (this.view === "heatmap") this.drawHeatmap();
    else this.drawLines();
    this.drawImage();
    this.updateTopKeys();
    this.updateStrip();
  }

  /** One pixel per (query, key) cell, coloured against the map's largest weight. */
  renderCells(matrix) {
    const { q, k, values, vmax } = matrix;
    const canvas = this.cellsCanvas || (this.cellsCanvas = document.createElement("canvas"));
    canvas.width = k;
    canvas.height = q;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(k, q);
    const data = image.data;
    for (let i = 0; i < q * k; i++) {
      const c = lutIndex(values[i], vmax) * 3;
      data[i * 4] = LUT[c];
      data[i * 4 + 1] = LUT[c + 1];
      data[i * 4 + 2] = LUT[c + 2];
      data[i * 4 + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    return canvas;
  }

  available() {
    // room for the plot: the window minus the strip and side columns, and minus what is above it
    const width = Math.max(240, this.body.clientWidth - 150 - 270 - 2 * 16 - 32);
    const top = this.body.getBoundingClientRect().top + window.scrollY;
    const height = Math.max(240, window.innerHeight - top - 24 - 30);
    return { width, height };
  }

  drawHeatmap() {
    const { header } = this.map;
    const { q, k } = header;
    const room = this.available();
    const ctx0 = this.canvas.getContext("2d");
    ctx0.font = '11px "Roboto Mono", Menlo, Consolas, monospace';
    // first guess at the cell size, then margins for labels if they fit
    const guessCell = Math.min(
      MAX_CELL,
      Math.min(room.width, MAX_PLOT) / k,
      Math.min(room.height, MAX_PLOT) / q,
    );
    const labelled = guessCell >= LABEL_MIN_CELL;
    const widest = (labels) => Math.max(0, ...labels.map((s) => ctx0.measureText(s).width));
    const left = labelled ? Math.min(110, widest(header.q_labels) + 12) : 34;
    // key labels: upright when each fits its column, else turned to read upwards
    const upright = widest(header.k_labels) <= guessCell - 2;
    const top = labelled ? (upright ? 20 : Math.min(90, widest(header.k_labels) + 12)) : 22;
    const plotW = Math.min(room.width - left, MAX_PLOT);
    const plotH = Math.min(room.height - top, MAX_PLOT);
    const cell = Math.max(0.25, Math.min(MAX_CELL, plotW / k, plotH / q));
    const width = Math.round(left + cell * k + 8);
    const height = Math.round(top + cell * q + 8);
    const ctx = sizeCanvas(this.canvas, width, height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.cells, left, top, cell * k, cell * q);
    const theme = this.theme;
    ctx.strokeStyle = theme.frame;
    ctx.lineWidth = 1;
    ctx.strokeRect(left - 0.5, top - 0.5, cell * k + 1, cell * q + 1);
    this.layout = { kind: "heatmap", left, top, cellW: cell, cellH: cell, q, k, width, height };

    const active = this.active;
    ctx.font = '11px "Roboto Mono", Menlo, Consolas, monospace';
    ctx.fillStyle = theme.text;
    if (labelled) {
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      header.q_labels.forEach((label, i) => {
        ctx.fillStyle = i === active ? theme.accent : theme.text;
        ctx.fillText(truncate(ctx, label, left - 10), left - 6, top + (i + 0.5) * cell);
      });
      ctx.fillStyle = theme.text;
      if (upright) {
        ctx.textAlign = "center";
        ctx.textBaseline = "bottom";
        header.k_labels.forEach((label, j) => ctx.fillText(label, left + (j + 0.5) * cell, top - 5));
      } else {
        ctx.save();
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        header.k_labels.forEach((label, j) => {
          ctx.fillText(truncate(ctx, label, top - 10), -(top - 6), left + (j + 0.5) * cell);
        });
        ctx.restore();
      }
    } else {
      ctx.font = "10px Roboto, Arial, sans-serif";
      ctx.fillStyle = theme.muted;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      const every = tickStep(q, cell * q);
      for (let i = 0; i < q; i += every) ctx.fillText(String(i), left - 4, top + (i + 0.5) * cell);
      ctx.textAlign = "center";
      ctx.textBaseline = "bottom";
      const everyK = tickStep(k, cell * k);
      for (let j = 0; j < k; j += everyK) ctx.fillText(String(j), left + (j + 0.5) * cell, top - 4);
    }

    if (active !== null && active < q) {
      const y = top + active * cell;
      const h = Math.max(cell, 2);
      ctx.strokeStyle = theme.accent;
      ctx.lineWidth = 2;
      ctx.strokeRect(left - 1, y - 1, cell * k + 2, h + 2);
      const right = left + cell * k;
      ctx.fillStyle = theme.accent;
      ctx.beginPath(); // a marker right of the row: findable when rows are a pixel high
      ctx.moveTo(right + 2, y + h / 2);
      ctx.lineTo(right + 7, y + h / 2 - 4);
      ctx.lineTo(right + 7, y + h / 2 + 4);
      ctx.fill();
    }
  }

  drawLines() {
    const { header } = this.map;
    const { q, k } = header;
    const matrix = matrixOf(this.map, this.head);
    const room = this.available();
    const width = Math.min(room.width, MAX_PLOT + 120);
    const rows = Math.max(q, k);
    const pitch = Math.max(0.5, Math.min(22, (room.height - 32) / rows)); // fit the window
    const height = Math.round(24 + pitch * rows + 8);
    const ctx = sizeCanvas(this.canvas, width, height);
    const top = 24;
    const rowQ = (pitch * rows) / q;
    const rowK = (pitch * rows) / k;
    const xq = width * 0.36;
    const xk = width * 0.64;
    this.layout = { kind: "lines", top, rowQ, rowK, q, k, width, height };
    const yq = (i) => top + (i + 0.5) * rowQ;
    const yk = (j) => top + (j + 0.5) * rowK;

    if (!matrix.lines) {
      // every query's top keys, once per matrix: hovering only redraws
      matrix.lines = [];
      for (let i = 0; i < q; i++) {
        for (const { key, weight } of topKeys(matrix, i, LINES_TOP_K)) {
          if (weight > 0) matrix.lines.push([i, key, weight]);
        }
      }
    }
    const lines = matrix.lines;
    // opacity ∝ weight, on the heatmap's colour scale (a causal map's single 1.0 would hide the rest)
    const strongest = matrix.vmax;
    const active = this.active;
    const theme = this.theme;
    ctx.lineCap = "round";
    for (const [i, j, w] of lines) {
      if (i === active) continue;
      const alpha = Math.min(1, w / strongest) * (active === null ? 0.85 : 0.18);
      ctx.strokeStyle = `rgba(${theme.line}, ${alpha.toFixed(3)})`;
      ctx.lineWidth = Math.max(0.75, Math.min(2.5, pitch / 6));
      ctx.beginPath();
      ctx.moveTo(xq, yq(i));
      ctx.lineTo(xk, yk(j));
      ctx.stroke();
    }
    for (const [i, j, w] of lines) {
      if (i !== active) continue;
      ctx.strokeStyle = `rgba(${theme.lineActive}, ${Math.max(0.3, Math.min(1, w / strongest)).toFixed(3)})`;
      ctx.lineWidth = Math.max(1.5, Math.min(3.5, pitch / 4));
      ctx.beginPath();
      ctx.moveTo(xq, yq(i));
      ctx.lineTo(xk, yk(j));
      ctx.stroke();
    }

    const labelled = pitch >= LABEL_MIN_CELL;
    ctx.font = '11px "Roboto Mono", Menlo, Consolas, monospace';
    ctx.textBaseline = "middle";
    const dot = (x, y, on) => {
      ctx.fillStyle = on ? theme.accent : theme.dot;
      ctx.beginPath();
      ctx.arc(x, y, Math.max(1, Math.min(3, pitch / 4)), 0, 2 * Math.PI);
      ctx.fill();
    };
    const keysOfActive = new Set(lines.filter(([i]) => i === active).map(([, j]) => j));
    for (let i = 0; i < q; i++) {
      dot(xq, yq(i), i === active);
      if (labelled || i === active) {
        ctx.textAlign = "right";
        ctx.fillStyle = i === active ? theme.accent : theme.text;
        const text = header.q_labels[i] === String(i) ? `${i}` : `${header.q_labels[i]}  ${i}`;
        ctx.fillText(truncate(ctx, text, xq - 14), xq - 8, yq(i));
      }
    }
    let lastLabelY = -Infinity; // unlabelled columns: the active keys' labels, without overlaps
    for (let j = 0; j < k; j++) {
      dot(xk, yk(j), keysOfActive.has(j));
      if (labelled || (keysOfActive.has(j) && yk(j) - lastLabelY >= 12)) {
        lastLabelY = yk(j);
        ctx.textAlign = "left";
        ctx.fillStyle = keysOfActive.has(j) ? theme.accent : theme.text;
        const text = header.k_labels[j] === String(j) ? `${j}` : `${j}  ${header.k_labels[j]}`;
        ctx.fillText(truncate(ctx, text, width - xk - 14), xk + 8, yk(j));
      }
    }
    ctx.font = "11px Roboto, Arial, sans-serif";
    ctx.fillStyle = theme.muted;
    ctx.textBaseline = "top";
    ctx.textAlign = "center";
    ctx.fillText("queries", xq, 4);
    ctx.fillText(`keys (top ${LINES_TOP_K} per query)`, xk, 4);
  }

  drawImage() {
    const { header, image } = this.map;
    const info = header.image;
    this.imageCard.hidden = !info;
    this.imageLayout = null;
    if (!info) return;
    const [rows, cols] = info.grid;
    const prefix = info.prefix;
    const patches = rows * cols;
    this.imageCanvas.hidden = header.k < prefix + patches;
    if (this.imageCanvas.hidden) {
      this.imageCaption.textContent = `the map has ${header.k} keys, the patch grid needs ${prefix + patches}`;
      return;
    }
    // the picture itself, once per map
    if (this.imageSource !== this.map) {
      const source = this.imagePixels || (this.imagePixels = document.createElement("canvas"));
      source.width = info.width;
      source.height = info.height;
      const sctx = source.getContext("2d");
      const pixels = sctx.createImageData(info.width, info.height);
      for (let p = 0, n = info.width * info.height; p < n; p++) {
        pixels.data[p * 4] = image[p * 3];
        pixels.data[p * 4 + 1] = image[p * 3 + 1];
        pixels.data[p * 4 + 2] = image[p * 3 + 2];
        pixels.data[p * 4 + 3] = 255;
      }
      sctx.putImageData(pixels, 0, 0);
      this.imageSource = this.map;
    }
    // the row shown: the hovered token's (a patch, or a query token), else CLS (query 0), else without
    // a prefix token the mean attention each patch receives
    const matrix = matrixOf(this.map, this.head);
    const active = this.active;
    let values;
    let caption;
    const patchRow = (row) =>
      matrix.values.subarray(row * matrix.k + prefix, row * matrix.k + prefix + patches);
    if (active !== null) {
      values = patchRow(active);
      caption = `where ${this.tokenName(active)} attends`;
    } else if (prefix > 0) {
      values = patchRow(0);
      caption = `${this.tokenName(0)} (CLS) → patches · hover a patch`;
    } else {
      values = new Float64Array(patches);
      for (let i = 0; i < header.q; i++) {
        const row = patchRow(i);
        for (let p = 0; p < patches; p++) values[p] += row[p] / header.q;
      }
      caption = "mean attention received · hover a patch";
    }
    let max = 0;
    for (const v of values) max = Math.max(max, v);
    const overlay = this.overlayCanvas || (this.overlayCanvas = document.createElement("canvas"));
    overlay.width = cols;
    overlay.height = rows;
    const octx = overlay.getContext("2d");
    const cellsImage = octx.createImageData(cols, rows);
    for (let p = 0; p < patches; p++) {
      const t = max > 0 ? values[p] / max : 0;
      const c = lutIndex(t, 1) * 3;
      cellsImage.data[p * 4] = LUT[c];
      cellsImage.data[p * 4 + 1] = LUT[c + 1];
      cellsImage.data[p * 4 + 2] = LUT[c + 2];
      cellsImage.data[p * 4 + 3] = Math.round(255 * (0.15 + 0.6 * t));
    }
    octx.putImageData(cellsImage, 0, 0);

    const width = 244;
    const height = Math.round((width * info.height) / info.width);
    const ctx = sizeCanvas(this.imageCanvas, width, height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.imagePixels, 0, 0, width, height);
    ctx.drawImage(overlay, 0, 0, width, height);
    if (active !== null && active >= prefix && active < prefix + patches) {
      const r = Math.floor((active - prefix) / cols);
      const c = (active - prefix) % cols;
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.strokeRect((c * width) / cols + 1, (r * height) / rows + 1, width / cols - 2, height / rows - 2);
    }
    this.imageLayout = { width, height, rows, cols, prefix };
    this.imageCaption.textContent = `${caption} · colours up to ${formatWeight(max)}`;
  }

  updateTopKeys() {
    const active = this.active;
    const { header } = this.map;
    if (active === null || active >= header.q) {
      this.topTitle.textContent = "Hover a query token or a heatmap row.";
      this.topTitle.className = "attnviz-hint";
      this.topKeysBox.textContent = "";
      return;
    }
    const matrix = matrixOf(this.map, this.head);
    this.topTitle.textContent = `${this.tokenName(active)}${this.pinned === active ? " (pinned)" : ""}`;
    this.topTitle.className = "";
    this.topKeysBox.textContent = topKeys(matrix, active, TOP_KEYS)
      .map(({ key, weight }) => `${header.k_labels[key]}  ${formatWeight(weight)}`)
      .join("\n");
  }

  /** "query 3 · cat", or for an image's patch tokens "patch (1, 2) · query 11". */
  tokenName(index) {
    const { header } = this.map;
    const label = header.q_labels[index];
    const info = header.image;
    const patch = index - (info ? info.prefix : 0);
    if (info && patch >= 0 && patch < info.grid[0] * info.grid[1]) {
      const where = `patch (${Math.floor(patch / info.grid[1])}, ${patch % info.grid[1]})`;
      return label === String(index) ? `${where} · query ${index}` : `${where} · ${label}`;
    }
    return label === String(index) ? `query ${index}` : `query ${index} · ${label}`;
  }

  updateStrip() {
    if (!this.tokenElements) return;
    const active = this.active;
    if (this.stripActive !== undefined && this.tokenElements[this.stripActive]) {
      this.tokenElements[this.stripActive].classList.remove("attnviz-active");
    }
    if (this.stripPinned !== undefined && this.tokenElements[this.stripPinned]) {
      this.tokenElements[this.stripPinned].classList.remove("attnviz-pinned");
    }
    this.stripActive = active ?? undefined;
    this.stripPinned = this.pinned ?? undefined;
    if (active !== null && this.tokenElements[active]) {
      this.tokenElements[active].classList.add("attnviz-active");
      // follow a hover from the canvas or the image, not one in the strip itself
      // (scrolled by hand: scrollIntoView would also scroll TensorBoard's page around the iframe)
      if (!this.strip.matches(":hover")) {
        const token = this.tokenElements[active];
        const top = token.offsetTop; // the strip is position: relative
        if (top < this.strip.scrollTop) this.strip.scrollTop = top;
        else if (top + token.offsetHeight > this.strip.scrollTop + this.strip.clientHeight) {
          this.strip.scrollTop = top + token.offsetHeight - this.strip.clientHeight;
        }
      }
    }
    if (this.pinned !== null && this.tokenElements[this.pinned]) {
      this.tokenElements[this.pinned].classList.add("attnviz-pinned");
    }
    this.strip.style.maxHeight = `${Math.max(200, this.canvas.clientHeight)}px`;
  }

  drawColorbar() {
    const ctx = this.colorbar.getContext("2d");
    const image = ctx.createImageData(256, 1);
    for (let i = 0; i < 256; i++) {
      image.data[i * 4] = LUT[i * 3];
      image.data[i * 4 + 1] = LUT[i * 3 + 1];
      image.data[i * 4 + 2] = LUT[i * 3 + 2];
      image.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }

  // -- messages ----------------------------------------------------------------------------------

  showError(error) {
    this.errorBox.textContent = `Could not load attention data: ${error.message}`;
    this.errorBox.hidden = false;
    this.body.classList.add("attnviz-stale"); // what is drawn may not be what the controls say
  }

  hideError() {
    this.errorBox.hidden = true;
    this.body.classList.remove("attnviz-stale");
  }
}

/** TensorBoard's entry point: draws the Attention tab into `document.body`. */
export async function render() {
  const tab = new AttentionTab(document.body);
  await tab.start();
}
