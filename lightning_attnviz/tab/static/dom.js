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
    compareSelect: el("select", { id: "attnviz-compare" }),
    step2Select: el("select", { id: "attnviz-step2" }),
    run2Select: el("select", { id: "attnviz-run2" }),
    stepInput: el("input", { id: "attnviz-step", type: "range", min: "0", max: "0", step: "1", value: "0" }),
    stepLabel: el("span", { id: "attnviz-step-label", text: "step –" }),
    markers: el("div", { class: "attnviz-markers", id: "attnviz-markers" }),
    markerText: el("div", { class: "attnviz-marker-text", id: "attnviz-marker-text" }),
    errorBox: el("div", { class: "attnviz-error", id: "attnviz-error", role: "alert", hidden: true }),
    emptyBox: el("div", { class: "attnviz-message", id: "attnviz-empty", text: EMPTY_MESSAGE, hidden: true }),
    strip: el("div", { class: "attnviz-strip", id: "attnviz-tokens" }),
    canvas: el("canvas", { id: "attnviz-map" }),
    cellInfo: el("div", { class: "attnviz-cell", id: "attnviz-cell" }),
    zoomInfo: el("span", { id: "attnviz-zoom-info" }),
    zoomReset: el("button", { id: "attnviz-zoom-reset", type: "button", text: "whole map", hidden: true }),
    imageCanvas: el("canvas", { id: "attnviz-image" }),
    imageCaption: el("div", { class: "attnviz-caption", id: "attnviz-image-caption" }),
    topTitle: el("div", { id: "attnviz-topkeys-title", class: "attnviz-hint" }),
    topKeysBox: el("pre", { id: "attnviz-topkeys" }),
    scaleSelect: el("select", { id: "attnviz-scale" }),
    colorbar: el("canvas", { width: 256, height: 1 }),
    ticks: el("div", { class: "attnviz-ticks", id: "attnviz-ticks" }),
    scaleMeaning: el("div", { class: "attnviz-info", id: "attnviz-scale-meaning" }),
    changeBox: el("div", { class: "attnviz-change", id: "attnviz-change", hidden: true }),
    changeBar: el("canvas", { width: 256, height: 1 }),
    changeTicks: el("div", { class: "attnviz-ticks", id: "attnviz-change-ticks" }),
    changeMeaning: el("div", { class: "attnviz-info", id: "attnviz-change-meaning" }),
    info: el("div", { class: "attnviz-info" }),
    note: el("div", { class: "attnviz-note", hidden: true }),
    overviewCard: el("div", { class: "attnviz-card", id: "attnviz-overview", hidden: true }),
    metricSelect: el("select", { id: "attnviz-metric" }),
    overviewTitle: el("div", { class: "attnviz-hint", id: "attnviz-overview-title" }),
    overviewCanvas: el("canvas", { id: "attnviz-overview-map" }),
    overviewHint: el("div", { class: "attnviz-hint", id: "attnviz-overview-hint" }),
    sparkline: el("canvas", { id: "attnviz-sparkline" }),
    sparkTitle: el("div", { class: "attnviz-hint", id: "attnviz-spark-title" }),
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
    field("Compare", ui.compareSelect),
    field("With step", ui.step2Select, "attnviz-step2field"),
    field("With run", ui.run2Select, "attnviz-run2field"),
    el("div", { class: "attnviz-field attnviz-stepfield" }, [
      el("span", { class: "attnviz-field-title", text: "Step" }),
      el("span", { class: "attnviz-steprow" }, [
        el("span", { class: "attnviz-slider" }, [ui.stepInput, ui.markers]),
        ui.stepLabel,
      ]),
      ui.markerText,
    ]),
  ]);
  // vision records: the picture leads the plot column, the token heatmap follows it
  const imagePanel = el("div", { class: "attnviz-image-panel", id: "attnviz-image-panel", hidden: true }, [
    el("h3", { text: "Attention over the image" }),
    ui.imageCanvas,
    ui.imageCaption,
  ]);
  const mapTitle = el("h3", { class: "attnviz-map-title", text: "Token attention", hidden: true });
  const zoomRow = el("div", { class: "attnviz-zoom" }, [ui.zoomInfo, ui.zoomReset]);
  const plot = el("div", { class: "attnviz-plot" }, [imagePanel, mapTitle, ui.canvas, ui.cellInfo, zoomRow]);
  ui.overviewCard.append(
    el("h3", { text: "Overview: layers × heads" }),
    el("div", { class: "attnviz-overview-row" }, [ui.metricSelect]),
    ui.overviewTitle,
    ui.overviewCanvas,
    ui.overviewHint,
    ui.sparkTitle,
    ui.sparkline,
  );
  const bar = (/** @type {HTMLCanvasElement} */ canvas, /** @type {HTMLElement} */ ticks) =>
    el("div", { class: "attnviz-bar" }, [canvas, ticks]);
  ui.changeBox.append(el("h3", { text: "Change" }), bar(ui.changeBar, ui.changeTicks), ui.changeMeaning);
  const side = el("div", { class: "attnviz-side" }, [
    ui.overviewCard,
    el("div", { class: "attnviz-card" }, [el("h3", { text: "Top keys" }), ui.topTitle, ui.topKeysBox]),
    el("div", { class: "attnviz-card", id: "attnviz-scale-card" }, [
      el("h3", { text: "Colour scale" }),
      ui.scaleSelect,
      bar(ui.colorbar, ui.ticks),
      ui.scaleMeaning,
      el("div", { class: "attnviz-legend" }, [el("i", { class: "attnviz-swatch" }), "masked or not finite"]),
      ui.changeBox,
      ui.info,
      ui.note,
    ]),
  ]);
  const body = el("div", { class: "attnviz-body" }, [ui.strip, plot, side]);
  const main = el("div", { hidden: true }, [toolbar, body]);
  root.append(el("div", { class: "attnviz" }, [ui.errorBox, ui.emptyBox, main]));
  return { ...ui, imagePanel, mapTitle, plot, side, body, main, toolbar };
}

/**
 * Tick labels under a colour bar: a label (and a word under it) at each place.
 * @param {HTMLElement} box
 * @param {Array<[number, string, string]>} ticks
 */
export function setTicks(box, ticks) {
  box.replaceChildren(
    ...ticks.map(([place, label, word]) => {
      const align = place <= 0 ? "start" : place >= 1 ? "end" : "middle";
      const tick = el("span", { class: `attnviz-tick attnviz-tick-${align}` }, [
        el("b", { text: label }),
        ...(word ? [el("i", { text: word })] : []),
      ]);
      tick.style.left = `${(place * 100).toFixed(1)}%`; // CSSOM: TensorBoard's CSP refuses style attributes
      return tick;
    }),
  );
}
