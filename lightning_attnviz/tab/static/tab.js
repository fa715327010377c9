// The Attention tab's controller: the view's state (the same that lives in the page's address), what
// is loaded for it, and what the pointer is over. Its controls are wired by controls.js and the
// picture is composed by draw.js.

import { THEMES } from "./colors.js";
import { bindControls, syncCompare, syncSelectors, syncSlider } from "./controls.js";
import { buildLayout } from "./dom.js";
import { draw, drawInteractive } from "./draw.js";
import { RecordCache, pluginBase, request } from "./model.js";
import { decodeState, defaultState, encodeState, stepIndexFor } from "./state.js";
import { TensorBoardLink } from "./tensorboard.js";

export class AttentionTab {
  /** @param {HTMLElement} root */
  constructor(root) {
    this.base = pluginBase();
    this.cache = new RecordCache(this.base);
    this.ui = buildLayout(root);
    this.state = defaultState();
    /** @type {Record<string, string[]> | null} */ this.runs = null;
    /** @type {Record<string, {overview: string[], markers: string[]}>} */ this.extras = {};
    /** @type {number[]} */ this.steps = [];
    this.stepIndex = -1;
    /** @type {number[]} */ this.otherSteps = []; // the other run's steps (compare "runs")
    /** @type {import("./record.js").AttnRecord | null} */ this.record = null;
    /** @type {import("./record.js").AttnRecord | null} */ this.other = null; // the other step or run
    /** @type {Map<string, Promise<any[]>>} */ this.series = new Map(); // overview and markers records
    /** @type {any[]} */ this.overviews = [];
    /** @type {Array<{step: number, texts: string[]}>} */ this.markers = [];
    /** @type {number | null} */ this.hover = null;
    /** @type {number | null} */ this.pinned = null;
    /** @type {any} */ this.drag = null;
    this.generation = 0; // bumped on every selection change: late answers for an old one are dropped
    /** @type {Promise<void> | null} */ this.refreshing = null;
    this.lastRefresh = 0;
    /** @type {any} */ this.layout = null;
    /** @type {any} */ this.imageLayout = null;
    /** @type {any} */ this.overviewLayout = null;
    /** @type {any} */ this.painted = null; // the panels as painted, until the selection changes
    /** @type {HTMLElement[] | null} */ this.tokens = null;
    this.theme = THEMES.light;
    /** @type {number | null} */ this.selectedAt = performance.now(); // until the choice is drawn
    this.link = new TensorBoardLink(() => this.refresh({ force: true }));
    bindControls(this);
  }

  /** Reads the view from the address, then loads it. */
  async start() {
    const params = await this.link.readAddress();
    this.state = decodeState(params);
    this.followLatest = this.state.step === null;
    await this.refresh({ force: true });
  }

  // -- loading -----------------------------------------------------------------------------------

  /** Re-fetches runs and steps, keeping the selection; at most one at a time. */
  refresh({ force = false } = {}) {
    if (this.refreshing) return this.refreshing;
    if (!force && performance.now() - this.lastRefresh < 2000) return Promise.resolve();
    this.lastRefresh = performance.now();
    if (force) this.series.clear();
    this.refreshing = this.reloadRuns()
      .catch((error) => this.showError(error))
      .finally(() => {
        this.refreshing = null;
      });
    return this.refreshing;
  }

  async reloadRuns() {
    const [runs, extras] = await Promise.all([
      request(this.base, "runs").then((r) => r.json()),
      request(this.base, "extras").then((r) => r.json()),
    ]);
    const changed = JSON.stringify(runs) !== JSON.stringify(this.runs);
    this.runs = runs;
    this.extras = extras;
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
    const { sample, layer } = this.state;
    return sample !== null && layer !== null ? `${sample}/${layer}` : null;
  }

  /**
   * A new choice of run, sample, layer, compare mode or other step / run: reload what it needs.
   * @param {Partial<import("./state.js").ViewState>} change
   */
  select(change) {
    const layerChanged = ("layer" in change && change.layer !== this.state.layer) || "sample" in change;
    Object.assign(this.state, change);
    this.selectedAt = performance.now();
    if (layerChanged || "run" in change) this.state.zoom = null; // another map: its own extent
    this.generation += 1;
    this.painted = null;
    syncSelectors(this);
    this.reloadSteps(this.generation).catch((error) => this.showError(error));
  }

  /** @param {number} generation */
  async reloadSteps(generation) {
    const { run } = this.state;
    const tag = this.tag;
    if (!run || !tag) return;
    const steps = await (await request(this.base, "steps", { run, tag })).json();
    if (generation !== this.generation) return;
    const atLatest = this.stepIndex >= 0 && this.stepIndex === this.steps.length - 1;
    const wanted = this.followLatest || atLatest ? null : this.state.step;
    this.steps = steps;
    this.stepIndex = stepIndexFor(steps, wanted);
    this.otherSteps = [];
    const run2 = this.state.compare === "runs" ? syncCompare(this) : null;
    if (run2) {
      const answer = await request(this.base, "steps", { run: run2, tag }).catch(() => null);
      if (generation !== this.generation) return;
      this.otherSteps = answer ? await answer.json() : [];
    }
    syncCompare(this);
    syncSlider(this);
    await Promise.all([this.loadRecords(generation), this.loadSeries(generation)]);
  }

  /** @param {number} index */
  setStepIndex(index) {
    if (index === this.stepIndex || index < 0 || index >= this.steps.length) return;
    this.stepIndex = index;
    this.followLatest = index === this.steps.length - 1;
    this.painted = null;
    syncCompare(this);
    syncSlider(this);
    this.loadRecords(this.generation).catch((error) => this.showError(error));
  }

  /** The other map of a comparison: its run and step, or null. */
  otherSource() {
    const { compare, run2, step2 } = this.state;
    const step = this.steps[this.stepIndex];
    if (compare === "steps" && step2 !== null) return { run: this.state.run, step: step2 };
    if (compare === "runs" && run2 && this.otherSteps.length) {
      return { run: run2, step: this.otherSteps[stepIndexFor(this.otherSteps, step)] };
    }
    return null;
  }

  /** @param {number} generation */
  async loadRecords(generation) {
    const { run } = this.state;
    const tag = this.tag;
    const step = this.steps[this.stepIndex];
    if (!run || !tag || step === undefined) return;
    const source = this.otherSource();
    const [record, other] = await Promise.all([
      this.cache.get(run, tag, step),
      source && source.run ? this.cache.get(source.run, tag, source.step) : Promise.resolve(null),
    ]);
    const stale = generation !== this.generation || this.steps[this.stepIndex] !== step;
    if (stale || this.tag !== tag || this.state.run !== run) return; // a newer choice was made meanwhile
    this.state.step = step;
    this.record = record;
    this.other = other;
    this.painted = null;
    if (this.hover !== null && this.hover >= record.header.q) this.hover = null;
    if (this.pinned !== null && this.pinned >= record.header.q) this.pinned = null;
    this.hideError();
    draw(this);
  }

  /**
   * The run's overview and markers records (all kept steps of each), fetched once per run and reload.
   * @param {number} generation
   */
  async loadSeries(generation) {
    const run = this.state.run;
    if (!run) return;
    const prefix = (this.tag || "").split("sample_")[0]; // a named monitor's tags start "<name>/"
    const extras = this.extras[run] || { overview: [], markers: [] };
    const fetchAll = (/** @type {string | undefined} */ tag) => {
      if (!tag) return Promise.resolve([]);
      const key = `${run}\u0000${tag}`;
      if (!this.series.has(key)) {
        this.series.set(key, request(this.base, "records", { run, tag }).then((r) => r.json()));
      }
      return /** @type {Promise<any[]>} */ (this.series.get(key));
    };
    const pick = (/** @type {string[]} */ tags, /** @type {string} */ name) => tags.find((t) => t === `${prefix}${name}`);
    const [overviews, markers] = await Promise.all([
      fetchAll(pick(extras.overview, "overview")),
      fetchAll(pick(extras.markers, "markers")),
    ]);
    if (generation !== this.generation || this.state.run !== run) return;
    this.overviews = overviews;
    this.markers = markers;
    syncSlider(this);
    draw(this);
  }

  /** Puts the view's state in the page's address (TensorBoard's URL), so a link reproduces it. */
  writeAddress() {
    this.link.writeAddress(encodeState(this.state));
  }

  // -- pointer -----------------------------------------------------------------------------------

  get active() {
    return this.hover ?? this.pinned;
  }

  /** @param {number | null} index */
  setHover(index) {
    if (index === this.hover) return;
    this.hover = index;
    drawInteractive(this);
  }

  /** @param {number} index */
  togglePin(index) {
    this.pinned = this.pinned === index ? null : index;
    drawInteractive(this);
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
