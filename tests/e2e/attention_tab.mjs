// End-to-end check of the Attention tab in a real browser (Debian's Chromium driven by playwright-core).
//
//   node tests/e2e/attention_tab.mjs <tensorboard base url> <screenshot path> <checks JSON>
//   node tests/e2e/attention_tab.mjs <tensorboard base url> <screenshot path> --empty
//
// The checks JSON (tests/test_attention_tab_browser.py writes it) names a query to hover and the top
// key line expected for it, a masked and a visible heatmap cell to probe, and a vision run to open.
// The script reports what the tab shows (layer menu, top keys, cell colours, token text, the vision
// layout and caption), moves the step slider and checks the heatmap changed, and checks that nothing
// logged a console error. Saves screenshots (<path> and <path>-vision.png), prints a JSON summary on
// stdout, and exits 1 on any failure (2 on bad usage).

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
const checks = empty ? {} : JSON.parse(checksArg);
const expectedLine = checks.expected_topkey;

const summary = {
  ok: false,
  url: `${base.replace(/\/+$/, "")}/#${PLUGIN}`,
  frame: null,
  expected: expectedLine ?? null,
  topkeys: null,
  layer: null, // the layer menu: the chosen value and every option's value, text and title
  layer_options: [],
  cells: {}, // probed heatmap cells: "r,c" -> [r, g, b]
  token_text: null, // the strip's text of the token named in checks.bidi_index
  token_unicode_bidi: null,
  vision: null, // the vision run's layout and caption
  step_before: null,
  step_after: null,
  canvas_changed: null,
  console_errors: [],
  console_warnings: [], // warnings from the plugin's frame fail the run; TensorBoard's own are listed
  page_errors: [],
  failed_requests: [],
  screenshot: null,
  failures: [],
};

/** Ends the empty-log-dir check early: not a failure. */
class EmptyDone extends Error {}

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

let browser = null;
let page = null;
try {
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(TIMEOUT_MS);
  const isPluginFrame = (url) => url.includes("plugin_entry.html") || url.includes(`/plugin/${PLUGIN}/`);
  // page-level events cover every frame of the page, the plugin's iframe included
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

  await page.goto(summary.url, { waitUntil: "domcontentloaded" });

  // TensorBoard creates the tab's iframe at data/plugin_entry.html?name=<plugin>
  const iframe = await page.waitForSelector(`iframe[src*="plugin_entry.html?name=${PLUGIN}"]`, {
    state: "attached",
  });
  const frame = await until(() => iframe.contentFrame(), TIMEOUT_MS);
  if (!frame) throw new Error("the plugin iframe has no frame");
  summary.frame = frame.url();

  if (empty) {
    // an empty log dir: the tab says so instead of drawing nothing
    const empty = frame.locator("#attnviz-empty");
    await empty.waitFor({ state: "visible" });
    summary.topkeys = (await empty.textContent()) || "";
    if (!summary.topkeys.includes("No attention data yet")) fail(`unexpected empty message: ${summary.topkeys}`);
    await page.screenshot({ path: screenshotPath, fullPage: true });
    summary.screenshot = screenshotPath;
    throw new EmptyDone();
  }

  const token = frame.locator(`.attnviz-token[data-index="1"]`);
  await token.waitFor({ state: "visible" });
  await until(async () => (await frame.locator("#attnviz-map").getAttribute("data-cell")) !== null, TIMEOUT_MS);
  const stepLabel = frame.locator("#attnviz-step-label");
  await until(async () => /^step \d+$/.test((await stepLabel.textContent()) || ""), TIMEOUT_MS);
  summary.step_before = await stepLabel.textContent();

  // the layer menu: the last layer is chosen, long names are shortened, the title holds the full name
  const layerSelect = frame.locator("#attnviz-layer");
  summary.layer = await layerSelect.inputValue();
  summary.layer_options = await layerSelect.evaluate((select) =>
    [...select.options].map((o) => ({ value: o.value, text: o.text, title: o.title })),
  );
  // heatmap cells, read back from the canvas at their centres (the canvas says where cells are)
  const map = frame.locator("#attnviz-map");
  for (const [r, c] of checks.probe_cells || []) {
    summary.cells[`${r},${c}`] = await map.evaluate(
      (canvas, [row, col]) => {
        const { left, top, cell } = canvas.dataset;
        const ratio = canvas.width / canvas.clientWidth;
        const x = Math.floor((Number(left) + (col + 0.5) * Number(cell)) * ratio);
        const y = Math.floor((Number(top) + (row + 0.5) * Number(cell)) * ratio);
        return [...canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)];
      },
      [r, c],
    );
  }
  if (checks.bidi_index !== undefined) {
    const bidi = frame.locator(`.attnviz-token[data-index="${checks.bidi_index}"] > b`);
    summary.token_text = await bidi.textContent();
    summary.token_unicode_bidi = await bidi.evaluate((b) => getComputedStyle(b).unicodeBidi);
  }

  // hover a query token: its top keys appear
  const hovered = frame.locator(`.attnviz-token[data-index="${checks.hover_index ?? 1}"]`);
  await hovered.hover();
  const topkeys = frame.locator("#attnviz-topkeys");
  await until(async () => ((await topkeys.textContent()) || "").trim().length > 0);
  summary.topkeys = (await topkeys.textContent()) || "";
  if (!summary.topkeys.split("\n").includes(expectedLine)) {
    fail(
      `#attnviz-topkeys does not list ${JSON.stringify(expectedLine)}: ${JSON.stringify(summary.topkeys)}`,
    );
  }

  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;

  // move the step slider to its first step: the heatmap redraws
  const pixels = () => frame.locator("#attnviz-map").evaluate((canvas) => canvas.toDataURL("image/png"));
  const before = await pixels();
  const slider = frame.locator("#attnviz-step");
  const [value, min] = await slider.evaluate((input) => [input.value, input.min]);
  if (value === min) {
    fail(`the step slider is already at its first value (${summary.step_before}): need at least 2 steps`);
  }
  await slider.focus();
  await slider.press("Home");
  await until(async () => (await stepLabel.textContent()) !== summary.step_before);
  summary.step_after = await stepLabel.textContent();
  if (summary.step_after === summary.step_before) fail(`the step label stayed ${summary.step_before}`);
  summary.canvas_changed = Boolean(await until(async () => (await pixels()) !== before));
  if (!summary.canvas_changed) fail("the heatmap canvas did not change after moving the step slider");

  if (checks.vision_run) {
    // a vision run: the picture leads the plot column, above the token heatmap
    await page.mouse.move(1, 1); // off the tab: nothing hovered, the default caption
    await frame.locator("#attnviz-run").selectOption(checks.vision_run);
    const panel = frame.locator("#attnviz-image-panel");
    await panel.waitFor({ state: "visible" });
    const caption = frame.locator("#attnviz-image-caption");
    await until(async () => ((await caption.textContent()) || "").includes("patches"), TIMEOUT_MS);
    const box = async (selector) => frame.locator(selector).boundingBox();
    const [image, heatmap, plot] = [await box("#attnviz-image"), await box("#attnviz-map"), await box(".attnviz-plot")];
    summary.vision = {
      caption: await caption.textContent(),
      image,
      heatmap,
      in_plot: image.x >= plot.x && image.x + image.width <= plot.x + plot.width + 1,
      leads: image.y + image.height <= heatmap.y && image.width >= heatmap.width,
    };
    await page.screenshot({ path: screenshotPath.replace(/\.png$/, "") + "-vision.png", fullPage: true });
  }
  const errorBox = frame.locator("#attnviz-error");
  if (await errorBox.isVisible()) fail(`the tab shows an error: ${await errorBox.textContent()}`);
} catch (error) {
  if (!(error instanceof EmptyDone)) fail(`${error.name}: ${error.message}`);
  if (page && !summary.screenshot) {
    // what the page showed when it failed, for whoever reads the log
    await page
      .screenshot({ path: screenshotPath, fullPage: true })
      .then(() => (summary.screenshot = screenshotPath))
      .catch(() => {});
  }
} finally {
  if (browser) await browser.close();
}

const pluginWarnings = summary.console_warnings.filter(
  (entry) => entry.includes(`/plugin/${PLUGIN}/`) || entry.includes("plugin_entry.html"),
);
if (summary.console_errors.length) fail(`${summary.console_errors.length} console error(s)`);
if (pluginWarnings.length) fail(`${pluginWarnings.length} console warning(s) from the plugin`);
if (summary.page_errors.length) fail(`${summary.page_errors.length} uncaught page error(s)`);
if (summary.failed_requests.length) fail(`${summary.failed_requests.length} failed plugin request(s)`);
summary.ok = summary.failures.length === 0;
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
process.exit(summary.ok ? 0 : 1);
