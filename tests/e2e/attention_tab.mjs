// End-to-end check of the Attention tab in a real browser (Debian's Chromium driven by playwright-core).
//
//   node tests/e2e/attention_tab.mjs <tensorboard base url> <screenshot path> <expected top key line>
//   node tests/e2e/attention_tab.mjs <tensorboard base url> <screenshot path> --empty
//
// Opens TensorBoard on the Attention tab, hovers query token 1 in the plugin's iframe, checks that the
// top-keys panel lists <expected top key line> (e.g. "c  0.812"), moves the step slider to its first
// step and checks that the heatmap changed, and checks that nothing logged a console error. Saves a
// screenshot of the page, prints a JSON summary on stdout, and exits 1 on any failure (2 on bad usage).

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

const [base, screenshotPath, expectedLine] = process.argv.slice(2);
if (!base || !screenshotPath || expectedLine === undefined) {
  console.error(
    "usage: node attention_tab.mjs <tensorboard base url> <screenshot path> <expected top key line>",
  );
  process.exit(2);
}

const summary = {
  ok: false,
  url: `${base.replace(/\/+$/, "")}/#${PLUGIN}`,
  frame: null,
  expected: expectedLine,
  topkeys: null,
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

  if (expectedLine === "--empty") {
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
  const stepLabel = frame.locator("#attnviz-step-label");
  await until(async () => /^step \d+$/.test((await stepLabel.textContent()) || ""), TIMEOUT_MS);
  summary.step_before = await stepLabel.textContent();

  // hover query token 1: its top keys appear
  await token.hover();
  const topkeys = frame.locator("#attnviz-topkeys");
  await until(async () => ((await topkeys.textContent()) || "").trim().length > 0);
  summary.topkeys = (await topkeys.textContent()) || "";
  if (!summary.topkeys.split("\n").includes(expectedLine)) {
    fail(
      `#attnviz-topkeys does not list ${JSON.stringify(expectedLine)}: ${JSON.stringify(summary.topkeys)}`,
    );
  }

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

  await page.screenshot({ path: screenshotPath, fullPage: true });
  summary.screenshot = screenshotPath;
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
