// End-to-end checks of the Attention tab in a real browser (Debian's Chromium driven by playwright-core).
//
//   node tests/e2e/attention_tab.mjs <tensorboard base url> <screenshot path> <checks JSON>
//   node tests/e2e/attention_tab.mjs <tensorboard base url> <screenshot path> --empty
//
// The checks JSON (tests/test_attention_tab_browser.py writes it) names a scenario and what it needs:
//
//   default   the first view: layer menu, cell colours, top keys, bidi text, the step slider, a vision run
//   compare   two steps and their change, every head (a click opens one), two runs
//   address   the view's state in TensorBoard's URL: a second page opened on it shows the same view
//   overview  the layer × head overview (a click opens that head), its line over steps, the markers
//   large     a 2,048-token map: time to its first picture, the downsampled view, a zoom by dragging
//
// Each reports what the tab shows as a JSON summary on stdout (cell colours are read back from the
// canvas at the centres the canvas says its cells have), saves screenshots (<path>, and <path>-<name>.png
// for further views), checks that nothing logged a console error, and exits 1 on any failure.

import { chromium } from "playwright-core";

const PLUGIN = "attnviz";
const TIMEOUT_MS = 30_000;
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

const [base, screenshotPath, checksArg] = process.argv.slice(2);
if (!base || !screenshotPath || checksArg === undefined) {
  console.error("usage: node attention_tab.mjs <tensorboard base url> <screenshot path> <checks JSON>|--empty");
  process.exit(2);
}
const empty = checksArg === "--empty";
const checks = empty ? { scenario: "empty" } : JSON.parse(checksArg);
const root = base.replace(/\/+$/, "");

const summary = {
  ok: false,
  scenario: checks.scenario,
  url: `${root}/#${PLUGIN}${checks.hash || ""}`,
  console_errors: [],
  console_warnings: [], // warnings from the plugin's frame fail the run; TensorBoard's own are listed
  page_errors: [],
  failed_requests: [],
  screenshot: null,
  failures: [],
};

function fail(message) {
  summary.failures.push(message);
}

/** Polls `probe` until it returns a truthy value or the time runs out; returns the last value. */
async function until(probe, timeoutMs = 10_000, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let value = await probe();
  while (!value && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
    value = await probe();
  }
  return value;
}

const isPluginFrame = (url) => url.includes("plugin_entry.html") || url.includes(`/plugin/${PLUGIN}/`);

/** A page on `url` whose events are recorded in the summary; resolves to [page, the plugin's frame]. */
async function openTab(browser, url) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on("console", (message) => {
    const where = message.location().url || "";
    const entry = `${message.text()}${where ? ` (${where})` : ""}`;
    if (message.type() === "error") summary.console_errors.push(entry);
    else if (message.type() === "warning") summary.console_warnings.push(entry);
  });
  page.on("pageerror", (error) => summary.page_errors.push(String(error.stack || error)));
  page.on("requestfailed", (req) => {
    if (isPluginFrame(req.url())) summary.failed_requests.push(`${req.url()}: ${req.failure()?.errorText}`);
  });
  page.on("response", (response) => {
    if (response.status() >= 400 && isPluginFrame(response.url())) {
      summary.failed_requests.push(`${response.url()}: HTTP ${response.status()}`);
    }
  });
  await page.goto(url, { waitUntil: "domcontentloaded" });
  // TensorBoard creates the tab's iframe at data/plugin_entry.html?name=<plugin>
  const iframe = await page.waitForSelector(`iframe[src*="plugin_entry.html?name=${PLUGIN}"]`, { state: "attached" });
  const frame = await until(() => iframe.contentFrame(), TIMEOUT_MS);
  if (!frame) throw new Error("the plugin iframe has no frame");
  return [page, frame];
}

/** Waits until the map is drawn for a record (the canvas says where its cells are). */
async function mapDrawn(frame, timeoutMs = TIMEOUT_MS) {
  const drawn = await until(async () => (await frame.locator("#attnviz-map").getAttribute("data-drawn-ms")) !== null, timeoutMs);
  if (!drawn) throw new Error("the map was not drawn");
  return frame.locator("#attnviz-map").evaluate((canvas) => ({ ...canvas.dataset }));
}

/** The colour at the centre of map cell (row, col) of panel `panel`, read back from the canvas. */
function cellColor(frame, panel, row, col) {
  return frame.locator("#attnviz-map").evaluate(
    (canvas, [n, r, c]) => {
      const d = canvas.dataset;
      const ratio = canvas.width / canvas.clientWidth;
      const px = Number(d.left) + (n % Number(d.perRow)) * Number(d.stepX);
      const py = Number(d.top) + Math.floor(n / Number(d.perRow)) * Number(d.stepY);
      const cell = Number(d.cell);
      // map cell (r, c) is displayed block (qGroup[r] - row0, kGroup[c] - col0): the tab's own plans
      const i = Number(d.qGroup.split(",")[r]) - Number(d.row0);
      const j = Number(d.kGroup.split(",")[c]) - Number(d.col0);
      const x = Math.floor((px + (j + 0.5) * cell) * ratio);
      const y = Math.floor((py + (i + 0.5) * cell) * ratio);
      return [...canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)];
    },
    [panel, row, col],
  );
}

/** Reads probed cells: {"panel,row,col": [r, g, b]}. */
async function probe(frame, cells) {
  const out = {};
  for (const [n, r, c] of cells || []) out[`${n},${r},${c}`] = await cellColor(frame, n, r, c);
  return out;
}

/** Moves the pointer to the centre of map cell (row, col) of panel `panel`, in page coordinates. */
async function pointAt(page, frame, panel, row, col) {
  const box = await frame.locator("#attnviz-map").boundingBox();
  const d = await frame.locator("#attnviz-map").evaluate((canvas) => ({ ...canvas.dataset }));
  const i = Number(d.qGroup.split(",")[row]) - Number(d.row0);
  const j = Number(d.kGroup.split(",")[col]) - Number(d.col0);
  const x = box.x + Number(d.left) + (panel % Number(d.perRow)) * Number(d.stepX) + (j + 0.5) * Number(d.cell);
  const y = box.y + Number(d.top) + Math.floor(panel / Number(d.perRow)) * Number(d.stepY) + (i + 0.5) * Number(d.cell);
  return { x, y };
}

const text = async (frame, selector) => ((await frame.locator(selector).textContent()) || "").trim();
const value = (frame, selector) => frame.locator(selector).inputValue();
const pixels = (frame) => frame.locator("#attnviz-map").evaluate((canvas) => canvas.toDataURL("image/png"));
const shot = (page, name) => page.screenshot({ path: screenshotPath.replace(/\.png$/, "") + `-${name}.png`, fullPage: true });

// -- scenarios ----------------------------------------------------------------------------------------

async function scenarioDefault(browser) {
  const [page, frame] = await openTab(browser, summary.url);
  await frame.locator(`.attnviz-token[data-index="1"]`).waitFor({ state: "visible" });
  await mapDrawn(frame);
  summary.step_label = await text(frame, "#attnviz-step-label");
  summary.layer = await value(frame, "#attnviz-layer");
  summary.layer_options = await frame.locator("#attnviz-layer").evaluate((select) =>
    [...select.options].map((o) => ({ value: o.value, text: o.text, title: o.title })),
  );
  summary.cells = await probe(frame, checks.probe_cells);
  summary.scale_ticks = await text(frame, "#attnviz-ticks");
  summary.scale_meaning = await text(frame, "#attnviz-scale-meaning");
  if (checks.bidi_index !== undefined) {
    const bidi = frame.locator(`.attnviz-token[data-index="${checks.bidi_index}"] > b`);
    summary.token_text = await bidi.textContent();
    summary.token_unicode_bidi = await bidi.evaluate((b) => getComputedStyle(b).unicodeBidi);
  }
  // hover a query token: its top keys appear
  await frame.locator(`.attnviz-token[data-index="${checks.hover_index ?? 1}"]`).hover();
  await until(async () => (await text(frame, "#attnviz-topkeys")).length > 0);
  summary.topkeys = (await frame.locator("#attnviz-topkeys").textContent()) || "";
  if (!summary.topkeys.split("\n").includes(checks.expected_topkey)) {
    fail(`#attnviz-topkeys does not list ${JSON.stringify(checks.expected_topkey)}: ${JSON.stringify(summary.topkeys)}`);
  }
  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
  await page.mouse.move(1, 1);
  // the first step: the map redraws, its cells on the same scale
  const before = await pixels(frame);
  const slider = frame.locator("#attnviz-step");
  await slider.focus();
  await slider.press("Home");
  await until(async () => (await text(frame, "#attnviz-step-label")) !== summary.step_label);
  // the label names the step at once and its epoch when the step's record arrives: read it once drawn
  summary.canvas_changed = Boolean(await until(async () => (await pixels(frame)) !== before));
  summary.step_label_first = await text(frame, "#attnviz-step-label");
  summary.cells_first = await probe(frame, checks.probe_cells_first);
  // the linear scale, chosen
  await frame.locator("#attnviz-scale").selectOption("linear");
  await until(async () => (await text(frame, "#attnviz-scale-meaning")).includes("linear"));
  summary.cells_linear = await probe(frame, checks.probe_cells_first);
  summary.scale_ticks_linear = await text(frame, "#attnviz-ticks");
  if (checks.vision_run) {
    await frame.locator("#attnviz-scale").selectOption("log");
    await frame.locator("#attnviz-run").selectOption(checks.vision_run);
    await frame.locator("#attnviz-image-panel").waitFor({ state: "visible" });
    const caption = frame.locator("#attnviz-image-caption");
    await until(async () => ((await caption.textContent()) || "").includes("patches"), TIMEOUT_MS);
    const box = async (selector) => frame.locator(selector).boundingBox();
    const [image, heatmap, plot] = [await box("#attnviz-image"), await box("#attnviz-map"), await box(".attnviz-plot")];
    summary.vision = {
      caption: await caption.textContent(),
      in_plot: image.x >= plot.x && image.x + image.width <= plot.x + plot.width + 1,
      leads: image.y + image.height <= heatmap.y,
    };
    await shot(page, "vision");
  }
}

async function scenarioCompare(browser) {
  const [page, frame] = await openTab(browser, summary.url);
  await mapDrawn(frame);
  await until(async () => (await frame.locator("#attnviz-map").getAttribute("data-per-row")) === "3");
  summary.titles_steps = await panelTitles(frame);
  summary.cells_steps = await probe(frame, checks.probe_steps);
  summary.change_meaning = await text(frame, "#attnviz-change-meaning");
  summary.change_ticks = await text(frame, "#attnviz-change-ticks");
  const hover = await pointAt(page, frame, 2, ...checks.hover_change);
  await page.mouse.move(hover.x, hover.y);
  await until(async () => (await text(frame, "#attnviz-cell")).includes("change"));
  summary.cell_text_change = await text(frame, "#attnviz-cell");
  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
  // every head of the layer, then a click on one opens it
  await frame.locator("#attnviz-compare").selectOption("heads");
  await until(async () => (await text(frame, "#attnviz-zoom-info")).includes("click a head"));
  summary.heads_panels = Number(await frame.locator("#attnviz-map").getAttribute("data-per-row"));
  summary.cells_heads = await probe(frame, checks.probe_heads);
  await shot(page, "heads");
  const head = await pointAt(page, frame, 1, 5, 3);
  await page.mouse.click(head.x, head.y);
  await until(async () => (await value(frame, "#attnviz-head")) === "1");
  summary.after_head_click = { head: await value(frame, "#attnviz-head"), compare: await value(frame, "#attnviz-compare") };
  // two runs at the same step, and their change
  await frame.locator("#attnviz-compare").selectOption("runs");
  await until(async () => (await value(frame, "#attnviz-run2")) !== "" && (await frame.locator("#attnviz-map").getAttribute("data-per-row")) === "3", TIMEOUT_MS);
  await until(async () => (await panelTitles(frame)).some((t) => t.startsWith(checks.other_run)));
  summary.run2 = await value(frame, "#attnviz-run2");
  summary.titles_runs = await panelTitles(frame);
  summary.cells_runs = await probe(frame, checks.probe_runs);
  await shot(page, "runs");
}

/** The panels' titles, as the canvas was last drawn (kept in a data attribute for the test). */
function panelTitles(frame) {
  return frame.locator("#attnviz-map").evaluate((canvas) => JSON.parse(canvas.dataset.titles || "[]"));
}

async function scenarioAddress(browser) {
  const [page, frame] = await openTab(browser, summary.url);
  await mapDrawn(frame);
  summary.opened = { run: await value(frame, "#attnviz-run"), layer: await value(frame, "#attnviz-layer"),
    head: await value(frame, "#attnviz-head"), step: await text(frame, "#attnviz-step-label"),
    compare: await value(frame, "#attnviz-compare") };
  // change the view: another sample, head 0, the first step, linear colours
  await frame.locator("#attnviz-sample").selectOption("sample_1");
  await until(async () => (await value(frame, "#attnviz-sample")) === "sample_1");
  await mapDrawn(frame);
  await frame.locator("#attnviz-head").selectOption("0");
  await frame.locator("#attnviz-scale").selectOption("linear");
  const slider = frame.locator("#attnviz-step");
  await slider.focus();
  await slider.press("Home");
  await until(async () => page.url().includes("p.attnviz.scale=linear") && !page.url().includes(`step=${checks.last_step}`));
  await page.waitForTimeout(300);
  summary.shared_url = page.url();
  const view = async (f) => ({
    run: await value(f, "#attnviz-run"), sample: await value(f, "#attnviz-sample"), layer: await value(f, "#attnviz-layer"),
    head: await value(f, "#attnviz-head"), step: await text(f, "#attnviz-step-label"), scale: await value(f, "#attnviz-scale"),
  });
  summary.first_view = await view(frame);
  const first = await pixels(frame);
  // the shared link, in a new page: the same view, pixel for pixel
  const [second, frame2] = await openTab(browser, summary.shared_url);
  await until(async () => (await text(frame2, "#attnviz-step-label")) === summary.first_view.step, TIMEOUT_MS);
  await mapDrawn(frame2);
  summary.second_view = await view(frame2);
  summary.same_pixels = (await pixels(frame2)) === first;
  await second.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
}

async function scenarioOverview(browser) {
  const [page, frame] = await openTab(browser, summary.url);
  await mapDrawn(frame);
  await frame.locator("#attnviz-overview").waitFor({ state: "visible" });
  summary.metrics = await frame.locator("#attnviz-metric").evaluate((s) => [...s.options].map((o) => o.value));
  summary.overview_title = await text(frame, "#attnviz-overview-title");
  summary.spark_title = await text(frame, "#attnviz-spark-title");
  summary.markers = await frame.locator(".attnviz-marker").evaluateAll((marks) => marks.map((m) => ({ index: m.dataset.index, title: m.title })));
  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
  // a click on a cell opens that layer and head
  const [row, head] = checks.click_cell;
  const canvas = frame.locator("#attnviz-overview-map");
  const d = await canvas.evaluate((c) => ({ ...c.dataset }));
  await canvas.click({ position: { x: Number(d.left) + (head + 0.5) * Number(d.cellW), y: Number(d.top) + (row + 0.5) * Number(d.cellH) } });
  await until(async () => (await value(frame, "#attnviz-head")) === String(head) && (await value(frame, "#attnviz-layer")) === checks.click_layer, TIMEOUT_MS);
  await mapDrawn(frame);
  summary.after_click = { layer: await value(frame, "#attnviz-layer"), head: await value(frame, "#attnviz-head") };
  summary.spark_points = await frame.locator("#attnviz-sparkline").getAttribute("data-points");
  // a marker moves the slider to its step and says its text there
  await frame.locator(".attnviz-marker").first().click();
  await until(async () => (await text(frame, "#attnviz-marker-text")).length > 0);
  summary.marker_text = await text(frame, "#attnviz-marker-text");
  summary.step_at_marker = await text(frame, "#attnviz-step-label");
  await shot(page, "marker");
}

async function scenarioLarge(browser) {
  const started = Date.now();
  const [page, frame] = await openTab(browser, summary.url);
  const drawn = await mapDrawn(frame, checks.hang_guard_ms);
  summary.wall_ms_to_picture = Date.now() - started;
  summary.drawn_ms = Number(drawn.drawnMs);
  summary.paint_ms = Number(drawn.paintMs);
  summary.pooled = drawn.pooled === "1";
  summary.q_group = drawn.qGroup;
  summary.k_group = drawn.kGroup;
  summary.zoom_info = await text(frame, "#attnviz-zoom-info");
  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
  // the pooled view's cells, read back, and what hovering them says
  summary.cells_pooled = await probe(frame, checks.probe_pooled);
  summary.hover_pooled = {};
  for (const [r, c] of checks.hover_pooled || []) {
    const at = await pointAt(page, frame, 0, r, c);
    await page.mouse.move(at.x, at.y);
    await until(async () => (await text(frame, "#attnviz-cell")).includes("→"));
    summary.hover_pooled[`${r},${c}`] = await text(frame, "#attnviz-cell");
  }
  // the page answers while the map is shown (a frozen page would time out here)
  const t0 = Date.now();
  await frame.evaluate(() => 1);
  summary.answer_ms = Date.now() - t0;
  // drag over a region: it opens at full resolution
  const [[r0, c0], [r1, c1]] = checks.drag;
  const a = await pointAt(page, frame, 0, r0, c0);
  const b = await pointAt(page, frame, 0, r1, c1);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move((a.x + b.x) / 2, (a.y + b.y) / 2, { steps: 4 });
  await page.mouse.move(b.x, b.y, { steps: 4 });
  await page.mouse.up();
  await until(async () => (await frame.locator("#attnviz-map").getAttribute("data-pooled")) === "0", TIMEOUT_MS);
  summary.zoomed = await frame.locator("#attnviz-map").evaluate((c) => ({ ...c.dataset }));
  summary.zoom_info_zoomed = await text(frame, "#attnviz-zoom-info");
  summary.url_zoomed = page.url();
  summary.cells_zoomed = await probe(frame, checks.probe_zoomed);
  await shot(page, "zoomed");
  await frame.locator("#attnviz-zoom-reset").click();
  await until(async () => (await frame.locator("#attnviz-map").getAttribute("data-pooled")) === "1");
  summary.pooled_after_reset = (await frame.locator("#attnviz-map").getAttribute("data-pooled")) === "1";
}

async function scenarioEmpty(browser) {
  const [page, frame] = await openTab(browser, summary.url);
  const box = frame.locator("#attnviz-empty");
  await box.waitFor({ state: "visible" });
  summary.message = (await box.textContent()) || "";
  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
}

const SCENARIOS = {
  default: scenarioDefault,
  compare: scenarioCompare,
  address: scenarioAddress,
  overview: scenarioOverview,
  large: scenarioLarge,
  empty: scenarioEmpty,
};

let browser = null;
try {
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: CHROMIUM_ARGS });
  const scenario = SCENARIOS[checks.scenario];
  if (!scenario) throw new Error(`no scenario ${JSON.stringify(checks.scenario)}`);
  await scenario(browser);
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    for (const frame of page.frames()) {
      const error = frame.locator("#attnviz-error");
      if ((await error.count()) && (await error.isVisible())) fail(`the tab shows an error: ${await error.textContent()}`);
    }
  }
} catch (error) {
  fail(`${error.name}: ${error.message}`);
  const page = browser?.contexts().flatMap((c) => c.pages()).at(-1);
  if (page && !summary.screenshot) {
    await page.screenshot({ path: screenshotPath, fullPage: true }).then(() => (summary.screenshot = screenshotPath)).catch(() => {});
  }
} finally {
  if (browser) await browser.close();
}

const pluginWarnings = summary.console_warnings.filter((entry) => entry.includes(`/plugin/${PLUGIN}/`) || entry.includes("plugin_entry.html"));
if (summary.console_errors.length) fail(`${summary.console_errors.length} console error(s)`);
if (pluginWarnings.length) fail(`${pluginWarnings.length} console warning(s) from the plugin`);
if (summary.page_errors.length) fail(`${summary.page_errors.length} uncaught page error(s)`);
if (summary.failed_requests.length) fail(`${summary.failed_requests.length} failed plugin request(s)`);
summary.ok = summary.failures.length === 0;
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
process.exit(summary.ok ? 0 : 1);
