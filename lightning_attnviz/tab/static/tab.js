// The Attention tab's controller: what is selected, what is loaded, what the pointer is over. Its
// controls (menus, slider, events) are wired and filled by controls.js.

import { THEMES } from "./colors.js";
import { bindControls, syncSelectors, syncSlider } from "./controls.js";
import { buildLayout, setOptions } from "./dom.js";
import { formatWeight, isolate } from "./labels.js";
import { LINES_TOP_K, drawLines } from "./lines.js";
import { matrixOf } from "./matrix.js";
import { RecordCache, pluginBase, request } from "./model.js";
import { drawOverlay } from "./overlay.js";
import { buildStrip, markStrip, showTopKeys } from "./panels.js";
import { drawColorbar, drawHeatmap, paintLut } from "./views.js";

export class AttentionTab {
  /** @param {HTMLElement} root */
  constructor(root) {
    this.base = pluginBase();
    this.cache = new RecordCache(this.base);
    this.ui = buildLayout(root);
    /** @type {Record<string, string[]> | null} */
    this.runs = null;
    /** @type {string | null} */ this.run = null;
    /** @type {string | null} */ this.sample = null;
    /** @type {string | null} */ this.layer = null;
    /** @type {number | "mean"} */ this.head = "mean";
    this.view = "heatmap";
    /** @type {number[]} */ this.steps = [];
    this.stepIndex = -1;
    /** @type {import("./record.js").AttnRecord | null} */ this.record = null;
    this.recordKey = "";
    /** @type {number | null} */ this.hover = null;
    /** @type {number | null} */ this.pinned = null;
    this.generation = 0; // bumped on every selection change: late answers for an old one are dropped
    /** @type {Promise<void> | null} */ this.refreshing = null;
    this.lastRefresh = 0;
    /** @type {any} */ this.layout = null;
    /** @type {any} */ this.imageLayout = null;
    /** @type {HTMLElement[] | null} */ this.tokens = null;
    /** @type {HTMLCanvasElement | null} */ this.cells = null;
    this.theme = THEMES.light;
    drawColorbar(this.ui.colorbar);
    bindControls(this);
  }

  // -- loading -----------------------------------------------------------------------------------

  /** Re-fetches runs and steps, keeping the selection; at most one at a time. */
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
    this.ui.emptyBox.hidden = !empty;
    this.ui.main.hidden = empty;
    if (!empty) {
      if (changed) syncSelectors(this);
      await this.reloadSteps(this.generation);
    }
    this.hideError();
  }

  get tag() {
    return this.sample !== null && this.layer !== null ? `${this.sample}/${this.layer}` : null;
  }

  /** @param {{run?: string, sample?: string, layer?: string}} change */
  select(change) {
    Object.assign(this, change);
    this.generation += 1;
    syncSelectors(this);
    this.reloadSteps(this.generation).catch((error) => this.showError(error));
  }

  /** @param {number} generation */
  async reloadSteps(generation) {
    const { run, tag } = this;
    if (!run || !tag) return;
    const steps = await (await request(this.base, "steps", { run, tag })).json();
    if (generation !== this.generation) return;
    const previousStep = this.steps[this.stepIndex];
    const followLatest = this.stepIndex < 0 || this.stepIndex === this.steps.length - 1;
    this.steps = steps;
    let index = followLatest ? steps.length - 1 : steps.indexOf(previousStep);
    if (index < 0 && steps.length) index = Math.max(0, steps.findLastIndex((/** @type {number} */ s) => s <= previousStep));
    this.stepIndex = index;
    syncSlider(this);
    const key = RecordCache.key(run, tag, steps[index]);
    if (index >= 0 && !(this.record && this.recordKey === key)) await this.loadRecord(generation);
  }

  /** @param {number} index */
  setStepIndex(index) {
    if (index === this.stepIndex || index < 0 || index >= this.steps.length) return;
    this.stepIndex = index;
    syncSlider(this);
    this.loadRecord(this.generation).catch((error) => this.showError(error));
  }

  /** @param {number} generation */
  async loadRecord(generation) {
    const { run, tag } = this;
    const step = this.steps[this.stepIndex];
    if (!run || !tag || step === undefined) return;
    const record = await this.cache.get(run, tag, step);
    const stale = generation !== this.generation || this.steps[this.stepIndex] !== step;
    if (stale || this.tag !== tag || this.run !== run) return; // a newer choice was made meanwhile
    const sameTokens = this.record && this.record.header.q_labels.join("\u0000") === record.header.q_labels.join("\u0000");
    this.record = record;
    this.recordKey = RecordCache.key(run, tag, step);
    if (!sameTokens) this.tokens = buildStrip(this.ui.strip, record.header.q_labels);
    if (this.hover !== null && this.hover >= record.header.q) this.hover = null;
    if (this.pinned !== null && this.pinned >= record.header.q) this.pinned = null;
    const heads = record.header.heads;
    const options = [{ value: "mean", text: heads > 1 ? `mean of ${heads}` : "mean" }];
    for (let h = 0; h < heads; h++) options.push({ value: String(h), text: `head ${h}` });
    const head = setOptions(this.ui.headSelect, options, String(this.head));
    this.head = head === "mean" ? "mean" : Number(head);
    this.hideError();
    this.draw();
  }

  // -- pointer -----------------------------------------------------------------------------------

  get active() {
    return this.hover ?? this.pinned;
  }

  /** @param {number | null} index */
  setHover(index) {
    if (index === this.hover) return;
    this.hover = index;
    this.drawInteractive();
  }

  /** @param {number} index */
  togglePin(index) {
    this.pinned = this.pinned === index ? null : index;
    this.drawInteractive();
  }

  /** @param {MouseEvent} event */
  hitCanvas(event) {
    const layout = this.layout;
    if (!layout || !this.record) return null;
    const rect = this.ui.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    if (layout.kind === "heatmap") {
      const col = Math.floor((x - layout.left) / layout.cell);
      const row = Math.floor((y - layout.top) / layout.cell);
      return row < 0 || row >= layout.q || col < 0 || col >= layout.k ? null : { row, col };
    }
    const row = Math.round((y - layout.top) / layout.rowQ - 0.5); // lines: the nearest query dot
    return row < 0 || row >= layout.q || x > layout.width * 0.5 ? null : { row, col: null };
  }

  /** @param {MouseEvent} event */
  onCanvasMove(event) {
    const hit = this.hitCanvas(event);
    if (!hit || !this.record) {
      this.showCellHint();
      this.setHover(null);
      return;
    }
    if (hit.col !== null) {
      const { header } = this.record;
      const matrix = matrixOf(this.record, this.head);
      const index = hit.row * matrix.k + hit.col;
      const weight = matrix.hidden[index] ? "masked" : formatWeight(matrix.values[index]);
      this.ui.cellInfo.textContent =
        `query ${hit.row} ${isolate(header.q_labels[hit.row])} → key ${hit.col} ${isolate(header.k_labels[hit.col])}: ${weight}`;
    }
    this.setHover(hit.row);
  }

  /** @param {MouseEvent} event */
  onImageMove(event) {
    const layout = this.imageLayout;
    if (!layout || !this.record) return;
    const rect = this.ui.imageCanvas.getBoundingClientRect();
    const c = Math.floor(((event.clientX - rect.left) / layout.width) * layout.cols);
    const r = Math.floor(((event.clientY - rect.top) / layout.height) * layout.rows);
    const inside = r >= 0 && r < layout.rows && c >= 0 && c < layout.cols;
    const token = layout.prefix + r * layout.cols + c;
    this.setHover(inside && token < this.record.header.q ? token : null);
  }

  // -- drawing -----------------------------------------------------------------------------------

  showCellHint() {
    this.ui.cellInfo.textContent =
      this.view === "heatmap"
        ? "rows: queries · columns: keys · gray: masked · hover a row, click to pin it"
        : `left: queries · right: their top ${LINES_TOP_K} keys, opacity ∝ weight · hover a query, click to pin it`;
  }

  /** @param {string} view */
  setView(view) {
    this.view = view;
    this.ui.heatmapButton.setAttribute("aria-pressed", String(view === "heatmap"));
    this.ui.linesButton.setAttribute("aria-pressed", String(view === "lines"));
    this.draw();
  }

  /** Everything that depends on the record, the head or the size. */
  draw() {
    if (!this.record || this.ui.main.hidden) return;
    const matrix = matrixOf(this.record, this.head);
    this.cells = paintLut(this.cells || document.createElement("canvas"), matrix.k, matrix.q, matrix.values, matrix.vmax, {
      hidden: matrix.hidden,
    });
    const clipped = matrix.vmax < matrix.max;
    const { header } = this.record;
    this.ui.colorMax.textContent = `${formatWeight(matrix.vmax)}${clipped ? "+" : ""}`;
    const headText = this.head === "mean" ? "mean over heads" : `head ${this.head}`;
    const saturates = ` · colours saturate above ${formatWeight(matrix.vmax)} (99.5th percentile; max ${formatWeight(matrix.max)})`;
    this.ui.info.textContent = `${header.q} queries × ${header.k} keys · ${header.heads} heads · ${headText}${clipped ? saturates : ""}`;
    this.ui.note.textContent = header.note || "";
    this.ui.note.hidden = !header.note;
    this.showCellHint();
    this.drawInteractive();
  }

  /** The plot's room: the window minus the strip and side columns, and what is above. */
  room() {
    const vision = Boolean(this.record && this.record.header.image);
    const width = Math.max(240, Math.min(this.ui.body.clientWidth - 150 - 270 - 2 * 16 - 32, 660));
    const top = this.ui.canvas.getBoundingClientRect().top + window.scrollY;
    const height = vision ? 320 : Math.max(240, Math.min(window.innerHeight - top - 54, 660));
    return { width: Math.min(width, vision ? 420 : width), height };
  }

  /** Everything that also depends on the hovered or pinned query. */
  drawInteractive() {
    if (!this.record || this.ui.main.hidden) return;
    const { ui, record } = this;
    const matrix = matrixOf(record, this.head);
    const vision = Boolean(record.header.image);
    ui.imagePanel.hidden = !vision;
    ui.mapTitle.hidden = !vision;
    this.imageLayout = null;
    if (vision) {
      const width = Math.max(240, Math.min(ui.body.clientWidth - 150 - 270 - 64, 480));
      const { layout, caption } = drawOverlay(ui.imageCanvas, record, matrix, this.active, width);
      ui.imageCanvas.hidden = !layout;
      ui.imageCaption.textContent = caption;
      this.imageLayout = layout;
    }
    const room = this.room();
    this.layout =
      this.view === "heatmap"
        ? drawHeatmap(ui.canvas, this.cells, record.header, this.active, this.theme, room)
        : drawLines(ui.canvas, matrix, record.header, this.active, this.theme, room);
    showTopKeys(ui, record.header, matrix, this.active, this.active !== null && this.active === this.pinned);
    if (this.tokens) markStrip(ui.strip, this.tokens, this.active, this.pinned);
    ui.strip.style.maxHeight = `${Math.max(200, ui.plot.clientHeight)}px`;
  }

  // -- messages ----------------------------------------------------------------------------------

  /** @param {Error} error */
  showError(error) {
    this.ui.errorBox.textContent = `Could not load attention data: ${error.message}`;
    this.ui.errorBox.hidden = false;
    this.ui.body.classList.add("attnviz-stale"); // what is drawn may not be what the controls say
  }

  hideError() {
    this.ui.errorBox.hidden = true;
    this.ui.body.classList.remove("attnviz-stale");
  }
}
