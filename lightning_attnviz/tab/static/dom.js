// Building the tab's DOM: small helpers and the one layout (toolbar, token strip, plot, side cards).

const EMPTY_MESSAGE = "No attention data yet. AttentionMonitor writes it while training runs.";

/**
 * An element with properties (class, text, role/aria-/data- attributes, others as properties).
 * @param {string} tag
 * @param {Record<string, any>} [props]
 * @param {Array<Node | string>} [children]
 * @returns {any}
 */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "role" || key.startsWith("aria-") || key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

/**
 * @param {string} label
 * @param {HTMLElement} control
 * @param {string} [extraClass]
 */
function field(label, control, extraClass = "") {
  return el("label", { class: `attnviz-field ${extraClass}` }, [
    el("span", { class: "attnviz-field-title", text: label }),
    control,
  ]);
}

/**
 * @typedef {{value: string, text: string, title?: string}} Option
 */

/**
 * Replaces a select's options if they changed; keeps `wanted` when offered, else picks the first or
 * the last option. The select's title shows the chosen option's full text.
 * @param {HTMLSelectElement} select
 * @param {Option[]} options
 * @param {string | null} wanted
 * @param {"first" | "last"} [fallback]
 * @returns {string} the value chosen ("" when there are no options)
 */
export function setOptions(select, options, wanted, fallback = "first") {
  const same =
    select.options.length === options.length &&
    options.every(({ value, text }, i) => select.options[i].value === value && select.options[i].text === text);
  if (!same) {
    select.replaceChildren(
      ...options.map(({ value, text, title }) => el("option", { value, text, title: title ?? text })),
    );
  }
  const values = options.map(({ value }) => value);
  const pick = fallback === "last" ? values[values.length - 1] : values[0];
  select.value = wanted !== null && values.includes(wanted) ? wanted : (pick ?? "");
  select.title = options.find(({ value }) => value === select.value)?.title ?? "";
  return select.value;
}

/**
 * The tab's elements, built once; the controller (tab.js) fills them.
 * @param {HTMLElement} root
 */
export function buildLayout(root) {
  const ui = {
    runSelect: el("select", { id: "attnviz-run" }),
    sampleSelect: el("select", { id: "attnviz-sample" }),
    layerSelect: el("select", { id: "attnviz-layer" }),
    headSelect: el("select", { id: "attnviz-head" }),
    heatmapButton: el("button", { id: "attnviz-view-heatmap", type: "button", text: "heatmap" }),
    linesButton: el("button", { id: "attnviz-view-lines", type: "button", text: "lines" }),
    stepInput: el("input", { id: "attnviz-step", type: "range", min: "0", max: "0", step: "1", value: "0" }),
    stepLabel: el("span", { id: "attnviz-step-label", text: "step –" }),
    errorBox: el("div", { class: "attnviz-error", id: "attnviz-error", role: "alert", hidden: true }),
    emptyBox: el("div", { class: "attnviz-message", id: "attnviz-empty", text: EMPTY_MESSAGE, hidden: true }),
    strip: el("div", { class: "attnviz-strip", id: "attnviz-tokens" }),
    canvas: el("canvas", { id: "attnviz-map" }),
    cellInfo: el("div", { class: "attnviz-cell", id: "attnviz-cell" }),
    imageCanvas: el("canvas", { id: "attnviz-image" }),
    imageCaption: el("div", { class: "attnviz-caption", id: "attnviz-image-caption" }),
    topTitle: el("div", { id: "attnviz-topkeys-title", class: "attnviz-hint" }),
    topKeysBox: el("pre", { id: "attnviz-topkeys" }),
    colorbar: el("canvas", { width: 256, height: 1 }),
    colorMax: el("span", { text: "" }),
    info: el("div", { class: "attnviz-info" }),
    note: el("div", { class: "attnviz-note", hidden: true }),
  };
  const toolbar = el("div", { class: "attnviz-toolbar" }, [
    field("Run", ui.runSelect),
    field("Sample", ui.sampleSelect),
    field("Layer", ui.layerSelect, "attnviz-layerfield"),
    field("Head", ui.headSelect),
    el("div", { class: "attnviz-field" }, [
      el("span", { class: "attnviz-field-title", text: "View" }),
      el("div", { class: "attnviz-toggle", role: "group" }, [ui.heatmapButton, ui.linesButton]),
    ]),
    field("Step", el("span", { class: "attnviz-steprow" }, [ui.stepInput, ui.stepLabel]), "attnviz-stepfield"),
  ]);
  // vision records: the picture leads the plot column, the token heatmap follows it
  const imagePanel = el("div", { class: "attnviz-image-panel", id: "attnviz-image-panel", hidden: true }, [
    el("h3", { text: "Attention over the image" }),
    ui.imageCanvas,
    ui.imageCaption,
  ]);
  const mapTitle = el("h3", { class: "attnviz-map-title", text: "Token attention", hidden: true });
  const plot = el("div", { class: "attnviz-plot" }, [imagePanel, mapTitle, ui.canvas, ui.cellInfo]);
  const side = el("div", { class: "attnviz-side" }, [
    el("div", { class: "attnviz-card" }, [el("h3", { text: "Top keys" }), ui.topTitle, ui.topKeysBox]),
    el("div", { class: "attnviz-card" }, [
      el("h3", { text: "Scale" }),
      el("div", { class: "attnviz-colorbar" }, [el("span", { text: "0" }), ui.colorbar, ui.colorMax]),
      el("div", { class: "attnviz-legend" }, [el("i", { class: "attnviz-swatch" }), "masked or not finite"]),
      ui.info,
      ui.note,
    ]),
  ]);
  const body = el("div", { class: "attnviz-body" }, [ui.strip, plot, side]);
  const main = el("div", { hidden: true }, [toolbar, body]);
  root.append(el("div", { class: "attnviz" }, [ui.errorBox, ui.emptyBox, main]));
  return { ...ui, imagePanel, mapTitle, plot, body, main };
}
